"""The teacher cache (pairs per dataset, refinement seconds per pair) and the training-time validation Dice of the issue-21 runs (runs/brains3d/distill/*), one row per run, one column per
200 steps: the trainer's own check on the first 8 validation pairs of the split at the 4 mm model grid (epochs.csv).

usage (from the repository root): .venv/bin/python scripts/brains3d/distill_curves.py > docs/results/distill-3d/curves.txt

It prints the runs on this machine only: the teacher cache and the runs up to the 15000-step cycle were made on
2026-12-06 and are no longer here; their table, printed by this script at commit 0543c23, is kept as
docs/results/distill-3d/curves-to-15k.txt.
"""
import collections
import csv
import json
import sys
from pathlib import Path

import numpy as np

RUNS = Path("runs/brains3d/distill")
TEACHER = Path("runs/brains3d/teacher")


def teacher_summary() -> None:
    """Pairs per dataset and the refinement's wall time per pair (one thread, a shared machine)."""
    seconds = collections.defaultdict(list)
    paths = sorted(TEACHER.glob("*.npz"))
    if not paths:
        print(f"no teacher fields in {TEACHER} (the cache of 2026-12-06: curves-to-15k.txt)\n")
        return
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info_json"]))
        seconds[info["fixed"].split("-")[0]].append(info["seconds"])
    print(f"teacher fields in {TEACHER}: {sum(map(len, seconds.values()))} training pairs")
    for dataset, values in seconds.items():
        print(f"  {dataset:12s} {len(values):4d} pairs, refinement {np.median(values):5.1f} s per pair (median), "
              f"{sum(values) / 3600:4.1f} h in all")
    print()


def main() -> int:
    runs = sorted(p for p in RUNS.iterdir() if (p / "epochs.csv").is_file())
    if not runs:
        print(f"no run with epochs.csv under {RUNS}", file=sys.stderr)
        return 2
    teacher_summary()
    curves = {}
    for run in runs:
        with open(run / "epochs.csv", newline="") as fh:
            curves[run.name] = {int(r["step"]): float(r["val_dice"]) for r in csv.DictReader(fh) if r["val_dice"]}
    steps = sorted({s for c in curves.values() for s in c if s % 200 == 0})
    print("training-time validation Dice (8 pairs, model grid) after N more steps from the run's start file (the 5000-step"
          " file; *_13k: the 8000-step two-pass file shipped first; *_15k and *_18k: the 13000-step average of the *_13k run;"
          " *_23k: the 18000-step average of the *_18k run)")
    width = max(len(name) for name in curves) + 2
    print(f"{'run':{width}s}" + "".join(f"{s:>7d}" for s in steps))
    for name, curve in curves.items():
        print(f"{name:{width}s}" + "".join(f"{curve[s]:7.3f}" if s in curve else f"{'-':>7s}" for s in steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
