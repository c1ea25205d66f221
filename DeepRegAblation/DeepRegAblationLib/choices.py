"""Old home of the panel's choices, kept until the integration of the re-layout (issue 22) moves
:func:`register_arguments` to ``panel.py`` and removes this shim.

The choices are ``options`` now (``REFINE_CHOICES``, ``ALIGNMENT_CHOICES``, ``refine_argument``,
``refine_cli_arguments``); the ``auto`` alignment decision is ``registration.alignment``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .models.variants import VARIANTS
from .options import ALIGNMENT_CHOICES, REFINE_CHOICES, RefineArgument, refine_argument, refine_cli_arguments
from .registration.alignment import COM_DISTANCE_MM, AlignmentDecision, center_distance_mm, decide_initial_alignment

__all__ = [
    "REFINE_CHOICES", "ALIGNMENT_CHOICES", "COM_DISTANCE_MM", "RefineArgument", "refine_argument",
    "refine_cli_arguments", "register_arguments", "AlignmentDecision", "center_distance_mm", "decide_initial_alignment",
]


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
