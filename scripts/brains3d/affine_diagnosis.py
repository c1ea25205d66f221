"""Is the network's affine stage what keeps it below SyN (issue 21)? On the saved validation pairs of every dataset
(full resolution, cycle pairs, as bench --refinement), mean Dice and time of:

1. the network's affine part alone (its total mapping without the deformable part);
2. the project's own refinement, affine levels only (8 and 4 mm, from the centre of mass; no deformable iterations);
3. the network alone (as shipped);
4. the network on the moving image pre-aligned by (2): the refinement's affine, then the whole network (its affine
   stage sees a nearly aligned pair); time = (2) + the network.

If (4) reaches 0.95 x SyN where (3) does not, the affine stage is what holds the network back.

usage (from the repository root): .venv/bin/python scripts/brains3d/affine_diagnosis.py [CHECKPOINT] > OUT.txt
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining"), str(Path(__file__).resolve().parent)]

from DeepRegAblationLib.imageio import ImageData  # noqa: E402
from DeepRegAblationLib.models.resolve import resolve_model  # noqa: E402
from DeepRegAblationLib.registration.pipeline import refine_without_network, register  # noqa: E402
from DeepRegAblationLib.registration.refine import REFINE_SCHEDULES, RefineSchedule  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.quality import dataset_pairs, read_pair  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.suite import DATASETS, labelled_validation_subjects, validation_ids  # noqa: E402
from ixi_diagnosis import affine_only_dice  # noqa: E402  (scripts/brains3d: Dice of an affine map alone)

DATA = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "DeepRegAblation/Resources/Models/3d/split.json"
RECOMMENDED = REFINE_SCHEDULES["recommended"]
AFFINE_ONLY = RefineSchedule("affine-only", RECOMMENDED.affine_levels_mm, RECOMMENDED.affine_levels_mm[-1:],
                             RECOMMENDED.affine_iterations, 0)
"""The recommended schedule's affine levels, and a deformable level with no iterations (the field stays zero)."""
ROWS = ("network affine part", "refinement affine only", "network alone", "refinement affine, then the network")


def moved(image, affine_ras):
    """``image`` with its voxels where ``affine_ras`` (fixed RAS -> this image's RAS) puts them in the fixed space."""
    return None if image is None else ImageData(image.array, np.linalg.inv(affine_ras) @ image.ijk_to_ras, image.name)


def pair_results(net, fixed, moving, fixed_labels, moving_labels):
    """``{row: (dice, seconds)}`` of one pair (ROWS)."""
    out = {}
    alone = register(fixed, moving, net, fixed_labels, moving_labels, refine=0, device="cpu")
    out[ROWS[0]] = (affine_only_dice(fixed, moving, fixed_labels, moving_labels, alone.affine_ras), float("nan"))
    out[ROWS[2]] = (alone.metrics["dice"], alone.metrics["runtime_s"])
    t0 = time.perf_counter()
    affine = refine_without_network(fixed, moving, fixed_labels, moving_labels, refine=AFFINE_ONLY)
    affine_s = time.perf_counter() - t0
    out[ROWS[1]] = (affine.metrics["dice"], affine_s)
    then = register(fixed, moved(moving, affine.affine_ras), net, fixed_labels, moved(moving_labels, affine.affine_ras),
                    refine=0, device="cpu")
    out[ROWS[3]] = (then.metrics["dice"], affine_s + then.metrics["runtime_s"])
    return out


def main():
    checkpoint = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "DeepRegAblation/Resources/Models/3d/affine_enhanced.pt")
    torch.set_num_threads(1)
    net = resolve_model(checkpoint, 3).model
    val_ids = validation_ids(SPLIT)
    print(f"# .venv/bin/python scripts/brains3d/affine_diagnosis.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"checkpoint {checkpoint}; validation pairs of {SPLIT.name} (cycle), full resolution, 1 thread; "
          f"mean Dice over all labels, mean seconds")
    for dataset in DATASETS:
        subjects = labelled_validation_subjects(dataset, DATA, val_ids)
        results = [pair_results(net, *read_pair(f, m)) for f, m in dataset_pairs(subjects, "cycle")]
        print(f"\n{dataset} ({len(results)} pairs)")
        for row in ROWS:
            dice = np.mean([r[row][0] for r in results])
            seconds = np.mean([r[row][1] for r in results])
            print(f"  {row:<40} Dice {dice:.3f}" + ("" if np.isnan(seconds) else f"  {seconds:5.1f} s"), flush=True)


if __name__ == "__main__":
    main()
