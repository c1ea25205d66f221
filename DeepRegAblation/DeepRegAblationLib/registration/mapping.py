"""From a total mapping to a registration result: :func:`result_from_mapping`, the common end of every method
(``pipeline.register``, ``pipeline.refine_without_network`` and the classical methods of the benchmarks).

Given ``q(p) = p + disp_ras_mm(p)`` on the fixed grid (RAS mm, numpy axis order ``(K, J, I)``): the warped image by ONE
interpolation of the ORIGINAL moving image at ``q(p)`` (labels by nearest neighbour), zero outside the moving image
(``sitk.Resample`` semantics); the deformable part ``A^-1(q(p)) - p``; the Jacobian determinant of ``q``; and
``metrics.registration_metrics`` on 1-99 percentile normalised intensities. All in float32
(``geometry.affine_on_grid`` / ``resampling.sample_voxels``) on slabs of the fixed grid (``resampling.slabs``), so that
the working memory does not grow with the image: voxel positions are computed in float64 per axis and rounded once,
grids that share their voxel lattice are copied without interpolation, and voxels that land exactly on moving voxels
get their values exactly.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from .. import fields, geometry, resampling
from ..imageio import ImageData, intensity_window, normalize_intensity
from .result import RegistrationResult

__all__ = ["result_from_mapping", "labels_array", "Window"]

Window = Tuple[float, float]
"""An intensity window ``(low, high)`` (``imageio.intensity_window``)."""


def labels_array(labels: ImageData, name: str) -> np.ndarray:
    """The integer labels of ``labels`` as int32 (``ValueError`` naming ``name`` for non-integer values,
    a non-numeric dtype or values beyond int32)."""
    array = labels.array
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} must hold integer labels, got non-integer values (shape {array.shape})")
    elif array.dtype.kind not in "biu":
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{name} label values {array.min()}..{array.max()} do not fit in int32")
    return array.astype(np.int32)


def result_from_mapping(
    variant: str,
    fixed: ImageData,
    moving: ImageData,
    affine_ras: np.ndarray,
    disp_ras_mm: np.ndarray,
    fixed_labels: Optional[ImageData] = None,
    moving_labels: Optional[ImageData] = None,
    timings: Optional[Dict[str, float]] = None,
    t_start: Optional[float] = None,
    windows: Optional[Tuple[Window, Window]] = None,
) -> RegistrationResult:
    """A :class:`RegistrationResult` from a total mapping ``q(p) = p + disp_ras_mm(p)`` on the fixed grid.

    Used by :func:`register` and by the classical methods of the quality benchmark, so every
    method ends the same way: ONE interpolation of the original moving image (labels: nearest)
    at ``q(p)``, the Jacobian of the total field, and ``registration_metrics`` on 1-99 percentile
    normalised intensities.

    Large volumes are worked on in slabs along K (``resampling.slabs``: about ``resampling.CHUNK_VOXELS`` voxels
    each, the Jacobian's central differences with one slice of margin): the arrays are the same as from
    the whole grid at once, the working memory does not grow with the image, and the metrics are summed
    slab by slab (``slab_metrics``; a volume of one slab uses ``metrics.registration_metrics`` itself).

    Args:
        affine_ras: ``(4, 4)`` affine part (fixed RAS point -> moving RAS point); the deformable
            part is ``u_def(p) = affine_ras^-1(q(p)) - p``.
        disp_ras_mm: total displacement on the fixed grid, RAS mm: a ``(K, J, I, 3)`` array (kept as the
            result's ``disp_ras_mm`` when it is float32) or a ``(3, K, J, I)`` tensor (channels ``(x, y, z)``).
            Computed in float32.
        timings: seconds per stage so far (``warp`` and ``metrics`` are added).
        t_start: ``time.perf_counter()`` at the start of the registration: ``runtime_s`` runs from
            there to the warped image and labels (the metrics are ``metrics_s``).
        windows: ``(fixed_window, moving_window)`` of ``imageio.intensity_window`` when the caller
            has them already (default: computed here).
    """
    timings = dict(timings or {})
    t_start = time.perf_counter() if t_start is None else t_start
    shape = tuple(fixed.shape)
    disp = _displacement_channels_last(disp_ras_mm, shape)
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4):
        raise ValueError(f"affine_ras must be (4, 4), got {affine_ras.shape}")
    ndim = 2 if fixed.is_2d else 3
    parts = resampling.slabs(shape) if ndim == 3 else [(0, shape[0])]
    t0 = time.perf_counter()
    arrays = _mapped_arrays(fixed, moving, moving_labels, affine_ras, disp, parts, ndim)
    timings["warp"] = time.perf_counter() - t0
    runtime_s = time.perf_counter() - t_start  # the registration: inputs in memory -> field and warped image

    t0 = time.perf_counter()
    windows = windows or (intensity_window(fixed.array), intensity_window(moving.array))
    if len(parts) == 1:
        disp_fixed_vox = geometry.disp_ras_to_vox(_slab_tensor(disp, 0, shape[0]), fixed.ijk_to_ras, ndim)
        metrics = _result_metrics(fixed, fixed_labels, arrays["warped"], arrays["warped_labels"], disp_fixed_vox,
                                  arrays["jacobian"], ndim, windows)
    else:
        metrics = _slab_result_metrics(fixed, fixed_labels, arrays, disp, parts, windows)
    timings["metrics"] = time.perf_counter() - t0
    metrics["runtime_s"] = runtime_s
    metrics["metrics_s"] = timings["metrics"]
    return RegistrationResult(
        variant=variant,
        fixed_ijk_to_ras=fixed.ijk_to_ras.copy(),
        warped=arrays["warped"],
        warped_labels=arrays["warped_labels"],
        affine_ras=affine_ras,
        disp_ras_mm=disp,
        deform_disp_ras_mm=arrays["deform"],
        jacobian=arrays["jacobian"],
        metrics={k: float(v) for k, v in metrics.items()},
        timings=timings,
    )


def _displacement_channels_last(disp_ras_mm: Union[np.ndarray, torch.Tensor], shape: Tuple[int, ...]) -> np.ndarray:
    """``disp_ras_mm`` (a ``(K, J, I, 3)`` array or a ``(3, K, J, I)`` tensor) as a float32 ``(K, J, I, 3)`` array
    (the array itself when it already is one, C-contiguous and writeable)."""
    if isinstance(disp_ras_mm, torch.Tensor):
        disp = disp_ras_mm.detach().cpu().to(torch.float32)
        if tuple(disp.shape) != (3,) + shape:
            raise ValueError(f"a disp_ras_mm tensor must be (3, K, J, I) = {(3,) + shape}, got {tuple(disp.shape)}")
        return np.ascontiguousarray(np.moveaxis(disp.numpy(), 0, -1))
    disp_array = np.asarray(disp_ras_mm, dtype=np.float32)
    if disp_array.shape != shape + (3,):
        raise ValueError(f"disp_ras_mm must be (K, J, I, 3) = {shape + (3,)} on the fixed grid, got {disp_array.shape}")
    if not disp_array.flags.writeable:  # e.g. np.broadcast_to of a constant shift
        disp_array = disp_array.copy()
    return np.ascontiguousarray(disp_array)


def _slab_tensor(disp: np.ndarray, k0: int, k1: int) -> torch.Tensor:
    """Slices ``k0 <= k < k1`` of a ``(K, J, I, 3)`` field as a ``(3, k1 - k0, J, I)`` tensor (a view)."""
    return torch.from_numpy(disp[k0:k1]).permute(3, 0, 1, 2)


def _mapped_arrays(fixed: ImageData, moving: ImageData, moving_labels: Optional[ImageData], affine_ras: np.ndarray,
                   disp: np.ndarray, parts, ndim: int) -> Dict[str, Optional[np.ndarray]]:
    """``{"warped", "warped_labels", "deform", "jacobian"}`` on the fixed grid from the total field ``disp``
    ``(K, J, I, 3)``, slab by slab: the original moving image (linear, zero outside) and labels (nearest,
    int32) at ``q(p) = p + disp(p)``, the deformable part ``A^-1(q(p)) - p`` and ``det`` of ``q``'s Jacobian."""
    shape = tuple(fixed.shape)
    moving_tensor = torch.from_numpy(np.ascontiguousarray(moving.array, dtype=np.float32))[None]
    labels_tensor = None
    if moving_labels is not None:
        labels_tensor = torch.from_numpy(labels_array(moving_labels, "moving_labels"))[None]
    arrays = {"warped": np.empty(shape, np.float32), "deform": np.empty(shape + (3,), np.float32),
              "jacobian": np.empty(shape, np.float32),
              "warped_labels": None if moving_labels is None else np.empty(shape, np.int32)}
    inverse_affine = np.linalg.inv(affine_ras)
    for k0, k1 in parts:
        slab = _slab_tensor(disp, k0, k1)
        coords = _voxels_of_mapped_points(fixed, moving.ijk_to_ras, slab, k0)
        arrays["warped"][k0:k1] = resampling.sample_voxels(moving_tensor, coords, "linear", 0.0)[0].numpy()
        if labels_tensor is not None:
            if not np.array_equal(moving_labels.ijk_to_ras, moving.ijk_to_ras):
                coords = _voxels_of_mapped_points(fixed, moving_labels.ijk_to_ras, slab, k0)
            arrays["warped_labels"][k0:k1] = resampling.sample_voxels(labels_tensor, coords, "nearest", 0.0)[0].numpy()
        deform = geometry.affine_after_displacement(inverse_affine, slab, fixed.ijk_to_ras, k_start=k0)
        arrays["deform"][k0:k1] = np.moveaxis(deform.numpy(), 0, -1)
        arrays["jacobian"][k0:k1] = _jacobian_slab(disp, k0, k1, fixed.ijk_to_ras, ndim)
    return arrays


def _voxels_of_mapped_points(fixed: ImageData, ijk_to_ras: np.ndarray, slab: torch.Tensor, k0: int) -> torch.Tensor:
    """``(3, s, J, I)`` voxel indices ``(k, j, i)`` in the grid ``ijk_to_ras`` of ``q(p) = p + d(p)`` for the fixed
    voxels ``p`` of the slab starting at slice ``k0`` (``slab``: ``d`` there, ``(3, s, J, I)`` RAS mm)."""
    ras_to_kji = np.linalg.inv(ijk_to_ras)[[2, 1, 0]]
    return geometry.affine_on_grid(ras_to_kji @ fixed.ijk_to_ras, slab.shape[1:], linear=ras_to_kji[:, :3], field=slab,
                                   start=(k0, 0, 0))


def _jacobian_slab(disp: np.ndarray, k0: int, k1: int, ijk_to_ras: np.ndarray, ndim: int) -> np.ndarray:
    """``det`` of the Jacobian of ``p + disp(p)`` on slices ``k0 <= k < k1`` (central differences from one slice
    of margin on each side, one-sided on the volume's first and last slice: the whole grid's values)."""
    if ndim == 2:
        disp_vox = geometry.disp_ras_to_vox(_slab_tensor(disp, k0, k1), ijk_to_ras, 2)
        return fields.jacobian_determinant(disp_vox[None])[0].numpy().reshape((k1 - k0,) + disp.shape[1:3])
    h0, h1 = max(k0 - 1, 0), min(k1 + 1, disp.shape[0])
    disp_vox = geometry.disp_ras_to_vox(_slab_tensor(disp, h0, h1), ijk_to_ras, 3)
    return fields.jacobian_determinant(disp_vox[None])[0].numpy()[k0 - h0: k1 - h0]


def _slab_result_metrics(fixed: ImageData, fixed_labels: Optional[ImageData], arrays: Dict[str, Optional[np.ndarray]],
                         disp: np.ndarray, parts, windows: Tuple[Window, Window]) -> Dict[str, float]:
    """``registration_metrics`` of a volume of several slabs, summed slab by slab (``slab_metrics``)."""
    from ..metrics import mean_hd95
    from ..slab_metrics import SlabMetrics, ssim_by_slabs

    fixed_window, moving_window = windows
    labels_grid = _fixed_labels_on_grid(fixed, fixed_labels) if arrays["warped_labels"] is not None else None
    spacing = fixed.spacing_kji
    sums = SlabMetrics(spacing, labels_grid is not None)

    def images(k0: int, k1: int) -> Tuple[np.ndarray, np.ndarray]:
        return (normalize_intensity(fixed.array[k0:k1], window=fixed_window),
                normalize_intensity(arrays["warped"][k0:k1], window=moving_window))

    for k0, k1 in parts:
        disp_vox = geometry.disp_ras_to_vox(_slab_tensor(disp, k0, k1), fixed.ijk_to_ras, 3).numpy()
        labels = (None, None) if labels_grid is None else (labels_grid[k0:k1], arrays["warped_labels"][k0:k1])
        sums.add(k0, *images(k0, k1), disp_vox, arrays["jacobian"][k0:k1], *labels)
    smallest = min(fixed.shape)
    window = min(11, smallest - (1 - smallest % 2))
    ssim = ssim_by_slabs(images, fixed.shape[0], sums.data_range, parts[0][1] - parts[0][0], window)
    hd95 = mean_hd95(labels_grid, arrays["warped_labels"], spacing) if labels_grid is not None else float("nan")
    return sums.finish(ssim, hd95)


def _fixed_labels_on_grid(fixed: ImageData, fixed_labels: ImageData) -> np.ndarray:
    """The fixed label map on the fixed grid (nearest neighbour; a copy when the grids are the same)."""
    return resampling.resample_to_grid(labels_array(fixed_labels, "fixed_labels"), fixed_labels.ijk_to_ras,
                                     fixed.ijk_to_ras, fixed.shape, mode="nearest")


def _result_metrics(fixed: ImageData, fixed_labels: Optional[ImageData], warped: np.ndarray,
                    warped_labels: Optional[np.ndarray], disp_fixed_vox: torch.Tensor, jacobian: np.ndarray, ndim: int,
                    windows: Tuple[Window, Window]) -> Dict[str, float]:
    """``metrics.registration_metrics`` of the warped image (and labels, when both label maps are there) on
    1-99 percentile normalised intensities (a volume of one slab)."""
    from ..metrics import registration_metrics

    fixed_labels_grid = None
    if fixed_labels is not None and warped_labels is not None:
        fixed_labels_grid = _fixed_labels_on_grid(fixed, fixed_labels)
    squeeze = (lambda a: a[0]) if ndim == 2 else (lambda a: a)
    fixed_window, moving_window = windows
    return registration_metrics(
        squeeze(normalize_intensity(fixed.array, window=fixed_window)),
        squeeze(normalize_intensity(warped, window=moving_window)),
        disp_fixed_vox,
        spacing=fixed.spacing_kji[-ndim:],
        fixed_labels=None if fixed_labels_grid is None else squeeze(fixed_labels_grid),
        warped_labels=None if fixed_labels_grid is None else squeeze(warped_labels),
        jacobian=squeeze(jacobian),
    )
