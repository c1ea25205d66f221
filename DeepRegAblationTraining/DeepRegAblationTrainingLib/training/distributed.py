"""Multi-process training helpers (torchrun / ``torch.distributed``), no-ops in a single process.

Launch several processes with ``torchrun --nproc_per_node N -m DeepRegAblationTrainingLib.cli
train ...`` (or ``--nnodes`` for several machines). Each process reads ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` from the environment (:func:`init_distributed`); the backend is NCCL on CUDA
and gloo on the CPU. Rank 0 writes checkpoints and logs. Data are sharded deterministically
(:func:`shard_batches`): batch ``b`` of rank ``r`` in an epoch holds the dataset indices
``(b * batch_size + k) * world_size + r``, so the union over ranks is the same sequence of
pairs for any number of processes and the shards are a pure function of (seed, epoch, step).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "dist_info_from_env", "init_distributed", "is_initialized", "cleanup", "barrier", "shard_batches",
    "any_true", "average_gradients", "wrap",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def dist_info_from_env() -> DistInfo:
    """``DistInfo`` from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (defaults: one process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def init_distributed(device_type: str = "cpu") -> DistInfo:
    """Join the process group described by the environment (once); ``DistInfo()`` for a single process.

    Args:
        device_type: ``"cuda"`` selects the NCCL backend (and sets the current CUDA device to
            ``LOCAL_RANK``), anything else gloo.
    """
    info = dist_info_from_env()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return info


def is_initialized() -> bool:
    """Whether this process is in a ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def cleanup() -> None:
    """Leave the process group if this process joined one."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if is_initialized():
        dist.barrier()


def shard_batches(steps: int, batch_size: int, info: DistInfo, start_step: int = 0) -> List[List[int]]:
    """Dataset indices of this rank's batches for steps ``start_step .. steps - 1`` of an epoch.

    Returns ``steps - start_step`` lists of ``batch_size`` indices (see the module docstring).
    """
    world, rank = info.world_size, info.rank
    return [
        [(step * batch_size + k) * world + rank for k in range(batch_size)]
        for step in range(int(start_step), int(steps))
    ]


def any_true(flag: bool, device: Optional[torch.device] = None) -> bool:
    """``True`` when ``flag`` is true on any rank (an all-reduce; the flag itself without a group)."""
    if not is_initialized():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks for parameters outside the DDP module (e.g. learned loss weights).

    Every rank must pass the same parameters in the same order; a parameter without gradient
    takes part with zeros (its grad stays ``None`` if it is ``None`` on every rank).
    """
    if not is_initialized():
        return
    params = list(parameters)
    if not params:
        return
    world = dist.get_world_size()
    for p in params:
        has = torch.tensor([0.0 if p.grad is None else 1.0], device=p.device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        if has.item() == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when several processes train, else ``model``.

    DDP broadcasts rank 0's parameters at construction, so every rank starts identical.
    """
    if not info.enabled:
        return model
    if device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return torch.nn.parallel.DistributedDataParallel(model)
