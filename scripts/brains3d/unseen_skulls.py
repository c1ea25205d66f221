"""The stripped validation brains inside the skulls of the two validation IXI heads (issue 21, the synthetic-heads arm):
does a network look past a skull it has never seen?

The IXI verdict on the synthetic-heads arm rests on two real validation pairs. This widens it with made-up heads: each
validation pair of docs/results/ablation-3d/val_pairs.json between skull-stripped brains (MICCAI, LPBA40, IBSR18: 15
pairs) with its moving brain placed in one validation IXI head and its fixed brain in the other
(``data.heads.synthetic_head``, as in training, which lent the three training heads only), and once more the other
way round: 30 pairs whose skulls and brains no model has seen. Mean Dice over all labels on the model grid (as
``deepreg-ablation evaluate`` measures it), of the pairs as they are (``stripped``) and in the skulls (``in skulls``),
per checkpoint, with paired Wilcoxon tests of each checkpoint against the first.
Caveat: these heads are made the way the arm's training heads were, so they favour the arm more than real heads do;
the two real IXI pairs stay the verdict (``ixi_skull.py``, ``distill_eval.sh heads_full``).

usage (from the repository root): .venv/bin/python scripts/brains3d/unseen_skulls.py CHECKPOINT... > OUT.txt
"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining")]

from DeepRegAblationTrainingLib.cli import build_parser  # noqa: E402
from DeepRegAblationTrainingLib.data.datasets import make_pair_item  # noqa: E402
from DeepRegAblationTrainingLib.data.heads import synthetic_head  # noqa: E402
from DeepRegAblationTrainingLib.evaluation import load_trained_model, validation_set  # noqa: E402
from DeepRegAblationTrainingLib.evaluation.evaluate import pair_metrics, predict_pair  # noqa: E402
from DeepRegAblationTrainingLib.evaluation.stats import paired_wilcoxon  # noqa: E402
from DeepRegAblationTrainingLib.experiments.runs import base_data_spec  # noqa: E402

SPLIT = "DeepRegAblation/Resources/Models/3d/split.json"
PAIRS = "docs/results/ablation-3d/val_pairs.json"
HEAD_DATASET = "ixi"


def pair_items(dataset, val_ids):
    """``{"stripped": [items], "in skulls": [items]}``: the stripped-brain pairs of ``dataset`` (a
    ``FixedPairDataset``), and each placed in the two validation heads, both ways round."""
    heads = sorted(i for i in val_ids if i.startswith(HEAD_DATASET + "-"))
    if len(heads) != 2:
        raise SystemExit(f"{SPLIT}: expected two validation {HEAD_DATASET} heads, found {heads}")
    store = dataset.store
    stripped = [(m, f) for m, f in dataset.pairs if not m.startswith(HEAD_DATASET + "-")]
    items = {"stripped": [], "in skulls": []}
    for moving_id, fixed_id in stripped:
        moving, fixed = store.get(moving_id), store.get(fixed_id)
        items["stripped"].append(make_pair_item(moving, fixed, f"{moving_id}->{fixed_id}"))
        for head_m, head_f in (heads, heads[::-1]):
            items["in skulls"].append(make_pair_item(
                synthetic_head(moving, store.get(head_m)), synthetic_head(fixed, store.get(head_f)),
                f"{moving_id}@{head_m}->{fixed_id}@{head_f}"))
    return items


def main(checkpoints) -> None:
    torch.set_num_threads(1)
    args = build_parser().parse_args(["evaluate", "--checkpoint", *checkpoints, "--data", "brains3d:../shared/data",
                                      "--split", SPLIT, "--pairs", PAIRS, "--out", "unused"])
    print(f"# .venv/bin/python scripts/brains3d/unseen_skulls.py {' '.join(checkpoints)}")
    print(f"# model grid, mean Dice over all labels; the stripped-brain pairs of {PAIRS} as they are, and placed in "
          f"the two validation {HEAD_DATASET} heads (both ways round)")
    dice, items_by_divisor = {}, {}  # the pairs are made once per network size multiple, not once per checkpoint
    with torch.no_grad():
        for path in checkpoints:
            model = load_trained_model(path).eval()
            if model.size_multiple not in items_by_divisor:
                dataset, info = validation_set(base_data_spec(args), ndim=3, split_path=SPLIT, pairs_path=PAIRS,
                                               n_pairs=0, divisor=model.size_multiple)
                items_by_divisor[model.size_multiple] = pair_items(dataset, info["val"])
            dice[path] = {kind: np.array([pair_metrics(predict_pair(model, item))["dice"] for item in group])
                          for kind, group in items_by_divisor[model.size_multiple].items()}
    first = checkpoints[0]
    for kind in ("stripped", "in skulls"):
        print(f"\n{kind} ({len(dice[first][kind])} pairs)")
        for path in checkpoints:
            values = dice[path][kind]
            line = f"  {values.mean():.4f}  {path}"
            if path != first:
                test = paired_wilcoxon(values, dice[first][kind])
                line += (f"  ({values.mean() - dice[first][kind].mean():+.4f} vs the first, Wilcoxon p {test['p_value']:.2g},"
                         f" {int((values > dice[first][kind]).sum())} of {len(values)} pairs higher)")
            print(line, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
