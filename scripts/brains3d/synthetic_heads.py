"""What `train --synthetic-heads` shows the network (issue 21, the IXI arm): one training brain of each skull-stripped
dataset placed in the skull of a training head (`data.heads.synthetic_head`), on the 4 mm model grid, beside the head
it came from; sagittal, axial and coronal slices through the grid centre.

usage (from the repository root):
  .venv/bin/python scripts/brains3d/synthetic_heads.py docs/results/distill-3d/synthetic-heads.png
"""
import sys

sys.path[:0] = ["DeepRegAblation", "DeepRegAblationTraining"]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from DeepRegAblationTrainingLib.data import build_data, parse_data_argument  # noqa: E402
from DeepRegAblationTrainingLib.data.heads import synthetic_head  # noqa: E402


def slices(image):
    """Sagittal, axial and coronal slices of a ``(1, S, A, R)`` volume through its centre, superior / anterior up."""
    s, a, r = (n // 2 for n in image.shape[1:])
    return [image[0, :, :, r].flip(0), image[0, s].flip(0), image[0, :, a].flip(0)]


def main(out: str) -> None:
    torch.set_num_threads(1)
    spec = parse_data_argument("brains3d:../shared/data")
    spec["split"] = "DeepRegAblation/Resources/Models/3d/split.json"
    train = build_data(spec, seed=0).train
    ids = [s.id for s in train.subjects]
    brains = [next(i for i in ids if i.startswith(prefix)) for prefix in ("miccai2012", "lpba40", "ibsr18")]
    fig, axes = plt.subplots(len(brains), 6, figsize=(18, 3.2 * len(brains)))
    for row, (brain_id, head_id) in enumerate(zip(brains, train.head_ids)):
        head = train.store.get(head_id)
        placed = synthetic_head(train.store.get(brain_id), head)
        for col, image in enumerate(slices(placed["image"]) + slices(head["image"])):
            axes[row, col].imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_title(f"{brain_id} in {head_id}" if col == 0 else (head_id if col == 3 else ""), fontsize=8)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=45)


if __name__ == "__main__":
    main(sys.argv[1])
