"""Train one registration variant with resumable checkpoints and logs.

Data (--data): oasis2d:/path (neurite-OASIS 2D slices), oasis3d:/path (neurite-OASIS volumes),
seed:/paths.txt,/template_seg4_onehot.npy (the original study's one-hot format), list:/file.csv
or list:/folder (your own NIfTI/NRRD images with optional *_labels partners), mni-synthetic (the
MNI152 template from the nilearn wheel with random smooth deformations; no download).

The run folder (--out) receives last.pt (every epoch), best.pt (best validation), epoch_XXXX.pt,
split.json, val_pairs.json, config.json, steps.csv/.jsonl and epochs.csv/.jsonl. --resume continues
an interrupted run from last.pt; on the CPU the result equals an uninterrupted run. Several
processes/GPUs: torchrun --nproc_per_node N -m DeepRegAblationTrainingLib.cli train ...

Example: deepreg-ablation train --variant regloss --data oasis2d:../shared/data/neurite-oasis-2d
--steps 2000 --steps-per-epoch 100 --out runs/regloss
"""
from __future__ import annotations

import argparse

from DeepRegAblationLib.losses import REGULARIZERS, SIMILARITIES
from DeepRegAblationLib.models.variants import VARIANTS

from ..data import PAIR_MODES
from ..optional_packages import data_command_packages as required_packages  # noqa: F401  (cli.main)
from ..training.config import TrainConfig, arch_overrides, parse_regularizers, train_data_spec
from .training_arguments import add_keypoint_arguments, keypoint_arch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS), help="ablation variant to train")
    p.add_argument("--data", default="mni-synthetic", help="data source (see above; default: mni-synthetic)")
    p.add_argument("--ndim", type=int, choices=(2, 3), default=None, help="2 or 3 (implied by oasis2d/oasis3d; default 3)")
    p.add_argument("--labels", default=None, help="OASIS label set: seg4 (default), seg24 (2D), seg35 (3D), or none")
    p.add_argument("--steps", type=int, default=1000, help="total optimiser steps (default 1000)")
    p.add_argument("--steps-per-epoch", type=int, default=100, help="steps per epoch = between checkpoints (default 100)")
    p.add_argument("--batch-size", type=int, default=1, help="pairs per step and process (default 1)")
    p.add_argument("--val-pairs", type=int, default=8, help="fixed validation pairs (default 8; 0: no validation)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="fraction of subjects held out for validation")
    p.add_argument("--split", default=None, help="split JSON: loaded if it exists, else written there")
    p.add_argument("--max-subjects", type=int, default=None, help="use only the first N subjects (quick runs)")
    p.add_argument("--mode", choices=PAIR_MODES, default=None, help="pairing (default scan_to_scan; seed format: scan_to_atlas)")
    p.add_argument("--atlas", default=None, help="subject id of the atlas for atlas pairing modes")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM", help="target voxel size (1 value or one per axis)")
    p.add_argument("--shape", type=int, nargs="+", default=None, metavar="N", help="model grid shape, divisible by 16")
    p.add_argument("--no-augment", action="store_true", help="no on-the-fly augmentation of real pairs")
    p.add_argument("--synthetic", action="store_true", help="train on synthetic pairs (deformed copies) of the training images")
    p.add_argument("--max-disp-mm", type=float, default=4.0, help="largest random non-rigid displacement, mm (default 4)")
    p.add_argument("--rotation-deg", type=float, default=10.0, help="largest random rotation, degrees (default 10)")
    p.add_argument("--mirror", type=float, default=0.0, metavar="P",
                   help="probability that both images of a training pair are mirrored left-right (default 0; pairs "
                        "with a --distill teacher field are not mirrored)")
    p.add_argument("--synthetic-heads", type=float, default=0.0, metavar="P",
                   help="3D brain data: probability that the two stripped brains of a training pair are each placed in "
                        "the skull of a training head (an IXI scan with labels; default 0)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the variant's, 1e-3 or 3e-4 with affine)")
    p.add_argument("--lr-anneal-steps", type=int, default=0, metavar="N",
                   help="lower the learning rate to 0 along a half cosine over the last N steps (default 0: "
                        "constant); a constant-rate run can be resumed with more --steps and N = the added steps")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, split, pairs, augmentation)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--init-from", default=None, metavar="CKPT", help="initialise from a checkpoint of the same architecture")
    p.add_argument("--finetune", choices=("all", "decoder_then_all"), default="all",
                   help="with --init-from: train everything, or the decoder alone for the first half of the steps")
    p.add_argument("--uncertainty", action="store_true", help="learned uncertainty weighting of the loss terms")
    p.add_argument("--seg-weight", type=float, default=0.0, help="weight of the Dice loss on warped labels (default 0)")
    p.add_argument("--affine-weight", type=float, default=0.0, metavar="W",
                   help="affine variants: weight of the affine stage's own loss (similarity + seg-weight x Dice of "
                        "the moving image warped by the affine part alone; default 0)")
    p.add_argument("--similarity", choices=sorted(SIMILARITIES), default=None, help="similarity loss (default: the variant's, lncc)")
    p.add_argument("--similarity-mask-dilation", type=int, default=None, metavar="N",
                   help="count the similarity only over the fixed image's labelled voxels (label > 0) grown by N voxels "
                        "of the model grid, the rest as flat windows (lncc; needs label maps): on heads with skull the "
                        "loss ignores the skull; it did not pay on the 3D models, docs/results/distill-3d "
                        "(default: every voxel)")
    p.add_argument("--reg", nargs="+", default=None, metavar="NAME=W",
                   help=f"regulariser weights replacing the variant's ({', '.join(sorted(REGULARIZERS))}); 'none' for none")
    p.add_argument("--schedule", choices=("reference", "constant"), default=None,
                   help="regulariser schedule (default: the variant's, reference = max(0.01, 0.1 * (1 - epoch/epochs)))")
    p.add_argument("--reg-scale", type=float, default=1.0, metavar="M",
                   help="multiply every regulariser weight by M (with --schedule constant: the tuned 3D setting)")
    p.add_argument("--features-enc", type=int, nargs="+", default=None, help="U-Net encoder features")
    p.add_argument("--features-dec", type=int, nargs="+", default=None, help="U-Net decoder features")
    p.add_argument("--diffeomorphic", action="store_true", help="integrate a stationary velocity field")
    p.add_argument("--affine-passes", type=int, default=None, metavar="N",
                   help="run the affine stage N times, each on what the last pass left (default 1; shared weights)")
    p.add_argument("--deform-passes", type=int, default=None, metavar="N",
                   help="run the U-Net N times, each on the moving image warped by the field so far (a cascade; "
                        "default 1; shared weights)")
    add_keypoint_arguments(p)
    p.add_argument("--distill", default=None, metavar="DIR",
                   help="distillation: a folder of teacher fields of training pairs (deepreg-ablation teacher)")
    p.add_argument("--distill-weight", type=float, default=None, metavar="W",
                   help="with --distill: weight of the mean end-point error (voxels) to the teacher's field (default 1)")
    p.add_argument("--distill-fraction", type=float, default=1.0, metavar="P",
                   help="with --distill: probability that a step's pair is a teacher pair (default 1)")
    p.add_argument("--val-every", type=int, default=1, help="epochs between validations (default 1)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="epochs between epoch_XXXX.pt files (default 10)")
    p.add_argument("--max-nonfinite", type=int, default=20, help="non-finite steps tolerated before aborting")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard events")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (needs the wandb package)")
    p.add_argument("--out", default=None, help="run folder (default runs/<variant>)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~DeepRegAblationTrainingLib.training.config.TrainConfig` a command line describes."""
    data = train_data_spec(
        args.data, labels=args.labels, spacing=args.spacing, shape=args.shape, val_pairs=args.val_pairs,
        val_fraction=args.val_fraction, split=args.split, max_subjects=args.max_subjects, mode=args.mode,
        atlas=args.atlas, no_augment=args.no_augment, synthetic=args.synthetic, max_disp_mm=args.max_disp_mm,
        rotation_deg=args.rotation_deg, mirror=args.mirror, heads=args.synthetic_heads,
    )
    arch = arch_overrides(args.features_enc, args.features_dec, args.diffeomorphic, args.affine_passes, keypoint_arch(args),
                          args.deform_passes)
    distill_weight = args.distill_weight if args.distill_weight is not None else (1.0 if args.distill else 0.0)
    return TrainConfig(
        variant=args.variant,
        ndim=args.ndim,
        out_dir=args.out or f"runs/{args.variant}",
        data=data,
        steps=args.steps,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_anneal_steps=args.lr_anneal_steps,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        checkpoint_every=args.checkpoint_every,
        val_every=args.val_every,
        resume=args.resume,
        init_from=args.init_from,
        finetune=args.finetune,
        uncertainty=args.uncertainty,
        seg_weight=args.seg_weight,
        affine_weight=args.affine_weight,
        distill_dir=args.distill,
        distill_weight=distill_weight,
        distill_fraction=args.distill_fraction,
        similarity=args.similarity,
        similarity_mask_dilation=args.similarity_mask_dilation,
        regularizers=parse_regularizers(args.reg, args.variant),
        schedule=args.schedule,
        reg_scale=args.reg_scale,
        arch=arch,
        max_nonfinite=args.max_nonfinite,
        log_tensorboard=not args.no_tensorboard,
        wandb=args.wandb,
        num_workers=args.workers,
        threads=args.threads,
        progress_bar=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from ..training import distributed
    from ..training.trainer import train

    summary = train(config_from_args(args))
    if distributed.dist_info_from_env().is_main:
        last = summary["history"][-1] if summary["history"] else {}
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith("val_") and isinstance(v, float))
        print(f"trained {args.variant}: {summary['steps']} steps, {summary['epochs']} epochs, "
              f"{summary['nonfinite_steps']} non-finite steps skipped")
        if metrics:
            print(f"last validation: {metrics}")
        print(f"last checkpoint: {summary['last']}")
        if summary["best"]:
            print(f"best checkpoint: {summary['best']}")
    return 0
