"""Physical-space geometry: IJK <-> RAS <-> LPS, axis order, grids and where they sit (resampling: ``resampling``).

Conventions (see ``docs/architecture.md``):

- A grid is a ``(4, 4)`` homogeneous matrix ``ijk_to_ras`` (Slicer's IJKToRAS: voxel index
  ``(i, j, k)`` -> RAS millimetres) and a volume shape ``(K, J, I)`` in numpy/tensor axis
  order (``i`` is the fastest axis, the last array axis).
- Its 3x3 part is ``R = D @ diag(spacing_ijk)`` with ``D`` orthonormal (oblique allowed).
- Displacement vectors: ``u_ras = R @ u_ijk`` where ``u_ijk`` is the voxel displacement with
  its components reversed from tensor order ``(k, j, i)`` to ``(i, j, k)``.
- ITK / SimpleITK files are LPS: ``lps = diag(-1, -1, 1) @ ras`` for points and vectors;
  a point transform ``T`` becomes ``F T F`` with ``F = diag(-1, -1, 1, 1)``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


# --------------------------------------------------------------------------- matrices
def validate_ijk_to_ras(ijk_to_ras: ArrayLike, name: str = "ijk_to_ras") -> np.ndarray:
    """Return ``ijk_to_ras`` as a float64 ``(4, 4)`` array, or raise ``ValueError`` naming ``name``.

    Requires finite entries, bottom row ``(0, 0, 0, 1)`` and an invertible 3x3 part.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"{name} must be a (4, 4) matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or inf entries: {matrix.tolist()}")
    if not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)):
        raise ValueError(f"{name} must have bottom row (0, 0, 0, 1), got {matrix[3].tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError(f"{name} has a singular 3x3 part (zero spacing?): {matrix[:3, :3].tolist()}")
    return matrix


def spacing_from_matrix(ijk_to_ras: ArrayLike) -> np.ndarray:
    """Voxel size in mm along ``(i, j, k)``: the column norms of the 3x3 part. ``(3,)``."""
    matrix = validate_ijk_to_ras(ijk_to_ras)
    return np.linalg.norm(matrix[:3, :3], axis=0)


def spacing_kji(ijk_to_ras: ArrayLike) -> Tuple[float, float, float]:
    """Voxel size in mm in tensor axis order ``(k, j, i)`` (what ``fields``/``metrics`` take)."""
    return tuple(float(s) for s in spacing_from_matrix(ijk_to_ras)[::-1])


def direction_from_matrix(ijk_to_ras: ArrayLike) -> np.ndarray:
    """Unit direction cosines ``D`` (columns = RAS directions of the i, j, k axes). ``(3, 3)``."""
    matrix = validate_ijk_to_ras(ijk_to_ras)
    return matrix[:3, :3] / spacing_from_matrix(matrix)[None, :]


def matrix_from_geometry(
    spacing_ijk: Sequence[float], direction_ras: ArrayLike, origin_ras: Sequence[float]
) -> np.ndarray:
    """``(4, 4)`` IJKToRAS from spacing ``(si, sj, sk)`` mm, direction columns ``(3, 3)`` and origin (RAS mm)."""
    spacing_ijk = np.asarray(spacing_ijk, dtype=np.float64).reshape(-1)
    direction_ras = np.asarray(direction_ras, dtype=np.float64)
    origin_ras = np.asarray(origin_ras, dtype=np.float64).reshape(-1)
    if spacing_ijk.shape != (3,) or direction_ras.shape != (3, 3) or origin_ras.shape != (3,):
        raise ValueError(
            f"spacing_ijk (3,), direction_ras (3, 3) and origin_ras (3,) expected, got "
            f"{spacing_ijk.shape}, {direction_ras.shape}, {origin_ras.shape}"
        )
    if np.any(spacing_ijk <= 0):
        raise ValueError(f"spacing_ijk must be positive, got {spacing_ijk.tolist()}")
    matrix = np.eye(4)
    matrix[:3, :3] = direction_ras * spacing_ijk[None, :]
    matrix[:3, 3] = origin_ras
    return matrix


def ijk_to_lps(ijk_to_ras: ArrayLike) -> np.ndarray:
    """IJK -> LPS matrix of a grid (what ITK's origin / spacing / direction describe)."""
    return LPS_FROM_RAS @ validate_ijk_to_ras(ijk_to_ras)


def ijk_to_ras_from_lps(ijk_to_lps_matrix: ArrayLike) -> np.ndarray:
    """IJK -> RAS matrix from an IJK -> LPS one (inverse of :func:`ijk_to_lps`)."""
    return LPS_FROM_RAS @ validate_ijk_to_ras(ijk_to_lps_matrix, "ijk_to_lps")


def transform_ras_to_lps(transform_ras: ArrayLike) -> np.ndarray:
    """A ``(4, 4)`` point transform in RAS expressed in LPS: ``F @ T @ F`` (also LPS -> RAS)."""
    transform = np.asarray(transform_ras, dtype=np.float64)
    if transform.shape != (4, 4):
        raise ValueError(f"transform_ras must be (4, 4), got shape {transform.shape}")
    return LPS_FROM_RAS @ transform @ LPS_FROM_RAS


transform_lps_to_ras = transform_ras_to_lps


def vectors_ras_to_lps(vectors: np.ndarray) -> np.ndarray:
    """Negate the first two components of ``(..., 3)`` points or vectors (RAS <-> LPS)."""
    vectors = np.asarray(vectors)
    if vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have 3 components in the last axis, got shape {vectors.shape}")
    out = vectors.copy()
    out[..., :2] *= -1
    return out


vectors_lps_to_ras = vectors_ras_to_lps


# --------------------------------------------------------------------------- points and axis order
def apply_linear(vectors: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """``linear @ v`` for every vector of ``(..., 3)``; float64 ``(..., 3)``.

    ``(3, 3) @ (3, N)`` is one BLAS call: several times faster than ``vectors @ linear.T``.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    flat = vectors.reshape(-1, 3)
    return np.ascontiguousarray((np.asarray(linear, dtype=np.float64) @ flat.T).T).reshape(vectors.shape)


def apply_affine(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """``T @ (p, 1)`` for every point of ``(..., 3)`` with a ``(4, 4)`` homogeneous ``T``; float64 ``(..., 3)``."""
    transform = np.asarray(transform, dtype=np.float64)
    out = apply_linear(points, transform[:3, :3])
    out += transform[:3, 3]
    return out


def kji_to_ijk(values: ArrayLike, axis: int = 0) -> ArrayLike:
    """Reverse the component order along ``axis`` (tensor order ``(k, j, i)`` <-> ``(i, j, k)``).

    The operation is its own inverse, so it also maps ``(i, j, k)`` to ``(k, j, i)``.
    """
    if isinstance(values, torch.Tensor):
        return torch.flip(values, dims=(axis,))
    return np.flip(np.asarray(values), axis=axis).copy()


def voxel_to_ras(points_ijk: np.ndarray, ijk_to_ras: ArrayLike) -> np.ndarray:
    """Continuous voxel indices ``(..., 3)`` in ``(i, j, k)`` order -> RAS mm ``(..., 3)``."""
    matrix = validate_ijk_to_ras(ijk_to_ras)
    points = np.asarray(points_ijk, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"points_ijk must have shape (..., 3), got {points.shape}")
    return apply_affine(points, matrix)


def ras_to_voxel(points_ras: np.ndarray, ijk_to_ras: ArrayLike) -> np.ndarray:
    """RAS mm ``(..., 3)`` -> continuous voxel indices ``(..., 3)`` in ``(i, j, k)`` order."""
    matrix = validate_ijk_to_ras(ijk_to_ras)
    points = np.asarray(points_ras, dtype=np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"points_ras must have shape (..., 3), got {points.shape}")
    inverse = np.linalg.inv(matrix)
    return apply_affine(points, inverse)


def shape3(shape: Sequence[int], name: str = "shape") -> Tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise ValueError(f"{name} must be a volume shape (K, J, I) of positive sizes, got {shape}")
    return shape


def grid_points_ras(shape: Sequence[int], ijk_to_ras: ArrayLike) -> np.ndarray:
    """RAS position of every voxel of a ``(K, J, I)`` grid: ``(K, J, I, 3)`` float64."""
    k_size, j_size, i_size = shape3(shape)
    matrix = validate_ijk_to_ras(ijk_to_ras)
    k, j, i = np.meshgrid(np.arange(k_size), np.arange(j_size), np.arange(i_size), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64)
    return apply_affine(ijk, matrix)


# --------------------------------------------------------------------------- displacement units
def disp_vox_to_ras(disp_vox: ArrayLike, ijk_to_ras: ArrayLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel displacement in tensor channel order -> RAS mm, channels first: ``(3, K, J, I)``.

    Args:
        disp_vox: ``(3, K, J, I)`` with channels ``(k, j, i)``, or a 2D field ``(2, J, I)``
            (channels ``(j, i)``) of a single-slice volume, whose k component is 0.
        ijk_to_ras: ``(4, 4)`` of the grid the field lives on.
        dtype: of the result (float32 for whole-grid work, float64 for exact conversions).

    Returns:
        ``u_ras = R @ u_ijk`` with channels ``(x, y, z)`` (``(3, 1, J, I)`` in 2D).
    """
    disp = torch.as_tensor(disp_vox).detach().cpu()
    matrix = validate_ijk_to_ras(ijk_to_ras)
    if disp.dim() == 3 and disp.shape[0] == 2:
        disp = disp[:, None]
    elif disp.dim() != 4 or disp.shape[0] != 3:
        raise ValueError(f"disp_vox must be (3, K, J, I) or (2, J, I), got shape {tuple(disp.shape)}")
    channels_to_ras = matrix[:3, :3][:, ::-1][:, 3 - disp.shape[0]:]  # columns for channels (k, j, i)
    return affine_on_grid(None, disp.shape[1:], linear=channels_to_ras, field=disp, dtype=dtype)


def disp_vox_to_ras_mm(disp_vox: ArrayLike, ijk_to_ras: ArrayLike) -> np.ndarray:
    """:func:`disp_vox_to_ras` in float64, channels last: ``(K, J, I, 3)`` (``(1, J, I, 3)`` in 2D)."""
    return np.moveaxis(disp_vox_to_ras(disp_vox, ijk_to_ras, torch.float64).numpy(), 0, -1)


def disp_ras_to_vox(
    disp_ras: torch.Tensor, ijk_to_ras: ArrayLike, ndim: int = 3, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """RAS mm vectors ``(3, K, J, I)`` (channels ``(x, y, z)``) -> voxel displacement in tensor channel order.

    Returns ``(3, K, J, I)`` for ``ndim=3``; for ``ndim=2`` (single-slice volume, ``K == 1``)
    the in-plane field ``(2, J, I)`` with channels ``(j, i)``.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if disp_ras.dim() != 4 or disp_ras.shape[0] != 3:
        raise ValueError(f"disp_ras must be (3, K, J, I), got shape {tuple(disp_ras.shape)}")
    if ndim == 2 and disp_ras.shape[1] != 1:
        raise ValueError(f"a 2D field needs a single-slice volume, got shape {tuple(disp_ras.shape)}")
    ras_to_kji = np.linalg.inv(validate_ijk_to_ras(ijk_to_ras)[:3, :3])[[2, 1, 0]]
    disp_kji = affine_on_grid(None, disp_ras.shape[1:], linear=ras_to_kji, field=disp_ras, dtype=dtype)
    return disp_kji if ndim == 3 else disp_kji[1:, 0]


def ras_mm_to_disp_vox(disp_ras_mm: np.ndarray, ijk_to_ras: ArrayLike, ndim: int = 3) -> np.ndarray:
    """:func:`disp_ras_to_vox` in float64 for channels-last ``(K, J, I, 3)`` RAS vectors (numpy in and out)."""
    disp_ras_mm = np.asarray(disp_ras_mm, dtype=np.float64)
    if disp_ras_mm.ndim != 4 or disp_ras_mm.shape[-1] != 3:
        raise ValueError(f"disp_ras_mm must be (K, J, I, 3), got shape {disp_ras_mm.shape}")
    return disp_ras_to_vox(torch.from_numpy(np.moveaxis(disp_ras_mm, -1, 0)), ijk_to_ras, ndim, torch.float64).numpy()


def matrix_vox_to_ras(matrix_vox: ArrayLike, grid_ijk_to_ras: ArrayLike) -> np.ndarray:
    """Voxel-coordinate affine (tensor axis order, fixed voxel -> moving voxel) -> RAS point transform.

    Args:
        matrix_vox: ``(4, 4)`` in ``(k, j, i)`` order, or ``(3, 3)`` for a 2D model on a
            single-slice grid (``(j, i)`` order; the k coordinate is left unchanged).
        grid_ijk_to_ras: ``(4, 4)`` of the grid both voxel coordinates refer to.

    Returns:
        ``(4, 4)`` float64 ``A`` with moving RAS point ``= A @ fixed RAS point``.
    """
    if isinstance(matrix_vox, torch.Tensor):
        matrix_vox = matrix_vox.detach().cpu().numpy()
    matrix_vox = np.asarray(matrix_vox, dtype=np.float64)
    if matrix_vox.shape == (3, 3):
        embedded = np.eye(4)
        embedded[1:, 1:] = matrix_vox
        matrix_vox = embedded
    if matrix_vox.shape != (4, 4):
        raise ValueError(f"matrix_vox must be (4, 4) or (3, 3), got shape {matrix_vox.shape}")
    reverse = np.zeros((4, 4))
    reverse[0, 2] = reverse[1, 1] = reverse[2, 0] = reverse[3, 3] = 1.0  # kji <-> ijk, its own inverse
    matrix_ijk = reverse @ matrix_vox @ reverse
    grid = validate_ijk_to_ras(grid_ijk_to_ras, "grid_ijk_to_ras")
    return grid @ matrix_ijk @ np.linalg.inv(grid)


# --------------------------------------------------------------------------- affine maps on every voxel of a grid
def affine_on_grid(
    matrix: Optional[np.ndarray],
    shape: Sequence[int],
    linear: Optional[np.ndarray] = None,
    field: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
    start: Sequence[int] = (0, 0, 0),
) -> torch.Tensor:
    """``matrix @ (i, j, k, 1) + linear @ field`` at every voxel of a ``(K, J, I)`` grid (or a block of one).

    Each output row is computed in float64 from the voxel indices and then rounded to ``dtype``
    (integer results stay exact); the field part is added in ``dtype``. Every voxel's value depends on its
    indices and field vector alone, so a block (``start``) holds exactly the values of the whole grid there.

    Args:
        matrix: ``(3 or 4, 4)``; its first three rows give the three output channels (``None``: 0).
        shape: ``(K, J, I)`` of the grid, or of the block of it that starts at ``start``.
        linear: ``(3, C)`` applied to ``field`` (``None``: no field part).
        field: ``(C, K, J, I)`` tensor on the same grid (block).
        start: ``(k0, j0, i0)``: the block's first voxel in the whole grid (the indices ``matrix`` applies to).

    Returns:
        ``(3, K, J, I)`` in ``dtype``.
    """
    k_size, j_size, i_size = shape3(shape)
    k0, j0, i0 = (int(n) for n in start)
    out = torch.zeros((3, k_size, j_size, i_size), dtype=dtype)
    if matrix is not None and np.any(np.asarray(matrix)[:3] != 0):
        matrix = np.asarray(matrix, dtype=np.float64)
        i = np.arange(i0, i0 + i_size, dtype=np.float64)
        j = np.arange(j0, j0 + j_size, dtype=np.float64)[:, None]
        k = np.arange(k0, k0 + k_size, dtype=np.float64)[:, None, None]
        for row in range(3):
            m = matrix[row]
            out[row] = torch.from_numpy((m[2] * k + m[3]) + (m[1] * j + m[0] * i))
    if linear is not None:
        linear = np.asarray(linear, dtype=np.float64)
        field = field.to(dtype)
        if field.shape[1:] != out.shape[1:] or linear.shape != (3, field.shape[0]):
            raise ValueError(f"linear {linear.shape} / field {tuple(field.shape)} do not fit a grid of shape {tuple(out.shape[1:])}")
        for row in range(3):
            for channel in range(field.shape[0]):
                if linear[row, channel] != 0.0:
                    out[row].add_(field[channel], alpha=float(linear[row, channel]))
    return out



def affine_after_displacement(transform: np.ndarray, disp_ras_mm: torch.Tensor, ijk_to_ras: ArrayLike,
                              k_start: int = 0) -> torch.Tensor:
    """``T(p + v(p)) - p`` at every voxel ``p`` of a grid: a point transform applied after a displacement.

    With ``T`` the affine part ``A`` and ``v`` the deformable part, this is the total
    displacement; with ``T = A^-1`` and ``v`` the total, it is the deformable part.

    Args:
        transform: ``(4, 4)`` RAS point transform ``T``.
        disp_ras_mm: ``(3, K, J, I)`` tensor ``v``, RAS mm, channels ``(x, y, z)``: the whole grid, or the slab of
            it that starts at slice ``k_start`` (the values are those of the whole grid there).
        ijk_to_ras: ``(4, 4)`` of the (whole) grid.

    Returns:
        ``(3, K, J, I)`` float32, RAS mm.
    """
    transform = np.asarray(transform, dtype=np.float64)
    grid = validate_ijk_to_ras(ijk_to_ras)
    return affine_on_grid((transform - np.eye(4)) @ grid, disp_ras_mm.shape[1:], linear=transform[:3, :3],
                          field=disp_ras_mm, start=(k_start, 0, 0))



def center_of_mass_ras(weights: np.ndarray, ijk_to_ras: ArrayLike) -> np.ndarray:
    """Weighted centre ``(3,)`` RAS mm of a ``(K, J, I)`` grid (weights >= 0, e.g. normalised intensities)."""
    weights = np.asarray(weights, dtype=np.float64)
    shape3(weights.shape, "weights shape")
    total = float(weights.sum())
    if not total > 0:
        raise ValueError(f"the centre of mass needs positive weights somewhere (shape {weights.shape})")
    centre_kji = [float(np.dot(weights.sum(axis=tuple(a for a in range(3) if a != axis)), np.arange(weights.shape[axis])))
                  / total for axis in range(3)]
    return voxel_to_ras(np.asarray(centre_kji[::-1]), ijk_to_ras)


def translation_matrix(offset_ras: ArrayLike) -> np.ndarray:
    """``(4, 4)`` point transform ``p -> p + offset``."""
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(offset_ras, dtype=np.float64)
    return matrix


# --------------------------------------------------------------------------- model grid and overlap
MODEL_ORIENTATIONS = ("native", "RAS")
"""Axes of a model grid: ``"native"`` along the fixed image's own axes, ``"RAS"`` along +R, +A, +S."""
_AXIS_ALIGNED_TOLERANCE = 1e-6


def closest_ras_view(ijk_to_ras: ArrayLike, shape: Sequence[int]) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """The same voxels re-indexed so that ``i, j, k`` run along the image axes closest to +R, +A, +S.

    A permutation / flip of the axes (no interpolation), as nibabel's ``as_closest_canonical``
    (and the training's ``reorient_to_ras``) does: RAS axis ``r`` gets the image axis ``c`` of
    the largest ``|direction[r, c]|`` (greedy, largest first), flipped when that entry is negative.

    Args:
        ijk_to_ras: ``(4, 4)`` of the image; ``shape``: its ``(K, J, I)``.

    Returns:
        ``(view_ijk_to_ras, view_shape_kji)``; the view's voxel ``(i', j', k')`` is the image voxel
        at the same RAS position, so the physical extent and centre are unchanged. For an
        axis-aligned image the view's direction is the identity.
    """
    matrix = validate_ijk_to_ras(ijk_to_ras)
    shape_ijk = shape3(shape)[::-1]
    magnitude = np.abs(direction_from_matrix(matrix))
    source = [0, 0, 0]  # source[r]: image axis that becomes view axis r
    free_rows, free_cols = [0, 1, 2], [0, 1, 2]
    for _ in range(3):
        sub = magnitude[np.ix_(free_rows, free_cols)]
        r, c = np.unravel_index(int(np.argmax(sub)), sub.shape)
        source[free_rows[r]] = free_cols[c]
        free_rows.pop(r)
        free_cols.pop(c)
    view = np.eye(4)
    view[:3, 3] = matrix[:3, 3]
    view_shape_ijk = [0, 0, 0]
    for r, c in enumerate(source):
        column = matrix[:3, c]
        view_shape_ijk[r] = shape_ijk[c]
        if column[r] < 0:  # flip: the view's first voxel is the image's last along that axis
            view[:3, 3] += (shape_ijk[c] - 1) * column
            column = -column
        view[:3, r] = column
    return view, (view_shape_ijk[2], view_shape_ijk[1], view_shape_ijk[0])


def is_axis_aligned(ijk_to_ras: ArrayLike) -> bool:
    """True when every voxel axis is parallel to an RAS axis (a signed permutation; not oblique)."""
    magnitude = np.abs(direction_from_matrix(ijk_to_ras))
    return bool(np.all(np.abs(magnitude.max(axis=0) - 1.0) < _AXIS_ALIGNED_TOLERANCE))


def model_grid_for(
    fixed,
    spacing_mm: Sequence[float],
    shape: Sequence[int],
    orientation: Optional[str] = None,
    center_ras: Optional[ArrayLike] = None,
) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """The grid a model runs on: its spacing and shape, centred on ``fixed``.

    Args:
        fixed: an ``ImageData`` (anything with ``array`` ``(K, J, I)`` and ``ijk_to_ras``).
        spacing_mm: voxel size in tensor axis order, ``(sk, sj, si)`` for a 3D model or
            ``(sj, si)`` for a 2D model (the single-slice k axis keeps ``fixed``'s spacing).
        shape: model input shape in the same order, ``(D, H, W)`` or ``(H, W)``.
        orientation: the grid's axes. ``None`` / ``"native"``: along ``fixed``'s own axes.
            ``"RAS"`` (3D only; what a model trained on RAS-reoriented volumes expects, see the
            checkpoint's ``preprocessing["orientation"]``): axis-aligned with RAS, array axes
            ``(K, J, I) = (S, A, R)`` with ``i -> +R``, ``j -> +A``, ``k -> +S`` (identity direction).
        center_ras: ``(3,)`` RAS mm point the grid is centred on instead of the fixed image's
            centre (e.g. its intensity centre of mass, for models trained on grids centred so).

    Returns:
        ``(ijk_to_ras, shape_kji)``: the grid's ``(4, 4)`` matrix and its volume shape
        (``(1, H, W)`` for a 2D model). The grid centre is the fixed image's physical centre,
        except that along an axis parallel to a fixed axis with the same spacing the grid is
        shifted by less than one voxel so that its points coincide with fixed voxels (padding
        without interpolation). With ``"RAS"`` an axis-aligned fixed image (LPS, PSR, ...) gives
        the grid of its closest-RAS view (:func:`closest_ras_view`, the training's reorientation);
        an oblique one a grid centred on it, not aligned with its voxels.
    """
    fixed_matrix = validate_ijk_to_ras(fixed.ijk_to_ras, "fixed.ijk_to_ras")
    fixed_shape = shape3(np.shape(fixed.array), "fixed.array shape")
    spacing_mm = [float(s) for s in spacing_mm]
    shape = [int(n) for n in shape]
    orientation = "native" if orientation is None else str(orientation)
    if orientation not in MODEL_ORIENTATIONS:
        raise ValueError(f"orientation must be one of {list(MODEL_ORIENTATIONS)} or None, got {orientation!r}")
    if len(spacing_mm) != len(shape) or len(shape) not in (2, 3):
        raise ValueError(f"spacing_mm and shape must both have 2 or 3 entries, got {spacing_mm} and {shape}")
    if any(s <= 0 for s in spacing_mm) or any(n < 1 for n in shape):
        raise ValueError(f"spacing_mm and shape must be positive, got {spacing_mm} and {shape}")
    if orientation == "RAS":
        if len(shape) != 3:
            raise ValueError(f"orientation 'RAS' needs a 3D model grid, got shape {shape} (2D models keep the image axes)")
        fixed_matrix, fixed_shape = closest_ras_view(fixed_matrix, fixed_shape)
    fixed_spacing = spacing_from_matrix(fixed_matrix)  # (i, j, k)
    if len(shape) == 2:
        if fixed_shape[0] != 1:
            raise ValueError(f"a 2D model grid needs a single-slice fixed image, got shape {fixed_shape}")
        spacing_mm = [float(fixed_spacing[2])] + spacing_mm
        shape = [1] + shape
    model_spacing = np.asarray(spacing_mm[::-1])  # (i, j, k)
    model_shape = np.asarray(shape[::-1], dtype=np.float64)
    fixed_size = np.asarray(fixed_shape[::-1], dtype=np.float64)
    direction = direction_from_matrix(fixed_matrix)
    centre_vox = (fixed_size - 1) / 2
    if center_ras is not None:
        centre_vox = np.array(ras_to_voxel(np.asarray(center_ras, dtype=np.float64).reshape(3), fixed_matrix), dtype=np.float64)
        centre_vox[2] = (fixed_size[2] - 1) / 2 if fixed_shape[0] == 1 else centre_vox[2]  # a single slice stays put
    if orientation == "RAS" and not is_axis_aligned(fixed_matrix):
        centre = voxel_to_ras(centre_vox, fixed_matrix)
        origin = centre - model_spacing * (model_shape - 1) / 2
        return matrix_from_geometry(model_spacing, np.eye(3), origin), (shape[0], shape[1], shape[2])
    if orientation == "RAS":
        direction = np.round(direction)  # the view of an axis-aligned image: the identity, exactly
    # first model voxel, in continuous fixed voxel indices, so that the centres coincide
    start_vox = centre_vox - (model_shape - 1) / 2 * model_spacing / fixed_spacing
    same = np.isclose(model_spacing, fixed_spacing, rtol=1e-6, atol=0.0)
    start_vox = np.where(same, np.floor(start_vox + 1e-9), start_vox)
    origin = voxel_to_ras(start_vox, fixed_matrix)
    return matrix_from_geometry(model_spacing, direction, origin), (shape[0], shape[1], shape[2])


def overlap_fraction(
    fixed_shape: Sequence[int],
    fixed_ijk_to_ras: ArrayLike,
    moving_shape: Sequence[int],
    moving_ijk_to_ras: ArrayLike,
    points_per_axis: int = 24,
) -> float:
    """Fraction of the fixed image (a regular subsample of its voxels) inside the moving image's extent."""
    fixed_shape = shape3(fixed_shape, "fixed_shape")
    moving_shape = shape3(moving_shape, "moving_shape")
    axes = [np.unique(np.linspace(0, n - 1, min(n, points_per_axis)).round()) for n in fixed_shape[::-1]]
    i, j, k = np.meshgrid(*axes, indexing="ij")
    points = voxel_to_ras(np.stack([i, j, k], axis=-1).reshape(-1, 3), fixed_ijk_to_ras)
    ijk = ras_to_voxel(points, moving_ijk_to_ras)
    sizes = np.asarray(moving_shape[::-1], dtype=np.float64)
    inside = np.all((ijk >= -0.5 - 1e-6) & (ijk < sizes - 0.5 + 1e-6), axis=-1)
    return float(inside.mean())


def check_overlap(fixed, moving, fixed_name: str = "fixed", moving_name: str = "moving") -> float:
    """Raise ``ValueError`` naming both inputs when they do not overlap in physical space.

    ``fixed``/``moving``: ``ImageData``-like. Returns the overlap fraction (> 0).
    """
    fraction = overlap_fraction(
        np.shape(fixed.array), fixed.ijk_to_ras, np.shape(moving.array), moving.ijk_to_ras
    )
    if fraction <= 0.0:
        fixed_centre = voxel_to_ras((np.asarray(np.shape(fixed.array)[::-1]) - 1) / 2.0, fixed.ijk_to_ras)
        moving_centre = voxel_to_ras((np.asarray(np.shape(moving.array)[::-1]) - 1) / 2.0, moving.ijk_to_ras)
        raise ValueError(
            f"{fixed_name} and {moving_name} do not overlap in physical space "
            f"({fixed_name} centre RAS {np.round(fixed_centre, 1).tolist()} mm, shape {np.shape(fixed.array)}; "
            f"{moving_name} centre RAS {np.round(moving_centre, 1).tolist()} mm, shape {np.shape(moving.array)}); "
            f"check their origins / IJK-to-RAS matrices, or align their centres of mass first (--init-align com; 'Align centres first' in Slicer)"
        )
    return fraction
