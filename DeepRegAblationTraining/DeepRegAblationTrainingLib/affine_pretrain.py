"""Old path of the affine pretraining: a re-export of ``training.affine_pretrain`` (removed by the integration step of issue 22)."""
from __future__ import annotations

from .training.affine_pretrain import (
    DEFAULT_RANGES, LATTICE, affine_point_error_mm, pretrain_affine, random_affine_vox, synthetic_affine_pair,
    validation_error_mm,
)

__all__ = [
    "DEFAULT_RANGES", "LATTICE", "random_affine_vox", "affine_point_error_mm", "synthetic_affine_pair",
    "validation_error_mm", "pretrain_affine",
]
