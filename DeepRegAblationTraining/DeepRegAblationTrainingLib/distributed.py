"""Old path of the multi-process helpers: a re-export of ``training.distributed`` (removed by the integration step of issue 22)."""
from __future__ import annotations

from .training.distributed import (
    DistInfo, any_true, average_gradients, barrier, cleanup, dist_info_from_env, init_distributed, is_initialized,
    shard_batches, wrap,
)

__all__ = [
    "DistInfo", "dist_info_from_env", "init_distributed", "is_initialized", "cleanup", "barrier", "shard_batches",
    "any_true", "average_gradients", "wrap",
]
