"""What the 5000-step 3D files (shipped until issue 21) are made of: network-only Dice at full resolution on the
validation pairs.

Part 1: for each of the four runs, one checkpoint against the average of ten, before and after the learning-rate
   anneal: step 4000 alone (constant rate) and the mean of the weights of steps 3100-4000 (the files shipped before
   the anneal), step 5000 alone (the end of the 1000 annealed steps) and the mean of steps 4100-5000 (the 5000-step
   file, `scripts/brains3d/ship.sh 5000`, kept as runs/brains3d/shipped-5000/VARIANT.pt); mean Dice and folding per dataset on all 17 validation pairs.
Part 2: how much one checkpoint's IXI Dice moves from one checkpoint to the next: affine_enhanced (M = 8) every 200
   steps from 2000 to 5000 on the IXI validation pair (both directions), and the two averages.

The same path as `bench --quality` (quality.quality_table, centre-of-mass alignment, 1 thread); no ANTs here
(ANTs affine on the same pairs: docs/benchmarks-quality-models-all-pairs.md). Needs `scripts/brains3d/ship.sh 5000` and
`ship.sh comparison` first (the average_31-40.pt files).
usage (from the repository root): .venv/bin/python scripts/brains3d/weight_averaging.py [PART ...] > OUT.txt
   (PART 1 and/or 2; default both)
"""
import collections
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining")]

from DeepRegAblationTrainingLib import data  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks import quality  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.suite import validation_ids  # noqa: E402  (what bench --quality uses)

RUNS = {"baseline": "baseline", "regloss": "regloss_m8", "affine_basic": "affine_basic",
        "affine_enhanced": "affine_enhanced_m8"}
B, MODELS = ROOT / "runs" / "brains3d", ROOT / "DeepRegAblation" / "Resources" / "Models" / "3d"
FILES_5000 = B / "shipped-5000"  # the 5000-step files (commit e371607), scripts/brains3d/distill.sh puts them there
VAL_IDS = validation_ids(MODELS / "split.json")


def val_pairs(name):
    subjects = data.find_dataset_subjects(name, ROOT.parent / "shared" / "data" / data.DATASET_FOLDERS[name])
    return quality.dataset_pairs([s for s in subjects if s.id in VAL_IDS and s.labels is not None], "cycle")


def table(variants, names):
    """{(dataset, method): (mean Dice, mean folding %)} over each dataset's validation pairs."""
    values = collections.defaultdict(list)
    for name in names:
        for row in quality.quality_table(val_pairs(name), variants, [], threads=1, initial_alignments=["auto"],
                                         dataset=name):
            values[(name, row["method"])].append((row["dice"], row["folding_pct"]))
    return {key: np.mean(v, axis=0) for key, v in values.items()}


parts = sys.argv[1:] or ["1", "2"]
names = list(data.DATASET_FOLDERS)
print("# .venv/bin/python scripts/brains3d/weight_averaging.py " + " ".join(parts))
if "1" in parts:
    print("1. one checkpoint vs the average of ten, before (steps 3100-4000) and after (4100-5000) the anneal:")
    print("   mean Dice (folding %) per dataset")
    variants = []
    for variant, run in RUNS.items():
        variants += [f"{variant}_step4000={B / run / 'epoch_0040.pt'}",
                     f"{variant}_average3100-4000={B / run / 'average_31-40.pt'}",
                     f"{variant}_step5000={B / run / 'epoch_0050.pt'}",
                     f"{variant}_average4100-5000={FILES_5000 / (variant + '.pt')}"]
    result = table(variants, names)
    print("%-34s" % "model" + "".join("%-18s" % n for n in names))
    for v in variants:
        method = v.split("=")[0]
        print("%-34s" % method + "".join("%-18s" % ("%.4f (%.3f)" % tuple(result[(n, method)])) for n in names))
if "2" in parts:
    print("\n2. affine_enhanced (M = 8), one checkpoint at a time: IXI validation pair, mean Dice of the two directions")
    print("   (constant learning rate to step 4000, annealed from 4000 to 5000)")
    run = B / "affine_enhanced_m8"
    result = table([f"step{e * 100}={run / ('epoch_%04d.pt' % e)}" for e in range(20, 51, 2)]
                   + [f"average3100-4000={run / 'average_31-40.pt'}",
                      f"average4100-5000={FILES_5000 / 'affine_enhanced.pt'}"], ["ixi"])
    for (_, method), (dice, _) in result.items():
        print("%-20s %.4f" % (method, dice))
