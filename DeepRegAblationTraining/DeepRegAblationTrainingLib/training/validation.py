"""Validation during training: the metrics of the fixed validation pairs, and which of them decides ``best.pt``."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch

from DeepRegAblationLib import fields, metrics
from DeepRegAblationLib.losses import SIMILARITIES
from DeepRegAblationLib.models.network import RegistrationModel

from ..data import collate_pairs

__all__ = ["to_device", "validate", "best_criterion"]


def to_device(batch: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """``batch`` with its tensors on ``device`` (other values as they are)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def validate(model: RegistrationModel, dataset, device: torch.device, similarity: str = "lncc") -> Dict[str, float]:
    """Mean validation metrics of ``model`` on ``dataset`` (one pair at a time).

    Keys: ``val_similarity`` (the ``similarity`` loss, lower is better), ``val_folding_pct``,
    ``val_dice`` (nearest-neighbour warped labels, when labelled), ``val_epe_vox`` (mean
    end-point error against ``disp_true_vox``, synthetic pairs).
    """
    was_training = model.training
    model.eval()
    sums: Dict[str, List[float]] = {}
    for index in range(len(dataset)):
        item = to_device(collate_pairs([dataset[index]]), device)
        outputs = model(item["moving"], item["fixed"])
        disp = outputs["disp_vox"].float()
        values = {
            "val_similarity": float(SIMILARITIES[similarity](item["fixed"], outputs["warped"].float())),
            "val_folding_pct": metrics.folding_percentage(disp[0].cpu().numpy()),
        }
        if "moving_labels" in item:
            warped_labels = fields.warp_labels(item["moving_labels"], disp)
            values["val_dice"] = metrics.mean_dice(item["fixed_labels"][0, 0].cpu().numpy(), warped_labels[0, 0].cpu().numpy())
        if "disp_true_vox" in item:
            values["val_epe_vox"] = float((disp - item["disp_true_vox"]).norm(dim=1).mean())
        for key, value in values.items():
            sums.setdefault(key, []).append(value)
    model.train(was_training)
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan") for k, v in sums.items()}


def best_criterion(row: Mapping[str, float]) -> Tuple[str, float]:
    """``(metric name, score where higher is better)`` for ``best.pt``."""
    if "val_dice" in row and math.isfinite(row["val_dice"]):
        return "val_dice", row["val_dice"]
    if "val_epe_vox" in row:
        return "val_epe_vox", -row["val_epe_vox"]
    return "val_similarity", -row["val_similarity"]
