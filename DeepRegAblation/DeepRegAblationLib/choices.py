"""The module panel's simple choices, turned into ``register`` arguments (no Slicer, no Qt).

- Refinement: ``off`` / ``recommended`` / ``thorough`` / ``custom`` (iterations per level) ->
  ``register(refine=0 | "recommended" | "thorough" | N)`` and the matching ``--refine`` arguments
  of the command line.
- The background run's ``register`` command line (:func:`register_arguments`).
- Initial alignment: ``auto`` / ``com`` / ``none``. ``auto`` is decided by ``register``: what the
  model was trained with (the shipped 3D models: centres of mass), and for a model that does not
  record it :func:`decide_initial_alignment`, which translates the moving image's intensity centre
  of mass onto the fixed image's for 3D pairs whose centres lie more than :data:`COM_DISTANCE_MM`
  apart or that do not overlap in physical space (scans of different subjects or scanners); the
  decision comes with one line for the status log.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from . import geometry
from .imageio import ImageData, normalize_intensity
from .variants import VARIANTS

REFINE_CHOICES = ("off", "recommended", "thorough", "custom")
ALIGNMENT_CHOICES = ("auto", "com", "none")
COM_DISTANCE_MM = 20.0
"""Centres of mass further apart than this (mm) are aligned first by the ``auto`` choice."""

RefineArgument = Union[int, str]


def refine_argument(choice: str, iterations: int = 0) -> RefineArgument:
    """``register``'s ``refine`` for a refinement choice: 0 (off), "recommended", "thorough", or
    ``iterations`` (``custom``, at least 1)."""
    if choice not in REFINE_CHOICES:
        raise ValueError(f"refinement choice must be one of {REFINE_CHOICES}, got {choice!r}")
    if choice == "off":
        return 0
    if choice != "custom":
        return choice
    if int(iterations) < 1:
        raise ValueError(f"custom refinement needs at least 1 iteration, got {iterations}")
    return int(iterations)


def refine_cli_arguments(refine: RefineArgument) -> List[str]:
    """The ``register`` command line's arguments for ``refine``: none (off), ``--refine``
    (recommended), ``--refine thorough`` or ``--refine N``."""
    if refine == "recommended":
        return ["--refine"]
    if refine == "thorough":
        return ["--refine", "thorough"]
    if isinstance(refine, str) or int(refine) < 0:
        raise ValueError(f"refine must be 'recommended', 'thorough' or a number of iterations >= 0, got {refine!r}")
    return ["--refine", str(int(refine))] if int(refine) > 0 else []


def register_arguments(files: Dict[str, Path], out_dir: Path, variant_ids: Sequence[str], model: Optional[str],
                       device: str, refine: RefineArgument = 0, initial_alignment: str = "none") -> List[str]:
    """``register`` and its arguments for the panel's background run (the input files written by the
    panel: ``files["fixed"]``, ``["moving"]``, optional ``["fixed_labels"]``, ``["moving_labels"]``).

    ``variant_ids``: one variant or all four; ``initial_alignment``: "auto" (``register`` decides:
    what the model was trained with, else :func:`decide_initial_alignment`), "none" or "com".
    """
    args = ["register", "--fixed", str(files["fixed"]), "--moving", str(files["moving"])]
    for role in ("fixed_labels", "moving_labels"):
        if role in files:
            args += [f"--{role.replace('_', '-')}", str(files[role])]
    if list(variant_ids) == list(VARIANTS):
        args += ["--variant", "all"]
    elif len(variant_ids) == 1:
        args += ["--variant", variant_ids[0]]
    else:
        raise ValueError(f"the background registration runs one variant or all four, got {list(variant_ids)}")
    if model:
        args += ["--model", str(model)]
    if initial_alignment not in ALIGNMENT_CHOICES:
        raise ValueError(f"initial_alignment must be one of {ALIGNMENT_CHOICES}, got {initial_alignment!r}")
    return args + ["--device", device, *refine_cli_arguments(refine), "--init-align", initial_alignment,
                   "--save-npz", "--no-scene", "--out", str(out_dir)]  # the panel builds its nodes from result.npz


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
    """Resolve the panel's alignment choice for this pair (see the module docstring)."""
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
