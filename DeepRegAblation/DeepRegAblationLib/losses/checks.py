"""Input checks shared by the losses: images ``(B, C, *S)``, image pairs and displacement fields.

Each raises ``ValueError`` naming the argument and its shape (MONAI style).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import fields

__all__ = ["Spacing", "check_image", "check_pair", "check_disp"]

Spacing = Optional[Union[float, Sequence[float]]]
"""mm per voxel: one number for every axis, or one per spatial axis (tensor axis order); ``None``: voxels."""


def check_image(image: torch.Tensor, name: str) -> int:
    """Validate a ``(B, C, *S)`` floating image tensor; return its number of spatial dims."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (4, 5):
        raise ValueError(f"{name} must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(image.shape)})")
    fields.check_finite(image, name)
    return image.dim() - 2


def check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str = "fixed", name_b: str = "warped") -> int:
    """Validate two floating images of identical shape; return the number of spatial dims."""
    ndim = check_image(a, name_a)
    check_image(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    for t, name in ((a, name_a), (b, name_b)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    return ndim


def check_disp(disp_vox: torch.Tensor, name: str = "disp_vox", min_size: int = 2) -> int:
    """Validate a ``(B, ndim, *S)`` field (finite, every spatial size >= ``min_size``)."""
    ndim = fields.ndim_of_disp(disp_vox, name)
    fields.check_finite(disp_vox, name)
    if any(int(n) < min_size for n in disp_vox.shape[2:]):
        raise ValueError(f"{name} needs at least {min_size} voxels along every axis, got shape {tuple(disp_vox.shape)}")
    return ndim
