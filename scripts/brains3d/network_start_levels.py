"""Refinement from the shipped `affine_enhanced` with the network start of `register` (`refine.network_start_schedule`:
the levels coarser than the network's grid skipped, each level stopping once its loss flattens), its deformable stage
starting at two different levels (issue 21, goal 2).

The network start keeps the deformable levels at or finer than the network's grid: 4 and 2 mm for the 4 mm network.
The velocity of the 4 mm level lives on its control grid of 8 mm (half the level's voxels per axis), so the network's
4 mm field enters the refinement coarsened to 8 mm; starting at the 2 mm level (control grid 4 mm, the network's own
grid) keeps it. Both arms take the network's field as the velocity's start (`keep_start=False`, the network start
of `register` until 2026-12-07; since then the thorough schedule's). Per dataset, mean Dice, seconds and folding over the
validation pairs (cycle) of: the network alone; 1, 2 and 5 iterations per level and the recommended schedule, as
`register(refine=...)` runs them after a network, from the 4 mm level (`start 4 mm`) and from the 2 mm level
(`start 2 mm`); the affine stage is the same (4 mm) in both.
Times are the mean seconds of `register` (network included); they compare only within one run on a quiet machine.

With --kept the arms are instead the network alone and the same budgets with the network's field kept at its own
resolution and a residual composed with it (`network_start_schedule(..., keep_start=True)`, from the 4 mm level).

With --caps (the choice of `refine.NETWORK_KEPT_ITERATIONS`, the cap of the recommended refinement after a network)
they are the recommended refinement from the centre of mass alone (`refine_without_network`, the reference), the
recommended refinement after the network with the velocity start (`keep_start=False`, the default before) and with
the kept start uncapped (25 steps per deformable level at most, 30 affine), and the kept start with at most
5, 8 or 12 steps per level; times also as a fraction of the centre-of-mass start's.

usage (from the repository root):
  .venv/bin/python scripts/brains3d/network_start_levels.py [DATASET...] > network-start-levels.txt
  .venv/bin/python scripts/brains3d/network_start_levels.py --kept [DATASET...] > network-start-kept.txt
  .venv/bin/python scripts/brains3d/network_start_levels.py --caps [DATASET...] > network-start-caps.txt
"""
import dataclasses
import sys
from pathlib import Path

sys.path[:0] = ["DeepRegAblation", "DeepRegAblationTraining"]

import numpy as np  # noqa: E402

from DeepRegAblationLib.models.resolve import resolve_models  # noqa: E402
from DeepRegAblationLib.registration.pipeline import refine_without_network, register  # noqa: E402
from DeepRegAblationLib.registration.refine import network_start_schedule, refine_schedule  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks import quality  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.suite import DATASETS, labelled_validation_subjects, validation_ids  # noqa: E402

SPLIT = Path("DeepRegAblation/Resources/Models/3d/split.json")
NETWORK_SPACING_MM = 4.0
BUDGETS = (1, 2, 5, "recommended")
CAPS = (5, 8, 12)
COM = "recommended from the centre of mass"


def schedules(mode: str = "levels"):
    """name -> ``refine`` argument of ``register`` (0: the network alone; ``None``: :data:`COM`, no network)."""
    if mode == "caps":
        recommended = refine_schedule("recommended")
        kept = network_start_schedule(recommended, NETWORK_SPACING_MM, keep_start=True)
        out = {COM: None, "velocity start": network_start_schedule(recommended, NETWORK_SPACING_MM, keep_start=False),
               "kept, uncapped": kept}
        for cap in CAPS:
            out[f"kept, {cap} per level"] = dataclasses.replace(kept, affine_iterations=cap, deform_iterations=cap)
        return out
    out = {"network alone": 0}
    for budget in BUDGETS:
        if mode == "kept":
            out[f"{budget}, kept start"] = network_start_schedule(refine_schedule(budget), NETWORK_SPACING_MM, keep_start=True)
            continue
        velocity = network_start_schedule(refine_schedule(budget), NETWORK_SPACING_MM, keep_start=False)
        out[f"{budget}, start 4 mm"] = velocity
        out[f"{budget}, start 2 mm"] = dataclasses.replace(velocity, deform_levels_mm=(2.0,))
    return out


def main(datasets, mode: str = "levels") -> None:
    quality.set_threads(2)
    model = next(iter(resolve_models(None, ["affine_enhanced"], 3).values())).model
    val = validation_ids(SPLIT)
    runs = schedules(mode)
    flag = "" if mode == "levels" else f"--{mode} "
    print(f"# .venv/bin/python scripts/brains3d/network_start_levels.py {flag}{' '.join(datasets)}")
    print("# the shipped affine_enhanced; mean Dice (seconds of register, folding %) over each dataset's validation pairs")
    for name, plan in runs.items():
        if plan is None:
            print(f"#   {name:<22} refine_without_network(refine='recommended'): affine (8, 4) mm, deformable (8, 4, 2) mm")
        elif plan:
            print(f"#   {name:<22} affine {plan.affine_levels_mm} mm, deformable {plan.deform_levels_mm} mm, "
                  f"{plan.deform_iterations} iterations per level at most" + (", network's field kept" if plan.keep_start else ""))
    for dataset in datasets:
        rows = {name: [] for name in runs}
        for fixed_subject, moving_subject in quality.dataset_pairs(labelled_validation_subjects(
                dataset, Path("../shared/data"), val), "cycle"):
            fixed, moving, fixed_labels, moving_labels = quality.read_pair(fixed_subject, moving_subject)
            for name, schedule in runs.items():
                if schedule is None:
                    result = refine_without_network(fixed, moving, fixed_labels, moving_labels, refine="recommended")
                else:
                    result = register(fixed, moving, model, fixed_labels, moving_labels, refine=schedule, device="cpu")
                rows[name].append((result.metrics["dice"], result.metrics["runtime_s"], result.metrics["folding_pct"]))
        first = next(iter(rows))
        print(f"\n{dataset} ({len(rows[first])} pairs)")
        reference = np.mean([row[1] for row in rows[COM]]) if COM in rows else None
        for name, values in rows.items():
            values = np.array(values)
            ratio = "" if reference is None else f" = {values[:, 1].mean() / reference:.2f} x the centre of mass's"
            print(f"  {name:<22} Dice {values[:, 0].mean():.4f}  ({values[:, 1].mean():.2f} s{ratio})  "
                  f"folding {values[:, 2].mean():.4f} %")


if __name__ == "__main__":
    modes = [a[2:] for a in sys.argv[1:] if a in ("--kept", "--caps")]
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(arguments or list(DATASETS), modes[0] if modes else "levels")
