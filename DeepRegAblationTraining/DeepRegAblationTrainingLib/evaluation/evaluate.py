"""Evaluate trained registration models on fixed validation pairs: one metrics row per pair.

A *pair item* is what ``data.FixedPairDataset`` / ``data.SyntheticPairDataset`` yield (no batch
dimension): ``{"moving": (1, *S), "fixed": (1, *S), "moving_labels": (1, *S) long | absent,
"fixed_labels": ..., "spacing_mm": (ndim,), "pair_id": str, "disp_true_vox": (ndim, *S) | absent}``.
Any sequence of such dicts is accepted as ``dataset``.

Per-pair row (all floats except the identifiers; NaN = not available):

==================  ==========================================================================
``variant``         variant id of the model (``"identity"`` for no registration)
``checkpoint``      path of the checkpoint ("" when evaluating a model object)
``pair_id``         the dataset's pair id
``dice``            mean Dice over the labels (``dice_<label>`` per label)
``hd95_mm``         mean 95th-percentile Hausdorff distance over the labels, mm
``folding_pct``     % of voxels with ``det(I + grad u) <= 0``
``sdlogj``          standard deviation of ``log det`` (spacing-aware Jacobian)
``mse ncc ssim``    image similarity of fixed and warped moving (intensities after preprocessing)
``max/mean_disp``   displacement magnitude, ``_vox`` and ``_mm``
``tre_mm``          mean distance between label centroids of fixed and warped labels, mm
``tre_true_mm``     synthetic pairs only: mean end-point error against ``disp_true_vox``, mm
                    (``mean_x |(u_pred(x) - u_true(x)) * spacing|``, :func:`mean_endpoint_error_mm`)
``runtime_s``       forward pass of the model on ``device`` (no I/O, no metrics)
==================  ==========================================================================
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from DeepRegAblationLib import fields, metrics
from DeepRegAblationLib.models.resolve import load_model_file
from DeepRegAblationLib.registration.devices import resolve_device

from .endpoint_error import mean_endpoint_error_mm

__all__ = [
    "ID_COLUMNS", "METRIC_COLUMNS", "HIGHER_IS_BETTER", "PairPrediction", "predict_pair", "pair_metrics",
    "evaluate_model", "load_trained_model", "evaluate_checkpoint", "validation_set", "row_columns",
    "write_rows_csv", "read_rows_csv",
]

ID_COLUMNS = ("variant", "checkpoint", "pair_id")
METRIC_COLUMNS = (
    "dice",
    "hd95_mm",
    "folding_pct",
    "sdlogj",
    "mse",
    "ncc",
    "ssim",
    "max_disp_vox",
    "mean_disp_vox",
    "max_disp_mm",
    "mean_disp_mm",
    "tre_mm",
    "tre_true_mm",
    "runtime_s",
)
# metric -> True if higher is better (None: neither, e.g. displacement size)
HIGHER_IS_BETTER: Dict[str, Optional[bool]] = {
    "dice": True,
    "hd95_mm": False,
    "folding_pct": False,
    "sdlogj": False,
    "mse": False,
    "ncc": True,
    "ssim": True,
    "max_disp_vox": None,
    "mean_disp_vox": None,
    "max_disp_mm": None,
    "mean_disp_mm": None,
    "tre_mm": False,
    "tre_true_mm": False,
    "runtime_s": None,  # measured on a shared machine: reported, never called better or worse
}


@dataclass
class PairPrediction:
    """One registered pair as numpy arrays without batch/channel dimensions (``S`` = spatial shape).

    ``fixed, moving, warped``: ``(*S)`` float32; ``*_labels``: ``(*S)`` int64 or ``None``;
    ``disp_vox``: ``(ndim, *S)`` fixed -> moving in voxels; ``jacobian``: ``(*S)`` det of
    ``x -> x + u(x)``; ``spacing_mm``: per tensor axis; ``disp_true_vox``: ``(ndim, *S)`` or ``None``.
    """

    pair_id: str
    fixed: np.ndarray
    moving: np.ndarray
    warped: np.ndarray
    disp_vox: np.ndarray
    jacobian: np.ndarray
    spacing_mm: tuple
    runtime_s: float
    fixed_labels: Optional[np.ndarray] = None
    moving_labels: Optional[np.ndarray] = None
    warped_labels: Optional[np.ndarray] = None
    disp_true_vox: Optional[np.ndarray] = None


def _batched(item: Mapping[str, Any], key: str, device: torch.device) -> Optional[torch.Tensor]:
    value = item.get(key)
    if value is None:
        return None
    value = torch.as_tensor(value)
    return value[None].to(device)


def predict_pair(model: Optional[torch.nn.Module], item: Mapping[str, Any], device: Union[str, torch.device] = "cpu") -> PairPrediction:
    """Register one pair item with ``model`` (``None``: the identity, i.e. no registration).

    The model is run in ``eval`` mode without gradients; labels are warped with nearest
    neighbour interpolation by the same total displacement.
    """
    for key in ("moving", "fixed"):
        if key not in item:
            raise ValueError(f"pair item must contain {key!r}, got keys {sorted(item)}")
    dev = resolve_device(device)
    moving = _batched(item, "moving", dev).float()
    fixed = _batched(item, "fixed", dev).float()
    if moving.shape != fixed.shape or moving.dim() not in (4, 5) or moving.shape[1] != 1:
        raise ValueError(
            f"pair item 'moving' and 'fixed' must both be (1, *S) with 2 or 3 spatial axes, "
            f"got {tuple(item['moving'].shape)} and {tuple(item['fixed'].shape)}"
        )
    ndim = moving.dim() - 2
    spacing = item.get("spacing_mm")
    spacing_mm = tuple(float(s) for s in torch.as_tensor(spacing).flatten().tolist()) if spacing is not None else (1.0,) * ndim
    if len(spacing_mm) != ndim:
        raise ValueError(f"pair item 'spacing_mm' must have {ndim} entries, got {spacing_mm}")

    with torch.no_grad():
        if model is None:
            start = time.perf_counter()
            disp = moving.new_zeros((1, ndim) + tuple(moving.shape[2:]))
            warped = moving
            runtime = time.perf_counter() - start
        else:
            model.eval()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            out = model(moving, fixed)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            runtime = time.perf_counter() - start
            disp = out["disp_vox"].float()
            warped = out["warped"].float()
        moving_labels = _batched(item, "moving_labels", dev)
        fixed_labels = _batched(item, "fixed_labels", dev)
        warped_labels = None
        if moving_labels is not None:
            warped_labels = fields.warp_labels(moving_labels, disp)
        jac = fields.jacobian_determinant(disp, spacing_mm)

    def np_img(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
        return None if t is None else t[0, 0].detach().cpu().numpy()

    true = item.get("disp_true_vox")
    return PairPrediction(
        pair_id=str(item.get("pair_id", "")),
        fixed=np_img(fixed),
        moving=np_img(moving),
        warped=np_img(warped),
        disp_vox=disp[0].detach().cpu().numpy(),
        jacobian=jac[0].detach().cpu().numpy(),
        spacing_mm=spacing_mm,
        runtime_s=float(runtime),
        fixed_labels=np_img(fixed_labels),
        moving_labels=np_img(moving_labels),
        warped_labels=np_img(warped_labels),
        disp_true_vox=None if true is None else torch.as_tensor(true).detach().cpu().float().numpy(),
    )


def pair_metrics(pred: PairPrediction) -> Dict[str, Any]:
    """Metrics row of one :class:`PairPrediction` (keys of :data:`METRIC_COLUMNS` + ``dice_<label>``)."""
    row: Dict[str, Any] = {"pair_id": pred.pair_id}
    values = metrics.registration_metrics(
        pred.fixed,
        pred.warped,
        pred.disp_vox,
        spacing=pred.spacing_mm,
        fixed_labels=pred.fixed_labels,
        warped_labels=pred.warped_labels,
    )
    for key in METRIC_COLUMNS:
        if key in ("tre_true_mm", "runtime_s"):
            continue
        row[key] = float(values.get(key, math.nan))
    row["tre_true_mm"] = (
        mean_endpoint_error_mm(pred.disp_vox, pred.disp_true_vox, pred.spacing_mm)
        if pred.disp_true_vox is not None
        else math.nan
    )
    row["runtime_s"] = pred.runtime_s
    if pred.fixed_labels is not None and pred.warped_labels is not None:
        for label, value in sorted(metrics.dice_per_label(pred.fixed_labels, pred.warped_labels).items()):
            row[f"dice_{int(label)}"] = float(value)
    return row


def evaluate_model(
    model: Optional[torch.nn.Module],
    dataset: Iterable[Mapping[str, Any]],
    device: Union[str, torch.device] = "cpu",
    checkpoint: str = "",
    progress=None,
) -> List[Dict[str, Any]]:
    """Per-pair metric rows of ``model`` (``None`` = identity, variant ``"identity"``) on ``dataset``.

    ``progress(done, total)`` is called after each pair when given.
    """
    dev = resolve_device(device)
    if model is not None:
        model = model.to(dev)
        variant = getattr(getattr(model, "variant", None), "id", type(model).__name__)
    else:
        variant = "identity"
    total = len(dataset) if hasattr(dataset, "__len__") else -1
    rows: List[Dict[str, Any]] = []
    for index, item in enumerate(dataset):
        pred = predict_pair(model, item, dev)
        row = {"variant": variant, "checkpoint": str(checkpoint)}
        row.update(pair_metrics(pred))
        if not row["pair_id"]:
            row["pair_id"] = str(index)
        rows.append(row)
        if progress is not None:
            progress(index + 1, total)
    if not rows:
        raise ValueError("dataset is empty: no pairs to evaluate")
    return rows


def load_trained_model(ckpt_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Model from a checkpoint file (``models.resolve.load_model_file``; ``FileNotFoundError`` when it does not exist)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_model_file(path).model.to(resolve_device(device))


def evaluate_checkpoint(
    ckpt_path: Union[str, os.PathLike], dataset: Iterable[Mapping[str, Any]], device: Union[str, torch.device] = "cpu", progress=None
) -> List[Dict[str, Any]]:
    """Load ``ckpt_path`` and evaluate it on every pair of ``dataset``: one row per pair (see module doc)."""
    model = load_trained_model(ckpt_path, device)
    return evaluate_model(model, dataset, device=device, checkpoint=str(ckpt_path), progress=progress)


# --------------------------------------------------------------------------- validation pairs
def validation_set(
    spec: Mapping[str, Any],
    ndim: Optional[int] = None,
    seed: int = 0,
    n_pairs: int = 16,
    split_path: Optional[Union[str, os.PathLike]] = None,
    pairs_path: Optional[Union[str, os.PathLike]] = None,
    divisor: int = 16,
) -> Tuple[Any, Dict[str, Any]]:
    """The fixed validation pairs of a data spec, preprocessed exactly as the trainer does.

    Args:
        spec: data spec (``data.parse_data_argument`` + ``labels``/``shape``/``spacing_mm``...).
        ndim: 2 or 3 (implied by OASIS kinds).
        seed: seeds the split (when ``split_path`` does not exist yet) and the pair draw.
        n_pairs: number of validation pairs drawn when no ``pairs_path`` file exists.
        split_path: split JSON, read when it exists, else written there (``data.build_data``).
        pairs_path: pairs JSON, read when it exists (its pairs may name any subject of the
            data), else the drawn pairs are written there.
        divisor: the network's size multiple.

    Returns:
        ``(dataset, info)``: a ``data.FixedPairDataset`` (or the synthetic validation pairs of
        ``mni-synthetic``) and ``{"train": [ids], "val": [ids], "pairs": [[moving, fixed]...],
        "preprocess": Preprocess, "synthetic": bool}``.
    """
    from .. import data

    spec = dict(spec)
    if split_path is not None:
        spec["split"] = str(split_path)
    spec["val_pairs"] = int(n_pairs)
    if int(n_pairs) < 1 and not (pairs_path is not None and Path(pairs_path).is_file()):
        raise ValueError(f"n_pairs must be >= 1 when no pairs file is given, got {n_pairs}")
    bundle = data.build_data(spec, ndim, seed, pairs_per_epoch=1, divisor=divisor)
    info: Dict[str, Any] = {"preprocess": bundle.preprocess, "synthetic": bool(bundle.split.get("synthetic"))}
    if info["synthetic"]:
        if bundle.val is None:
            raise ValueError("the synthetic data spec gives no validation pairs")
        info.update(train=list(bundle.split.get("train", [])), val=list(bundle.split.get("val", [])), pairs=[])
        return bundle.val, info
    train = [data.Subject.from_dict(d) for d in bundle.split["train"]]
    val = [data.Subject.from_dict(d) for d in bundle.split["val"]]
    atlas = [data.Subject.from_dict(bundle.split["atlas"])] if bundle.split.get("atlas") else []
    if pairs_path is not None and Path(pairs_path).is_file():
        pairs = data.load_pairs(pairs_path)
    else:
        pairs = [tuple(p) for p in bundle.split.get("val_pairs", [])]
        if not pairs:
            raise ValueError(
                f"no validation pairs: {len(val)} validation subject(s) cannot give {n_pairs} pair(s); "
                f"raise --val-fraction or give --pairs"
            )
        if pairs_path is not None:
            data.save_pairs(pairs_path, pairs)
    dataset = data.FixedPairDataset(train + val + atlas, pairs, bundle.preprocess)
    info.update(train=[s.id for s in train], val=[s.id for s in val], pairs=[list(p) for p in pairs])
    return dataset, info


# --------------------------------------------------------------------------- CSV
def row_columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """Column order: identifiers, the standard metrics, then the other keys (``dice_<k>`` sorted by k)."""
    keys: List[str] = []
    seen = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                keys.append(key)
    first = [k for k in ID_COLUMNS if k in seen] + [k for k in METRIC_COLUMNS if k in seen]

    def extra_key(k: str):
        if k.startswith("dice_") and k[5:].lstrip("-").isdigit():
            return (0, int(k[5:]), k)
        return (1, 0, k)

    rest = sorted((k for k in keys if k not in first), key=extra_key)
    return first + rest


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: Union[str, os.PathLike]) -> Path:
    """Write ``rows`` (dicts) to ``path`` as CSV; missing entries are empty, floats in full precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = row_columns(rows)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    os.replace(tmp, path)
    return path


def read_rows_csv(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """Inverse of :func:`write_rows_csv`: numeric cells become floats, empty cells NaN, others str."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    rows: List[Dict[str, Any]] = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row: Dict[str, Any] = {}
            for key, value in raw.items():
                if key in ID_COLUMNS:
                    row[key] = value
                    continue
                try:
                    row[key] = float(value) if value not in ("", None) else math.nan
                except ValueError:
                    row[key] = value
            rows.append(row)
    return rows
