"""Resumable training of one variant: :class:`TrainConfig` and :func:`train`.

What a step does: a batch of pairs, ``model(moving, fixed)`` (its convolution stacks under
``torch.autocast`` on CUDA when ``amp``: :func:`enable_mixed_precision`),
``CompositeLoss(outputs, fixed, moving, labels, epoch, epochs)`` in float32 (the
reference regularisation schedule ``max(0.01, 0.1 * (1 - epoch / epochs))`` for the
regularised variants), backward, gradient-norm clipping (1.0) of the network's parameters,
Adam. A step whose loss is NaN / inf (or, without a gradient scaler, whose gradient norm is)
is skipped and counted; more than ``max_nonfinite`` of them abort the run.

Determinism and resuming. The model is initialised from ``seed``; the pairs and their
augmentations are a pure function of ``(seed, epoch, index)`` (``data``), and the shard of a
process a pure function of ``(epoch, step, rank)`` (``distributed.shard_batches``). At every
epoch end rank 0 writes ``last.pt`` atomically with the model, the optimiser, the loss
parameters, the gradient-scaler state, every RNG state (python, numpy, torch, CUDA), the
config, the data split and the history. ``resume=True`` restarts from ``last.pt`` at the next
epoch boundary; on the CPU the result is bitwise identical to an uninterrupted run (same
thread count). Steps logged by the interrupted run after its last checkpoint are dropped from
the logs.

Files in ``out_dir``: ``last.pt`` (every epoch), ``best.pt`` (validation improved),
``epoch_XXXX.pt`` (every ``checkpoint_every`` epochs), ``split.json``, ``val_pairs.json``,
``config.json``, ``steps.csv/.jsonl``, ``epochs.csv/.jsonl``, ``tensorboard/`` (when available).

Transfer learning: ``init_from`` loads the weights of a checkpoint of the same architecture
(same ``ndim``, affine stage and feature counts; otherwise a ``ValueError`` naming both).
``finetune="decoder_then_all"`` trains only the decoder and flow head for the first half of
the optimiser steps (the U-Net encoder and, if present, the affine stage are frozen: their
gradients are dropped, so Adam does not touch them), then everything; ``"all"`` trains
everything from the start.

Several processes: launch with ``torchrun`` (see ``distributed``); gradients are averaged by
DistributedDataParallel, every rank holds identical weights, rank 0 validates and writes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from DeepRegAblationLib import fields, metrics
from DeepRegAblationLib.checkpoints import architecture, describe_architecture, load_checkpoint, load_model_state, save_checkpoint
from DeepRegAblationLib.inference import resolve_device
from DeepRegAblationLib.losses import SIMILARITIES, CompositeLoss
from DeepRegAblationLib.networks import RegistrationModel, build_model
from DeepRegAblationLib.variants import VariantSpec, get_variant

from . import distributed
from .augment import seeded_generator
from .data import build_data, collate_pairs, data_ndim
from .logging_utils import ProgressBar, TrainLogger

Progress = Optional[Callable[[float, str], None]]
FINETUNE_MODES = ("all", "decoder_then_all")
KILL_HOOK_ENV = "DEEPREG_ABLATION_TEST_KILL_AT_STEP"  # test hook: SIGKILL this process before that step


@dataclass
class TrainConfig:
    """Everything a training run depends on (JSON-safe; stored in every checkpoint).

    Attributes:
        variant: variant id (``"baseline"``, ``"regloss"``, ``"affine_basic"``, ``"affine_enhanced"``)
            or a ``VariantSpec`` dict.
        ndim: 2 or 3; ``None``: implied by the data (``oasis2d`` -> 2, else 3).
        out_dir: run folder (checkpoints, logs, split).
        data: data spec for :func:`data.build_data` (``{"kind": "oasis2d", "path": ...}`` ...).
        steps: total optimiser steps (skipped non-finite steps included).
        steps_per_epoch: steps between checkpoints / validations; ``epochs = ceil(steps / steps_per_epoch)``
            is the ``epochs`` of the regularisation schedule.
        batch_size: pairs per step and process.
        lr: Adam learning rate; ``None``: the variant's (1e-3, or 3e-4 with the affine stage).
        lr_anneal_steps: the last ``lr_anneal_steps`` steps of the run lower the learning rate from ``lr`` to 0
            along a half cosine (:func:`lr_factor`); 0: constant. Not part of the resume check, so a run trained at
            a constant rate can be resumed with a longer ``steps`` and an anneal over the added steps.
        seed: seeds the initial weights, the split, the pairs and the augmentation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (``cuda:LOCAL_RANK`` under torchrun).
        amp: mixed precision (``torch.autocast``) on CUDA; ignored on the CPU.
        checkpoint_every: epochs between ``epoch_XXXX.pt`` files (0: none).
        val_every: epochs between validations (0: none; ``best.pt`` then never written).
        resume: continue from ``out_dir/last.pt`` (a fresh start when there is none).
        init_from: checkpoint whose weights initialise the model (same architecture).
        finetune: ``"all"`` or ``"decoder_then_all"`` (see the module docstring).
        uncertainty: learned uncertainty weighting of the loss terms (``CompositeLoss``).
        seg_weight: weight of the Dice loss on warped labels (needs labelled data).
        affine_weight: weight of the affine stage's own loss (``CompositeLoss``: similarity and
            Dice of the moving image warped by the affine part alone); affine variants only.
        similarity: similarity override (a key of ``losses.SIMILARITIES``).
        regularizers: regulariser weights replacing the variant's (``{}`` = none).
        schedule: regulariser schedule replacing the variant's (``"reference"`` or ``"constant"``).
        reg_scale: every regulariser weight (the variant's or ``regularizers``) times this; with
            ``schedule="constant"`` this is the "tuned" setting of the 3D models (see ``docs/models.md``).
        arch: architecture overrides for ``networks.build_model`` (``enc_features`` ...).
        max_nonfinite: skipped steps tolerated before the run aborts.
        log_tensorboard: TensorBoard events when ``torch.utils.tensorboard`` imports.
        wandb: log to Weights & Biases.
        num_workers: data-loader worker processes.
        threads: ``torch.set_num_threads`` (``None`` leaves it).
        progress_bar: show a progress bar / progress lines on stderr.
        grad_clip: gradient-norm clipping threshold.
    """

    variant: Union[str, Dict[str, Any]] = "baseline"
    ndim: Optional[int] = None
    out_dir: str = "runs/train"
    data: Dict[str, Any] = field(default_factory=lambda: {"kind": "mni-synthetic"})
    steps: int = 1000
    steps_per_epoch: int = 100
    batch_size: int = 1
    lr: Optional[float] = None
    lr_anneal_steps: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    checkpoint_every: int = 10
    val_every: int = 1
    resume: bool = False
    init_from: Optional[str] = None
    finetune: str = "all"
    uncertainty: bool = False
    seg_weight: float = 0.0
    affine_weight: float = 0.0
    similarity: Optional[str] = None
    regularizers: Optional[Dict[str, float]] = None
    schedule: Optional[str] = None
    reg_scale: float = 1.0
    arch: Optional[Dict[str, Any]] = None
    max_nonfinite: int = 20
    log_tensorboard: bool = True
    wandb: bool = False
    num_workers: int = 0
    threads: Optional[int] = None
    progress_bar: bool = True
    grad_clip: float = 1.0

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["init_from"] = None if self.init_from is None else str(self.init_from)
        return json.loads(json.dumps(d, default=str))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**dict(d))

    def validate(self) -> None:
        """``ValueError`` naming the first bad field."""
        for name in ("steps", "steps_per_epoch", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("checkpoint_every", "val_every", "max_nonfinite", "num_workers", "lr_anneal_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.lr_anneal_steps > self.steps:
            raise ValueError(f"lr_anneal_steps ({self.lr_anneal_steps}) must not exceed steps ({self.steps})")
        if self.ndim not in (None, 2, 3):
            raise ValueError(f"ndim must be 2, 3 or None, got {self.ndim!r}")
        if self.lr is not None and not (math.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {list(FINETUNE_MODES)}, got {self.finetune!r}")
        for name in ("seg_weight", "affine_weight"):
            if not (math.isfinite(float(getattr(self, name))) and float(getattr(self, name)) >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if not (math.isfinite(float(self.reg_scale)) and float(self.reg_scale) >= 0):
            raise ValueError(f"reg_scale must be a number >= 0, got {self.reg_scale!r}")
        if not (math.isfinite(float(self.grad_clip)) and float(self.grad_clip) > 0):
            raise ValueError(f"grad_clip must be a positive number, got {self.grad_clip!r}")
        if self.similarity is not None and self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {sorted(SIMILARITIES)}, got {self.similarity!r}")
        if not isinstance(self.data, Mapping) or "kind" not in self.data:
            raise ValueError(f"data must be a data spec dict with a 'kind', got {self.data!r}")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise FileNotFoundError(f"init_from checkpoint not found: {self.init_from}")

    def variant_spec(self) -> VariantSpec:
        """The variant with this config's ``lr`` / ``similarity`` / ``regularizers`` overrides."""
        overrides: Dict[str, Any] = {}
        if self.lr is not None:
            overrides["lr"] = float(self.lr)
        if self.similarity is not None:
            overrides["similarity"] = self.similarity
        if self.regularizers is not None:
            overrides["regularizers"] = dict(self.regularizers)
        if self.schedule is not None:
            overrides["schedule"] = self.schedule
        if float(self.reg_scale) != 1.0:
            base = overrides.get("regularizers", get_variant(self.variant).regularizers)
            overrides["regularizers"] = {k: float(v) * float(self.reg_scale) for k, v in base.items()}
        return get_variant(self.variant, **overrides)


# --------------------------------------------------------------------------- RNG state
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
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- helpers
def _arch_key(config: Mapping[str, Any]) -> str:
    """What decides the weights (``checkpoints.architecture``: options a config does not record take
    their defaults; the passes share the weights, so a 1-pass checkpoint initialises a 2-pass model)."""
    return json.dumps(architecture(config), sort_keys=True)


def init_from_checkpoint(model: RegistrationModel, path: Union[str, Path]) -> Dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``model``; ``ValueError`` if the architectures differ."""
    ckpt = load_checkpoint(path)
    saved, mine = ckpt["model_config"], model.config()
    if _arch_key(saved) != _arch_key(mine):
        raise ValueError(
            f"--init-from checkpoint {path} holds a [{describe_architecture(saved)}] model but this run builds "
            f"[{describe_architecture(mine)}]; transfer learning needs the same architecture "
            f"(dimension, affine stage, feature counts)"
        )
    load_model_state(model, ckpt, source=f"--init-from checkpoint {path}")
    return ckpt


def frozen_parameters(model: RegistrationModel) -> List[torch.nn.Parameter]:
    """Parameters frozen in the first phase of ``decoder_then_all``: U-Net encoder and affine stage."""
    params = list(model.unet.encoder.parameters())
    if model.affine is not None:
        params += list(model.affine.parameters())
    return params


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the GPU supports it (no gradient scaler needed), else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def enable_mixed_precision(model: RegistrationModel, device_type: str, dtype: torch.dtype) -> Callable[[], None]:
    """Run the U-Net (and the affine stage's convolutions) under ``torch.autocast``; returns the undo function.

    Only the convolution stacks run in half precision; their outputs are cast back to float32,
    so the flow head, the affine matrix, the warps and the losses stay in float32. Displacements
    are voxel coordinates: in half precision a coordinate near 200 would be rounded to 0.125
    (float16) or 1 voxel (bfloat16). The modules' ``forward`` is wrapped on the instance, so
    parameter names and checkpoints are unchanged.
    """
    modules = [model.unet] + ([model.affine.features] if model.affine is not None else [])
    for module in modules:
        original = module.forward

        def forward(*args, _original=original, **kwargs):
            with torch.autocast(device_type=device_type, dtype=dtype):
                out = _original(*args, **kwargs)
            return out.float()

        module.forward = forward

    def undo() -> None:
        for module in modules:
            module.__dict__.pop("forward", None)

    return undo


def _to_device(batch: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _probe_grid(dataset) -> Tuple[List[float], List[int]]:
    """Spacing and shape of the model grid of the first sample a dataset holds."""
    if hasattr(dataset, "sources"):
        sample = dataset.sources[0]
    elif hasattr(dataset, "pairs"):
        sample = dataset.store.get(dataset.pairs[0][1])
    else:
        sample = dataset.store.get(dataset.subjects[0].id)
    return list(sample["spacing_mm"]), list(sample["image"].shape[1:])


@torch.no_grad()
def validate(model: RegistrationModel, dataset, device: torch.device, similarity: str = "lncc") -> Dict[str, float]:
    """Mean validation metrics of ``model`` on ``dataset`` (one pair at a time).

    Keys: ``val_similarity`` (the ``similarity`` loss, lower is better), ``val_folding_pct``,
    ``val_dice`` (nearest-neighbour warped labels, when labelled), ``val_epe_vox`` (mean
    end-point error against ``disp_true_vox``, synthetic pairs).
    """
    was_training = model.training
    model.eval()
    sums: Dict[str, List[float]] = {}
    for index in range(len(dataset)):
        item = _to_device(collate_pairs([dataset[index]]), device)
        outputs = model(item["moving"], item["fixed"])
        disp = outputs["disp_vox"].float()
        values = {
            "val_similarity": float(SIMILARITIES[similarity](item["fixed"], outputs["warped"].float())),
            "val_folding_pct": metrics.folding_percentage(disp[0].cpu().numpy()),
        }
        if "moving_labels" in item:
            warped_labels = fields.warp(item["moving_labels"].float(), disp, mode="nearest")
            values["val_dice"] = metrics.mean_dice(
                item["fixed_labels"][0, 0].cpu().numpy(), warped_labels[0, 0].round().long().cpu().numpy()
            )
        if "disp_true_vox" in item:
            values["val_epe_vox"] = float((disp - item["disp_true_vox"]).norm(dim=1).mean())
        for key, value in values.items():
            sums.setdefault(key, []).append(value)
    model.train(was_training)
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan") for k, v in sums.items()}


def _best_criterion(row: Mapping[str, float]) -> Tuple[str, float]:
    """``(metric name, score where higher is better)`` for ``best.pt``."""
    if "val_dice" in row and math.isfinite(row["val_dice"]):
        return "val_dice", row["val_dice"]
    if "val_epe_vox" in row:
        return "val_epe_vox", -row["val_epe_vox"]
    return "val_similarity", -row["val_similarity"]


def _maybe_kill(global_step: int, info: distributed.DistInfo) -> None:
    target = os.environ.get(KILL_HOOK_ENV)
    if target is not None and info.is_main and int(target) == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- train
def train(config: Union[TrainConfig, Mapping[str, Any]], progress: Progress = None) -> Dict[str, Any]:
    """Train one variant (see the module docstring).

    Args:
        config: :class:`TrainConfig` (or its dict).
        progress: ``progress(fraction, message)`` after every step.

    Returns:
        ``{"out_dir", "last", "best" (path or None), "history" (epoch rows), "nonfinite_steps",
        "steps", "epochs", "preprocessing", "model" (the trained RegistrationModel), "loss_state"
        (the loss's learned parameters, e.g. uncertainty log-variances)}``.

    Raises:
        ValueError: bad configuration or data. RuntimeError: too many non-finite steps.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    config.validate()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = resolve_device(config.device)
    joined_here = not distributed.is_initialized()
    info = distributed.init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        return _train(config, device, info, progress)
    finally:
        if joined_here:
            distributed.cleanup()


def _train(config: TrainConfig, device: torch.device, info: distributed.DistInfo, progress: Progress) -> Dict[str, Any]:
    out_dir = Path(config.out_dir)
    ndim = data_ndim(config.data, config.ndim)
    spec = config.variant_spec()
    last_path = out_dir / "last.pt"
    resume_ckpt: Optional[Dict[str, Any]] = None
    if config.resume and last_path.is_file():
        resume_ckpt = load_checkpoint(last_path)
        _check_resumable(resume_ckpt, config, last_path)
    elif not config.resume and last_path.is_file():
        raise ValueError(f"{out_dir} already holds a training run ({last_path}); use --resume or another --out folder")

    seed_everything(config.seed)
    model = build_model(spec, ndim, **dict(config.arch or {}))
    data_spec = dict(config.data)
    if resume_ckpt is not None and (out_dir / "split.json").is_file():
        data_spec["split"] = str(out_dir / "split.json")
    pairs_per_epoch = config.steps_per_epoch * config.batch_size * info.world_size
    bundle = build_data(
        data_spec, ndim, config.seed, pairs_per_epoch, out_dir if info.is_main else None, divisor=model.size_multiple
    )
    spacing_mm, grid_shape = _probe_grid(bundle.train)
    preprocessing = bundle.preprocess.describe(spacing_mm, grid_shape)
    has_labels = "moving_labels" in bundle.train[0] if config.seg_weight > 0 else False
    if config.seg_weight > 0 and not has_labels:
        raise ValueError(f"seg_weight {config.seg_weight} needs label maps, but the data ({data_spec.get('kind')}) have none")

    if config.init_from and resume_ckpt is None:
        init_from_checkpoint(model, config.init_from)
    model.to(device)
    if config.affine_weight > 0 and not spec.affine:
        raise ValueError(f"affine_weight {config.affine_weight}: variant {spec.id!r} has no affine stage")
    loss_fn = CompositeLoss.from_variant(spec, uncertainty=config.uncertainty, seg_weight=config.seg_weight,
                                         affine_weight=config.affine_weight).to(device)
    groups = [{"params": list(model.parameters()), "lr": spec.lr}]
    loss_params = list(loss_fn.parameters())
    if loss_params:
        groups.append({"params": loss_params, "lr": spec.lr})
    optimizer = torch.optim.Adam(groups, lr=spec.lr)
    amp = bool(config.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype(device) == torch.float16 else None

    epochs = int(math.ceil(config.steps / config.steps_per_epoch))
    start_epoch, global_step, nonfinite = 0, 0, 0
    history: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model_state"])
        optimizer.load_state_dict(resume_ckpt["optimizer_state"])
        loss_fn.load_state_dict(resume_ckpt.get("loss_state", {}))
        if scaler is not None and resume_ckpt.get("scaler_state"):
            scaler.load_state_dict(resume_ckpt["scaler_state"])
        start_epoch = int(resume_ckpt["epoch"])
        global_step = int(resume_ckpt["global_step"])
        nonfinite = int(resume_ckpt.get("nonfinite_steps", 0))
        history = list(resume_ckpt.get("history", []))
        best = resume_ckpt.get("best")
        restore_rng_state(resume_ckpt["rng_state"])

    train_model = distributed.wrap(model, info, device)
    undo_amp = enable_mixed_precision(model, device.type, amp_dtype(device)) if amp else None
    logger = TrainLogger(
        out_dir,
        enabled=info.is_main,
        resume_step=global_step if resume_ckpt is not None else None,
        tensorboard=config.log_tensorboard,
        wandb=config.wandb,
        wandb_config=config.to_dict(),
        run_name=f"{spec.id}-{out_dir.name}",
    )
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    bar = ProgressBar(config.steps, initial=global_step, enabled=config.progress_bar and info.is_main, desc=f"train {spec.id}")
    frozen = frozen_parameters(model) if config.finetune == "decoder_then_all" else []
    frozen_ids = {id(p) for p in frozen}
    trainable = [p for p in model.parameters() if p.requires_grad]
    state = {"nonfinite": nonfinite}
    summary_paths: Dict[str, Optional[Path]] = {"last": last_path if resume_ckpt is not None else None, "best": None}
    if best is not None and (out_dir / "best.pt").is_file():
        summary_paths["best"] = out_dir / "best.pt"
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, epochs):
            n_steps = min(config.steps_per_epoch, config.steps - epoch * config.steps_per_epoch)
            bundle.train.set_epoch(epoch)
            loader = DataLoader(
                bundle.train,
                batch_sampler=distributed.shard_batches(n_steps, config.batch_size, info),
                num_workers=config.num_workers,
                collate_fn=collate_pairs,
                generator=seeded_generator(config.seed, epoch, 5),
            )
            epoch_losses: List[float] = []
            for batch in loader:
                _maybe_kill(global_step, info)
                freeze = bool(frozen) and global_step < config.steps // 2
                t0 = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = spec.lr * lr_factor(global_step, config.steps, config.lr_anneal_steps)
                row = _train_step(
                    train_model, model, loss_fn, optimizer, scaler, batch, device, epoch, epochs,
                    frozen_ids if freeze else set(), trainable, loss_params, config, state,
                )
                global_step += 1
                row = dict(step=global_step, epoch=epoch, **row, step_seconds=time.perf_counter() - t0)
                if not row["skipped"]:
                    epoch_losses.append(row["loss"])
                logger.log_step(row)
                bar.update({"loss": row["loss"]})
                if progress is not None:
                    progress(global_step / config.steps, f"step {global_step}/{config.steps} loss {row['loss']:.4g}")
            # ---- end of epoch: validation, checkpoints (rank 0)
            epoch_row: Dict[str, Any] = {
                "epoch": epoch,
                "step": global_step,
                "train_loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                "nonfinite_steps": state["nonfinite"],
                "seconds": time.perf_counter() - t_run,
            }
            improved = False
            due = config.val_every > 0 and ((epoch + 1) % config.val_every == 0 or epoch + 1 == epochs)
            if info.is_main and bundle.val is not None and due:
                epoch_row.update(validate(model, bundle.val, device, spec.similarity))
                name, score = _best_criterion(epoch_row)
                if best is None or score > best["score"]:
                    best = {"metric": name, "score": score, "epoch": epoch, "step": global_step}
                    improved = True
            history.append(epoch_row)
            logger.log_epoch(epoch_row)
            if info.is_main:
                extra = dict(
                    epoch=epoch + 1,
                    global_step=global_step,
                    epochs=epochs,
                    preprocessing=preprocessing,
                    config=config.to_dict(),
                    data_split=bundle.split,
                    rng_state=capture_rng_state(),
                    loss_state=loss_fn.state_dict(),
                    scaler_state=scaler.state_dict() if scaler is not None else {},
                    best=best,
                    history=history,
                    nonfinite_steps=state["nonfinite"],
                    world_size=info.world_size,
                )
                summary_paths["last"] = save_checkpoint(last_path, model, optimizer, **extra)
                if improved:
                    summary_paths["best"] = save_checkpoint(out_dir / "best.pt", model, optimizer, **extra)
                if config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
                    save_checkpoint(out_dir / f"epoch_{epoch + 1:04d}.pt", model, optimizer, **extra)
                bar.write(
                    f"epoch {epoch + 1}/{epochs}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in epoch_row.items() if isinstance(v, float))
                )
            distributed.barrier()
    finally:
        bar.close()
        logger.close()
        if undo_amp is not None:
            undo_amp()
    return {
        "out_dir": out_dir,
        "last": summary_paths["last"],
        "best": summary_paths["best"],
        "history": history,
        "nonfinite_steps": state["nonfinite"],
        "steps": global_step,
        "epochs": epochs,
        "preprocessing": preprocessing,
        "model": model,
        "loss_state": {k: v.detach().cpu() for k, v in loss_fn.state_dict().items()},
    }


def lr_factor(step: int, steps: int, anneal_steps: int) -> float:
    """Learning-rate multiplier for the optimiser step that follows ``step`` completed steps (0-based).

    1 before the last ``anneal_steps`` of ``steps``; then ``0.5 * (1 + cos(pi * k / anneal_steps))`` for the
    ``k``-th annealed step (``k = 0`` gives 1; it approaches 0 at the run's last step).
    """
    start = steps - anneal_steps
    if anneal_steps <= 0 or step < start:
        return 1.0
    k = min(step - start, anneal_steps)
    return 0.5 * (1.0 + math.cos(math.pi * k / anneal_steps))


def _check_resumable(ckpt: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """The run in ``path`` must be the same experiment (``steps`` may grow)."""
    saved = ckpt.get("config") or {}
    mine = config.to_dict()
    keys = ("variant", "ndim", "data", "steps_per_epoch", "batch_size", "lr", "seed", "uncertainty",
            "seg_weight", "affine_weight", "similarity", "regularizers", "schedule", "reg_scale", "arch", "finetune")
    defaults = {"reg_scale": 1.0, "affine_weight": 0.0}  # checkpoints written before the field existed
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


def _train_step(
    train_model: torch.nn.Module,
    model: RegistrationModel,
    loss_fn: CompositeLoss,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[Any],
    batch: Mapping[str, Any],
    device: torch.device,
    epoch: int,
    epochs: int,
    frozen_ids: set,
    trainable: List[torch.nn.Parameter],
    loss_params: List[torch.nn.Parameter],
    config: TrainConfig,
    state: Dict[str, int],
) -> Dict[str, Any]:
    batch = _to_device(batch, device)
    outputs = train_model(batch["moving"], batch["fixed"])
    labels = {}
    if config.seg_weight > 0:
        labels = {"fixed_labels": batch.get("fixed_labels"), "moving_labels": batch.get("moving_labels")}
    loss, terms = loss_fn(outputs, batch["fixed"], batch["moving"], epoch=epoch, epochs=epochs, **labels)
    row: Dict[str, Any] = {"loss": float(loss.detach())}
    row.update({k: v for k, v in terms.items() if k != "total"})
    row["lr"] = optimizer.param_groups[0]["lr"]
    skip = distributed.any_true(not math.isfinite(row["loss"]), device)
    grad_norm = float("nan")
    if not skip:
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        distributed.average_gradients(loss_params)
        for p in trainable:
            if id(p) in frozen_ids:
                p.grad = None
        if scaler is not None:
            scaler.unscale_(optimizer)
        with_grad = [p for p in trainable if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(with_grad, config.grad_clip)) if with_grad else 0.0
        if scaler is not None:
            scaler.step(optimizer)  # the scaler itself skips steps with inf / NaN gradients
            scaler.update()
        elif math.isfinite(grad_norm):
            optimizer.step()
        else:
            skip = True
    optimizer.zero_grad(set_to_none=True)
    if skip:
        state["nonfinite"] += 1
        if state["nonfinite"] > config.max_nonfinite:
            raise RuntimeError(
                f"training aborted: {state['nonfinite']} steps with a non-finite loss or gradient "
                f"(more than max_nonfinite={config.max_nonfinite}); last loss terms {terms}. "
                f"Lower the learning rate, check the data for NaN/inf, or disable mixed precision."
            )
    row.update(grad_norm=grad_norm, skipped=bool(skip))
    return row
