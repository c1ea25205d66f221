"""Pretrain the affine stage on random affines of real scans (known answer), for both affine variants.

Example (the shipped 3D models):
  deepreg-ablation pretrain --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \\
      --steps 4000 --out runs/brains3d/affine_pretrain
  deepreg-ablation train --variant affine_basic --init-from runs/brains3d/affine_pretrain/last.pt ...

The run folder holds ``last.pt`` (resumable with --resume; the --init-from checkpoint of the
affine variants) and ``log.csv`` (loss and validation RMS point error in mm).
"""
from __future__ import annotations

import argparse

from ..optional_packages import data_command_packages as required_packages  # noqa: F401  (cli.main)
from .training_arguments import add_keypoint_arguments, keypoint_arch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True, help="data spec (e.g. brains3d:../shared/data); its training subjects are used")
    parser.add_argument("--split", default=None, help="split JSON: loaded if it exists, else written there")
    parser.add_argument("--steps", type=int, default=4000, help="optimiser steps (default 4000)")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step (default 2)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints and validations")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--out", default="runs/affine_pretrain", help="run folder")
    add_keypoint_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..data import parse_data_argument
    from ..training.affine_pretrain import pretrain_affine

    data = parse_data_argument(args.data)
    if args.split:
        data["split"] = args.split
    result = pretrain_affine(
        data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_every=args.checkpoint_every, resume=args.resume, threads=args.threads, arch=keypoint_arch(args) or None,
        progress=lambda fraction, message: print(message, flush=True) if "validation" in message else None,
    )
    print(f"affine pretraining: {result['steps']} steps in {result['seconds']:.0f} s; validation RMS point error "
          f"{result['val_rms_mm']:.2f} mm (identity {result['identity_val_rms_mm']:.2f} mm); checkpoint {result['checkpoint']}")
    return 0
