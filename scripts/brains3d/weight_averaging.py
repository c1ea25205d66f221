"""Why the shipped 3D files average the last ten checkpoints of each run: network-only Dice at full resolution.

1. For each of the four runs: its step-4000 checkpoint alone against the shipped file (the mean of the weights of
   steps 3100-4000, scripts/brains3d/ship.sh), mean Dice and folding per dataset on all 17 validation pairs.
2. How much one checkpoint's IXI Dice moves from one checkpoint to the next: affine_enhanced (M = 8) at
   every 200 steps from 2000 to 4000 on the IXI validation pair (both directions).

The same path as `bench --quality` (quality.quality_table, centre-of-mass alignment, 1 thread); no ANTs here
(ANTs affine on the same pairs: docs/benchmarks-quality-models-all-pairs.md).
usage (from the repository root): .venv/bin/python scripts/brains3d/weight_averaging.py > OUT.txt
"""
import collections
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining")]

from DeepRegAblationTrainingLib import data, quality  # noqa: E402
from DeepRegAblationTrainingLib.commands.bench import _validation_ids  # noqa: E402  (what bench --quality uses)

RUNS = {"baseline": "baseline", "regloss": "regloss_m8", "affine_basic": "affine_basic",
        "affine_enhanced": "affine_enhanced_m8"}
B, MODELS = ROOT / "runs" / "brains3d", ROOT / "DeepRegAblation" / "Resources" / "Models" / "3d"
VAL_IDS = _validation_ids(MODELS / "split.json")


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


names = list(data.DATASET_FOLDERS)
print("# .venv/bin/python scripts/brains3d/weight_averaging.py")
print("1. step 4000 alone vs the shipped average of steps 3100-4000: mean Dice (folding %) per dataset")
variants = []
for variant, run in RUNS.items():
    variants += [f"{variant}_step4000={B / run / 'epoch_0040.pt'}", f"{variant}_average={MODELS / (variant + '.pt')}"]
result = table(variants, names)
print("%-26s" % "model" + "".join("%-18s" % n for n in names))
for v in variants:
    method = v.split("=")[0]
    print("%-26s" % method + "".join("%-18s" % ("%.4f (%.3f)" % tuple(result[(n, method)])) for n in names))
print("\n2. affine_enhanced (M = 8), one checkpoint at a time: IXI validation pair, mean Dice of the two directions")
epochs = range(20, 41, 2)
result = table([f"step{e * 100}={B / 'affine_enhanced_m8' / ('epoch_%04d.pt' % e)}" for e in epochs]
               + [f"average3100-4000={MODELS / 'affine_enhanced.pt'}"], ["ixi"])
for (_, method), (dice, _) in result.items():
    print("%-20s %.4f" % (method, dice))
