"""Old path of the training logs: a re-export of ``training.logs`` (removed by the integration step of issue 22)."""
from __future__ import annotations

from .training.logs import ProgressBar, TrainLogger

__all__ = ["ProgressBar", "TrainLogger"]
