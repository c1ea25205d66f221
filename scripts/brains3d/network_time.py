"""The time of the network alone (issue 21's goal: under 2 s per 1 mm brain pair, 2 threads, CPU): the shipped
`affine_enhanced` (two U-Net passes) and the single-pass file trained the same way (runs/brains3d/distill/
affine_enhanced_plain/average_21-30.pt, `scripts/brains3d/ship.sh plain`), on every validation pair of the four datasets,
`inference.register` from images in memory to the full-resolution field and warped image and labels (the benchmarks'
runtime), each pair run twice and the second run timed, with the time of each stage (`RegistrationResult.timings`).
Run it on a machine with nothing else running: the times are the point.

usage (from the repository root):
  .venv/bin/python scripts/brains3d/network_time.py > docs/results/distill-3d/network_time.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, "DeepRegAblation")
sys.path.insert(0, "DeepRegAblationTraining")

import numpy as np  # noqa: E402

from DeepRegAblationLib import inference  # noqa: E402
from DeepRegAblationLib.models.resolve import resolve_models  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks import quality  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.suite import DATASETS, labelled_validation_subjects, validation_ids  # noqa: E402

SPLIT = Path("DeepRegAblation/Resources/Models/3d/split.json")
FILES = {"shipped (2 passes)": "affine_enhanced",
         "single pass": "affine_enhanced=runs/brains3d/distill/affine_enhanced_plain/average_21-30.pt"}
STAGES = ("resample", "model", "upsample", "warp")


def main() -> int:
    quality.set_threads(2)
    models = {name: next(iter(resolve_models(None, [spec], 3).values())).model for name, spec in FILES.items()}
    val = validation_ids(SPLIT)
    print("network alone, 2 threads: runtime_s (images in memory -> full-resolution field, warped image and labels), "
          "per stage: " + ", ".join(STAGES) + "; mean over each dataset's validation pairs (second of two runs)")
    for dataset in DATASETS:
        subjects = labelled_validation_subjects(dataset, Path("../shared/data"), val)
        rows = {name: [] for name in models}
        for fixed_subject, moving_subject in quality.dataset_pairs(subjects, "cycle"):
            fixed, moving, fixed_labels, moving_labels = quality.read_pair(fixed_subject, moving_subject)
            for name, model in models.items():
                for _ in range(2):
                    result = inference.register(fixed, moving, model, fixed_labels, moving_labels)
                rows[name].append([result.metrics["runtime_s"]] + [result.timings.get(s, 0.0) for s in STAGES]
                                  + [result.metrics["dice"]])
        print(f"\n{dataset} ({len(rows[next(iter(rows))])} pairs, fixed grid {tuple(fixed.shape)} of the last pair)")
        for name, values in rows.items():
            mean = np.mean(values, axis=0)
            stages = ", ".join(f"{s} {v:.2f}" for s, v in zip(STAGES, mean[1:-1]))
            print(f"  {name:20s} {mean[0]:5.2f} s (max {max(v[0] for v in values):5.2f})  [{stages}]  Dice {mean[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
