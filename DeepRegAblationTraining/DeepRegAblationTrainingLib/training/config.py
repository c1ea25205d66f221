"""The configuration of a training run (:class:`TrainConfig`) and the pieces a command line gives it.

:class:`TrainConfig` is JSON-safe and stored in every checkpoint (``config``); the resume check
(``state.check_resumable``) compares it with the saved one. :func:`train_data_spec`,
:func:`arch_overrides` and :func:`parse_regularizers` turn the ``train`` command's options into
the config's ``data``, ``arch`` and ``regularizers`` entries.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from DeepRegAblationLib.losses import REGULARIZERS, SIMILARITIES
from DeepRegAblationLib.models.variants import VariantSpec, get_variant

from ..data import BRAIN_KINDS, parse_data_argument

__all__ = ["FINETUNE_MODES", "TrainConfig", "parse_regularizers", "train_data_spec", "arch_overrides"]

FINETUNE_MODES = ("all", "decoder_then_all")


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
        distill_dir: a folder of teacher fields (``training.teacher``, the ``teacher`` command) of training pairs.
        distill_weight: weight of the distillation term (``CompositeLoss``: mean end-point error in voxels
            between the network's total field and the teacher's); needs ``distill_dir``.
        distill_fraction: the probability that a step's pair is one of the teacher pairs (else a random
            pair as without distillation, with no distillation term).
        similarity: similarity override (a key of ``losses.SIMILARITIES``).
        similarity_mask_dilation: ``None``, or the similarity counts only the fixed image's labelled voxels grown by
            this many voxels of the model grid (``CompositeLoss``; ``lncc`` only, needs labelled data): on heads with
            skull the network is trained to align the brain rather than the skull.
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
    distill_dir: Optional[str] = None
    distill_weight: float = 0.0
    distill_fraction: float = 1.0
    similarity: Optional[str] = None
    similarity_mask_dilation: Optional[int] = None
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
        for name in ("seg_weight", "affine_weight", "distill_weight"):
            if not (math.isfinite(float(getattr(self, name))) and float(getattr(self, name)) >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.distill_fraction) <= 1.0:
            raise ValueError(f"distill_fraction must be in [0, 1], got {self.distill_fraction!r}")
        if (float(self.distill_weight) > 0) != (self.distill_dir is not None):
            raise ValueError(f"distillation needs both a teacher folder (distill_dir, got {self.distill_dir!r}) and a "
                             f"weight > 0 (distill_weight, got {self.distill_weight!r})")
        if self.distill_dir is not None and not Path(self.distill_dir).is_dir():
            raise FileNotFoundError(f"distill_dir (teacher fields) not found: {self.distill_dir}")
        dilation = self.similarity_mask_dilation
        if dilation is not None and (isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0):
            raise ValueError(f"similarity_mask_dilation must be None or an integer >= 0, got {dilation!r}")
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


def parse_regularizers(items: Optional[List[str]], variant: str) -> Optional[Dict[str, float]]:
    """``["grad_l2=0.02", ...]`` -> the variant's weights updated with these (``["none"]`` -> ``{}``)."""
    if items is None:
        return None
    if [i.lower() for i in items] == ["none"]:
        return {}
    weights = dict(get_variant(variant).regularizers)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--reg expects NAME=WEIGHT, got {item!r}")
        if name not in REGULARIZERS:
            raise ValueError(f"--reg: unknown regulariser {name!r}; valid names: {sorted(REGULARIZERS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--reg {item!r}: the weight must be a number") from None
    return weights


def train_data_spec(
    data: str,
    labels: Optional[str] = None,
    spacing: Optional[Sequence[float]] = None,
    shape: Optional[Sequence[int]] = None,
    val_pairs: Optional[int] = None,
    val_fraction: Optional[float] = None,
    split: Optional[str] = None,
    max_subjects: Optional[int] = None,
    mode: Optional[str] = None,
    atlas: Optional[str] = None,
    no_augment: bool = False,
    synthetic: bool = False,
    max_disp_mm: float = 4.0,
    rotation_deg: float = 10.0,
    mirror: float = 0.0,
    heads: float = 0.0,
) -> Dict[str, Any]:
    """The data spec of a training run (``TrainConfig.data``) from the ``train`` command's data options.

    ``data`` is the ``--data`` string (``data.parse_data_argument``); ``labels`` ``"none"`` means no
    label maps; options left ``None`` are not written into the spec (the spec's defaults apply).
    The augmentation is ``{"max_disp_mm", "rotation_deg"}`` unless ``no_augment`` (which does not
    apply to ``mni-synthetic`` or ``synthetic`` training: their pairs are made by the augmentation).
    ``mirror`` (a probability, ``PairDataset(mirror=...)``) is written only when above 0, and refused for synthetic
    pairs (a deformed copy of one image has no partner to mirror with it). ``heads`` (a probability,
    ``PairDataset(heads=...)``: stripped brains placed in the skull of a training head) likewise, for the 3D brain
    data only (its heads are the IXI scans).
    """
    spec = parse_data_argument(data)
    if labels is not None:
        spec["labels"] = None if labels.lower() == "none" else labels
    if spacing is not None:
        spec["spacing_mm"] = list(spacing)
    if shape is not None:
        spec["shape"] = list(shape)
    for key, value in (("val_pairs", val_pairs), ("val_fraction", val_fraction), ("split", split),
                       ("max_subjects", max_subjects), ("mode", mode), ("atlas", atlas)):
        if value is not None:
            spec[key] = value
    if no_augment and spec["kind"] != "mni-synthetic" and not synthetic:
        spec["augment"] = None
    else:
        spec["augment"] = {"max_disp_mm": max_disp_mm, "rotation_deg": rotation_deg}
    if synthetic:
        spec["synthetic"] = True
    if not 0.0 <= float(mirror) <= 1.0:
        raise ValueError(f"--mirror must be a probability in [0, 1], got {mirror}")
    if float(mirror) > 0:
        if synthetic or spec["kind"] == "mni-synthetic":
            raise ValueError("--mirror applies to pairs of two scans, not to synthetic pairs (--synthetic, mni-synthetic)")
        spec["mirror"] = float(mirror)
    if not 0.0 <= float(heads) <= 1.0:
        raise ValueError(f"--synthetic-heads must be a probability in [0, 1], got {heads}")
    if float(heads) > 0:
        if spec["kind"] not in BRAIN_KINDS or synthetic:
            raise ValueError(f"--synthetic-heads needs pairs of 3D brain scans with a head dataset (e.g. brains3d), "
                             f"not {spec['kind']}{' --synthetic' if synthetic else ''}")
        spec["heads"] = float(heads)
    return spec


def arch_overrides(
    enc_features: Optional[Sequence[int]] = None,
    dec_features: Optional[Sequence[int]] = None,
    diffeomorphic: bool = False,
    affine_passes: Optional[int] = None,
    keypoints: Optional[Mapping[str, int]] = None,
    deform_passes: Optional[int] = None,
) -> Optional[Dict[str, Any]]:
    """``TrainConfig.arch``: the ``networks.build_model`` overrides given (``None`` when none is).

    ``keypoints``: the keypoint affine stage's overrides (``affine_keypoints``, ``affine_keypoint_strides``).
    """
    arch: Dict[str, Any] = {}
    if enc_features:
        arch["enc_features"] = list(enc_features)
    if dec_features:
        arch["dec_features"] = list(dec_features)
    if diffeomorphic:
        arch["diffeomorphic"] = True
    if affine_passes is not None:
        arch["affine_passes"] = int(affine_passes)
    arch.update(keypoints or {})
    if deform_passes is not None:
        arch["deform_passes"] = int(deform_passes)
    return arch or None
