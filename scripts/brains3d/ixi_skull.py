"""Is the skull what the network does not carry to unseen heads? (issue 21, goal 1 on IXI)

The IXI images are heads with skull; the other three datasets are skull-stripped brains. On the validation pairs of a
dataset (cycle), the network alone (the affine_enhanced files that exist of: the shipped 13000-step file, the
18000-step control and its synthetic-heads arm, the 23000-step files plain, with IXI weighted up, with the
similarity counted over the labelled brain only and with the synthetic heads) and
ANTs SyN and affine (antspyx, one thread), once on the images as they are
(`head`) and once with each image masked by its own label map (labels > 0, grown by 2 voxels: `stripped`). Dice of
the same labels in both. One thread for torch and ANTs; the trainings may run beside it (no times are reported).

usage (from the repository root, after ship.sh further):
  .venv/bin/python scripts/brains3d/ixi_skull.py [DATASET] > docs/results/distill-3d/ixi-skull.txt   (default ixi)
  (the synthetic-heads arm, after ship.sh mirror: ... > docs/results/distill-3d/ixi-skull-heads.txt)
"""
import dataclasses
import sys
from pathlib import Path

sys.path[:0] = ["DeepRegAblation", "DeepRegAblationTraining"]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from DeepRegAblationLib import resampling  # noqa: E402
from DeepRegAblationLib.models.resolve import load_model_file  # noqa: E402
from DeepRegAblationLib.registration.pipeline import register  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks import classical, quality  # noqa: E402
from DeepRegAblationTrainingLib.benchmarks.suite import labelled_validation_subjects, validation_ids  # noqa: E402

D = "runs/brains3d/distill"
FILES = {"shipped_13k": "DeepRegAblation/Resources/Models/3d/affine_enhanced.pt",
         "18k": f"{D}/affine_enhanced_cascade2_18k/average_41-50.pt",
         "18k_heads": f"{D}/affine_enhanced_cascade2_18k_heads/average_41-50.pt",
         "23k": f"{D}/affine_enhanced_cascade2_23k/average_41-50.pt",
         "23k_ixi1": f"{D}/affine_enhanced_cascade2_23k_ixi1/average_41-50.pt",
         "23k_brainmask": f"{D}/affine_enhanced_cascade2_23k_brainmask/average_41-50.pt",
         "23k_heads": f"{D}/affine_enhanced_cascade2_23k_heads/average_41-50.pt"}
DILATION_VOX = 2


def stripped(image, labels):
    """``image`` with every voxel outside its labels (grown by ``DILATION_VOX``) set to 0."""
    mask = resampling.resample_to_grid((labels.array > 0).astype(np.int32), labels.ijk_to_ras, image.ijk_to_ras,
                                       image.shape, mode="nearest") > 0
    mask = ndimage.binary_dilation(mask, iterations=DILATION_VOX)
    return dataclasses.replace(image, array=np.where(mask, image.array, 0).astype(image.array.dtype))


def main(dataset: str) -> None:
    torch.set_num_threads(1)
    classical.set_threads(1)
    models = {name: load_model_file(path, 3).model for name, path in FILES.items() if Path(path).is_file()}
    val = validation_ids(Path("DeepRegAblation/Resources/Models/3d/split.json"))
    rows = {}
    pairs = quality.dataset_pairs(labelled_validation_subjects(dataset, Path("../shared/data"), val), "cycle")
    for fixed_subject, moving_subject in pairs:
        fixed, moving, fixed_labels, moving_labels = quality.read_pair(fixed_subject, moving_subject)
        versions = {"head": (fixed, moving),
                    "stripped": (stripped(fixed, fixed_labels), stripped(moving, moving_labels))}
        for kind, (a, b) in versions.items():
            for name, model in models.items():
                result = register(a, b, model, fixed_labels, moving_labels, refine=0, device="cpu")
                rows.setdefault((kind, name), []).append(result.metrics["dice"])
            for transform, name in (("deformable", "ants_syn"), ("affine", "ants_affine")):
                result = classical.classical_register(a, b, fixed_labels, moving_labels, method="ants",
                                                      transform=transform, threads=1)
                rows.setdefault((kind, name), []).append(result.metrics["dice"])
    print(f"# .venv/bin/python scripts/brains3d/ixi_skull.py {dataset}")
    print(f"# {dataset}: {len(pairs)} validation pairs (cycle), mean Dice, network alone; 'stripped': each image "
          f"masked by its own labels > 0 grown by {DILATION_VOX} voxels")
    for kind in ("head", "stripped"):
        syn = np.mean(rows[(kind, "ants_syn")])
        print(f"{kind:<9}" + "  ".join(f"{name} {np.mean(v):.4f} ({np.mean(v) / syn:.3f} x SyN)"
                                         for (k, name), v in rows.items() if k == kind))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ixi")
