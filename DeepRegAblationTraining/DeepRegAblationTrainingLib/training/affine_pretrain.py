"""Pretraining of the affine stage on random affines of real scans, whose answer is known.

Each step takes a training scan (preprocessed, in memory) as the moving image, draws a random
affine ``A_true`` (rotation, scale, shear, translation; :func:`random_affine_vox`), makes the
fixed image by resampling the scan through it (so ``A_true`` is the fixed -> moving map that
registration must find, :func:`synthetic_affine_pair`), changes the intensities of both images independently, and
trains the affine stage alone to predict ``A_true``: the loss is the mean squared distance, in
mm, between the points that ``A_pred`` and ``A_true`` map a regular lattice of the model grid
to (:func:`affine_point_error_mm`). The deformable part of the model is not touched.

The result is a full ``affine_basic`` checkpoint (``last.pt``; the U-Net untrained) that both
affine variants start from (``train --init-from``), so that the ablation's affine variants
share the same pretrained stage and still differ from each other only in the regularisers.

Resumable like training: ``last.pt`` (atomic) holds the weights, Adam state, step and RNG
state; ``--resume`` continues to the same result as an uninterrupted run.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from DeepRegAblationLib import fields
from DeepRegAblationLib.models.checkpoints import load_checkpoint, load_model_state, save_checkpoint
from DeepRegAblationLib.models.network import build_model

from ..augment import Augment, random_rotation, seeded_generator
from ..data import DataBundle, Subject, SubjectStore, build_data
from .state import capture_rng_state, restore_rng_state, seed_everything

__all__ = [
    "DEFAULT_RANGES", "LATTICE", "random_affine_vox", "affine_point_error_mm", "synthetic_affine_pair",
    "validation_error_mm", "pretrain_affine",
]

Progress = Optional[Callable[[float, str], None]]

DEFAULT_RANGES = {"rotation_deg": 15.0, "scale": 0.12, "shear": 0.06, "translation_mm": 12.0}
LATTICE = 6  # points per axis of the lattice the point error is measured on


def random_affine_vox(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    generator: torch.Generator,
    rotation_deg: float = DEFAULT_RANGES["rotation_deg"],
    scale: float = DEFAULT_RANGES["scale"],
    shear: float = DEFAULT_RANGES["shear"],
    translation_mm: float = DEFAULT_RANGES["translation_mm"],
) -> torch.Tensor:
    """A random fixed -> moving affine about the grid centre, as a voxel matrix ``(nd+1, nd+1)`` float32.

    In mm: ``y = R (I + H) S (x - c) + c + t`` with ``R`` a rotation of at most ``rotation_deg``,
    ``S`` diagonal with log-uniform factors in ``[1/(1+scale), 1+scale]``, ``H`` off-diagonal
    shears uniform in ``[-shear, shear]``, ``t`` uniform in ``[-translation_mm, translation_mm]``.
    """
    nd = len(shape)
    spacing = torch.tensor([float(s) for s in spacing_mm], dtype=torch.float64)
    rot, _ = random_rotation(nd, rotation_deg, generator)
    log_s = (torch.rand(nd, generator=generator, dtype=torch.float64) * 2 - 1) * math.log1p(scale)
    shears = (torch.rand(nd, nd, generator=generator, dtype=torch.float64) * 2 - 1) * shear
    shears.fill_diagonal_(0.0)
    linear_mm = rot @ (torch.eye(nd, dtype=torch.float64) + shears) @ torch.diag(torch.exp(log_s))
    translation_mm_ = (torch.rand(nd, generator=generator, dtype=torch.float64) * 2 - 1) * translation_mm
    linear_vox = linear_mm * spacing[None, :] / spacing[:, None]  # D^-1 L D with D = diag(spacing)
    matrix = fields.centered_affine_matrix(linear_vox[None], (translation_mm_ / spacing)[None], shape)[0]
    return matrix.float()


def affine_point_error_mm(
    predicted_vox: torch.Tensor, true_vox: torch.Tensor, shape: Sequence[int], spacing_mm: Sequence[float]
) -> torch.Tensor:
    """Per-pair mean squared distance (mm^2) between where two voxel matrices map a lattice of the grid: ``(B,)``."""
    nd = len(shape)
    axes = [torch.linspace(0, int(n) - 1, LATTICE, dtype=predicted_vox.dtype, device=predicted_vox.device) for n in shape]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).reshape(nd, -1)
    points = torch.cat([points, torch.ones_like(points[:1])], dim=0)  # (nd+1, P)
    diff = ((predicted_vox - true_vox)[:, :nd] @ points)  # (B, nd, P) voxels
    spacing = torch.tensor([float(s) for s in spacing_mm], dtype=diff.dtype, device=diff.device)
    return ((diff * spacing[None, :, None]) ** 2).sum(dim=1).mean(dim=1)


def synthetic_affine_pair(
    image: torch.Tensor, spacing_mm: Sequence[float], generator: torch.Generator, intensity: Augment, ranges: Mapping[str, float]
) -> Dict[str, torch.Tensor]:
    """``{"moving", "fixed": (1, *S), "matrix_vox": (nd+1, nd+1)}``: the scan is the moving image, the fixed
    image is the scan resampled through ``A``, ``fixed(x) = scan(A x)``, so ``A`` is the fixed -> moving
    voxel map that registration must find (``warp(moving, affine_to_disp(A)) = fixed``)."""
    shape = tuple(image.shape[1:])
    matrix = random_affine_vox(shape, spacing_mm, generator, **ranges)
    fixed = fields.warp(image[None], fields.affine_to_disp(matrix[None], shape), padding="zeros")[0]
    return {
        "moving": intensity.intensity(image, generator),
        "fixed": intensity.intensity(fixed, generator),
        "matrix_vox": matrix,
    }


def _batch(store, ids: Sequence[str], generator: torch.Generator, intensity: Augment, ranges) -> Dict[str, torch.Tensor]:
    items = []
    for sid in ids:
        sample = store.get(sid)
        items.append(synthetic_affine_pair(sample["image"], sample["spacing_mm"], generator, intensity, ranges))
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def validation_error_mm(model, store, ids: Sequence[str], spacing_mm: Sequence[float], seed: int, ranges) -> float:
    """Root mean squared point error (mm) on fixed random affines of the validation scans (no intensity change)."""
    intensity = Augment(gamma=(1.0, 1.0), brightness=0.0)
    errors = []
    with torch.no_grad():
        for k, sid in enumerate(ids):
            batch = _batch(store, [sid], seeded_generator(seed, 99, k), intensity, ranges)
            predicted = model.affine(torch.cat([batch["moving"], batch["fixed"]], dim=1))
            errors.append(float(affine_point_error_mm(predicted, batch["matrix_vox"], batch["moving"].shape[2:], spacing_mm)[0]))
    return float(math.sqrt(float(np.mean(errors))))


@dataclass
class _Settings:
    """The options of a pretraining run (as given: messages and the checkpoint's ``config`` convert them)."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    checkpoint_every: int
    ranges: Dict[str, float]

    def config(self) -> Dict[str, Any]:
        """The checkpoint's ``config`` entry."""
        return {"pretrain_affine": {"steps": int(self.steps), "batch_size": int(self.batch_size), "lr": float(self.lr),
                                    "seed": int(self.seed), "ranges": self.ranges}}


@dataclass
class _Scans:
    """The scans of a pretraining run: the data spec's training scans and its validation scans (both in memory)."""

    bundle: DataBundle
    train_ids: List[str]
    val_store: SubjectStore
    val_ids: List[str]

    @property
    def store(self) -> SubjectStore:
        return self.bundle.train.store

    @property
    def spacing(self) -> List[float]:
        """The model grid's spacing, one number per axis."""
        spacing_mm = self.bundle.preprocess.spacing_mm
        return spacing_mm * 3 if len(spacing_mm) == 1 else spacing_mm


def pretrain_affine(
    data: Mapping[str, Any],
    out_dir: str,
    steps: int = 2000,
    batch_size: int = 2,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint_every: int = 100,
    resume: bool = False,
    threads: Optional[int] = None,
    ranges: Optional[Mapping[str, float]] = None,
    arch: Optional[Mapping[str, Any]] = None,
    progress: Progress = None,
) -> Dict[str, Any]:
    """Train the affine stage of an ``affine_basic`` model on synthetic affines of the training scans.

    Args:
        data: a data spec for :func:`data.build_data` (its training subjects are used; the
            validation subjects give the validation error).
        out_dir: run folder: ``last.pt`` (resumable, and the ``--init-from`` checkpoint of the
            affine variants), ``log.csv`` (step, loss, validation RMS point error in mm).
        steps, batch_size, lr, seed, checkpoint_every, resume, threads: as for training.
        ranges: overrides of :data:`DEFAULT_RANGES`.
        arch: architecture overrides (``networks.build_model``).

    Returns:
        ``{"steps", "val_rms_mm", "identity_val_rms_mm", "seconds", "checkpoint"}``.
    """
    if int(steps) < 1 or int(batch_size) < 1 or int(checkpoint_every) < 1:
        raise ValueError(f"steps, batch_size and checkpoint_every must be >= 1, got {steps}, {batch_size}, {checkpoint_every}")
    if threads:
        torch.set_num_threads(int(threads))
    settings = _Settings(steps, batch_size, lr, seed, checkpoint_every, dict(DEFAULT_RANGES, **(ranges or {})))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scans = _scans(data, seed)
    seed_everything(seed)
    model = build_model("affine_basic", scans.bundle.ndim, **dict(arch or {}))
    if model.affine is None:
        raise ValueError("the affine_basic model has no affine stage")
    optimizer = torch.optim.Adam(model.affine.parameters(), lr=float(lr))
    _preload(scans, progress)
    last = out / "last.pt"
    start = _resume(last, model, optimizer) if resume and last.is_file() else 0
    spacing = scans.spacing
    identity_rms = (validation_error_mm(_Identity(model.ndim), scans.val_store, scans.val_ids, spacing, seed, settings.ranges)
                    if scans.val_ids else float("nan"))
    log_path = out / "log.csv"
    new_log = not log_path.is_file() or start == 0
    t0 = time.perf_counter()
    history = _pretrain_steps(model, optimizer, scans, settings, start, log_path, new_log, last, progress)
    return {
        "steps": int(steps),
        "val_rms_mm": history[-1]["val_rms_mm"] if history else float("nan"),
        "identity_val_rms_mm": identity_rms,
        "seconds": time.perf_counter() - t0,
        "checkpoint": str(last),
    }


def _scans(data: Mapping[str, Any], seed: int) -> _Scans:
    """The data spec's datasets (:func:`data.build_data`); a store of its validation subjects, kept in memory."""
    bundle = build_data(data, seed=seed)
    train_ids = [s.id for s in bundle.train.subjects]
    val_subjects = [Subject.from_dict(d) for d in bundle.split.get("val", [])]
    val_store = SubjectStore(val_subjects, bundle.preprocess, cache=True)
    return _Scans(bundle, train_ids, val_store, [s.id for s in val_subjects])


def _preload(scans: _Scans, progress: Progress) -> None:
    """Read and preprocess every training scan once, before the first step."""
    for k, sid in enumerate(scans.train_ids):
        scans.store.get(sid)
        if progress is not None:
            progress(0.0, f"loading scans {k + 1}/{len(scans.train_ids)}")


def _resume(last: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load ``last.pt``'s weights, Adam state and RNG states; the step it was written at."""
    ckpt = load_checkpoint(last, role="--resume checkpoint")
    load_model_state(model, ckpt, source=str(last))
    optimizer.load_state_dict(ckpt["optimizer_state"])
    start = int(ckpt["step"])
    restore_rng_state(ckpt["rng_state"])
    return start


def _pretrain_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scans: _Scans, settings: _Settings, start: int,
    log_path: Path, new_log: bool, last: Path, progress: Progress,
) -> List[Dict[str, Any]]:
    """Steps ``start .. steps - 1``, each a row of ``log.csv``; validation and ``last.pt`` every ``checkpoint_every``
    steps and at the end. Returns the validations ``[{"step", "val_rms_mm"}, ...]`` of these steps."""
    history: List[Dict[str, Any]] = []
    intensity = Augment()
    model.train()
    with open(log_path, "w" if new_log else "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["step", "loss_mm2", "val_rms_mm"])
        for step in range(start, int(settings.steps)):
            loss = _pretrain_step(model, optimizer, scans, settings, step, intensity)
            done = step + 1
            val = ""
            if done % int(settings.checkpoint_every) == 0 or done == int(settings.steps):
                val = _validate_and_save(model, optimizer, scans, settings, done, last)
                history.append({"step": done, "val_rms_mm": val})
            loss = float(loss.detach())
            writer.writerow([done, f"{loss:.4f}", "" if val == "" else f"{val:.4f}"])
            fh.flush()
            if progress is not None:
                progress(done / int(settings.steps), f"affine pretraining {done}/{settings.steps}: loss {loss:.2f} mm^2"
                         + ("" if val == "" else f", validation RMS {val:.2f} mm"))
    return history


def _pretrain_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scans: _Scans, settings: _Settings, step: int, intensity: Augment
) -> torch.Tensor:
    """One Adam step of the affine stage on a batch of fresh random affines; the batch's mean loss (mm^2)."""
    generator = seeded_generator(settings.seed, step, 21)
    ids = [scans.train_ids[int(i)] for i in torch.randint(len(scans.train_ids), (int(settings.batch_size),), generator=generator)]
    batch = _batch(scans.store, ids, generator, intensity, settings.ranges)
    predicted = model.affine(torch.cat([batch["moving"], batch["fixed"]], dim=1))
    loss = affine_point_error_mm(predicted, batch["matrix_vox"], batch["moving"].shape[2:], scans.spacing).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.affine.parameters(), 10.0)
    optimizer.step()
    return loss


def _validate_and_save(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scans: _Scans, settings: _Settings, done: int, last: Path
) -> float:
    """The validation RMS point error (mm, NaN without validation scans), then ``last.pt`` (atomic)."""
    model.eval()
    val = (validation_error_mm(model, scans.val_store, scans.val_ids, scans.spacing, settings.seed, settings.ranges)
           if scans.val_ids else float("nan"))
    model.train()
    save_checkpoint(
        last, model, optimizer, step=done, rng_state=capture_rng_state(),
        preprocessing=scans.bundle.preprocess.describe(scans.spacing, scans.bundle.preprocess.shape),
        data_split=scans.bundle.split, config=settings.config(),
    )
    return val


class _Identity(torch.nn.Module):
    """An affine stage that always answers the identity (the validation error of doing nothing)."""

    def __init__(self, ndim: int):
        super().__init__()
        self.ndim = ndim

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        return fields.identity_matrix(x.shape[0], self.ndim, dtype=x.dtype)
