"""What the displacement arrows show, the same in Slicer's views, the PNG snapshots and the help text.

A result's grid transform is stored *from parent*: fixed point ``p`` -> moving point ``T(p) = p + u(p)``
(``disp_ras_mm``, the resampling direction: put the moving volume under it and it is aligned to the fixed
one). Slicer draws a transform's glyphs for the transform *to world*, ``T^-1``
(``vtkSlicerTransformLogic::GetGlyphVisualization2d`` / ``3d`` -> ``GetTransformedPointSamples(...,
transformToWorld=true)``, Slicer v5.8.0 and main): its arrow at a point ``x`` is ``v(x) = T^-1(x) - x``.
That is the motion of the moving image: the moving image's content at ``x`` lands at ``x + v(x)`` once
the image is registered (:data:`ARROW_DIRECTION_TEXT`, the words of the help text and the README).
The snapshots draw the same ``v`` (:func:`displayed_displacement_ras_mm`), so they and Slicer agree.

``v(x) = -u(x + v(x))``, so every arrow is as long as ``|u|`` somewhere: :func:`longest_arrow_mm`
(``max |u|``) bounds every arrow drawn, and the colour ramps span it. It also bounds where the arrows' fixed-point
iterations sample ``u``: only the part of the field within that reach of the points is read (in float64), so a
snapshot of a large result holds no float64 copy of its whole field (the memory of ``registration.memory``).
"""
from __future__ import annotations

import math

import numpy as np

from .. import geometry, resampling

__all__ = ["ARROW_DIRECTION_TEXT", "INVERSE_ITERATIONS", "displayed_displacement_ras_mm", "longest_arrow_mm"]

ARROW_DIRECTION_TEXT = (
    "each arrow starts at a point of the moving image and points to where that point goes when the moving "
    "image is registered to the fixed one"
)
"""The one sentence that says what an arrow shows (help text, README, the snapshots' docstrings)."""

INVERSE_ITERATIONS = 30
"""Fixed-point iterations of :func:`displayed_displacement_ras_mm` (the residual falls geometrically where
the mapping is invertible: ``|grad u| < 1``)."""


def _field_sampler(disp_ras_mm: np.ndarray, ijk_to_ras: np.ndarray, box):
    """``points_ras (N, 3) -> u (N, 3)``: the field linear between voxels and its border value outside the grid
    (``resampling.sample_voxels`` without fill, float64), from the part ``box`` (``((k0, k1), (j0, j1), (i0, i1))``)
    of the field only (converted once), which must hold every voxel the points need."""
    import torch

    (k0, k1), (j0, j1), (i0, i1) = box
    part = disp_ras_mm[k0:k1, j0:j1, i0:i1]
    volume = torch.from_numpy(np.ascontiguousarray(np.moveaxis(part, -1, 0), dtype=np.float64))
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    start_kji = np.array([k0, j0, i0], dtype=np.float64)[:, None]

    def field_at(points_ras: np.ndarray) -> np.ndarray:
        kji = geometry.apply_affine(points_ras, ras_to_ijk)[:, ::-1].T - start_kji
        return resampling.sample_voxels(volume, torch.from_numpy(np.ascontiguousarray(kji)), "linear",
                                      fill_value=None).numpy().T

    return field_at


def _reachable_box(points_ras: np.ndarray, shape_kji, ijk_to_ras: np.ndarray, reach_mm: float):
    """``((k0, k1), (j0, j1), (i0, i1))``: the voxels of a grid ``shape_kji`` that linear interpolation at points
    up to ``reach_mm`` from ``points_ras`` (``(N, 3)``) can touch (the whole grid when that is not finite)."""
    whole = tuple((0, int(n)) for n in shape_kji)
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    ijk = geometry.apply_affine(points_ras, ras_to_ijk)
    if not (len(ijk) and math.isfinite(reach_mm) and np.all(np.isfinite(ijk))):
        return whole
    margin = np.linalg.norm(ras_to_ijk[:3, :3], axis=1) * reach_mm + 2.0  # voxels; the interpolation's neighbours
    low, high = np.floor(ijk.min(axis=0) - margin), np.ceil(ijk.max(axis=0) + margin)
    box = []
    for axis_kji, n in enumerate(shape_kji):  # ijk holds (i, j, k): axis 2 - axis_kji
        start = int(np.clip(low[2 - axis_kji], 0, int(n) - 1))
        box.append((start, int(np.clip(high[2 - axis_kji] + 1, start + 1, int(n)))))
    return tuple(box)


def displayed_displacement_ras_mm(points_ras: np.ndarray, disp_ras_mm: np.ndarray, ijk_to_ras: np.ndarray,
                                  iterations: int = INVERSE_ITERATIONS) -> np.ndarray:
    """Slicer's arrow at each point: ``v(x) = T^-1(x) - x`` for ``T(p) = p + u(p)``, in RAS mm.

    Args:
        points_ras: ``(..., 3)`` RAS mm, where the arrows start.
        disp_ras_mm: ``(K, J, I, 3)`` the stored field ``u`` (RAS components, mm) on the grid ``ijk_to_ras``.
        ijk_to_ras: ``(4, 4)`` of that grid.
        iterations: fixed-point iterations ``v <- -u(x + v)`` (``u`` linear between voxels, its border value
            outside the grid, as VTK's grid transforms extend it).

    Returns:
        ``(..., 3)`` float64: where the moving image's content at each point goes, minus the point.
    """
    disp_ras_mm = np.asarray(disp_ras_mm)  # sampled in float64 near the points only (no float64 copy of the field)
    if disp_ras_mm.ndim != 4 or disp_ras_mm.shape[-1] != 3:
        raise ValueError(f"disp_ras_mm must be (K, J, I, 3), got shape {disp_ras_mm.shape}")
    matrix = geometry.validate_ijk_to_ras(ijk_to_ras, "ijk_to_ras")
    points = np.asarray(points_ras, dtype=np.float64)
    if points.ndim < 1 or points.shape[-1] != 3:
        raise ValueError(f"points_ras must have shape (..., 3), got {points.shape}")
    flat = points.reshape(-1, 3)
    box = _reachable_box(flat, disp_ras_mm.shape[:3], matrix, longest_arrow_mm(disp_ras_mm))  # |v| <= max |u|
    field_at = _field_sampler(disp_ras_mm, matrix, box)
    arrows = -field_at(flat)
    for _ in range(max(0, int(iterations) - 1)):
        arrows = -field_at(flat + arrows)
    return arrows.reshape(points.shape)


def longest_arrow_mm(disp_ras_mm: np.ndarray) -> float:
    """``max |u|`` (mm): no arrow drawn is longer (``|v(x)| = |u(x + v(x))|``); 0 for an empty field. The lengths
    are computed slab by slab (``resampling.slabs``, float64), without a copy of the whole field."""
    disp = np.asarray(disp_ras_mm)
    if disp.size == 0:
        return 0.0
    if disp.ndim < 2:
        return float(np.linalg.norm(disp.astype(np.float64)))
    return float(np.max([np.linalg.norm(disp[k0:k1].astype(np.float64), axis=-1).max()
                         for k0, k1 in resampling.slabs(disp.shape[:-1])]))
