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
(``max |u|``) bounds every arrow drawn, and the colour ramps span it.
"""
from __future__ import annotations

import numpy as np

from .. import geometry

__all__ = ["ARROW_DIRECTION_TEXT", "INVERSE_ITERATIONS", "displayed_displacement_ras_mm", "longest_arrow_mm"]

ARROW_DIRECTION_TEXT = (
    "each arrow starts at a point of the moving image and points to where that point goes when the moving "
    "image is registered to the fixed one"
)
"""The one sentence that says what an arrow shows (help text, README, the snapshots' docstrings)."""

INVERSE_ITERATIONS = 30
"""Fixed-point iterations of :func:`displayed_displacement_ras_mm` (the residual falls geometrically where
the mapping is invertible: ``|grad u| < 1``)."""


def _field_sampler(disp_ras_mm: np.ndarray, ijk_to_ras: np.ndarray):
    """``points_ras (N, 3) -> u (N, 3)``: the field linear between voxels and its border value outside the grid
    (``geometry.sample_voxels`` without fill, float64; the field is converted once)."""
    import torch

    volume = torch.from_numpy(np.ascontiguousarray(np.moveaxis(disp_ras_mm, -1, 0), dtype=np.float64))
    ras_to_ijk = np.linalg.inv(ijk_to_ras)

    def field_at(points_ras: np.ndarray) -> np.ndarray:
        kji = torch.from_numpy(np.ascontiguousarray(geometry.apply_affine(points_ras, ras_to_ijk)[:, ::-1].T))
        return geometry.sample_voxels(volume, kji, "linear", fill_value=None).numpy().T

    return field_at


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
    disp_ras_mm = np.asarray(disp_ras_mm, dtype=np.float64)
    if disp_ras_mm.ndim != 4 or disp_ras_mm.shape[-1] != 3:
        raise ValueError(f"disp_ras_mm must be (K, J, I, 3), got shape {disp_ras_mm.shape}")
    matrix = geometry.validate_ijk_to_ras(ijk_to_ras, "ijk_to_ras")
    points = np.asarray(points_ras, dtype=np.float64)
    if points.ndim < 1 or points.shape[-1] != 3:
        raise ValueError(f"points_ras must have shape (..., 3), got {points.shape}")
    flat = points.reshape(-1, 3)
    field_at = _field_sampler(disp_ras_mm, matrix)
    arrows = -field_at(flat)
    for _ in range(max(0, int(iterations) - 1)):
        arrows = -field_at(flat + arrows)
    return arrows.reshape(points.shape)


def longest_arrow_mm(disp_ras_mm: np.ndarray) -> float:
    """``max |u|`` (mm): no arrow drawn is longer (``|v(x)| = |u(x + v(x))|``); 0 for an empty field."""
    magnitude = np.linalg.norm(np.asarray(disp_ras_mm, dtype=np.float64), axis=-1)
    return float(magnitude.max()) if magnitude.size else 0.0
