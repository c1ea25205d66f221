"""Why the shipped 3D `affine_enhanced` trails ANTs affine on the IXI heads: three measurements on the IXI validation pair.

1. Model-grid position: the grid (and both centres of mass) moved up or down by ``dz`` mm in S. If the grid cutting
   the vertex were the cause, moving it up would help.
2. Affine passes: Dice of the affine part alone and of the whole mapping with the keypoint stage run 1-3 times.
3. The network's affine against ANTs affine on the same pair: rotation (degrees about R, A, S), scales (singular
   values) and translation at the fixed image's centre of mass.

usage (from the repository root): .venv/bin/python scripts/brains3d/ixi_diagnosis.py [CHECKPOINT] > OUT.txt
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining")]

from DeepRegAblationLib import geometry  # noqa: E402
from DeepRegAblationLib.models.resolve import resolve_model  # noqa: E402
from DeepRegAblationLib.registration.mapping import result_from_mapping  # noqa: E402
from DeepRegAblationLib.registration.pipeline import register  # noqa: E402
from DeepRegAblationLib.imageio import as_image, normalize_intensity  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.classical import classical_register  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ixi-t1-2mm"
PAIR = ("IXI012-HH-1211-T1_ds", "IXI015-HH-1258-T1_ds")  # the IXI validation subjects of split.json


def read(subject):
    return (as_image(DATA / f"{subject}.nii.gz", subject),
            as_image(DATA / f"{subject}_DLMUSE.nii.gz", f"{subject} labels", kind="labels"))


def affine_only_dice(fixed, moving, fixed_labels, moving_labels, affine_ras):
    disp = geometry.affine_after_displacement(affine_ras, torch.zeros((3,) + fixed.shape), fixed.ijk_to_ras)
    return result_from_mapping("affine", fixed, moving, affine_ras, disp, fixed_labels, moving_labels).metrics["dice"]


def describe(matrix_ras, centre_ras):
    """Rotation (deg about R, A, S), singular values and the displacement of ``centre_ras`` (mm)."""
    linear = matrix_ras[:3, :3]
    u, s, vt = np.linalg.svd(linear)
    angles = Rotation.from_matrix(u @ vt).as_euler("xyz", degrees=True)
    moved = matrix_ras[:3, :3] @ centre_ras + matrix_ras[:3, 3] - centre_ras
    return (f"rotation R/A/S {np.round(angles, 1).tolist()} deg, scales {np.round(s, 3).tolist()}, "
            f"centre moved {np.round(moved, 1).tolist()} mm")


def main():
    checkpoint = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "DeepRegAblation/Resources/Models/3d/affine_enhanced.pt")
    torch.set_num_threads(1)
    net = resolve_model(checkpoint, 3).model
    images = {subject: read(subject) for subject in PAIR}
    directions = [(PAIR[0], PAIR[1]), (PAIR[1], PAIR[0])]
    print(f"checkpoint {Path(checkpoint).relative_to(ROOT) if Path(checkpoint).is_absolute() else checkpoint}")
    print(f"pair {PAIR[1]} -> {PAIR[0]} and back; mean DLMUSE Dice of the two directions")

    print("\n1. model grid moved by dz mm in S (dz = 0: as shipped)")
    original = geometry.center_of_mass_ras
    try:
        for dz in (-20.0, 0.0, 20.0, 40.0):
            geometry.center_of_mass_ras = lambda w, m, dz=dz: original(w, m) + np.array([0.0, 0.0, dz])
            dice = [register(images[f][0], images[m][0], net, images[f][1], images[m][1]).metrics["dice"]
                    for f, m in directions]
            print(f"dz {dz:+5.0f} mm: Dice {np.mean(dice):.3f} ({', '.join(f'{d:.3f}' for d in dice)})")
    finally:
        geometry.center_of_mass_ras = original

    print("\n2. affine passes (trained with 2)")
    trained_passes = net.arch["affine_passes"]
    results = {}
    for passes in (1, 2, 3):
        net.arch["affine_passes"] = passes
        full, affine = [], []
        for f, m in directions:
            result = register(images[f][0], images[m][0], net, images[f][1], images[m][1])
            results[(passes, f)] = result.affine_ras
            full.append(result.metrics["dice"])
            affine.append(affine_only_dice(images[f][0], images[m][0], images[f][1], images[m][1], result.affine_ras))
        print(f"passes {passes}: Dice affine part only {np.mean(affine):.3f}, whole mapping {np.mean(full):.3f}")
    net.arch["affine_passes"] = trained_passes

    print("\n3. the network's affine (2 passes) vs ANTs affine, fixed RAS -> moving RAS")
    for f, m in directions:
        fixed, fixed_labels = images[f]
        moving, moving_labels = images[m]
        centre = geometry.center_of_mass_ras(normalize_intensity(fixed.array), fixed.ijk_to_ras)
        # ANTs affine exactly as `bench --quality` runs it (antspyx defaults, normalised intensities)
        ants_ras = classical_register(fixed, moving, method="ants", transform="affine", threads=1).affine_ras
        print(f"{m} -> {f}")
        for name, matrix in (("network", results[(2, f)]), ("ANTs affine", ants_ras)):
            dice = affine_only_dice(fixed, moving, fixed_labels, moving_labels, matrix)
            print(f"  {name:12s} Dice {dice:.3f}; {describe(matrix, centre)}")


if __name__ == "__main__":
    main()
