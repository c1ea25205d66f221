"""The outcome of one registration: :class:`RegistrationResult`, and its ``result.npz`` file format.

Every array is on the full-resolution FIXED grid, numpy axis order ``(K, J, I)``, RAS mm.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["RESULT_FORMAT", "RegistrationResult"]

PathLike = Union[str, Path]

RESULT_FORMAT = "deepreg-ablation-result/1"
"""The ``format`` entry of a ``result.npz`` (:meth:`RegistrationResult.save`)."""


@dataclass
class RegistrationResult:
    """Everything one registration produced, on the full-resolution FIXED grid.

    Attributes:
        variant: variant id of the model.
        fixed_ijk_to_ras: ``(4, 4)`` grid of every array below.
        warped: ``(K, J, I)`` float32, the original moving image at ``p + u(p)``.
        warped_labels: ``(K, J, I)`` int32 (nearest neighbour), or ``None``.
        affine_ras: ``(4, 4)`` affine part, fixed RAS point -> moving RAS point.
        disp_ras_mm: ``(K, J, I, 3)`` float32 total displacement, RAS mm: fixed ``p`` -> moving ``p + u(p)``.
        deform_disp_ras_mm: ``(K, J, I, 3)`` float32 deformable part: moving point ``= affine_ras(p + u_def(p))``.
        jacobian: ``(K, J, I)`` float32 determinant of the Jacobian of the total mapping.
        metrics: ``metrics.registration_metrics`` keys plus ``runtime_s`` (the registration: inputs in
            memory to the full-resolution field, warped image and labels) and ``metrics_s`` (the metrics).
        timings: seconds per stage (``read``, ``resample``, ``model``, ``refine`` and ``refine_<stage>_<s>mm``
            per level, ``upsample``, ``warp``, ``metrics``).
        warnings: plain sentences about inputs outside what the models know (``registration.input_warnings``),
            ``[]`` for an ordinary pair.
    """

    variant: str
    fixed_ijk_to_ras: np.ndarray
    warped: np.ndarray
    warped_labels: Optional[np.ndarray]
    affine_ras: np.ndarray
    disp_ras_mm: np.ndarray
    deform_disp_ras_mm: np.ndarray
    jacobian: np.ndarray
    metrics: Dict[str, float] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    _ARRAYS = ("fixed_ijk_to_ras", "warped", "affine_ras", "disp_ras_mm", "deform_disp_ras_mm", "jacobian")

    def save(self, path: PathLike) -> Path:
        """Write a compressed ``.npz`` (no pickled objects; metrics/timings as JSON text). Atomic."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.asarray(getattr(self, name)) for name in self._ARRAYS}
        if self.warped_labels is not None:
            arrays["warped_labels"] = np.asarray(self.warped_labels)
        arrays["format"] = np.array(RESULT_FORMAT)
        arrays["variant"] = np.array(self.variant)
        arrays["metrics_json"] = np.array(json.dumps({k: float(v) for k, v in self.metrics.items()}))
        arrays["timings_json"] = np.array(json.dumps({k: float(v) for k, v in self.timings.items()}))
        arrays["warnings_json"] = np.array(json.dumps([str(w) for w in self.warnings]))
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=str(path.parent))
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez_compressed(handle, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: PathLike) -> "RegistrationResult":
        """Read a file written by :meth:`save` (``allow_pickle=False``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"registration result file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != RESULT_FORMAT:
                raise ValueError(f"{path} is not a DeepRegAblation registration result ({RESULT_FORMAT})")
            return cls(
                variant=str(data["variant"]),
                warped_labels=data["warped_labels"] if "warped_labels" in data.files else None,
                metrics=json.loads(str(data["metrics_json"])),
                timings=json.loads(str(data["timings_json"])),
                warnings=json.loads(str(data["warnings_json"])) if "warnings_json" in data.files else [],
                **{name: data[name] for name in cls._ARRAYS},
            )

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.warped.shape)
