"""Mixed precision on CUDA: which half type, and running only the convolution stacks in it."""
from __future__ import annotations

from typing import Callable

import torch

from DeepRegAblationLib.models.network import RegistrationModel

__all__ = ["amp_dtype", "enable_mixed_precision"]


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the GPU supports it (no gradient scaler needed), else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def enable_mixed_precision(model: RegistrationModel, device_type: str, dtype: torch.dtype) -> Callable[[], None]:
    """Run the U-Net (and the affine stage's convolutions) under ``torch.autocast``; returns the undo function.

    Only the convolution stacks run in half precision; their outputs are cast back to float32,
    so the flow head, the affine matrix, the warps and the losses stay in float32. Displacements
    are voxel coordinates: in half precision a coordinate near 200 would be rounded to 0.125
    (float16) or 1 voxel (bfloat16). The modules' ``forward`` is wrapped on the instance, so
    parameter names and checkpoints are unchanged.
    """
    modules = [model.unet] + ([model.affine.features] if model.affine is not None else [])
    for module in modules:
        original = module.forward

        def forward(*args, _original=original, **kwargs):
            with torch.autocast(device_type=device_type, dtype=dtype):
                out = _original(*args, **kwargs)
            return out.float()

        module.forward = forward

    def undo() -> None:
        for module in modules:
            module.__dict__.pop("forward", None)

    return undo
