"""Argument definitions shared by several commands, and the command line that reproduces a run.

- :func:`refine_type`: ``--refine``'s argparse type (``register``, ``demo``), on ``options.parse_refine``;
- :data:`INIT_ALIGN_CHOICES`: ``--init-align``'s choices in the order the help lists them;
- :func:`add_data_arguments`, :func:`add_training_arguments`: data, split, validation pairs and training
  budget (``ablation``, ``sweep``; ``evaluate`` has the data options);
- :func:`canonical_command`: ``deepreg-ablation <command> --opt value ...`` with every option spelled out.

Nothing here imports torch (``deepreg-ablation <command> --help`` works without it).
"""
from __future__ import annotations

import argparse
import shlex

from DeepRegAblationLib.options import AlignmentChoice, RefineArgument, parse_refine

from ..experiments.runs import DEFAULT_VAL_PAIRS

__all__ = ["INIT_ALIGN_CHOICES", "refine_type", "add_data_arguments", "add_training_arguments", "canonical_command"]

INIT_ALIGN_CHOICES = (AlignmentChoice.auto.value, AlignmentChoice.none.value, AlignmentChoice.com.value)
"""``options.ALIGNMENT_CHOICES`` in the order the command line's help has always shown them: auto, none, com."""


def refine_type(text: str) -> RefineArgument:
    """``--refine`` value -> ``options.parse_refine``'s: 0 (off), ``"recommended"``, ``"thorough"`` or ``N > 0``.

    Raises ``argparse.ArgumentTypeError`` (argparse prints it and exits with status 2) for anything
    else, or a negative count.
    """
    try:
        return parse_refine(text)
    except ValueError:
        pass
    try:
        count = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be off, recommended, thorough or a number of iterations per level, got {text!r}"
        ) from None
    raise argparse.ArgumentTypeError(f"iterations must be >= 0, got {count}")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Data, split and validation-pair options (the dest of every option is its flag name)."""
    p.add_argument("--data", required=True,
                   help="oasis2d:/path | oasis3d:/path | seed:/paths.txt,/template | list:/file.csv or /folder | mni-synthetic")
    p.add_argument("--labels", default=None, help="OASIS label set: seg4 (default), seg24 (2D), seg35 (3D) or none")
    p.add_argument("--shape", type=int, nargs="+", default=None, metavar="N", help="model grid shape (crop/pad), divisible by 16")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM", help="target voxel size in mm")
    p.add_argument("--max-subjects", dest="max_subjects", type=int, default=None, help="use only the first N subjects (quick runs)")
    p.add_argument("--mode", default=None, help="pairing: scan_to_scan (default), atlas_to_scan, scan_to_atlas")
    p.add_argument("--atlas", default=None, help="atlas subject id for the atlas pairing modes")
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.2,
                   help="fraction of subjects held out for validation when the split is drawn (default 0.2)")
    p.add_argument("--split", default=None,
                   help="split JSON: used when it exists, else drawn with --seed and written there (default <out>/split.json)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pairs", default=None, help="validation pairs JSON (as written to val_pairs.json)")
    group.add_argument("--val-pairs", dest="val_pairs", type=int, default=None,
                       help=f"number of fixed validation pairs drawn from the validation subjects (default {DEFAULT_VAL_PAIRS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, split, pairs and augmentation (default 0)")


def add_training_arguments(p: argparse.ArgumentParser, steps_default: int = 1000) -> None:
    """Training budget, device and resumption options of the runs of an experiment, and the report's notes."""
    p.add_argument("--steps", type=int, default=steps_default, help=f"optimiser steps per variant (default {steps_default})")
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int, default=None,
                   help="steps between checkpoints / validations (default min(100, steps))")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1, help="pairs per step (default 1)")
    p.add_argument("--train-val-pairs", dest="train_val_pairs", type=int, default=8,
                   help="validation pairs the trainer scores after every epoch for the training curves (default 8; 0: none)")
    p.add_argument("--no-augment", dest="no_augment", action="store_true", help="no on-the-fly augmentation of the training pairs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue partly trained runs from their last.pt")
    p.add_argument("--runs-dir", dest="runs_dir", default=None, help="checkpoints and training logs (default <out>/runs)")
    p.add_argument("--note", action="append", default=None, help="a paragraph added to the report (repeatable)")


def canonical_command(command: str, args: argparse.Namespace) -> str:
    """``deepreg-ablation <command> --opt value ...`` with every option spelled out (reproduces the run)."""
    parts = ["deepreg-ablation", command]
    for dest, value in vars(args).items():
        if dest.startswith("_") or dest == "command" or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            if dest == "note":
                for item in value:
                    parts += [flag, str(item)]
            else:
                parts += [flag] + [str(v) for v in value]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
