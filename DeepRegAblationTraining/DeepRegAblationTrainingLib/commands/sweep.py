"""Regulariser sweep: one run per (regulariser type, weight λ), accuracy versus folding.

The VoxelMorph-style setup: the baseline architecture (U-Net + spatial transformer, no affine
stage), MSE similarity, scan-to-scan pairs, Adam lr 1e-4, and ONE regulariser of the given
type and weight with a constant schedule (no annealing). Types: l2 (grad_l2, diffusion),
l1 (grad_l1, total variation), bending (bending_energy), or any regulariser name of the
losses module. --reg-types x --lambdas gives the full grid; --runs TYPE:LAMBDA,... adds single
runs (e.g. --reg-types l2 --lambdas 0.001,0.01,0.1 --runs l1:0.01,bending:0.01).

Every run uses the same data, split, validation pairs, seed and budget, and is evaluated on
the same fixed validation pairs. Writes into --out: report.md (type x λ table with mean ± std
of Dice, folding %, SDlogJ, MSE...; reference figures beside ours), summary.csv, per_pair.csv,
figures/sweep_curves.png (accuracy versus folding, folding and MSE versus λ),
figures/training_curves.png, figures/examples.png, split.json, val_pairs.json, runs.json and
command.txt. Reference figures: --reference TYPE:LAMBDA:METRIC=VALUE,... or, by default, the
published L2 sweep on neurite-OASIS 2D (λ 0.001: 4.1 % non-positive Jacobians, val MSE
0.00222; λ 0.01: 0.21 %, 0.00296; λ >= 0.1: 0 %); --reference none omits them.

Multiplier sweep (--reg-scales M1,M2,...): instead of the λ grid, one run per M of an
ablation variant with regularisers (--scale-variant, default regloss) trained exactly as the
ablation trains it (its architecture, lr, similarity and augmentation) except that its own
five regulariser weights are multiplied by M and the schedule is constant
(TrainConfig schedule="constant", reg_scale=M: the "tuned" arm of `ablation
--tuned-reg-scale M`). The report shows folding, Dice, SDlogJ... per M and states the chosen
M: the smallest whose mean validation folding (% det J <= 0) is under --folding-target
(default 0.5 %). Runs are named <variant>_x<M>.
Example: deepreg-ablation sweep --data oasis2d:../shared/data/neurite-oasis-2d
--reg-scales 0.5,1,2,5,10 --steps 1000 --out sweep-regscale

Resumable like the ablation: finished runs are not retrained, --resume continues partial ones.

Example: deepreg-ablation sweep --data oasis2d:../shared/data/neurite-oasis-2d --reg-types l2
--lambdas 0.001,0.01,0.1 --runs l1:0.01,bending:0.01 --steps 1000 --out sweep-out
"""
from __future__ import annotations

import argparse

from ..experiments import sweep as experiment
from ..experiments.sweep import DEFAULT_FOLDING_TARGET, DEFAULT_LAMBDAS, DEFAULT_LR, DEFAULT_REG_TYPES, DEFAULT_SIMILARITY
from ..optional_packages import report_command_packages as required_packages  # noqa: F401  (cli.main)
from .arguments import add_data_arguments, add_training_arguments, canonical_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--reg-types", dest="reg_types", default=None,
                        help=f"comma-separated regulariser types: l1, l2, bending or a losses.REGULARIZERS name (default {DEFAULT_REG_TYPES})")
    parser.add_argument("--lambdas", default=None, help=f"comma-separated weights λ (default {DEFAULT_LAMBDAS})")
    parser.add_argument("--runs", default=None, help="extra single runs TYPE:LAMBDA,... (e.g. l1:0.01,bending:0.01)")
    parser.add_argument("--similarity", default=None, help=f"similarity loss of the λ grid (default {DEFAULT_SIMILARITY})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate of the λ grid (default {DEFAULT_LR:g})")
    parser.add_argument("--reg-scales", dest="reg_scales", default=None, metavar="M,...",
                        help="multiplier sweep instead of the λ grid: one run of --scale-variant per M with its own "
                        "regulariser weights x M and a constant schedule (e.g. 0.5,1,2,5,10)")
    parser.add_argument("--scale-variant", dest="scale_variant", default=None,
                        help="the regularised variant of --reg-scales (default regloss)")
    parser.add_argument("--folding-target", dest="folding_target", type=float, default=None,
                        help=f"--reg-scales chooses the smallest M whose mean folding %% is below this (default {DEFAULT_FOLDING_TARGET:g})")
    parser.add_argument("--reference", default=None,
                        help="reference figures TYPE:LAMBDA:METRIC=VALUE,... ; default: the published L2 sweep; 'none': no reference")
    add_training_arguments(parser)
    parser.add_argument("--example-pair", dest="example_pair", type=int, default=0,
                        help="index of the validation pair shown in the example figure (default 0)")
    parser.add_argument("--out", required=True, help="report folder")


def run(args: argparse.Namespace) -> int:
    if args.reg_scales is None:
        experiment.apply_grid_defaults(args)  # before the command line is spelled out: it names the defaults
    run_sweep = experiment.run_grid_sweep if args.reg_scales is None else experiment.run_scale_sweep
    paths, seconds = run_sweep(args, canonical_command("sweep", args))
    print(f"sweep report: {paths['report']} ({seconds / 60:.1f} min)")
    return 0
