"""The pyramid of the instance refinement: each level's grids, images and velocity control grid.

A level (:class:`PyramidLevel`) holds block means of the fixed image at about ``s`` mm cropped to its
foreground (the level grid), block means of the moving image at about the same spacing, and the
control grid of the velocity field (every other level voxel). It warps the moving level through a
mapping ``q(p) = A (p + u(p))`` and carries fields between its grids and RAS mm.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import fields, geometry, resampling
from ..imageio import ImageData

__all__ = ["REFINE_FOREGROUND", "PyramidLevel", "mapped_fraction"]

REFINE_FOREGROUND = 0.05
"""Each level's grid is the box of the fixed image's voxels above this normalised intensity, grown by
``REFINE_LNCC_WINDOW`` voxels (skull-stripped brains: a half to two thirds of the volume); the field
outside extends its border values."""


def _pooling_factors(image: ImageData, spacing_mm: float, ndim: int, min_factor: int = 1) -> Tuple[int, int, int]:
    """Integer block size per axis ``(k, j, i)`` that brings ``image`` closest to ``spacing_mm`` (>= ``min_factor``)."""
    factors = [max(int(min_factor), int(round(spacing_mm / s))) for s in image.spacing_kji]
    if ndim == 2:
        factors[0] = 1
    return tuple(min(f, n) for f, n in zip(factors, image.shape))


def _pooled(image: ImageData, factors: Sequence[int], ndim: int, device: torch.device) -> Tuple[torch.Tensor, np.ndarray]:
    """Block means of ``image`` -> ``((1, 1, *S) float32 tensor, (4, 4) ijk_to_ras)`` (a partial last block is
    the mean of its voxels, its centre taken as that of a full block)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32)).to(device)
    tensor = tensor[None, None] if ndim == 3 else tensor[0][None, None]
    kernel = tuple(factors)[-ndim:]
    if any(f > 1 for f in kernel):
        pool = torch.nn.functional.avg_pool3d if ndim == 3 else torch.nn.functional.avg_pool2d
        tensor = pool(tensor, kernel, kernel, ceil_mode=True)
    scale = np.eye(4)
    for axis_ijk, factor in enumerate(reversed(factors)):  # (i, j, k)
        scale[axis_ijk, axis_ijk] = factor
        scale[axis_ijk, 3] = (factor - 1) / 2.0
    return tensor.contiguous(), image.ijk_to_ras @ scale


def _crop_to_foreground(image: torch.Tensor, ijk_to_ras: np.ndarray, margin: int) -> Tuple[torch.Tensor, np.ndarray]:
    """``(1, 1, *S)`` image cropped to the box of its voxels above :data:`REFINE_FOREGROUND` grown by ``margin``
    voxels (the whole image when none is), and the ``(4, 4)`` of the cropped grid."""
    mask = image[0, 0] > REFINE_FOREGROUND
    if not bool(mask.any()):
        return image, ijk_to_ras
    ndim = mask.dim()
    slices, start = [], np.zeros(3)
    for axis in range(ndim):
        hits = torch.nonzero(mask.any(dim=tuple(a for a in range(ndim) if a != axis))).flatten()
        low = max(int(hits[0]) - margin, 0)
        high = min(int(hits[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(low, high))
        start[ndim - 1 - axis] = low  # (i, j[, k])
    shift = np.eye(4)
    shift[:3, 3] = start
    return image[(slice(None), slice(None)) + tuple(slices)].contiguous(), ijk_to_ras @ shift


class PyramidLevel:
    """One pyramid level: the pooled fixed image cropped to its foreground (its grid is the level's grid),
    the pooled moving image, and the control grid of the velocity field (every other level voxel).

    Args:
        fixed, moving: the images (normalised intensities).
        spacing_mm: the level's spacing; each image is pooled by the integer block closest to it.
        ndim: 2 (single-slice images) or 3.
        device: where the level's tensors live.
        cache: pooled images by ``(image, block size)``, shared by the levels of one refinement.
        min_factor: no block is smaller than this along an axis.
        margin: voxels added around the fixed image's foreground box (``refine``: the LNCC window).
    """

    def __init__(self, fixed: ImageData, moving: ImageData, spacing_mm: float, ndim: int, device: torch.device,
                 cache: Dict[Tuple[str, Tuple[int, ...]], Tuple[torch.Tensor, np.ndarray]], min_factor: int = 1,
                 margin: int = 0):
        self.ndim = ndim
        self.factors = _pooling_factors(fixed, spacing_mm, ndim, min_factor)
        self.spacing_mm = float(max(f * s for f, s in zip(self.factors, fixed.spacing_kji)))
        self.name = f"{self.spacing_mm:g}mm"
        moving_factors = _pooling_factors(moving, self.spacing_mm, ndim, min_factor)
        for key, image, factors in (("fixed", fixed, self.factors), ("moving", moving, moving_factors)):
            if (key, factors) not in cache:
                cache[(key, factors)] = _pooled(image, factors, ndim, device)
        self.fixed, self.grid_ijk_to_ras = _crop_to_foreground(*cache[("fixed", self.factors)], margin)
        self.moving, self.moving_ijk_to_ras = cache[("moving", moving_factors)]
        self.shape = tuple(self.fixed.shape[2:])
        self.identity = fields.identity_grid(self.shape, device=device)[None]
        axes = [2, 1, 0][3 - ndim:]  # ijk column / row of each tensor axis
        self._columns = np.concatenate([self.grid_ijk_to_ras[:, axes], self.grid_ijk_to_ras[:, 3:]], axis=1)  # (4, nd+1)
        moving_sizes = np.asarray(self.moving.shape[2:], dtype=np.float64)
        self._to_moving = (2.0 / np.maximum(moving_sizes - 1, 1))[:, None] * np.linalg.inv(self.moving_ijk_to_ras)[axes]
        self._device = device
        # the velocity field's grid: every other level voxel (align_corners: node c is level voxel c * scale)
        self.control_shape = tuple(max(2, (n + 1) // 2) if n > 1 else 1 for n in self.shape)
        scale = np.eye(4)
        for axis, (n, c) in enumerate(zip(self.shape[::-1], self.control_shape[::-1])):  # (i, j[, k])
            scale[axis, axis] = (n - 1) / max(c - 1, 1)
        self.control_ijk_to_ras = self.grid_ijk_to_ras @ scale

    def sampling_matrix(self, affine_ras: torch.Tensor) -> torch.Tensor:
        """``(nd, nd + 1)``: level voxel (tensor order, homogeneous) -> grid_sample coordinate of the moving level."""
        to_moving = torch.as_tensor(self._to_moving, dtype=affine_ras.dtype, device=affine_ras.device)
        columns = torch.as_tensor(self._columns, dtype=affine_ras.dtype, device=affine_ras.device)
        matrix = to_moving @ affine_ras @ columns
        offset = torch.zeros_like(matrix)
        offset[:, -1] = 1.0
        return (matrix - offset).to(torch.float32)

    def warp(self, affine_ras: torch.Tensor, disp_vox: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The moving level at ``affine_ras(p + u(p))`` on the level grid -> ``(warped (1, 1, *S), grid)``."""
        matrix = self.sampling_matrix(affine_ras)
        points = self.identity if disp_vox is None else self.identity + disp_vox
        nd = self.ndim
        coords = torch.einsum("ij,bj...->bi...", matrix[:, :nd], points) + matrix[:, nd].view(1, nd, *([1] * nd))
        grid = torch.movedim(coords.flip(1), 1, -1)
        warped = torch.nn.functional.grid_sample(self.moving, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return warped, grid

    def to_control_vox(self, field_ras: torch.Tensor, ijk_to_ras: np.ndarray) -> torch.Tensor:
        """A RAS mm field ``(3, K, J, I)`` on another grid -> ``(1, nd, *C)`` voxels of the control grid (border values extended)."""
        return self._resampled_vox(field_ras, ijk_to_ras, self.control_ijk_to_ras, self.control_shape)

    def to_level_vox(self, field_ras: torch.Tensor, ijk_to_ras: np.ndarray) -> torch.Tensor:
        """A RAS mm field ``(3, K, J, I)`` on another grid -> ``(1, nd, *S)`` voxels of the level grid (border values extended)."""
        return self._resampled_vox(field_ras, ijk_to_ras, self.grid_ijk_to_ras, self.shape)

    def level_to_ras(self, field_vox: torch.Tensor) -> torch.Tensor:
        """``(1, nd, *S)`` voxels of the level grid -> ``(3, K, J, I)`` RAS mm."""
        return geometry.disp_vox_to_ras(field_vox[0].detach().cpu(), self.grid_ijk_to_ras)

    def _resampled_vox(self, field_ras: torch.Tensor, ijk_to_ras: np.ndarray, target_ijk_to_ras: np.ndarray,
                       target_shape: Sequence[int]) -> torch.Tensor:
        volume_shape = tuple(target_shape) if self.ndim == 3 else (1,) + tuple(target_shape)
        on_target = resampling.resample_channels(
            field_ras.detach().cpu().numpy(), ijk_to_ras, target_ijk_to_ras, volume_shape, mode="linear", fill_value=None,
        )
        vox = geometry.disp_ras_to_vox(torch.from_numpy(on_target), target_ijk_to_ras, self.ndim)
        return vox[None].to(self._device)

    def control_to_ras(self, field_vox: torch.Tensor) -> torch.Tensor:
        """``(1, nd, *C)`` voxels of the control grid -> ``(3, K, J, I)`` RAS mm."""
        return geometry.disp_vox_to_ras(field_vox[0].detach().cpu(), self.control_ijk_to_ras)

    def to_level(self, field_vox: torch.Tensor) -> torch.Tensor:
        """Control-grid field (its voxels) -> the level grid (level voxels), trilinear (``fields.resize_field``)."""
        return fields.resize_field(field_vox, self.shape)


def mapped_fraction(grid: torch.Tensor) -> float:
    """Fraction of level voxels whose grid_sample coordinate falls inside the moving image."""
    return float((grid.abs() <= 1.0).all(dim=-1).float().mean())
