"""Registration of physical images: ``register``, instance refinement and ``RegistrationResult``.

This module keeps the names that lived here before the re-layout (issue 22); the code is in
``registration`` (the pipeline, the result, devices, the model grid, the initial alignment, the
refinement) and ``models.resolve`` (shipped weights, checkpoint files). ``inference.register`` and
``inference.refine`` stay the entry points of the API.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from .models.resolve import MODELS_DIR, resolve_model, shipped_model_path
from .options import ALIGNMENT_CHOICES as INITIAL_ALIGNMENTS
from .registration.alignment import center_of_mass_alignment
from .registration.devices import resolve_device, run_with_cpu_fallback
from .registration.model_grid import model_grid_spec, model_orientation
from .registration.mapping import result_from_mapping
from .registration.pipeline import register
from .registration.refine import (
    REFINE_DIFFUSION_WEIGHT,
    REFINE_FOLDING_WEIGHT,
    REFINE_FOREGROUND,
    REFINE_LNCC_WINDOW,
    REFINE_MIN_OVERLAP,
    REFINE_SCHEDULES,
    REFINE_THREADS,
    RefineResult,
    RefineSchedule,
    refine,
    refine_schedule,
)
from .registration.result import RESULT_FORMAT, RegistrationResult

__all__ = [
    "RESULT_FORMAT", "MODELS_DIR", "INITIAL_ALIGNMENTS", "RegistrationResult", "resolve_device", "shipped_model_path",
    "load_registration_model", "model_orientation", "model_grid_spec", "RefineSchedule", "REFINE_SCHEDULES",
    "REFINE_LNCC_WINDOW", "REFINE_DIFFUSION_WEIGHT", "REFINE_FOLDING_WEIGHT", "REFINE_FOREGROUND", "REFINE_THREADS",
    "REFINE_MIN_OVERLAP", "refine_schedule", "RefineResult", "refine", "run_with_cpu_fallback",
    "center_of_mass_alignment", "register", "result_from_mapping",
]


def load_registration_model(model: Any, ndim: int) -> Tuple[torch.nn.Module, Optional[dict], bool]:
    """Resolve ``model`` (variant id, checkpoint path or model) -> ``(model, preprocessing, trained)``.

    The former API of ``models.resolve.resolve_model`` (kept for one release): a variant id gives an
    untrained network (``trained=False``) of dimension ``ndim``; a path is read once and its model gets
    the checkpoint's ``preprocessing`` as an attribute; a model object is used as is (its
    ``preprocessing`` attribute, if any, is honoured).
    """
    loaded = resolve_model(model, ndim)
    return loaded.model, loaded.preprocessing, loaded.trained
