"""The model grid: the physical grid the network sees (its spacing, shape and axes).

From a checkpoint's ``preprocessing`` ``{"spacing_mm", "shape", "orientation"}`` (tensor axis order),
or, without that metadata, the fixed image's spacing and extent padded up to the network's size
multiple. ``geometry.model_grid_for`` places the grid (centred on the fixed image).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from .. import geometry
from ..imageio import ImageData

__all__ = ["model_size_multiple", "model_orientation", "model_grid_spec"]


def model_size_multiple(model: torch.nn.Module) -> int:
    """Every spatial size of the model's input must be a multiple of this: its ``size_multiple``, else
    ``2 ** len(arch["enc_features"])`` (``2 ** 4`` without an ``arch``)."""
    multiple = getattr(model, "size_multiple", None)
    if multiple is None:
        arch = getattr(model, "arch", {}) or {}
        multiple = 2 ** len(arch.get("enc_features", (0,) * 4))
    return int(multiple)


def model_orientation(preprocessing: Optional[dict], ndim: int) -> str:
    """Axes of the model grid (``geometry.MODEL_ORIENTATIONS``) a checkpoint's ``preprocessing`` asks for.

    ``"RAS"`` for a 3D model whose ``preprocessing["orientation"]`` is ``"RAS"`` (trained on
    volumes reoriented to RAS); ``"native"`` otherwise: 2D models keep the image axes in
    training and in use, and checkpoints without the entry predate it.
    """
    orientation = (preprocessing or {}).get("orientation")
    if orientation is None:
        return "native"
    if orientation not in geometry.MODEL_ORIENTATIONS:
        raise ValueError(
            f"checkpoint preprocessing orientation must be one of {list(geometry.MODEL_ORIENTATIONS)}, got {orientation!r}"
        )
    return "RAS" if orientation == "RAS" and int(ndim) == 3 else "native"


def model_grid_spec(
    fixed: ImageData, ndim: int, size_multiple: int, preprocessing: Optional[dict] = None
) -> Tuple[List[float], List[int]]:
    """Model spacing (mm) and shape in tensor axis order (``ndim`` entries each).

    From ``preprocessing["spacing_mm"]`` / ``["shape"]`` when given (``None`` entries fall back);
    the default spacing is the fixed spacing, the default shape covers the fixed image's extent
    at that spacing, padded up to a multiple of ``size_multiple``. Both are taken along the
    model grid's axes (:func:`model_orientation`: for ``"RAS"`` those of the fixed image's
    closest-RAS view).
    """
    preprocessing = preprocessing or {}
    fixed_spacing = list(fixed.spacing_kji)[-ndim:]
    fixed_shape = list(fixed.shape)[-ndim:]
    if model_orientation(preprocessing, ndim) == "RAS":
        view_matrix, view_shape = geometry.closest_ras_view(fixed.ijk_to_ras, fixed.shape)
        fixed_spacing, fixed_shape = list(geometry.spacing_kji(view_matrix)), list(view_shape)
    spacing = preprocessing.get("spacing_mm")
    spacing = fixed_spacing if spacing is None else [float(s) for s in spacing]
    if len(spacing) != ndim:
        raise ValueError(f"checkpoint preprocessing spacing_mm {spacing} does not have {ndim} entries for a {ndim}D model")
    shape = preprocessing.get("shape")
    if shape is None:
        extent = [n * s / m for n, s, m in zip(fixed_shape, fixed_spacing, spacing)]
        shape = [int(-(-int(np.ceil(e - 1e-6)) // size_multiple) * size_multiple) for e in extent]
    shape = [int(n) for n in shape]
    if len(shape) != ndim:
        raise ValueError(f"checkpoint preprocessing shape {shape} does not have {ndim} entries for a {ndim}D model")
    return spacing, shape
