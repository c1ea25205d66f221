"""Displacement regularizers ``fn(disp_vox)``: :func:`grad_l2`, :func:`grad_l1`, :func:`bending_energy`,
:func:`displacement_hinge`, :func:`local_rigidity`, :func:`jacobian_penalty`.

They work on voxel-unit fields ``disp_vox`` ``(B, ndim, *S)`` (channel ``i`` moves along tensor axis
``i``), so their scale does not depend on the image size (a "10 voxel" hinge threshold means 10
voxels). Passing ``spacing`` (mm per voxel, tensor axis order) converts the field to mm and
differentiates on the mm grid.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .. import fields
from .checks import Spacing, check_disp

__all__ = ["grad_l2", "grad_l1", "bending_energy", "displacement_hinge", "local_rigidity", "jacobian_penalty"]


def _to_mm(disp_vox: torch.Tensor, spacing: Spacing) -> Tuple[torch.Tensor, Tuple[float, ...]]:
    """Field in mm (channel ``i`` times ``spacing[i]``) and the spacing tuple (all 1 without spacing)."""
    ndim = disp_vox.shape[1]
    sp = fields.spacing_tuple(spacing, ndim)
    if spacing is None:
        return disp_vox, sp
    scale = torch.tensor(sp, dtype=disp_vox.dtype, device=disp_vox.device).view(1, ndim, *([1] * ndim))
    return disp_vox * scale, sp


def _central_interior(field: torch.Tensor, spacing: Tuple[float, ...]) -> torch.Tensor:
    """First derivatives ``(B, C, ndim, *S-2)`` by central differences on interior voxels."""
    grad = fields.spatial_gradient(field, spacing)
    inner = (slice(None),) * 3 + (slice(1, -1),) * (field.dim() - 2)
    return grad[inner]


def grad_l2(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Diffusion regularizer: mean over batch, channels and interior voxels of ``sum_j (du_i/dx_j)^2``.

    Central differences on the interior voxels (the border ring, where only one-sided
    differences exist, is left out), i.e. exactly MONAI ``DiffusionLoss(normalize=False)``
    (voxelmorph ``Grad('l2')`` uses forward differences and averages over axes instead).
    With ``spacing`` the field is converted to mm and differentiated on the mm grid
    (dimensionless strain). Needs >= 3 voxels per axis.
    """
    check_disp(disp_vox, min_size=3)
    field, sp = _to_mm(disp_vox, spacing)
    return torch.mean(torch.sum(_central_interior(field, sp) ** 2, dim=2))


def grad_l1(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Total-variation-like regularizer: as :func:`grad_l2` with ``|du_i/dx_j|`` instead of squares."""
    check_disp(disp_vox, min_size=3)
    field, sp = _to_mm(disp_vox, spacing)
    return torch.mean(torch.sum(torch.abs(_central_interior(field, sp)), dim=2))


def _second_difference(field: torch.Tensor, axis: int) -> torch.Tensor:
    """Compact pure second difference ``u[i+1] - 2u[i] + u[i-1]`` along spatial ``axis``, interior voxels."""
    dim = axis + 2
    n = field.shape[dim]
    d2 = field.narrow(dim, 2, n - 2) - 2 * field.narrow(dim, 1, n - 2) + field.narrow(dim, 0, n - 2)
    for other in range(2, field.dim()):  # crop the remaining axes to the interior too
        if other != dim:
            d2 = d2.narrow(other, 1, field.shape[other] - 2)
    return d2


def bending_energy(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Bending energy ``sum_ij (d2u/dx_i dx_j)^2`` (cross terms twice), mean over batch, channels, interior voxels.

    Pure second derivatives use the compact ``[1, -2, 1]`` stencil; mixed ones the 4-point
    central stencil (central difference of a central difference). This is exactly MONAI
    ``BendingEnergyLoss(normalize=False)``. With ``spacing`` the field is in mm and the
    derivatives divide by ``s_i s_j``. Needs >= 3 voxels per axis.
    """
    ndim = check_disp(disp_vox, min_size=3)
    field, sp = _to_mm(disp_vox, spacing)
    first = fields.spatial_gradient(field, sp)  # (B, C, ndim, *S): central inside
    energy = 0.0
    for i in range(ndim):
        energy = energy + (_second_difference(field, i) / sp[i] ** 2) ** 2
        for j in range(i + 1, ndim):
            mixed = fields.spatial_gradient(first[:, :, i], sp)[:, :, j]
            mixed = mixed[(slice(None),) * 2 + (slice(1, -1),) * ndim]
            energy = energy + 2.0 * mixed**2
    return torch.mean(energy)


def displacement_hinge(disp_vox: torch.Tensor, threshold_vox: float = 10.0) -> torch.Tensor:
    """Magnitude hinge ``mean(relu(|u| - threshold_vox)^2)``, ``|u|`` the per-voxel Euclidean norm in voxels.

    Zero while every displacement is at most ``threshold_vox`` voxels; quadratic above.
    """
    check_disp(disp_vox, min_size=1)
    if not threshold_vox >= 0:
        raise ValueError(f"threshold_vox must be >= 0, got {threshold_vox}")
    # clamp_min keeps sqrt's gradient finite at u = 0 (the hinge is flat there anyway)
    norm = torch.sqrt(torch.sum(disp_vox**2, dim=1).clamp_min(1e-12))
    return torch.mean(F.relu(norm - threshold_vox) ** 2)


def local_rigidity(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Local rigidity penalty ``mean ||J^T J - I||_F^2`` (orthonormality condition).

    ``J = I + grad u`` (``fields.jacobian_matrix``, central differences, one-sided at the
    border). ``J^T J = I`` exactly when the local map is a rotation (or reflection -- folds
    are the Jacobian penalty's job), so the penalty is zero for rigid motion, grows with
    local stretch/shear, and does not penalise translation or rotation as ``grad_l2`` does.
    """
    ndim = check_disp(disp_vox)
    jac = fields.jacobian_matrix(disp_vox, spacing)  # (B, i, j, *S)
    penalty = 0.0
    for i in range(ndim):  # (J^T J)_ij = sum_k J_ki J_kj, symmetric: off-diagonal terms count twice
        for j in range(i, ndim):
            gram_ij = torch.sum(jac[:, :, i] * jac[:, :, j], dim=1)
            term = (gram_ij - 1.0) ** 2 if i == j else 2.0 * gram_ij**2
            penalty = penalty + term
    return torch.mean(penalty)


def jacobian_penalty(disp_vox: torch.Tensor, eps: float = 0.01, spacing: Spacing = None) -> torch.Tensor:
    """Folding penalty ``mean(relu(eps - det J))`` with ``det J`` from ``fields.jacobian_determinant``.

    No clamp of ``det J`` before the relu: every voxel with ``det J < eps`` (folded, or
    nearly so) has gradient ``-1/N`` w.r.t. its determinant, pushing it back to positive.
    The small margin ``eps`` keeps a non-zero push at ``det J = 0`` exactly.
    """
    check_disp(disp_vox)
    det = fields.jacobian_determinant(disp_vox, spacing)
    return torch.mean(F.relu(eps - det))
