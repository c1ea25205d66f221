"""The initial alignment before the network: centres of mass translated together, or the volumes as they lie.

- :func:`center_of_mass_alignment`: the RAS translation taking the fixed image's intensity centre of
  mass onto the moving image's (1-99 percentile normalised intensities as weights).
- :func:`decide_initial_alignment`: the ``auto`` choice for a model that does not record what it was
  trained with: centres of mass for 3D pairs whose centres lie more than :data:`COM_DISTANCE_MM`
  apart or that do not overlap in physical space (scans of different subjects or scanners); the
  decision comes with one line for the status log (:class:`AlignmentDecision`).

The choices themselves (``auto``, ``com``, ``none``) are ``options.ALIGNMENT_CHOICES``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import geometry
from ..imageio import ImageData, normalize_intensity
from ..options import ALIGNMENT_CHOICES

__all__ = ["COM_DISTANCE_MM", "AlignmentDecision", "center_of_mass_alignment", "center_distance_mm",
           "decide_initial_alignment"]

COM_DISTANCE_MM = 20.0
"""Centres of mass further apart than this (mm) are aligned first by the ``auto`` choice."""


def center_of_mass_alignment(
    fixed: ImageData, moving: ImageData, fixed_norm: Optional[np.ndarray] = None, moving_norm: Optional[np.ndarray] = None
) -> np.ndarray:
    """``(4, 4)`` RAS translation taking the fixed image's intensity centre of mass onto the moving image's.

    The weights are the 1-99 percentile normalised intensities (``fixed_norm`` / ``moving_norm``
    when already computed), so the background counts for little.
    """
    fixed_norm = normalize_intensity(fixed.array) if fixed_norm is None else fixed_norm
    moving_norm = normalize_intensity(moving.array) if moving_norm is None else moving_norm
    return geometry.translation_matrix(
        geometry.center_of_mass_ras(moving_norm, moving.ijk_to_ras) - geometry.center_of_mass_ras(fixed_norm, fixed.ijk_to_ras)
    )


@dataclass(frozen=True)
class AlignmentDecision:
    """``initial_alignment`` ("com" or "none") for ``register``, and why, in one line for the log."""

    initial_alignment: str
    reason: str


def center_distance_mm(fixed: ImageData, moving: ImageData) -> float:
    """Distance (mm) between the intensity centres of mass, weighted as ``register`` weighs them
    (1-99 percentile normalised intensities)."""
    centres = [geometry.center_of_mass_ras(normalize_intensity(image.array), image.ijk_to_ras)
               for image in (fixed, moving)]
    return float(np.linalg.norm(centres[1] - centres[0]))


def decide_initial_alignment(fixed: ImageData, moving: ImageData, choice: str = "auto",
                             threshold_mm: float = COM_DISTANCE_MM) -> AlignmentDecision:
    """Resolve the alignment choice (``options.ALIGNMENT_CHOICES``) for this pair (see the module docstring)."""
    if choice not in ALIGNMENT_CHOICES:
        raise ValueError(f"alignment choice must be one of {ALIGNMENT_CHOICES}, got {choice!r}")
    if choice == "com":
        return AlignmentDecision("com", "Aligning the centres of mass first (as chosen).")
    if choice == "none":
        return AlignmentDecision("none", "No initial alignment (as chosen): the volumes are used where they lie.")
    if fixed.is_2d or moving.is_2d:
        return AlignmentDecision("none", "2D images: no automatic centre alignment.")
    overlap = geometry.overlap_fraction(fixed.shape, fixed.ijk_to_ras, moving.shape, moving.ijk_to_ras)
    try:
        distance = center_distance_mm(fixed, moving)
    except ValueError:  # an image with no intensity: register() names it
        return AlignmentDecision("none", "No automatic centre alignment: an image has no intensity to weigh.")
    if overlap <= 0.0:
        return AlignmentDecision(
            "com", f"The volumes do not overlap in physical space (centres of mass {distance:.0f} mm apart): "
                   "aligning their centres of mass first (choose 'Never' to turn this off).")
    if distance > threshold_mm:
        return AlignmentDecision(
            "com", f"The centres of mass of the volumes are {distance:.0f} mm apart (more than {threshold_mm:g} mm): "
                   "aligning them first (choose 'Never' to turn this off).")
    return AlignmentDecision(
        "none", f"The centres of mass are {distance:.1f} mm apart: the volumes are used where they lie.")
