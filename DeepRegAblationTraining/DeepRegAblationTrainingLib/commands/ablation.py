"""Train and evaluate the ablation variants under identical conditions and write the ablation report.

Every variant (default: baseline, regloss, affine_basic, affine_enhanced) is trained with the
same data, train/validation split, seed, augmentation and step budget (the trainer's
`train`), then its final checkpoint (last.pt after the last step; no selection on the
validation pairs) is evaluated on the same fixed validation pairs, together with the
unregistered pairs ("identity") for reference.

Writes into --out: report.md (tables and figures), summary.csv (per variant mean, std,
change against --baseline, paired Wilcoxon p, Benjamini-Hochberg q for every metric),
per_pair.csv, figures/*.png (training curves, accuracy versus folding, one example pair per
variant with the deformation grid and the Jacobian determinant), split.json and
val_pairs.json (the split and pairs used), runs.json (per-variant timing) and command.txt (the
exact command that reproduces the report). Checkpoints and training logs go to --runs-dir
(default <out>/runs).

Two regularisation arms: --tuned-reg-scale M adds, after every regularised variant V
(regloss, affine_enhanced), a run V_tuned trained with every regulariser weight x M and a
constant schedule (TrainConfig schedule="constant", reg_scale=M) beside V with its reference
weights and schedule; same data, split, seed and steps, evaluated on the same pairs and
compared with --baseline like every other run. Choose M with `sweep --reg-scales`.

Resumable: a variant whose final checkpoint exists is not retrained; --resume continues a
partly trained one from its last epoch.

Example: deepreg-ablation ablation --data oasis2d:../shared/data/neurite-oasis-2d --steps 2000
--val-pairs 48 --out ablation-out
"""
from __future__ import annotations

import argparse

from DeepRegAblationLib.options import VARIANT_IDS

from ..experiments.ablation import TUNED_SUFFIX, run_ablation
from ..optional_packages import report_command_packages as required_packages  # noqa: F401  (cli.main)
from .arguments import add_data_arguments, add_training_arguments, canonical_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--variants", nargs="+", default=list(VARIANT_IDS), help="variant ids (default: the four)")
    parser.add_argument("--baseline", default="baseline", help="variant the others are compared with (default baseline)")
    parser.add_argument("--tuned-reg-scale", dest="tuned_reg_scale", type=float, default=None, metavar="M",
                        help="add the tuned arm: for every regularised variant V (regloss, affine_enhanced) also train "
                        f"V{TUNED_SUFFIX} with every regulariser weight x M and a constant schedule (TrainConfig "
                        "schedule='constant', reg_scale=M), beside V with its reference weights and schedule; choose M "
                        "with `sweep --reg-scales`")
    add_training_arguments(parser)
    parser.add_argument("--example-pair", dest="example_pair", type=int, default=0,
                        help="index of the validation pair shown in the example figure (default 0)")
    parser.add_argument("--out", required=True, help="report folder")


def run(args: argparse.Namespace) -> int:
    paths, seconds = run_ablation(args, canonical_command("ablation", args))
    print(f"ablation report: {paths['report']} ({seconds / 60:.1f} min)")
    return 0
