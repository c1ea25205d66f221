"""Resampling between physical grids: values of a volume at continuous indices, at RAS points, on another grid.

Grids and their conventions are :mod:`.geometry`'s (``ijk_to_ras``, volume shape ``(K, J, I)``).
Sampling follows ITK's convention (so results compare with ``sitk.Resample``): a continuous index ``c`` is
inside an axis of ``n`` voxels when ``-0.5 <= c < n - 0.5``; inside, linear interpolation clamps to the border
voxels; outside, the value is ``fill_value``. Whole-grid work runs on slabs along the first array axis
(:func:`slabs`), so its working memory does not grow with the image.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import fields
from .geometry import ArrayLike, affine_on_grid, apply_affine, shape3, validate_ijk_to_ras

_SNAP_TOLERANCE_VOX = 1e-8  # continuous float64 indices this close to an integer are exact grid points
_SNAP_TOLERANCE_VOX_FLOAT32 = 5e-5  # the same for float32 indices (one float32 step at index 256 is 1.5e-5)
_CHUNK_POINTS = 1 << 21  # sampling works on chunks of ~2M points to bound memory
CHUNK_VOXELS = 1 << 21
"""Whole-grid work (resampling here, the full-resolution steps of ``registration.pipeline``, the metrics) runs
on slabs of about this many voxels along the first array axis (:func:`slabs`), so that its working memory does
not grow with the image; a volume of at most this size is one slab."""


# --------------------------------------------------------------------------- sampling
def _snap_tolerance(dtype: torch.dtype) -> float:
    """Continuous indices this close to an integer are grid points (exact values)."""
    return _SNAP_TOLERANCE_VOX if dtype == torch.float64 else _SNAP_TOLERANCE_VOX_FLOAT32


def sample_voxels(
    volume: torch.Tensor, coords_kji: torch.Tensor, mode: str = "linear", fill_value: Optional[float] = 0.0
) -> torch.Tensor:
    """Sample a ``(C, K, J, I)`` volume at continuous voxel indices, with ITK semantics.

    The one sampling routine of this module: linear (clamped to the border voxels inside the
    image) or nearest, ``fill_value`` outside (``-0.5 <= c < n - 0.5`` is inside), or the border
    values everywhere when ``fill_value`` is ``None`` (fields have no outside). Indices within
    the snap tolerance of an integer (1e-8 voxel in float64, 5e-5 in float32) are grid points and
    return the voxel values exactly. Works on chunks of ~2M points to bound memory.

    Args:
        volume: ``(C, K, J, I)``: a float tensor for linear (its dtype is the computation's); any dtype for nearest
            (the values are read by index, not interpolated).
        coords_kji: ``(3, *out)`` continuous indices ``(k, j, i)`` into ``volume``.
        mode: ``"linear"`` or ``"nearest"``.

    Returns:
        ``(C, *out)`` in ``volume.dtype``.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    if volume.dim() != 4 or coords_kji.shape[0] != 3:
        raise ValueError(f"volume must be (C, K, J, I) and coords_kji (3, ...), got {tuple(volume.shape)}, {tuple(coords_kji.shape)}")
    out_shape = tuple(coords_kji.shape[1:])
    if mode == "nearest":
        return _nearest_voxels(volume, coords_kji.reshape(3, -1), fill_value).reshape((volume.shape[0],) + out_shape)
    flat = coords_kji.reshape(3, -1).to(volume.dtype)
    sizes = volume.shape[1:]
    tolerance = _snap_tolerance(volume.dtype)
    out = torch.empty((volume.shape[0], flat.shape[1]), dtype=volume.dtype)
    for start in range(0, flat.shape[1], _CHUNK_POINTS):
        chunk = flat[:, start : start + _CHUNK_POINTS]
        nearest = torch.round(chunk)
        chunk = torch.where((chunk - nearest).abs_() < tolerance, nearest, chunk)
        values = fields.sample(volume[None], chunk[None, :, :, None, None], mode="bilinear", padding="border")
        values = values.reshape(volume.shape[0], -1)
        if fill_value is not None:
            inside = torch.ones(chunk.shape[1], dtype=torch.bool)
            for axis in range(3):
                inside &= (chunk[axis] >= -0.5) & (chunk[axis] < sizes[axis] - 0.5)
            values = torch.where(inside[None], values, torch.tensor(float(fill_value), dtype=values.dtype))
        out[:, start : start + chunk.shape[1]] = values
    return out.reshape((volume.shape[0],) + out_shape)


def _nearest_voxels(volume: torch.Tensor, coords_kji: torch.Tensor, fill_value: Optional[float]) -> torch.Tensor:
    """:func:`sample_voxels`'s nearest mode: ``(C, N)`` values of the voxels nearest to ``(3, N)`` continuous indices
    (each index rounded half to even, as ``grid_sample``'s nearest mode; the border voxel beyond the border), read
    by index, so that values of any dtype are copied exactly; ``fill_value`` outside (``-0.5 <= c < n - 0.5`` inside)."""
    sizes = volume.shape[1:]
    values = volume.reshape(volume.shape[0], -1)
    out = torch.empty((volume.shape[0], coords_kji.shape[1]), dtype=volume.dtype)
    for start in range(0, coords_kji.shape[1], _CHUNK_POINTS):
        chunk = coords_kji[:, start : start + _CHUNK_POINTS]
        flat_index = torch.zeros(chunk.shape[1], dtype=torch.int64)
        inside = torch.ones(chunk.shape[1], dtype=torch.bool)
        for axis in range(3):
            if fill_value is not None:
                inside &= (chunk[axis] >= -0.5) & (chunk[axis] < sizes[axis] - 0.5)
            index = torch.round(chunk[axis]).clamp_(0, sizes[axis] - 1).nan_to_num_(0.0).to(torch.int64)
            flat_index = flat_index.mul_(sizes[axis]).add_(index)
        picked = values[:, flat_index]
        if fill_value is not None:
            picked = torch.where(inside[None], picked, torch.tensor(fill_value).to(volume.dtype))
        out[:, start : start + chunk.shape[1]] = picked
    return out


def _volume_tensor(volume: np.ndarray, mode: str) -> torch.Tensor:
    """Channels ``(C, K, J, I)`` as the sampling dtype: float32 for linear; for nearest (values copied exactly),
    int64 for integer volumes and float64 otherwise."""
    dtype = np.float32 if mode == "linear" else np.int64 if volume.dtype.kind in "biu" else np.float64
    return torch.from_numpy(np.ascontiguousarray(volume, dtype=dtype))


def _sample_channels(
    volume: np.ndarray, ijk_to_ras: np.ndarray, points_ras: np.ndarray, mode: str, fill_value: Optional[float]
) -> np.ndarray:
    """Sample a ``(C, K, J, I)`` volume at ``(N, 3)`` RAS points -> ``(N, C)`` float64.

    The points are mapped to voxel indices in float64 and sampled by :func:`sample_voxels` in
    float64, so grid points are exact. ``fill_value=None`` extends the border values everywhere.
    """
    inverse = np.linalg.inv(validate_ijk_to_ras(ijk_to_ras))
    image = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float64))
    out = np.empty((points_ras.shape[0], volume.shape[0]), dtype=np.float64)
    for start in range(0, points_ras.shape[0], _CHUNK_POINTS):
        chunk = points_ras[start : start + _CHUNK_POINTS]
        coords = torch.from_numpy(np.ascontiguousarray(apply_affine(chunk, inverse)[:, ::-1].T))  # (3, N) (k, j, i)
        out[start : start + chunk.shape[0]] = sample_voxels(image, coords, mode, fill_value).numpy().T
    return out


def _points(points_ras: np.ndarray) -> np.ndarray:
    points_ras = np.asarray(points_ras, dtype=np.float64)
    if points_ras.ndim < 1 or points_ras.shape[-1] != 3:
        raise ValueError(f"points_ras must have shape (..., 3), got {points_ras.shape}")
    return points_ras


def sample_at_ras(
    array: ArrayLike,
    ijk_to_ras: ArrayLike,
    points_ras: np.ndarray,
    mode: str = "linear",
    fill_value: float = 0.0,
) -> np.ndarray:
    """Sample a ``(K, J, I)`` image at RAS points ``(..., 3)`` (ITK semantics, see module docstring).

    Args:
        array: the image on its own grid.
        ijk_to_ras: ``(4, 4)`` of that grid.
        points_ras: ``(..., 3)`` RAS mm.
        mode: ``"linear"`` or ``"nearest"`` (label maps; the dtype is kept).
        fill_value: value outside the image.

    Returns:
        ``(...)``: float32 for linear, ``array.dtype`` for nearest. Points on grid points return
        the voxel values exactly.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    shape3(array.shape, "array shape")
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    points_ras = _points(points_ras)
    values = _sample_channels(array[None], ijk_to_ras, points_ras.reshape(-1, 3), mode, float(fill_value))
    values = values[:, 0].reshape(points_ras.shape[:-1])
    return values.astype(array.dtype) if mode == "nearest" else values.astype(np.float32)


def resample_to_grid(
    array: ArrayLike,
    src_ijk_to_ras: ArrayLike,
    dst_ijk_to_ras: ArrayLike,
    dst_shape: Sequence[int],
    mode: str = "linear",
    fill_value: float = 0.0,
) -> np.ndarray:
    """Resample an image onto another physical grid (any spacing, orientation, oblique).

    ``out[k, j, i] = array(src^-1 @ dst @ (i, j, k))`` with ITK semantics (:func:`resample_channels`:
    voxels copied when the grids share their lattice, float32 linear interpolation otherwise).

    Args:
        array: ``(K, J, I)`` on the source grid ``src_ijk_to_ras``.
        dst_ijk_to_ras: ``(4, 4)`` destination grid; ``dst_shape``: its ``(K', J', I')``.
        mode: ``"linear"`` (float32 out) or ``"nearest"`` (dtype kept).

    Returns:
        ``(K', J', I')``; identical grids reproduce ``array`` exactly.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    shape3(array.shape, "array shape")
    return resample_channels(array[None], src_ijk_to_ras, dst_ijk_to_ras, dst_shape, mode, fill_value)[0]


# --------------------------------------------------------------------------- whole grids (the pipeline's fast path)
def slabs(shape: Sequence[int], chunk_voxels: Optional[int] = None) -> List[Tuple[int, int]]:
    """``[(k0, k1), ...]``: consecutive ranges of the first axis of a ``(K, ...)`` grid covering it, each of about
    ``chunk_voxels`` voxels (default :data:`CHUNK_VOXELS`; at least one slice per slab)."""
    shape = tuple(int(n) for n in shape)
    per_slice = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    step = max(1, int(chunk_voxels or CHUNK_VOXELS) // per_slice)
    return [(k0, min(k0 + step, shape[0])) for k0 in range(0, shape[0], step)]


def index_map(src_ijk_to_ras: ArrayLike, dst_ijk_to_ras: ArrayLike) -> np.ndarray:
    """``(4, 4)`` destination voxel ``(i, j, k)`` -> source continuous voxel ``(i, j, k)``: ``src^-1 @ dst``."""
    src = validate_ijk_to_ras(src_ijk_to_ras, "src_ijk_to_ras")
    dst = validate_ijk_to_ras(dst_ijk_to_ras, "dst_ijk_to_ras")
    return np.linalg.inv(src) @ dst


def _exact_index_view(
    volume: np.ndarray, matrix: np.ndarray, dst_shape: Tuple[int, int, int], fill_value: Optional[float],
    k_range: Optional[Tuple[int, int]] = None,
) -> Optional[np.ndarray]:
    """Copy voxels when every destination voxel IS a source voxel (no interpolation), else ``None``.

    That is the case when ``matrix`` (destination ``ijk`` -> source ``ijk``) is a signed
    permutation with an integer offset: same spacing, axes permuted or flipped, shifted by whole
    voxels (e.g. a volume and its closest-RAS view, or a crop / pad). Outside the source:
    ``fill_value``, or the nearest border voxel when ``None``. ``k_range``: only the destination
    slices ``k0 <= k < k1``.
    """
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    signs = np.round(linear)
    if (np.abs(linear - signs).max() > 1e-9 or np.abs(offset - np.round(offset)).max() > 1e-6
            or not np.all(np.abs(signs).sum(axis=0) == 1) or not np.all(np.abs(signs).sum(axis=1) == 1)):
        return None
    ranges = [(0, n) for n in dst_shape]
    if k_range is not None:
        ranges[0] = (int(k_range[0]), int(k_range[1]))
    axes, indices = [], []
    for dst_axis in (2, 1, 0):  # destination array axes k, j, i
        src_axis = int(np.argmax(np.abs(signs[:, dst_axis])))
        axes.append(3 - src_axis)  # array axis of the source (channel axis first)
        first, last = ranges[2 - dst_axis]
        index = signs[src_axis, dst_axis] * np.arange(first, last) + np.round(offset[src_axis])
        indices.append(index.astype(np.int64))
    out = np.transpose(volume, [0] + axes)
    sizes = out.shape[1:]
    for axis, index in enumerate(indices):
        if len(index) != sizes[axis] or np.any(index != np.arange(sizes[axis])):  # else: this axis is unchanged
            out = np.take(out, index, axis=axis + 1, mode="clip")
    if np.shares_memory(out, volume):
        out = out.copy()  # never hand back the caller's own array
    if fill_value is not None:
        for axis, index in enumerate(indices):
            outside = (index < 0) | (index >= sizes[axis])
            if outside.any():
                where = [slice(None)] * 4
                where[axis + 1] = outside
                out[tuple(where)] = fill_value
    return np.ascontiguousarray(out)


def _linear_weights(coords: np.ndarray, size: int) -> torch.Tensor:
    """``(len(coords), size)`` float32 weights of linear interpolation along one axis at continuous indices
    ``coords`` (float64), the border values beyond the border; an index within the snap tolerance of an integer
    takes that voxel alone (weight exactly 1)."""
    coords = np.clip(coords, 0.0, size - 1.0)
    nearest = np.round(coords)
    coords = np.where(np.abs(coords - nearest) < _SNAP_TOLERANCE_VOX, nearest, coords)
    low = np.minimum(np.floor(coords), size - 1).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    frac = coords - low
    weights = np.zeros((len(coords), size), dtype=np.float64)
    rows = np.arange(len(coords))
    weights[rows, low] += 1.0 - frac
    weights[rows, high] += frac
    return torch.from_numpy(weights.astype(np.float32))


def _separable_linear(volume: np.ndarray, matrix: np.ndarray, dst_shape: Tuple[int, int, int],
                      k_range: Tuple[int, int]) -> Optional[np.ndarray]:
    """:func:`resample_channels`'s linear resampling with the border values beyond the border (``fill_value=None``,
    fields), as three one-axis interpolations, when ``matrix`` (destination ``ijk`` -> source ``ijk``) maps each
    destination axis onto one source axis (axes scaled, permuted or flipped, as between a volume's grid and an
    axis-aligned model grid), else ``None``. The trilinear weights are the product of the three axes' weights, as
    in :func:`sample_voxels`; the result agrees with it to float32 rounding, at a fraction of its cost on a fine grid.
    Only the destination slices ``k0 <= k < k1`` of ``k_range``."""
    linear = matrix[:3, :3]
    scale = np.abs(linear).max()
    support = np.abs(linear) > 1e-9 * scale
    if not (np.all(support.sum(axis=0) == 1) and np.all(support.sum(axis=1) == 1)):
        return None
    out = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))  # (C, K, J, I) of the source
    ranges = [(0, dst_shape[2]), (0, dst_shape[1]), (int(k_range[0]), int(k_range[1]))]  # destination i, j, k
    position = [0, 0, 0]  # where each destination axis (i, j, k) ends up in ``out``
    for dst_axis in (2, 1, 0):  # k first: the slab's few slices keep the intermediate arrays small
        src_axis = int(np.argmax(support[:, dst_axis]))
        coords = linear[src_axis, dst_axis] * np.arange(*ranges[dst_axis], dtype=np.float64) + matrix[src_axis, 3]
        weights = _linear_weights(coords, volume.shape[3 - src_axis])  # (destination voxels, source voxels)
        position[dst_axis] = 3 - src_axis  # the source axis's place in (C, K, J, I)
        out = torch.tensordot(out, weights, dims=([position[dst_axis]], [1])).movedim(-1, position[dst_axis])
    return np.ascontiguousarray(out.permute([0] + position[::-1]).numpy())  # (C, k1 - k0, J, I) of the destination


def resample_channels(
    volume: np.ndarray,
    src_ijk_to_ras: ArrayLike,
    dst_ijk_to_ras: ArrayLike,
    dst_shape: Sequence[int],
    mode: str = "linear",
    fill_value: Optional[float] = 0.0,
    k_range: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """Resample a ``(C, K, J, I)`` volume onto another grid: ``(C, K', J', I')``.

    Voxels are copied when the grids share their voxel lattice (see ``_exact_index_view``);
    otherwise the source voxel indices of the destination voxels come from :func:`affine_on_grid`,
    one slab at a time (:func:`slabs`), and :func:`sample_voxels` samples them (float32 for linear; for nearest
    the values are copied exactly, integers as int64). ``fill_value=None`` extends the border
    values (fields). Linear results are float32; nearest results keep ``volume.dtype``.
    ``k_range=(k0, k1)``: only the destination slices ``k0 <= k < k1`` (``(C, k1 - k0, J', I')``, the
    values of the whole result there).
    """
    dst_shape = shape3(dst_shape, "dst_shape")
    volume = np.asarray(volume)
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, K, J, I), got shape {volume.shape}")
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    first, last = (0, dst_shape[0]) if k_range is None else (int(k_range[0]), int(k_range[1]))
    if not 0 <= first < last <= dst_shape[0]:
        raise ValueError(f"k_range {k_range} is not a range of slices of a grid of shape {dst_shape}")
    matrix = index_map(src_ijk_to_ras, dst_ijk_to_ras)
    exact = _exact_index_view(volume, matrix, dst_shape, fill_value, (first, last))
    if exact is not None:
        return exact.astype(np.float32, copy=False) if mode == "linear" else exact
    if mode == "linear" and fill_value is None:
        separable = _separable_linear(volume, matrix, dst_shape, (first, last))
        if separable is not None:
            return separable
    source = _volume_tensor(volume, mode)
    block = (last - first,) + dst_shape[1:]
    out = np.empty((volume.shape[0],) + block, dtype=np.float32 if mode == "linear" else volume.dtype)
    for k0, k1 in slabs(block):  # the source indices of one slab at a time: memory does not grow with the grid
        coords = affine_on_grid(matrix[[2, 1, 0]], (k1 - k0,) + block[1:], start=(first + k0, 0, 0))  # (k, j, i)
        out[:, k0:k1] = sample_voxels(source, coords, mode, fill_value).numpy()
    return out
