"""The memory one registration needs, and a clear refusal before a run that cannot fit.

``register`` holds the inputs, the result's arrays on the fixed grid (warped image 4 bytes per voxel,
total and deformable displacement 12 + 12, Jacobian 4, warped labels 4) and works on slabs of
``resampling.CHUNK_VOXELS`` voxels for everything else, so its peak grows linearly with the voxel counts:
:func:`registration_memory_bytes` is that line, its slopes measured by ``deepreg-ablation bench --memory``
(docs/reliability.md, "Memory") with a margin. :func:`check_memory` compares it with the memory available
(``imageio.available_memory_bytes``) and raises :class:`InsufficientMemoryError` (a ``ValueError``: the
command line's ``error:`` line, exit status 2) naming what is needed and what is available, before any
large allocation, as ``imageio.read_image`` does for a header that declares more voxels than fit.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .. import geometry, imageio
from ..imageio import ImageData

__all__ = [
    "BASE_BYTES", "BYTES_PER_FIXED_VOXEL", "BYTES_PER_FIXED_LABEL_VOXEL", "BYTES_PER_MOVING_VOXEL",
    "BYTES_PER_REFINE_VOXEL", "BYTES_PER_SCENE_VOXEL", "InsufficientMemoryError", "registration_memory_bytes",
    "check_memory", "check_scene_memory",
]

BASE_BYTES = 1.0e9
"""The interpreter, PyTorch, a model, the slab buffers and the writers' threads (about 0.5 GB measured), with margin."""
BYTES_PER_FIXED_VOXEL = 48
"""Per voxel of the fixed image: the fixed image (up to 4), the result (32), the normalised slabs and margin."""
BYTES_PER_FIXED_LABEL_VOXEL = 24
"""Added per fixed voxel with label maps: fixed labels on the fixed grid (4), warped labels (4), the metrics."""
BYTES_PER_MOVING_VOXEL = 16
"""Per voxel of the moving image: the image, its normalised copy while the model grid is built, its window."""
BYTES_PER_REFINE_VOXEL = 400
"""Per voxel of the refinement's finest grid (images, velocity field, its integration and their gradients)."""
BYTES_PER_SCENE_VOXEL = 120
"""Per fixed voxel and result, added while the Slicer scene is built and saved (VTK copies of every volume and
field, measured about 110)."""


class InsufficientMemoryError(ValueError):
    """A registration that would need more memory than is available (nothing was computed)."""


def _voxels(image: ImageData) -> int:
    return int(np.prod(image.shape, dtype=np.int64))


def _finest_refine_voxels(fixed: ImageData, levels_mm: Sequence[float], min_factor: int) -> int:
    """Voxels of the refinement's finest level over the fixed image's extent (never finer than ``min_factor``
    fixed voxels per level voxel)."""
    if not levels_mm:
        return 0
    spacing = np.asarray(geometry.spacing_kji(fixed.ijk_to_ras), dtype=np.float64)
    extent_mm = spacing * np.asarray(fixed.shape, dtype=np.float64)
    level = np.maximum(float(min(levels_mm)), spacing * max(int(min_factor), 1))
    return int(np.prod(np.maximum(np.ceil(extent_mm / level), 1.0)))


def registration_memory_bytes(fixed: ImageData, moving: ImageData, labels: bool = False, refine=None) -> int:
    """About how many bytes ``register`` needs for this pair: :data:`BASE_BYTES` plus the per-voxel slopes
    (``refine``: a ``refine.RefineSchedule`` or ``None``)."""
    need = BASE_BYTES + _voxels(fixed) * (BYTES_PER_FIXED_VOXEL + (BYTES_PER_FIXED_LABEL_VOXEL if labels else 0))
    need += _voxels(moving) * BYTES_PER_MOVING_VOXEL
    if refine is not None:
        levels = tuple(refine.affine_levels_mm) + tuple(refine.deform_levels_mm)
        need += _finest_refine_voxels(fixed, levels, refine.min_factor) * BYTES_PER_REFINE_VOXEL
    return int(math.ceil(need))


def check_memory(fixed: ImageData, moving: ImageData, labels: bool = False, refine=None,
                 available: Optional[int] = None) -> int:
    """Raise :class:`InsufficientMemoryError` when :func:`registration_memory_bytes` exceeds ``available`` (default:
    ``imageio.available_memory_bytes``; nothing is checked where it cannot be found out). Returns the need."""
    need = registration_memory_bytes(fixed, moving, labels, refine)
    available = imageio.available_memory_bytes() if available is None else int(available)
    if available is not None and need > available:
        shape = "x".join(str(n) for n in fixed.shape[::-1])
        raise InsufficientMemoryError(
            f"registering the fixed image ({shape} voxels = {_voxels(fixed) / 1e6:.1f} M, "
            f"{'with label maps, ' if labels else ''}{'with refinement, ' if refine is not None else ''}moving "
            f"{_voxels(moving) / 1e6:.1f} M voxels) needs about {need / 1e9:.2g} GB of memory; "
            f"{available / 1e9:.2g} GB are available (nothing was computed): crop or downsample the images "
            f"(e.g. to 1 mm), close other programs, or use a machine with more memory"
        )
    return need


def check_scene_memory(fixed: ImageData, results: int, available: Optional[int] = None) -> int:
    """Raise :class:`InsufficientMemoryError` when building the Slicer scene of ``results`` results on ``fixed``'s grid
    (about :data:`BYTES_PER_SCENE_VOXEL` per voxel and result) does not fit in ``available`` (default: what is
    available now). Returns the need."""
    need = int(_voxels(fixed) * BYTES_PER_SCENE_VOXEL * max(int(results), 1))
    available = imageio.available_memory_bytes() if available is None else int(available)
    if available is not None and need > available:
        raise InsufficientMemoryError(
            f"the Slicer scene of {results} result(s) on {_voxels(fixed) / 1e6:.1f} M voxels needs about "
            f"{need / 1e9:.2g} GB more memory; {available / 1e9:.2g} GB are available (load the NIfTI and ITK files "
            f"into Slicer instead)"
        )
    return need
