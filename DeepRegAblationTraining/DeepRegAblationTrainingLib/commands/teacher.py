"""Teacher fields for distillation: the project's own refinement of training pairs, computed once and cached.

Each ordered training pair (within one dataset, up to --pairs-per-dataset of each) is registered by
the instance optimisation (`register --refine`'s schedule, from the centre-of-mass translation, at full
resolution) and its field is stored on the pair's model grids in --out as <moving>__<fixed>.npz.
Resumable: files already valid are kept; a file computed for another image, grid or schedule, or
damaged, is recomputed. Validation subjects are never paired. Train with --distill OUT.

Example (the shipped 3D models' data):
  deepreg-ablation teacher --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \\
      --pairs-per-dataset 120 --out runs/brains3d/teacher
"""
from __future__ import annotations

import argparse
import time

from DeepRegAblationLib.options import REFINE_SCHEDULE_NAMES

from ..optional_packages import data_command_packages as required_packages  # noqa: F401  (cli.main)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True, help="data spec (e.g. brains3d:../shared/data); its training subjects are paired")
    parser.add_argument("--split", default=None, help="split JSON (the training run's): loaded if it exists, else written there")
    parser.add_argument("--pairs-per-dataset", type=int, default=120, metavar="N",
                        help="ordered training pairs per dataset (default 120; a larger N extends the same list)")
    parser.add_argument("--schedule", choices=REFINE_SCHEDULE_NAMES, default="recommended",
                        help="refinement schedule of the teacher (default recommended)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the pair list (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="folder of the teacher fields")


def run(args: argparse.Namespace) -> int:
    from ..data import parse_data_argument
    from ..training.teacher import build_training_teachers

    data = parse_data_argument(args.data)
    if args.split:
        data["split"] = args.split
    t0 = time.perf_counter()

    def report(done: int, total: int, message: str) -> None:
        print(f"[{done}/{total}] {message}", flush=True)

    counts = build_training_teachers(data, args.out, args.pairs_per_dataset, args.schedule, args.seed, args.threads, report)
    print(f"teacher fields in {args.out}: {counts['computed']} computed, {counts['recomputed']} recomputed, "
          f"{counts['reused']} reused, in {time.perf_counter() - t0:.0f} s")
    return 0
