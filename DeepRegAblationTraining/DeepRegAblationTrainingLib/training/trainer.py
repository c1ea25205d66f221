"""Resumable training of one variant: :func:`train` (its configuration is ``config.TrainConfig``).

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

One run per ``out_dir``: rank 0 holds ``output_lock.output_lock`` (``.<name>.lock`` beside it) for the whole
run, so a second run into the folder is refused at once (``OutputInUseError``).

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

import contextlib
import json
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from DeepRegAblationLib.models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from DeepRegAblationLib.registration.devices import resolve_device
from DeepRegAblationLib.losses import CompositeLoss
from DeepRegAblationLib.models.network import RegistrationModel, build_model
from DeepRegAblationLib.models.variants import VariantSpec

from ..augment import seeded_generator
from ..data import DataBundle, build_data, collate_pairs, data_ndim
from ..output_lock import output_lock
from . import distributed
from .config import TrainConfig
from .logs import ProgressBar, TrainLogger
from .precision import amp_dtype, enable_mixed_precision
from .state import capture_rng_state, check_resumable, restore_rng_state, seed_everything
from .teacher import DistillationPairs
from .transfer import frozen_parameters, init_from_checkpoint
from .validation import best_criterion, to_device, validate

__all__ = ["KILL_HOOK_ENV", "Progress", "train", "lr_factor"]

Progress = Optional[Callable[[float, str], None]]
KILL_HOOK_ENV = "DEEPREG_ABLATION_TEST_KILL_AT_STEP"  # test hook: SIGKILL this process before that step


@dataclass
class _Run:
    """What a run is made of (built once by :func:`_setup`, the same on resume)."""

    config: TrainConfig
    spec: VariantSpec
    device: torch.device
    info: distributed.DistInfo
    out_dir: Path
    bundle: DataBundle
    preprocessing: Dict[str, Any]
    model: RegistrationModel
    loss_fn: CompositeLoss
    loss_params: List[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: Optional[Any]
    amp: bool
    epochs: int

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"


@dataclass
class _Position:
    """Where a run stands: what a checkpoint records and a resumed run starts from."""

    start_epoch: int = 0
    global_step: int = 0
    nonfinite: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    best: Optional[Dict[str, Any]] = None


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
    # one run per --out: a second run into the folder is refused at once (rank 0 holds the lock)
    lock = output_lock(Path(config.out_dir), f"deepreg-ablation train --variant {config.variant_spec().id}") if info.is_main \
        else contextlib.nullcontext()
    try:
        with lock:
            return _train(config, device, info, progress)
    finally:
        if joined_here:
            distributed.cleanup()


def _train(config: TrainConfig, device: torch.device, info: distributed.DistInfo, progress: Progress) -> Dict[str, Any]:
    """Set the run up (or resume it), run its epochs, return the summary of :func:`train`."""
    out_dir = Path(config.out_dir)
    ndim = data_ndim(config.data, config.ndim)
    spec = config.variant_spec()
    resume_ckpt = _resume_checkpoint(config, out_dir)
    run = _setup(config, spec, ndim, device, info, out_dir, resuming=resume_ckpt is not None)
    position = _restore(run, resume_ckpt) if resume_ckpt is not None else _Position()

    train_model = distributed.wrap(run.model, info, device)
    undo_amp = enable_mixed_precision(run.model, device.type, amp_dtype(device)) if run.amp else None
    logger = TrainLogger(
        out_dir,
        enabled=info.is_main,
        resume_step=position.global_step if resume_ckpt is not None else None,
        tensorboard=config.log_tensorboard,
        wandb=config.wandb,
        wandb_config=config.to_dict(),
        run_name=f"{spec.id}-{out_dir.name}",
    )
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    bar = ProgressBar(config.steps, initial=position.global_step, enabled=config.progress_bar and info.is_main,
                      desc=f"train {spec.id}")
    frozen = frozen_parameters(run.model) if config.finetune == "decoder_then_all" else []
    frozen_ids = {id(p) for p in frozen}
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    summary_paths: Dict[str, Optional[Path]] = {"last": run.last_path if resume_ckpt is not None else None, "best": None}
    if position.best is not None and (out_dir / "best.pt").is_file():
        summary_paths["best"] = out_dir / "best.pt"
    t_run = time.perf_counter()
    try:
        for epoch in range(position.start_epoch, run.epochs):
            epoch_losses = _train_epoch(run, train_model, epoch, position, frozen_ids, trainable, logger, bar, progress)
            epoch_row, improved = _epoch_row(run, epoch, position, epoch_losses, time.perf_counter() - t_run)
            position.history.append(epoch_row)
            logger.log_epoch(epoch_row)
            if info.is_main:
                _save_checkpoints(run, epoch, position, improved, summary_paths)
                bar.write(
                    f"epoch {epoch + 1}/{run.epochs}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in epoch_row.items() if isinstance(v, float))
                )
            distributed.barrier()
    finally:
        bar.close()
        logger.close()
        if undo_amp is not None:
            undo_amp()
    return _summary(run, position, summary_paths)


# --------------------------------------------------------------------------- setup and resume
def _resume_checkpoint(config: TrainConfig, out_dir: Path) -> Optional[Dict[str, Any]]:
    """``out_dir/last.pt`` when resuming (checked: :func:`state.check_resumable`); ``None`` for a fresh run,
    which must not overwrite a run already in ``out_dir``. A ``last.pt`` that cannot be read (cut by a crash,
    damaged) gives way to the newest readable ``epoch_XXXX.pt``, with a warning (:func:`_fallback_checkpoint`)."""
    last_path = out_dir / "last.pt"
    resume_ckpt: Optional[Dict[str, Any]] = None
    if config.resume and last_path.is_file():
        try:
            resume_ckpt = load_checkpoint(last_path, role="--resume checkpoint")
            used = last_path
        except CheckpointError as exc:
            resume_ckpt, used = _fallback_checkpoint(out_dir, exc)
        check_resumable(resume_ckpt, config, used)
    elif not config.resume and last_path.is_file():
        raise ValueError(f"{out_dir} already holds a training run ({last_path}); use --resume or another --out folder")
    return resume_ckpt


def _fallback_checkpoint(out_dir: Path, problem: CheckpointError) -> Tuple[Dict[str, Any], Path]:
    """The newest ``epoch_XXXX.pt`` of ``out_dir`` that reads as a checkpoint, after ``last.pt`` failed with
    ``problem`` (a ``RuntimeWarning`` says which file is used); ``problem`` re-raised, extended, when none does."""
    skipped = []
    for path in sorted(out_dir.glob("epoch_[0-9][0-9][0-9][0-9].pt"), reverse=True):
        try:
            ckpt = load_checkpoint(path, role="--resume checkpoint")
        except CheckpointError as exc:
            skipped.append(f"{path.name} {str(exc).split(str(path), 1)[-1].strip()}")
            continue
        warnings.warn(f"{problem}; resuming from the newest good checkpoint {path} (epoch {ckpt.get('epoch')}, "
                      f"step {ckpt.get('global_step')}) instead", RuntimeWarning, stacklevel=2)
        return ckpt, path
    tried = f" ({'; '.join(skipped)})" if skipped else ""
    raise CheckpointError(f"{problem}, and no earlier epoch_XXXX.pt checkpoint in {out_dir} could be read{tried}") from None


def _setup(
    config: TrainConfig, spec: VariantSpec, ndim: int, device: torch.device, info: distributed.DistInfo, out_dir: Path,
    resuming: bool,
) -> _Run:
    """The seeded model, the data, the loss, Adam and the gradient scaler of a run (fresh weights: a resumed
    run loads its own afterwards, :func:`_restore`)."""
    seed_everything(config.seed)
    model = build_model(spec, ndim, **dict(config.arch or {}))
    bundle, preprocessing = _run_data(config, ndim, info, out_dir, model, resuming)
    if config.init_from and not resuming:
        init_from_checkpoint(model, config.init_from)
    model.to(device)
    if config.affine_weight > 0 and not spec.affine:
        raise ValueError(f"affine_weight {config.affine_weight}: variant {spec.id!r} has no affine stage")
    if config.distill_dir is not None:  # every teacher file checked before the first step
        bundle.train = DistillationPairs(bundle.train, config.distill_dir, config.distill_fraction)
    loss_fn = CompositeLoss.from_variant(spec, uncertainty=config.uncertainty, seg_weight=config.seg_weight,
                                         affine_weight=config.affine_weight, distill_weight=config.distill_weight,
                                         similarity_mask_dilation=config.similarity_mask_dilation).to(device)
    groups = [{"params": list(model.parameters()), "lr": spec.lr}]
    loss_params = list(loss_fn.parameters())
    if loss_params:
        groups.append({"params": loss_params, "lr": spec.lr})
    optimizer = torch.optim.Adam(groups, lr=spec.lr)
    amp = bool(config.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp and amp_dtype(device) == torch.float16 else None
    epochs = int(math.ceil(config.steps / config.steps_per_epoch))
    return _Run(config, spec, device, info, out_dir, bundle, preprocessing, model, loss_fn, loss_params, optimizer,
                scaler, amp, epochs)


def _run_data(
    config: TrainConfig, ndim: int, info: distributed.DistInfo, out_dir: Path, model: RegistrationModel, resuming: bool
) -> Tuple[DataBundle, Dict[str, Any]]:
    """The run's datasets (a resumed run reads its own ``split.json``) and the checkpoints' ``preprocessing``.

    ``ValueError`` when ``seg_weight`` or ``similarity_mask_dilation`` asks for label maps the data do not have.
    """
    data_spec = dict(config.data)
    if resuming and (out_dir / "split.json").is_file():
        data_spec["split"] = str(out_dir / "split.json")
    pairs_per_epoch = config.steps_per_epoch * config.batch_size * info.world_size
    bundle = build_data(
        data_spec, ndim, config.seed, pairs_per_epoch, out_dir if info.is_main else None, divisor=model.size_multiple
    )
    spacing_mm, grid_shape = _probe_grid(bundle.train)
    preprocessing = bundle.preprocess.describe(spacing_mm, grid_shape)
    asked = [(name, key) for name, asks, key in (
        ("seg_weight", config.seg_weight > 0, "moving_labels"),
        ("similarity_mask_dilation", config.similarity_mask_dilation is not None, "fixed_foreground")) if asks]
    probe = [bundle.train[i] for i in range(min(len(bundle.train), 8))] if asked else []  # a pair may lack labels
    for name, key in asked:
        if not any(key in item for item in probe):
            raise ValueError(f"{name} {getattr(config, name)} needs label maps, but the data ({data_spec.get('kind')}) have none")
    return bundle, preprocessing


def _probe_grid(dataset) -> Tuple[List[float], List[int]]:
    """Spacing and shape of the model grid of the first sample a dataset holds."""
    if hasattr(dataset, "sources"):
        sample = dataset.sources[0]
    elif hasattr(dataset, "pairs"):
        sample = dataset.store.get(dataset.pairs[0][1])
    else:
        sample = dataset.store.get(dataset.subjects[0].id)
    return list(sample["spacing_mm"]), list(sample["image"].shape[1:])


def _restore(run: _Run, ckpt: Mapping[str, Any]) -> _Position:
    """Load a resumed run's weights, optimiser, loss and scaler states and RNG states; where it stands."""
    run.model.load_state_dict(ckpt["model_state"])
    run.optimizer.load_state_dict(ckpt["optimizer_state"])
    run.loss_fn.load_state_dict(ckpt.get("loss_state", {}))
    if run.scaler is not None and ckpt.get("scaler_state"):
        run.scaler.load_state_dict(ckpt["scaler_state"])
    position = _Position(
        start_epoch=int(ckpt["epoch"]),
        global_step=int(ckpt["global_step"]),
        nonfinite=int(ckpt.get("nonfinite_steps", 0)),
        history=list(ckpt.get("history", [])),
        best=ckpt.get("best"),
    )
    restore_rng_state(ckpt["rng_state"])
    return position


# --------------------------------------------------------------------------- the steps of an epoch
def _train_epoch(
    run: _Run, train_model: torch.nn.Module, epoch: int, position: _Position, frozen_ids: set,
    trainable: List[torch.nn.Parameter], logger: TrainLogger, bar: ProgressBar, progress: Progress,
) -> List[float]:
    """The optimiser steps of ``epoch`` (this rank's shard of its pairs); the losses of the steps not skipped."""
    config = run.config
    n_steps = min(config.steps_per_epoch, config.steps - epoch * config.steps_per_epoch)
    run.bundle.train.set_epoch(epoch)
    loader = DataLoader(
        run.bundle.train,
        batch_sampler=distributed.shard_batches(n_steps, config.batch_size, run.info),
        num_workers=config.num_workers,
        collate_fn=collate_pairs,
        generator=seeded_generator(config.seed, epoch, 5),
    )
    epoch_losses: List[float] = []
    for batch in loader:
        _maybe_kill(position.global_step, run.info)
        freeze = bool(frozen_ids) and position.global_step < config.steps // 2
        t0 = time.perf_counter()
        for group in run.optimizer.param_groups:
            group["lr"] = run.spec.lr * lr_factor(position.global_step, config.steps, config.lr_anneal_steps)
        row = _train_step(run, train_model, batch, epoch, frozen_ids if freeze else set(), trainable, position)
        position.global_step += 1
        row = dict(step=position.global_step, epoch=epoch, **row, step_seconds=time.perf_counter() - t0)
        if not row["skipped"]:
            epoch_losses.append(row["loss"])
        logger.log_step(row)
        bar.update({"loss": row["loss"]})
        if progress is not None:
            progress(position.global_step / config.steps, f"step {position.global_step}/{config.steps} loss {row['loss']:.4g}")
    return epoch_losses


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


def _maybe_kill(global_step: int, info: distributed.DistInfo) -> None:
    target = os.environ.get(KILL_HOOK_ENV)
    if target is not None and info.is_main and int(target) == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def _train_step(
    run: _Run,
    train_model: torch.nn.Module,
    batch: Mapping[str, Any],
    epoch: int,
    frozen_ids: set,
    trainable: List[torch.nn.Parameter],
    position: _Position,
) -> Dict[str, Any]:
    """One optimiser step (skipped, and counted in ``position.nonfinite``, when the loss or gradient is not finite)."""
    config, optimizer, scaler = run.config, run.optimizer, run.scaler
    batch = to_device(batch, run.device)
    outputs = train_model(batch["moving"], batch["fixed"])
    labels = {}
    if config.seg_weight > 0 or config.similarity_mask_dilation is not None:
        labels = {"fixed_labels": batch.get("fixed_labels"), "moving_labels": batch.get("moving_labels"),
                  "fixed_foreground": batch.get("fixed_foreground")}
    loss, terms = run.loss_fn(outputs, batch["fixed"], batch["moving"], epoch=epoch, epochs=run.epochs,
                              teacher_disp_vox=batch.get("teacher_disp_vox"), **labels)
    row: Dict[str, Any] = {"loss": float(loss.detach())}
    row.update({k: v for k, v in terms.items() if k != "total"})
    row["lr"] = optimizer.param_groups[0]["lr"]
    skip = distributed.any_true(not math.isfinite(row["loss"]), run.device)
    grad_norm = float("nan")
    if not skip:
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        distributed.average_gradients(run.loss_params)
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
        position.nonfinite += 1
        if position.nonfinite > config.max_nonfinite:
            raise RuntimeError(
                f"training aborted: {position.nonfinite} steps with a non-finite loss or gradient "
                f"(more than max_nonfinite={config.max_nonfinite}); last loss terms {terms}. "
                f"Lower the learning rate, check the data for NaN/inf, or disable mixed precision."
            )
    row.update(grad_norm=grad_norm, skipped=bool(skip))
    return row


# --------------------------------------------------------------------------- end of an epoch
def _epoch_row(
    run: _Run, epoch: int, position: _Position, epoch_losses: List[float], seconds: float
) -> Tuple[Dict[str, Any], bool]:
    """The epoch's log row, validated when due (rank 0), and whether ``best`` improved (``position.best`` updated)."""
    epoch_row: Dict[str, Any] = {
        "epoch": epoch,
        "step": position.global_step,
        "train_loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
        "nonfinite_steps": position.nonfinite,
        "seconds": seconds,
    }
    improved = False
    config = run.config
    due = config.val_every > 0 and ((epoch + 1) % config.val_every == 0 or epoch + 1 == run.epochs)
    if run.info.is_main and run.bundle.val is not None and due:
        epoch_row.update(validate(run.model, run.bundle.val, run.device, run.spec.similarity))
        name, score = best_criterion(epoch_row)
        if position.best is None or score > position.best["score"]:
            position.best = {"metric": name, "score": score, "epoch": epoch, "step": position.global_step}
            improved = True
    return epoch_row, improved


def _save_checkpoints(
    run: _Run, epoch: int, position: _Position, improved: bool, summary_paths: Dict[str, Optional[Path]]
) -> None:
    """``last.pt``, ``best.pt`` (when improved) and ``epoch_XXXX.pt`` (every ``checkpoint_every`` epochs), rank 0."""
    config, model, optimizer = run.config, run.model, run.optimizer
    extra = dict(
        epoch=epoch + 1,
        global_step=position.global_step,
        epochs=run.epochs,
        preprocessing=run.preprocessing,
        config=config.to_dict(),
        data_split=run.bundle.split,
        rng_state=capture_rng_state(),
        loss_state=run.loss_fn.state_dict(),
        scaler_state=run.scaler.state_dict() if run.scaler is not None else {},
        best=position.best,
        history=position.history,
        nonfinite_steps=position.nonfinite,
        world_size=run.info.world_size,
    )
    summary_paths["last"] = save_checkpoint(run.last_path, model, optimizer, **extra)
    if improved:
        summary_paths["best"] = save_checkpoint(run.out_dir / "best.pt", model, optimizer, **extra)
    if config.checkpoint_every and (epoch + 1) % config.checkpoint_every == 0:
        save_checkpoint(run.out_dir / f"epoch_{epoch + 1:04d}.pt", model, optimizer, **extra)


def _summary(run: _Run, position: _Position, summary_paths: Mapping[str, Optional[Path]]) -> Dict[str, Any]:
    """What :func:`train` returns."""
    return {
        "out_dir": run.out_dir,
        "last": summary_paths["last"],
        "best": summary_paths["best"],
        "history": position.history,
        "nonfinite_steps": position.nonfinite,
        "steps": position.global_step,
        "epochs": run.epochs,
        "preprocessing": run.preprocessing,
        "model": run.model,
        "loss_state": {k: v.detach().cpu() for k, v in run.loss_fn.state_dict().items()},
    }
