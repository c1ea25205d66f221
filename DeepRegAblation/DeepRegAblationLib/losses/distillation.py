"""Distillation: a term pulling a network's field towards a teacher's field of the same pair.

The teacher is the project's own instance optimisation of a training pair
(``DeepRegAblationTrainingLib.training.teacher``); the term is the mean end-point error between the
two total fields, in voxels of the grid they live on (robust: a teacher's local mistake costs in
proportion to its size, not its square).
"""
from __future__ import annotations

import torch

from .checks import check_disp

__all__ = ["field_distance"]

EPE_EPS = 1e-6
"""Inside the square root of the end-point error, so that its gradient is finite where the fields agree."""


def field_distance(disp_vox: torch.Tensor, target_vox: torch.Tensor) -> torch.Tensor:
    """Mean end-point error ``mean_x sqrt(|disp(x) - target(x)|^2 + eps)`` in voxels.

    Args:
        disp_vox, target_vox: ``(B, ndim, *S)`` displacement fields in voxels, same shape.
    """
    check_disp(disp_vox, "disp_vox")
    check_disp(target_vox, "target_vox")
    if disp_vox.shape != target_vox.shape:
        raise ValueError(f"disp_vox {tuple(disp_vox.shape)} and target_vox {tuple(target_vox.shape)} differ in shape")
    squared = (disp_vox - target_vox.to(disp_vox.dtype)).pow(2).sum(dim=1)
    return torch.sqrt(squared + EPE_EPS).mean()
