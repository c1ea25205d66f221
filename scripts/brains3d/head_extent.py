"""Why the IXI heads differ from the other 3D training scans (docs/results/tried-3d/README.md).

Per scan: the volume above 2 % of the maximum intensity (litres: a brain ~1.2-1.6, a head with neck more)
and how far the top of the labelled brain lies above the scan's intensity centre of mass, on which the
4 mm model grid is centred (it reaches BRAIN_FIELD_OF_VIEW_MM[0] / 2 = 96 mm above it).
usage (repository root): .venv/bin/python scripts/brains3d/head_extent.py [DATA_ROOT]
"""
import sys

import numpy as np

sys.path[:0] = ["DeepRegAblation", "DeepRegAblationTraining"]
from DeepRegAblationLib.geometry import center_of_mass_ras, voxel_to_ras  # noqa: E402
from DeepRegAblationLib.imageio import normalize_intensity, read_image  # noqa: E402
from DeepRegAblationTrainingLib.data import BRAIN_FIELD_OF_VIEW_MM, DATASET_FOLDERS, find_dataset_subjects  # noqa: E402

root = sys.argv[1] if len(sys.argv) > 1 else "../shared/data"
print(f"model grid reaches {BRAIN_FIELD_OF_VIEW_MM[0] / 2:.0f} mm above its centre")
print("subject, volume above 2 % of max (L), top of labelled brain above the centre of mass (mm)")
for dataset in ("ibsr18", "ixi"):
    for subject in find_dataset_subjects(dataset, f"{root}/{DATASET_FOLDERS[dataset]}"):
        if subject.labels is None:
            continue
        image, labels = read_image(subject.image), read_image(subject.labels, kind="labels")
        voxel_ml = abs(np.linalg.det(image.ijk_to_ras[:3, :3])) / 1000.0
        litres = float((image.array > 0.02 * image.array.max()).sum()) * voxel_ml / 1000.0
        centre = center_of_mass_ras(normalize_intensity(image.array), image.ijk_to_ras)
        brain_ras = voxel_to_ras(np.argwhere(labels.array > 0)[:, ::-1].astype(float), labels.ijk_to_ras)
        print(f"{subject.id}, {litres:.2f}, {brain_ras[:, 2].max() - centre[2]:.0f}")
