"""Evaluation metrics of a registration: numpy (or torch) single images in, python floats out.

Inputs carry no batch or channel axis: images ``(*S)``, integer label maps ``(*S)``,
displacement fields ``disp_vox`` ``(ndim, *S)`` in voxels (channel ``i`` moves along array
axis ``i``, as in ``fields.py``), ``spacing`` a tuple in array axis order in mm (default 1,
so "mm" then means voxels). Torch tensors are accepted and converted. Bad input (shape
mismatch, NaN/inf, an empty array) raises ``ValueError`` naming the argument.

Jacobian-based metrics use ``fields.jacobian_determinant`` (``det(I + grad u)``, central
differences, one-sided at the border), on every voxel; folding is the raw fraction of
``det <= 0``.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from . import fields
from .losses import ssim_index

ArrayLike = Union[np.ndarray, torch.Tensor]
Spacing = Optional[Union[float, Sequence[float]]]

SDLOGJ_CLIP = 1e-9
"""Lower clip of ``det J`` before the log in :func:`sdlogj` (the Learn2Reg constant)."""

PLAUSIBLE_LOG_VOLUME = math.log(2.0)
""":func:`anatomical_plausibility` accepts local volume changes within ``[1/2, 2]``."""

METRIC_KEYS = (
    "dice", "hd95_mm", "folding_pct", "sdlogj", "mse", "ncc", "ssim",
    "max_disp_mm", "mean_disp_mm", "max_disp_vox", "mean_disp_vox", "tre_mm",
)  # fmt: skip
"""Keys of :func:`registration_metrics`, in order."""


# --------------------------------------------------------------------------- input handling
def _array(x: ArrayLike, name: str, dtype="float") -> np.ndarray:
    """``x`` as a finite, non-empty numpy array (torch tensors detached to CPU).

    ``dtype="float"`` keeps float32 / float64 arrays as they are (the metrics are computed in
    their precision) and converts anything else to float64; ``None`` keeps any numeric dtype.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if dtype is not None:
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
        if dtype != "float":
            x = x.astype(dtype, copy=False)
        elif x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf values (shape {x.shape})")
    return x


def _image_pair(a: ArrayLike, b: ArrayLike, name_a: str, name_b: str) -> tuple:
    a, b = _array(a, name_a), _array(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} shapes differ: {a.shape} vs {b.shape}")
    common = np.result_type(a, b)
    return a.astype(common, copy=False), b.astype(common, copy=False)


def _label_array(x: ArrayLike, name: str) -> np.ndarray:
    x = _array(x, name, dtype=None)
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)) or not np.array_equal(x, np.round(x)):
            raise ValueError(f"{name} must hold integer labels, got non-integer values (shape {x.shape})")
    elif not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{name} must hold integer labels, got dtype {x.dtype}")
    return x.astype(np.int64)


def _label_pair(a: ArrayLike, b: ArrayLike, name_a: str, name_b: str) -> tuple:
    a, b = _label_array(a, name_a), _label_array(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _spacing(spacing: Spacing, ndim: int) -> np.ndarray:
    return np.asarray(fields.spacing_tuple(spacing, ndim), dtype=np.float64)


def _disp(disp_vox: ArrayLike, name: str = "disp_vox", shape: Optional[tuple] = None) -> np.ndarray:
    """Validate a ``(ndim, *S)`` field, optionally on a grid of ``shape``."""
    disp = _array(disp_vox, name)
    if disp.ndim not in (3, 4) or disp.shape[0] != disp.ndim - 1:
        raise ValueError(f"{name} must be (ndim, *S) with ndim 2 or 3 channels, got shape {disp.shape}")
    if shape is not None and tuple(disp.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} grid {disp.shape[1:]} does not match the image shape {tuple(shape)}")
    return disp


def _jacobian_det(disp_vox: ArrayLike) -> np.ndarray:
    disp = _disp(disp_vox)
    if any(n < 2 for n in disp.shape[1:]):
        raise ValueError(f"disp_vox needs at least 2 voxels along every axis, got shape {disp.shape}")
    return fields.jacobian_determinant(torch.from_numpy(disp)[None])[0].numpy()


def _labels_to_score(a: np.ndarray, b: np.ndarray, labels: Optional[Iterable[int]]) -> list:
    """Non-background labels (of ``labels`` if given) present in both maps, sorted."""
    shared = set(np.unique(a).tolist()) & set(np.unique(b).tolist())
    if labels is not None:
        shared &= {int(v) for v in labels}
    shared.discard(0)
    return sorted(shared)


# --------------------------------------------------------------------------- overlap
def dice_per_label(
    labels_a: ArrayLike, labels_b: ArrayLike, labels: Optional[Iterable[int]] = None
) -> Dict[int, float]:
    """Dice ``2|A and B| / (|A| + |B|)`` per label; background 0 and labels missing from either map skipped."""
    a, b = _label_pair(labels_a, labels_b, "labels_a", "labels_b")
    keep = _labels_to_score(a, b, labels)
    values_a, counts_a = np.unique(a, return_counts=True)
    values_b, counts_b = np.unique(b, return_counts=True)
    values_i, counts_i = np.unique(a[a == b], return_counts=True)
    size_a = dict(zip(values_a.tolist(), counts_a.tolist()))
    size_b = dict(zip(values_b.tolist(), counts_b.tolist()))
    inter = dict(zip(values_i.tolist(), counts_i.tolist()))
    return {lab: 2.0 * inter.get(lab, 0) / (size_a[lab] + size_b[lab]) for lab in keep}


def mean_dice(labels_a: ArrayLike, labels_b: ArrayLike, labels: Optional[Iterable[int]] = None) -> float:
    """Mean of :func:`dice_per_label` (NaN when no label is shared)."""
    values = list(dice_per_label(labels_a, labels_b, labels).values())
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------- surface distance
def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (the image edge counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95_mm(mask_a: ArrayLike, mask_b: ArrayLike, spacing: Spacing = None) -> float:
    """95th percentile of the symmetric surface distances between two masks, in mm.

    Surface voxels are mask voxels with a face neighbour outside the mask. The distances
    from every surface voxel of A to the nearest surface voxel of B and from B to A (in mm,
    by a k-d tree of the surface points) are pooled and their 95th percentile (linear
    interpolation) returned. NaN when either mask is empty.
    """
    a, b = _label_pair(mask_a, mask_b, "mask_a", "mask_b")
    return _hd95_of_masks(a != 0, b != 0, _spacing(spacing, a.ndim))


def _hd95_of_masks(a: np.ndarray, b: np.ndarray, sp: np.ndarray) -> float:
    """:func:`hd95_mm` of two boolean masks (no conversion)."""
    if not a.any() or not b.any():
        return float("nan")
    # Work inside the bounding box of both masks grown by one voxel: every surface voxel lies
    # inside it and its border is outside both masks, so the result is the same as on the whole
    # image, at a fraction of the cost for small structures (many-label atlases).
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    box = tuple(slice(max(sl.start - 1, 0), min(sl.stop + 1, n)) for sl, n in zip(box, a.shape))
    a, b = a[box], b[box]
    # nearest surface voxel of the other mask by a k-d tree of the surface points (mm): the same
    # distances as the Euclidean distance transform of the other surface, at a fraction of its cost
    points_a = np.argwhere(_surface(a)) * sp
    points_b = np.argwhere(_surface(b)) * sp
    to_b = cKDTree(points_b).query(points_a)[0]
    to_a = cKDTree(points_a).query(points_b)[0]
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def hd95_per_label(
    labels_a: ArrayLike, labels_b: ArrayLike, spacing: Spacing = None, labels: Optional[Iterable[int]] = None
) -> Dict[int, float]:
    """:func:`hd95_mm` per label present in both maps (background 0 skipped).

    Each label is compared inside the union of its bounding boxes in the two maps (grown by one
    voxel), found for all labels in one pass (``ndimage.find_objects``): the same values as on
    the whole image, without a full-image mask per label (~140 labels at 1 mm).
    """
    a, b = _label_pair(labels_a, labels_b, "labels_a", "labels_b")
    sp = _spacing(spacing, a.ndim)
    keep = _labels_to_score(a, b, labels)
    if not keep:
        return {}
    if min(keep) < 1 or int(a.min()) < 0 or int(b.min()) < 0:  # find_objects needs non-negative labels
        return {lab: _hd95_of_masks(a == lab, b == lab, sp) for lab in keep}
    boxes_a = ndimage.find_objects(a, max_label=max(keep))
    boxes_b = ndimage.find_objects(b, max_label=max(keep))
    out = {}
    for lab in keep:
        box_a, box_b = boxes_a[lab - 1], boxes_b[lab - 1]
        box = tuple(slice(max(min(sa.start, sb.start) - 1, 0), min(max(sa.stop, sb.stop) + 1, n))
                    for sa, sb, n in zip(box_a, box_b, a.shape))
        out[lab] = _hd95_of_masks(a[box] == lab, b[box] == lab, sp)
    return out


def mean_hd95(
    labels_a: ArrayLike, labels_b: ArrayLike, spacing: Spacing = None, labels: Optional[Iterable[int]] = None
) -> float:
    """Mean of :func:`hd95_per_label` (NaN when no label is shared)."""
    values = list(hd95_per_label(labels_a, labels_b, spacing, labels).values())
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------- field quality
def folding_percentage(disp_vox: ArrayLike, spacing: Spacing = None) -> float:
    """``100 * fraction(det J <= 0)`` over all voxels (raw determinant, no shift).

    ``spacing`` is accepted for symmetry; the determinant does not depend on it.
    """
    det = _jacobian_det(disp_vox)
    if spacing is not None:
        _spacing(spacing, det.ndim)
    return _folding_pct_of(det)


def _folding_pct_of(det: np.ndarray) -> float:
    return float(100.0 * np.mean(det <= 0))


def _sdlogj_of(det: np.ndarray) -> float:
    return float(np.std(np.log(np.clip(det, SDLOGJ_CLIP, None))))


def sdlogj(disp_vox: ArrayLike) -> float:
    """Standard deviation of ``log(det J)`` over all voxels.

    ``det J`` is clipped below at ``SDLOGJ_CLIP = 1e-9`` before the log (no ``+3`` shift):
    a folded voxel contributes ``log(1e-9) ~ -20.7``, so folds inflate SDlogJ strongly
    (they are also reported on their own by :func:`folding_percentage`).
    """
    return _sdlogj_of(_jacobian_det(disp_vox))


def anatomical_plausibility(disp_vox: ArrayLike) -> float:
    """Fraction (0..1) of voxels whose local volume change is plausible: ``1/2 < det J < 2``.

    Equivalently ``det J > 0`` and ``|log det J| < log 2``: no folding, and no voxel
    compressed or expanded more than two-fold (voxel units; the determinant does not depend
    on the spacing). 1 for the identity.
    """
    det = _jacobian_det(disp_vox)
    ok = (det > 0) & (np.abs(np.log(np.clip(det, SDLOGJ_CLIP, None))) < PLAUSIBLE_LOG_VOLUME)
    return float(np.mean(ok))


def displacement_stats(disp_vox: ArrayLike, spacing: Spacing = None) -> Dict[str, float]:
    """Max and mean per-voxel displacement norm, in voxels and in mm (channel ``i`` times ``spacing[i]``)."""
    disp = _disp(disp_vox)
    sp = _spacing(spacing, disp.shape[0])
    norm_vox = np.sqrt(np.sum(disp**2, axis=0))
    norm_mm = np.sqrt(np.sum((disp * sp.reshape(-1, *([1] * (disp.ndim - 1)))) ** 2, axis=0))
    return {
        "max_disp_vox": float(norm_vox.max()),
        "mean_disp_vox": float(norm_vox.mean()),
        "max_disp_mm": float(norm_mm.max()),
        "mean_disp_mm": float(norm_mm.mean()),
    }


# --------------------------------------------------------------------------- intensity
def mse(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared difference."""
    a, b = _image_pair(a, b, "a", "b")
    return float(np.mean((a - b) ** 2))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


def ncc(a: ArrayLike, b: ArrayLike) -> float:
    """Global normalised cross-correlation (Pearson), in ``[-1, 1]``; NaN if either image is constant."""
    a, b = _image_pair(a, b, "a", "b")
    return _pearson(a, b)


def ssim(a: ArrayLike, b: ArrayLike, data_range: Optional[float] = None) -> float:
    """Gaussian-window SSIM (11 taps, sigma 1.5), 2D or 3D; data range ``max - min`` over both images.

    See ``losses.ssim_index`` (the same computation, in the precision of the inputs: float64, or
    float32 for two float32 images). Images smaller than 11 voxels along an axis use the
    largest odd window that fits.
    """
    a, b = _image_pair(a, b, "a", "b")
    if a.ndim not in (2, 3):
        raise ValueError(f"a must be a 2D or 3D image, got shape {a.shape}")
    window = min(11, min(a.shape) - (1 - min(a.shape) % 2))
    return float(
        ssim_index(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], data_range, window=window)
    )


def gradient_correlation(a: ArrayLike, b: ArrayLike) -> float:
    """Gradient correlation: mean over axes ``k`` of ``NCC(d a / d x_k, d b / d x_k)``.

    Derivatives by ``numpy.gradient`` (central differences), NCC as in :func:`ncc`; axes
    where either gradient is constant are skipped (NaN if all are). In ``[-1, 1]``, 1 when
    the edges line up.
    """
    a, b = _image_pair(a, b, "a", "b")
    if a.ndim not in (2, 3) or min(a.shape) < 2:
        raise ValueError(f"a must be a 2D or 3D image with >= 2 voxels per axis, got shape {a.shape}")
    values = [_pearson(ga, gb) for ga, gb in zip(np.gradient(a), np.gradient(b))]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------- target registration error
def _centroids(labels: np.ndarray, keep: list) -> np.ndarray:
    return np.asarray(ndimage.center_of_mass(np.ones(labels.shape), labels, keep), dtype=np.float64)


def tre_centroids(
    fixed_labels: ArrayLike, warped_labels: ArrayLike, spacing: Spacing = None, labels: Optional[Iterable[int]] = None
) -> float:
    """Mean distance (mm) between the centroids of each label in the fixed and the warped map.

    Over the non-background labels present in both maps; NaN when there is none.
    """
    a, b = _label_pair(fixed_labels, warped_labels, "fixed_labels", "warped_labels")
    keep = _labels_to_score(a, b, labels)
    if not keep:
        return float("nan")
    sp = _spacing(spacing, a.ndim)
    diff = (_centroids(a, keep) - _centroids(b, keep)) * sp
    return float(np.mean(np.sqrt(np.sum(diff**2, axis=1))))


def tre_landmarks(
    fixed_pts_vox: ArrayLike, moving_pts_vox: ArrayLike, disp_vox: ArrayLike, spacing: Spacing = None
) -> float:
    """Mean landmark error (mm): fixed landmark ``x`` maps to ``x + u(x)``, compared with its moving landmark.

    Args:
        fixed_pts_vox, moving_pts_vox: ``(N, ndim)`` voxel coordinates in array axis order.
        disp_vox: ``(ndim, *S)`` fixed -> moving field, sampled linearly at ``x`` (border clamp).
        spacing: mm per voxel (moving and fixed grids share it).
    """
    disp = _disp(disp_vox)
    ndim = disp.shape[0]
    fixed_pts = _array(fixed_pts_vox, "fixed_pts_vox")
    moving_pts = _array(moving_pts_vox, "moving_pts_vox")
    if fixed_pts.ndim != 2 or fixed_pts.shape[1] != ndim or fixed_pts.shape != moving_pts.shape:
        raise ValueError(
            f"fixed_pts_vox and moving_pts_vox must both be (N, {ndim}), got {fixed_pts.shape} and {moving_pts.shape}"
        )
    sp = _spacing(spacing, ndim)
    coords = torch.from_numpy(np.ascontiguousarray(fixed_pts.T)).reshape(1, ndim, -1, *([1] * (ndim - 1)))
    u = fields.sample(torch.from_numpy(disp)[None], coords).reshape(ndim, -1).numpy().T
    err = (fixed_pts + u - moving_pts) * sp
    return float(np.mean(np.sqrt(np.sum(err**2, axis=1))))


# --------------------------------------------------------------------------- summary
def registration_metrics(
    fixed: ArrayLike,
    warped: ArrayLike,
    disp_vox: ArrayLike,
    spacing: Spacing = None,
    fixed_labels: Optional[ArrayLike] = None,
    warped_labels: Optional[ArrayLike] = None,
    jacobian: Optional[ArrayLike] = None,
) -> Dict[str, float]:
    """All summary metrics of one registration, keyed by ``METRIC_KEYS``.

    ``jacobian``: the determinant of ``disp_vox``'s Jacobian when the caller already has it
    (``fields.jacobian_determinant``), so that it is not computed again. Float32 inputs are
    evaluated in float32.

    ``dice`` (mean over shared labels), ``hd95_mm`` (mean over shared labels) and ``tre_mm``
    (label-centroid TRE) are NaN without both label maps; the rest come from the images and
    the field.
    """
    fixed_a, warped_a = _image_pair(fixed, warped, "fixed", "warped")
    disp = _disp(disp_vox, shape=fixed_a.shape)
    sp = tuple(_spacing(spacing, disp.shape[0]))
    out = {key: float("nan") for key in METRIC_KEYS}
    if fixed_labels is not None and warped_labels is not None:
        lab_f, lab_w = _label_pair(fixed_labels, warped_labels, "fixed_labels", "warped_labels")
        if lab_f.shape != fixed_a.shape:
            raise ValueError(f"fixed_labels shape {lab_f.shape} does not match fixed {fixed_a.shape}")
        out["dice"] = mean_dice(lab_f, lab_w)
        out["hd95_mm"] = mean_hd95(lab_f, lab_w, sp)
        out["tre_mm"] = tre_centroids(lab_f, lab_w, sp)
    det = _jacobian_det(disp) if jacobian is None else _array(jacobian, "jacobian")
    if det.shape != fixed_a.shape:
        raise ValueError(f"jacobian shape {det.shape} does not match the image shape {fixed_a.shape}")
    out["folding_pct"] = _folding_pct_of(det)
    out["sdlogj"] = _sdlogj_of(det)
    out["mse"] = mse(fixed_a, warped_a)
    out["ncc"] = ncc(fixed_a, warped_a)
    out["ssim"] = ssim(fixed_a, warped_a)
    out.update(displacement_stats(disp, sp))
    return out
