"""Training: one variant's resumable training run, and the affine stage's pretraining.

- ``config``: :class:`TrainConfig` (everything a run depends on) and the pieces a command line gives it;
- ``trainer``: :func:`train` (setup, resume, the epochs' steps, validation, checkpoints);
- ``state``: RNG states, the global seed and the resume check;
- ``validation``: the validation metrics and the ``best.pt`` criterion;
- ``precision``: mixed precision on CUDA;  ``transfer``: ``--init-from`` and ``decoder_then_all``;
- ``affine_pretrain``: :func:`pretrain_affine` (the affine stage on random affines of real scans);
- ``distributed``: several processes (torchrun);  ``logs``: progress bar and the run's log files.
"""
from __future__ import annotations

from .affine_pretrain import pretrain_affine
from .config import FINETUNE_MODES, TrainConfig, arch_overrides, parse_regularizers, train_data_spec
from .state import capture_rng_state, check_resumable, restore_rng_state, seed_everything
from .trainer import KILL_HOOK_ENV, lr_factor, train

__all__ = [
    "FINETUNE_MODES", "TrainConfig", "arch_overrides", "parse_regularizers", "train_data_spec",
    "capture_rng_state", "restore_rng_state", "seed_everything", "check_resumable",
    "KILL_HOOK_ENV", "lr_factor", "train", "pretrain_affine",
]
