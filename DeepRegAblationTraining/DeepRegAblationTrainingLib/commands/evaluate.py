"""Evaluate trained checkpoints on fixed validation pairs: per-pair metrics, summary and report.

The pairs come from --pairs (a JSON file as written by train / ablation: val_pairs.json) or
are drawn (--val-pairs N, with --seed) from the validation subjects of --split (a split JSON;
drawn with --val-fraction and --seed and written there when the file does not exist). The
images are preprocessed as in training (same --shape / --spacing / --labels as the run).

Per pair and checkpoint: Dice per label and mean, HD95 (mm), folding % (det J <= 0), SDlogJ,
MSE, NCC, SSIM, max/mean displacement (voxels and mm), label-centroid TRE (mm), end-point
error against the known displacement for synthetic pairs (mm), and the model's runtime.

Writes into --out: per_pair.csv, summary.csv (mean, std, change against the first checkpoint,
paired Wilcoxon p and Benjamini-Hochberg q), report.md, figures/*.png, val_pairs.json and
command.txt.

Example: deepreg-ablation evaluate --checkpoint runs/baseline/last.pt runs/regloss/last.pt
--data oasis2d:../shared/data/neurite-oasis-2d --pairs runs/baseline/val_pairs.json --out eval-out
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments.checkpoint_evaluation import evaluate_checkpoints
from ..optional_packages import report_command_packages as required_packages  # noqa: F401  (cli.main)
from .arguments import add_data_arguments, canonical_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT", help="checkpoint file(s) to evaluate")
    add_data_arguments(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default), auto or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-identity", dest="no_identity", action="store_true",
                        help="do not add the unregistered pairs ('identity') as a reference row")
    parser.add_argument("--example-pair", dest="example_pair", type=int, default=0,
                        help="index of the pair shown in the example figure (default 0)")
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    paths = evaluate_checkpoints(args, canonical_command("evaluate", args))
    print(f"evaluation: {Path(args.out) / 'per_pair.csv'}, report {paths['report']}")
    return 0
