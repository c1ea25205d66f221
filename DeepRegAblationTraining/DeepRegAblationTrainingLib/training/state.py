"""What makes a run resumable: every RNG state, the global seed, and the check that a run may be resumed.

A training checkpoint holds :func:`capture_rng_state` (python, numpy, torch, CUDA; tensors and lists, so
``torch.load(weights_only=True)`` reads it); resuming restores it (:func:`restore_rng_state`) after
:func:`check_resumable` has made sure the saved run is the same experiment.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np
import torch

from . import distributed
from .config import TrainConfig

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything", "check_resumable"]


def capture_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors / lists (``weights_only``-loadable)."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: Dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in state], "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.to(torch.uint8).cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (numpy with ``seed mod 2**32``)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def check_resumable(ckpt: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """The run in ``path`` must be the same experiment (``steps`` may grow)."""
    saved = ckpt.get("config") or {}
    mine = config.to_dict()
    keys = ("variant", "ndim", "data", "steps_per_epoch", "batch_size", "lr", "seed", "uncertainty",
            "seg_weight", "affine_weight", "similarity", "regularizers", "schedule", "reg_scale", "arch", "finetune",
            "distill_weight", "distill_fraction", "similarity_mask_dilation")
    defaults = {"reg_scale": 1.0, "affine_weight": 0.0, "distill_weight": 0.0, "distill_fraction": 1.0}  # checkpoints written before the field existed
    differ = [k for k in keys if json.dumps(saved.get(k, defaults.get(k)), sort_keys=True)
              != json.dumps(mine.get(k, defaults.get(k)), sort_keys=True)]
    if differ:
        details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {mine.get(k)!r}" for k in differ)
        raise ValueError(f"cannot resume {path}: the configuration differs ({details})")
    for key in ("epoch", "global_step", "optimizer_state", "rng_state"):
        if key not in ckpt:
            raise ValueError(f"cannot resume {path}: it is not a training checkpoint (no {key!r})")
    if int(ckpt.get("world_size", 1)) != distributed.dist_info_from_env().world_size:
        raise ValueError(
            f"cannot resume {path}: it was written by {ckpt.get('world_size')} process(es), "
            f"this run has {distributed.dist_info_from_env().world_size}"
        )
