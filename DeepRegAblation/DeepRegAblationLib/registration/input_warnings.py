"""Inputs outside what the models know: warnings before the user trusts the numbers.

The models were trained and validated on whole brains and heads (T1, skull-stripped or not) registered
within a data set. A pair that is not like that still "registers" (exit 0, plausible-looking numbers); these
checks say so, with the measured value and the range seen on the validation data:

- **field of view**: the extent of an image's foreground (voxels above :data:`FOREGROUND_LEVEL` of its 1-99 %
  intensity window) along each of its axes, in mm: far smaller than any brain (a slab, a few slices) or far
  larger than any head (a body, a phantom);
- **background**: the median intensity on the faces of an image's field of view: dark for a head (or brain)
  in air, bright for inverted contrast or an image cut inside a body;
- **similarity**: the normalised cross-correlation of the fixed and the warped image after registration
  (``metrics["ncc"]``): lower than on any validation pair for another contrast, a non-brain image or a
  failed registration;
- **overlap**: the Dice overlap of the fixed image's foreground and the warped image's foreground after
  alignment: small when the alignment failed or left the images apart;
- **coverage**: the ratio of the two images' foreground volumes: far from 1 when one covers only part of the
  other (a network stretches a partial image over the whole fixed one, so the overlap alone misses it).

The features are computed on a subsample (about every :data:`SAMPLE_STEP_MM` mm, cheap at any size).
The thresholds (:data:`THRESHOLDS`) lie well outside the ranges (:data:`VALIDATION`) measured on the validation
subjects of the shipped 3D models' split and the demo's MNI152 pair with every variant, so that none of them
raises a warning:
``scripts/brains3d/input_thresholds.py`` and its output ``docs/results/input-thresholds/thresholds.md``.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..imageio import ImageData, normalize_intensity

__all__ = [
    "FOREGROUND_LEVEL", "SAMPLE_STEP_MM", "VALIDATION", "THRESHOLDS", "InputWarning", "foreground_extent_mm",
    "background_level", "foreground_volume_ml", "foreground_overlap", "input_features", "input_warnings", "warn_inputs",
]

FOREGROUND_LEVEL = 0.1
"""Foreground: normalised intensity (the 1-99 % window mapped to [0, 1]) above this."""
SAMPLE_STEP_MM = 2.0
"""The features are computed on every n-th voxel, n about this many mm over the smallest spacing."""
VALIDATION: Dict[str, Tuple[float, float]] = {
    "extent_mm": (115.0, 238.0),
    "background": (0.0, 0.0),
    "ncc": (0.88, 0.99),
    "overlap": (0.91, 0.98),
    "volume_ratio": (0.76, 1.37),
}
"""The range of each feature on the validation data (docs/results/input-thresholds/thresholds.md)."""
THRESHOLDS: Dict[str, float] = {
    "min_extent_mm": 60.0,
    "max_extent_mm": 400.0,
    "max_background": 0.25,
    "min_ncc": 0.75,
    "min_overlap": 0.8,
    "min_volume_ratio": 0.6,
}
"""Warning thresholds, each well outside :data:`VALIDATION`: a foreground extent below ``min_extent_mm`` (half the
smallest brain) or above ``max_extent_mm`` along some axis, a background level above ``max_background``, an NCC
after registration below ``min_ncc``, a foreground overlap after registration below ``min_overlap``, a ratio of
the two images' content volumes outside ``[min_volume_ratio, 1 / min_volume_ratio]``."""


class InputWarning(UserWarning):
    """An input outside what the models know (the command line prints it as one ``warning:`` line)."""


def _step(image: ImageData) -> int:
    """Subsampling step (voxels) of ``image``: about :data:`SAMPLE_STEP_MM` mm along its finest axis."""
    return max(1, int(SAMPLE_STEP_MM / float(min(image.spacing_kji))))


def _foreground(image: ImageData, window: Tuple[float, float], step: int) -> np.ndarray:
    """The subsampled foreground mask ``(K', J', I')`` of ``image``."""
    return normalize_intensity(image.array[::step, ::step, ::step], window=window) > FOREGROUND_LEVEL


def foreground_volume_ml(image: ImageData, window: Tuple[float, float]) -> float:
    """Volume (ml) of ``image``'s foreground (subsampled count times the voxel volume)."""
    step = _step(image)
    voxel_ml = abs(float(np.linalg.det(image.ijk_to_ras[:3, :3]))) / 1000.0
    return float(np.count_nonzero(_foreground(image, window, step))) * voxel_ml * step ** (2 if image.is_2d else 3)


def foreground_extent_mm(image: ImageData, window: Tuple[float, float]) -> np.ndarray:
    """Extent (mm) of ``image``'s foreground bounding box along its array axes ``(k, j, i)`` (0 when empty);
    a single-slice image's k extent is its slice thickness."""
    step = _step(image)
    mask = _foreground(image, window, step)
    spacing = np.asarray(image.spacing_kji, dtype=np.float64)
    extents = np.zeros(3)
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size:
            voxels = (present[-1] - present[0]) * step + 1 if image.shape[axis] > 1 else 1
            extents[axis] = min(voxels, image.shape[axis]) * spacing[axis]
    return extents


def background_level(image: ImageData, window: Tuple[float, float]) -> float:
    """Median normalised intensity (0..1) on the faces of ``image``'s field of view (subsampled): near 0 for an
    MR or CT scan (air around the head), near 1 when the contrast is inverted (a bright background)."""
    step = _step(image)
    sample = normalize_intensity(image.array[::step, ::step, ::step], window=window)
    faces = [sample[0], sample[-1], sample[:, 0], sample[:, -1], sample[:, :, 0], sample[:, :, -1]]
    if image.is_2d:
        faces = faces[2:]
    return float(np.median(np.concatenate([face.reshape(-1) for face in faces])))


def foreground_overlap(fixed: ImageData, warped: np.ndarray, windows: Tuple[Tuple[float, float], Tuple[float, float]]) -> float:
    """Dice overlap of the fixed image's foreground and the warped moving image's foreground (subsampled)."""
    step = _step(fixed)
    a = _foreground(fixed, windows[0], step)
    b = normalize_intensity(warped[::step, ::step, ::step], window=windows[1]) > FOREGROUND_LEVEL
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.count_nonzero(a & b)) / total if total else 0.0


def input_features(fixed: ImageData, moving: ImageData, warped: np.ndarray, ncc: float,
                   windows: Tuple[Tuple[float, float], Tuple[float, float]]) -> Dict[str, object]:
    """``{"fixed_extent_mm", "moving_extent_mm" (k, j, i), "fixed_background", "moving_background", "ncc",
    "overlap"}`` of one registration."""
    return {
        "fixed_extent_mm": foreground_extent_mm(fixed, windows[0]).tolist(),
        "moving_extent_mm": foreground_extent_mm(moving, windows[1]).tolist(),
        "fixed_background": background_level(fixed, windows[0]),
        "moving_background": background_level(moving, windows[1]),
        "volume_ratio": _ratio(foreground_volume_ml(moving, windows[1]), foreground_volume_ml(fixed, windows[0])),
        "ncc": float(ncc),
        "overlap": foreground_overlap(fixed, warped, windows),
    }


def _ratio(moving_ml: float, fixed_ml: float) -> float:
    """``moving / fixed`` (0 when the fixed image has no foreground)."""
    return moving_ml / fixed_ml if fixed_ml > 0 else 0.0


def _extent_warnings(extent_mm: Sequence[float], image: ImageData, role: str) -> List[str]:
    """The field-of-view warnings of one image (``extent_mm`` along ``(k, j, i)``; single-slice k skipped)."""
    low, high = THRESHOLDS["min_extent_mm"], THRESHOLDS["max_extent_mm"]
    seen = "{:.0f}-{:.0f} mm".format(*VALIDATION["extent_mm"])
    names = ("k", "j", "i")
    axes = range(1, 3) if image.is_2d else range(3)
    out = []
    small = [a for a in axes if extent_mm[a] < low]
    if small:
        parts = ", ".join(f"{extent_mm[a]:.0f} mm along {names[a]}" for a in small)
        out.append(f"the {role} image's content spans only {parts}, far less than a brain (validation images "
                   f"{seen}; warned below {low:.0f} mm): a slab or a few slices registered to a whole brain gives "
                   f"meaningless displacements")
    large = [a for a in axes if extent_mm[a] > high]
    if large:
        parts = ", ".join(f"{extent_mm[a]:.0f} mm along {names[a]}" for a in large)
        out.append(f"the {role} image's content spans {parts}, far more than a head (validation images {seen}; "
                   f"warned above {high:.0f} mm): not a brain image?")
    return out


def _background_warning(level: float, role: str) -> List[str]:
    if level <= THRESHOLDS["max_background"]:
        return []
    return [f"the {role} image's border is bright (median {level:.2f} of its intensity range; validation images "
            f"{VALIDATION['background'][1]:.2f} at most): inverted contrast, or not a head surrounded by air"]


def input_warnings(features: Dict[str, object], fixed: ImageData, moving: ImageData) -> List[str]:
    """The warnings (plain sentences, ``[]`` for an ordinary pair) of :func:`input_features`."""
    out = _extent_warnings(features["fixed_extent_mm"], fixed, "fixed")
    out += _extent_warnings(features["moving_extent_mm"], moving, "moving")
    out += _background_warning(float(features["fixed_background"]), "fixed")
    out += _background_warning(float(features["moving_background"]), "moving")
    ncc = float(features["ncc"])
    if not ncc >= THRESHOLDS["min_ncc"]:
        out.append(f"after registration the warped image resembles the fixed image less than any validation pair "
                   f"(NCC {ncc:.2f}; validation {VALIDATION['ncc'][0]:.2f}-{VALIDATION['ncc'][1]:.2f}, warned below "
                   f"{THRESHOLDS['min_ncc']}): another contrast, not a brain, or a failed registration")
    ratio = float(features["volume_ratio"])
    if not THRESHOLDS["min_volume_ratio"] <= ratio <= 1.0 / THRESHOLDS["min_volume_ratio"]:
        low, high = VALIDATION["volume_ratio"]
        out.append(f"the moving image holds {ratio:.2f} times the fixed image's content volume (validation pairs "
                   f"{low:.2f}-{high:.2f}): one image covers only part of the other, which the registration "
                   f"stretches to fit")
    overlap = float(features["overlap"])
    if not overlap >= THRESHOLDS["min_overlap"]:
        out.append(f"after alignment the moving image covers the fixed one less than in any validation pair "
                   f"(foreground overlap {overlap:.2f}; validation {VALIDATION['overlap'][0]:.2f}-"
                   f"{VALIDATION['overlap'][1]:.2f}, warned below {THRESHOLDS['min_overlap']}): partial coverage "
                   f"or a failed alignment")
    return out


def warn_inputs(messages: Sequence[str], variant: str) -> None:
    """Emit ``messages`` as :class:`InputWarning` s (``"<variant>: <message>"``)."""
    for message in messages:
        warnings.warn(f"{variant}: {message} - do not trust these numbers without a look", InputWarning, stacklevel=3)
