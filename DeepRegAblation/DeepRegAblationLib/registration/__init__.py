"""Registration of physical images with one model: the pipeline and its parts.

- ``pipeline``: :func:`register` (inputs -> model grid -> network [-> refinement] -> full-resolution
  result) and ``refine_without_network``;
- ``mapping``: :func:`result_from_mapping` (a total mapping -> warped image, Jacobian, metrics: the common end of
  every method);
- ``result``: :class:`RegistrationResult` and its ``result.npz`` format;
- ``devices``: :func:`resolve_device`, :func:`run_with_cpu_fallback`;
- ``model_grid``: the grid the network sees;
- ``alignment``: the initial alignment (centres of mass) and the ``auto`` decision;
- ``refine`` and ``pyramid``: the instance refinement after the network (the function is
  ``registration.refine.refine``: the package does not re-export it, so that ``registration.refine``
  stays the module).

``DeepRegAblationLib.inference`` re-exports the public names for the code written against it
(``inference.refine`` is the function).
"""
from .alignment import (
    COM_DISTANCE_MM,
    AlignmentDecision,
    center_distance_mm,
    center_of_mass_alignment,
    decide_initial_alignment,
)
from .devices import resolve_device, run_with_cpu_fallback
from .model_grid import model_grid_spec, model_orientation, model_size_multiple
from .mapping import result_from_mapping
from .pipeline import register
from .refine import REFINE_SCHEDULES, RefineResult, RefineSchedule, refine_schedule
from .result import RESULT_FORMAT, RegistrationResult

__all__ = [
    "register", "result_from_mapping", "RegistrationResult", "RESULT_FORMAT", "resolve_device",
    "run_with_cpu_fallback", "model_grid_spec", "model_orientation", "model_size_multiple", "COM_DISTANCE_MM",
    "AlignmentDecision", "center_distance_mm", "center_of_mass_alignment", "decide_initial_alignment",
    "RefineSchedule", "REFINE_SCHEDULES", "RefineResult", "refine_schedule",
]
