"""Refinement from the shipped `affine_enhanced` with a few iterations per level, starting at two different levels
(issue 21, goal 2; exploratory, the shipped schedule is unchanged).

`refine.network_start_schedule` keeps the deformable levels at or finer than the network's grid: 4 and 2 mm for the
4 mm network. The velocity of the 4 mm level lives on its control grid of 8 mm (half the level's voxels per axis), so
the network's 4 mm field enters the refinement coarsened to 8 mm; starting at the 2 mm level (control grid 4 mm, the
network's own grid) keeps it. Per dataset, mean Dice over the validation pairs (cycle) of: the network alone; 1 and 2
iterations per level as `bench --refinement` runs them (`refine=N`); the same from the 2 mm level only.
Times are printed too, but they are only comparable within one run on a quiet machine.

usage (from the repository root): .venv/bin/python scripts/brains3d/network_start_levels.py [DATASET...] > OUT.txt
"""
import dataclasses
import sys
from pathlib import Path

sys.path[:0] = ["DeepRegAblation", "DeepRegAblationTraining"]

import numpy as np  # noqa: E402

from DeepRegAblationLib.models.resolve import resolve_models  # noqa: E402
from DeepRegAblationLib.registration.pipeline import register  # noqa: E402
from DeepRegAblationLib.registration.refine import refine_schedule  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks import quality  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.suite import DATASETS, labelled_validation_subjects, validation_ids  # noqa: E402

SPLIT = Path("DeepRegAblation/Resources/Models/3d/split.json")
SCHEDULES = {
    "network alone": 0,
    "1/level (4, 2 mm)": refine_schedule(1),
    "1/level, 2 mm only": dataclasses.replace(refine_schedule(1), deform_levels_mm=(2.0,)),
    "2/level (4, 2 mm)": refine_schedule(2),
    "2/level, 2 mm only": dataclasses.replace(refine_schedule(2), deform_levels_mm=(2.0,)),
}


def main(datasets) -> None:
    quality.set_threads(2)
    model = next(iter(resolve_models(None, ["affine_enhanced"], 3).values())).model
    val = validation_ids(SPLIT)
    print(f"# .venv/bin/python scripts/brains3d/network_start_levels.py {' '.join(datasets)}")
    print("# the shipped affine_enhanced; mean Dice (and seconds) over each dataset's validation pairs")
    for dataset in datasets:
        rows = {name: [] for name in SCHEDULES}
        for fixed_subject, moving_subject in quality.dataset_pairs(labelled_validation_subjects(
                dataset, Path("../shared/data"), val), "cycle"):
            fixed, moving, fixed_labels, moving_labels = quality.read_pair(fixed_subject, moving_subject)
            for name, schedule in SCHEDULES.items():
                result = register(fixed, moving, model, fixed_labels, moving_labels, refine=schedule, device="cpu")
                rows[name].append((result.metrics["dice"], result.metrics["runtime_s"]))
        print(f"\n{dataset} ({len(rows['network alone'])} pairs)")
        for name, values in rows.items():
            values = np.array(values)
            print(f"  {name:<22} Dice {values[:, 0].mean():.4f}  ({values[:, 1].mean():.2f} s)")


if __name__ == "__main__":
    main(sys.argv[1:] or list(DATASETS))
