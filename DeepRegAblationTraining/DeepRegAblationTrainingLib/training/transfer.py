"""Transfer learning: initialising a model from a checkpoint of the same architecture, and what
``finetune="decoder_then_all"`` freezes in its first phase."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import torch

from DeepRegAblationLib.models.checkpoints import architecture, describe_architecture, load_checkpoint, load_model_state
from DeepRegAblationLib.models.network import RegistrationModel

__all__ = ["init_from_checkpoint", "frozen_parameters"]


def _arch_key(config: Mapping[str, Any]) -> str:
    """What decides the weights (``checkpoints.architecture``: options a config does not record take
    their defaults; the passes share the weights, so a 1-pass checkpoint initialises a 2-pass model)."""
    return json.dumps(architecture(config), sort_keys=True)


def init_from_checkpoint(model: RegistrationModel, path: Union[str, Path]) -> Dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``model``; ``ValueError`` if the architectures differ."""
    ckpt = load_checkpoint(path, role="--init-from checkpoint")
    saved, mine = ckpt["model_config"], model.config()
    if _arch_key(saved) != _arch_key(mine):
        raise ValueError(
            f"--init-from checkpoint {path} holds a [{describe_architecture(saved)}] model but this run builds "
            f"[{describe_architecture(mine)}]; transfer learning needs the same architecture "
            f"(dimension, affine stage, feature counts)"
        )
    load_model_state(model, ckpt, source=f"--init-from checkpoint {path}")
    return ckpt


def frozen_parameters(model: RegistrationModel) -> List[torch.nn.Parameter]:
    """Parameters frozen in the first phase of ``decoder_then_all``: U-Net encoder and affine stage."""
    params = list(model.unet.encoder.parameters())
    if model.affine is not None:
        params += list(model.affine.parameters())
    return params
