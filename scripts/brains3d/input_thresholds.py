"""Measure the features of registration.input_warnings on the validation data (issue 24, item 4).

The validation subjects of the shipped 3D models' split (DeepRegAblation/Resources/Models/3d/split.json),
per data set: every image's foreground extent (mm, along each axis), and for each ordered "cycle" pair of a
data set (each subject fixed once, the next one moving, as `bench --quality` pairs them) and each shipped
variant, registered as the `register` command does (initial alignment auto), the NCC after registration and
the foreground overlap; then the demo's pair (the MNI152 template at 2 mm and its known deformation) with every
variant. Prints the rows, the ranges and the warnings raised by registration.input_warnings.THRESHOLDS: the
thresholds must raise none on these data (no false alarm).

usage (repository root): nice -n 10 .venv/bin/python scripts/brains3d/input_thresholds.py [DATA_ROOT] \
    > docs/results/input-thresholds/thresholds.md
"""
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = ["DeepRegAblation", "DeepRegAblationTraining"]
from DeepRegAblationLib.imageio import intensity_window, read_image  # noqa: E402
from DeepRegAblationLib.models.resolve import resolve_models  # noqa: E402
from DeepRegAblationLib.options import VARIANT_IDS  # noqa: E402
from DeepRegAblationLib.registration import input_warnings as checks  # noqa: E402
from DeepRegAblationLib.registration.pipeline import register  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.quality import dataset_pairs  # noqa: E402
from DeepRegAblationTrainingLib.data import DATASET_FOLDERS, find_dataset_subjects  # noqa: E402
from DeepRegAblationTrainingLib.experiments.demo import load_mni, make_moving  # noqa: E402

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
SPLIT = Path("DeepRegAblation/Resources/Models/3d/split.json")


def validation_subjects():
    entries = json.loads(SPLIT.read_text())["val"]
    ids = {str(e["id"]) if isinstance(e, dict) else str(e) for e in entries}
    for dataset in ("miccai2012", "lpba40", "ibsr18", "ixi"):
        subjects = [s for s in find_dataset_subjects(dataset, ROOT / DATASET_FOLDERS[dataset]) if s.id in ids]
        if len(subjects) >= 2:
            yield dataset, subjects


def register_quietly(fixed, moving, model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = register(fixed, moving, model, device="cpu")
    return result, [str(w.message) for w in caught if issubclass(w.category, checks.InputWarning)]


def main() -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    models = {name: loaded.model for name, loaded in resolve_models(None, list(VARIANT_IDS), 3).items()}
    extents, pair_rows, alarms = {}, [], []
    print("# Input warnings: features on the validation data\n")
    print(f"Produced by `nice -n 10 .venv/bin/python scripts/brains3d/input_thresholds.py {ROOT}` "
          f"(the validation subjects of `{SPLIT}`).\n")
    print("| data set | fixed | moving | variant | fixed extent (mm, k j i) | moving extent | backgrounds | volume ratio "
          "| NCC | overlap | warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pairs = [(dataset, f.id, m.id, read_image(f.image, "fixed image"), read_image(m.image, "moving image"))
             for dataset, subjects in validation_subjects() for f, m in dataset_pairs(subjects, "cycle")]
    template, labels = load_mni()
    fixed, moving, _, _ = make_moving(template, labels, 8.0, 0)
    pairs.append(("demo (MNI152, 2 mm)", "mni152", "mni152 deformed", fixed, moving))
    for dataset, fixed_id, moving_id, fixed, moving in pairs:
        windows = (intensity_window(fixed.array), intensity_window(moving.array))
        for variant, model in models.items():
            result, raised = register_quietly(fixed, moving, model)
            features = checks.input_features(fixed, moving, result.warped, result.metrics["ncc"], windows)
            extents[fixed_id], extents[moving_id] = features["fixed_extent_mm"], features["moving_extent_mm"]
            pair_rows.append(features)
            alarms += raised
            print(f"| {dataset} | {fixed_id} | {moving_id} | {variant} | "
                  f"{' '.join(f'{v:.0f}' for v in features['fixed_extent_mm'])} | "
                  f"{' '.join(f'{v:.0f}' for v in features['moving_extent_mm'])} | "
                  f"{features['fixed_background']:.3f} {features['moving_background']:.3f} | "
                  f"{features['volume_ratio']:.3f} | {features['ncc']:.3f} | "
                  f"{features['overlap']:.3f} | {len(raised)} |", flush=True)
    all_extents = np.array(list(extents.values()))
    ncc = np.array([row["ncc"] for row in pair_rows])
    overlap = np.array([row["overlap"] for row in pair_rows])
    print(f"\n{len(extents)} images, {len(pair_rows)} registrations ({len(models)} variants), "
          f"{time.perf_counter() - start:.0f} s.\n")
    print(f"- foreground extent: {all_extents.min():.0f} to {all_extents.max():.0f} mm "
          f"(smallest per image: {', '.join(f'{v:.0f}' for v in sorted(all_extents.min(axis=1)))})")
    background = np.array([[row["fixed_background"], row["moving_background"]] for row in pair_rows])
    ratio = np.array([row["volume_ratio"] for row in pair_rows])
    print(f"- background level: {background.min():.3f} to {background.max():.3f}")
    print(f"- content volume ratio (moving / fixed): {ratio.min():.3f} to {ratio.max():.3f}")
    print(f"- NCC after registration: {ncc.min():.3f} to {ncc.max():.3f}")
    print(f"- foreground overlap after registration: {overlap.min():.3f} to {overlap.max():.3f}")
    print(f"- thresholds (registration.input_warnings.THRESHOLDS): {checks.THRESHOLDS}")
    print(f"- warnings raised on these data: {len(alarms)}" + (f": {alarms}" if alarms else " (no false alarm)"))


if __name__ == "__main__":
    main()
