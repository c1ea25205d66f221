"""Two test-time averages of a 3D network's field on the model grid (issue 21's what-was-tried table): no training.

- flip: the network run again on both images mirrored left-right (the model grid's last axis, R), its field mirrored
  back (and its R component negated), and the two fields averaged;
- swap: the network run again with the images swapped, that field inverted (``augment.invert_field``), and the two
  averaged (a step towards inverse consistency).

Mean Dice over all labels of the 16 validation pairs of docs/results/ablation-3d/val_pairs.json (the model grid, as
``deepreg-ablation evaluate``), per pair and with a paired Wilcoxon test against the plain field.

usage (from the repository root): .venv/bin/python scripts/brains3d/test_time_averaging.py CHECKPOINT... > OUT.txt
"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining")]

from DeepRegAblationLib import fields, metrics  # noqa: E402
from DeepRegAblationTrainingLib.augment import invert_field  # noqa: E402
from DeepRegAblationTrainingLib.cli import build_parser  # noqa: E402
from DeepRegAblationTrainingLib.evaluation import load_trained_model, validation_set  # noqa: E402
from DeepRegAblationTrainingLib.evaluation.stats import paired_wilcoxon  # noqa: E402
from DeepRegAblationTrainingLib.experiments.runs import base_data_spec  # noqa: E402

SPLIT = "DeepRegAblation/Resources/Models/3d/split.json"
PAIRS = "docs/results/ablation-3d/val_pairs.json"
COLUMNS = ("plain", "mirrored", "flip average", "swap average")


def mean_dice(fixed_labels: torch.Tensor, moving_labels: torch.Tensor, disp_vox: torch.Tensor) -> float:
    """Mean Dice over the fixed labels of the moving labels warped (nearest) by ``disp_vox`` ``(1, 3, K, J, I)``."""
    return metrics.mean_dice(fixed_labels[0, 0].numpy(), fields.warp_labels(moving_labels, disp_vox)[0, 0].numpy())


def pair_dice(model: torch.nn.Module, item) -> list:
    """Dice of the four fields of :data:`COLUMNS` for one pair item."""
    moving, fixed = (torch.as_tensor(item[k])[None].float() for k in ("moving", "fixed"))
    moving_labels, fixed_labels = (torch.as_tensor(item[k])[None] for k in ("moving_labels", "fixed_labels"))
    plain = model(moving, fixed)["disp_vox"]
    mirrored = fields.mirror_field(model(torch.flip(moving, [-1]), torch.flip(fixed, [-1]))["disp_vox"])
    swapped = invert_field(model(fixed, moving)["disp_vox"])
    return [mean_dice(fixed_labels, moving_labels, d)
            for d in (plain, mirrored, (plain + mirrored) / 2, (plain + swapped) / 2)]


def main(checkpoints) -> None:
    torch.set_num_threads(1)
    args = build_parser().parse_args(["evaluate", "--checkpoint", *checkpoints, "--data", "brains3d:../shared/data",
                                      "--split", SPLIT, "--pairs", PAIRS, "--out", "unused"])
    print(f"# .venv/bin/python scripts/brains3d/test_time_averaging.py {' '.join(checkpoints)}")
    print(f"# model grid, mean Dice over all labels, pairs {PAIRS}; columns: {', '.join(COLUMNS)}")
    for path in checkpoints:
        model = load_trained_model(path).eval()
        dataset, _ = validation_set(base_data_spec(args), ndim=3, split_path=SPLIT, pairs_path=PAIRS, n_pairs=0,
                                    divisor=model.size_multiple)
        print(f"\n{path}")
        rows = []
        with torch.no_grad():
            for item in dataset:
                rows.append(pair_dice(model, item))
                print(f"  {item['pair_id']:<48} " + " ".join(f"{d:.4f}" for d in rows[-1]), flush=True)
        rows = np.array(rows)
        print("  mean " + " / ".join(f"{name} {value:.4f}" for name, value in zip(COLUMNS, rows.mean(0))))
        for column in (2, 3):
            test = paired_wilcoxon(rows[:, column], rows[:, 0])
            print(f"  {COLUMNS[column]} - plain: {rows[:, column].mean() - rows[:, 0].mean():+.4f} (Wilcoxon p "
                  f"{test['p_value']:.2g}, {int((rows[:, column] > rows[:, 0]).sum())} of {len(rows)} pairs higher)")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
