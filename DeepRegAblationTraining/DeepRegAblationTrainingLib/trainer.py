"""Old path of the trainer: a re-export of ``training`` (the integration step of issue 22 removes it).

:func:`train` and its configuration live in ``DeepRegAblationTrainingLib.training``.
"""
from __future__ import annotations

from .training.config import FINETUNE_MODES, TrainConfig
from .training.precision import amp_dtype, enable_mixed_precision
from .training.state import capture_rng_state, check_resumable, restore_rng_state, seed_everything
from .training.trainer import KILL_HOOK_ENV, Progress, lr_factor, train
from .training.transfer import frozen_parameters, init_from_checkpoint
from .training.validation import validate

_check_resumable = check_resumable  # commands/ablation.py (until the integration step rewrites it)

__all__ = [
    "FINETUNE_MODES", "TrainConfig", "amp_dtype", "enable_mixed_precision", "capture_rng_state", "check_resumable",
    "restore_rng_state", "seed_everything", "KILL_HOOK_ENV", "Progress", "lr_factor", "train", "frozen_parameters",
    "init_from_checkpoint", "validate",
]
