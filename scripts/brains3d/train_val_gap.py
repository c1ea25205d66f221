"""Training pairs against validation pairs (issue 21): is the network short of SyN on unseen subjects because it
cannot fit its training pairs, or because what it fits does not carry over to new subjects?

- ``pairs OUT.json``: per dataset, ``PER_DATASET`` training subjects of ``DeepRegAblation/Resources/Models/3d/split.json``
  evenly spaced through its sorted training list (all of them where it has fewer), registered in a cycle (each to the
  next, the last to the first), as ``docs/results/ablation-3d/val_pairs.json`` does with the validation subjects;
  a pairs JSON that ``deepreg-ablation evaluate --pairs`` reads.
- ``table TRAIN_DIR VAL_DIR``: from the ``summary_per_dataset.csv`` of two ``evaluate`` runs of the same checkpoints
  (training pairs, validation pairs), per dataset and checkpoint the mean Dice on each and its gain over the first
  checkpoint: what more training bought on pairs it trained on and on pairs it never saw.

``scripts/brains3d/distill_eval.sh gap`` runs both (out ``docs/results/distill-3d/train-val-gap.txt``).

usage (from the repository root): .venv/bin/python scripts/brains3d/train_val_gap.py pairs OUT.json
                                  .venv/bin/python scripts/brains3d/train_val_gap.py table TRAIN_DIR VAL_DIR
"""
import json
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining")]

from DeepRegAblationTrainingLib.data import dataset_cycle_pairs, save_pairs  # noqa: E402
from DeepRegAblationTrainingLib.evaluation import read_rows_csv  # noqa: E402

SPLIT = Path("DeepRegAblation/Resources/Models/3d/split.json")
PER_DATASET = 5
"""Training subjects per dataset (so pairs: one cycle), as many as the validation subjects of MICCAI, LPBA40 and IBSR18."""


def cycle_pairs(train_ids: List[str], per_dataset: int = PER_DATASET) -> List[Tuple[str, str]]:
    """``(moving, fixed)`` pairs: per dataset (the id's prefix before ``-``), ``per_dataset`` evenly spaced subjects
    of its sorted ids, paired in a cycle by ``data.dataset_cycle_pairs`` (as the validation pairs are)."""
    by_dataset: Dict[str, List[str]] = defaultdict(list)
    for subject in sorted(train_ids):
        by_dataset[subject.split("-", 1)[0]].append(subject)
    chosen = []
    for dataset, ids in by_dataset.items():
        n = min(per_dataset, len(ids))
        # dataset_cycle_pairs reads a subject's id and dataset only
        chosen += [SimpleNamespace(id=ids[(i * len(ids)) // n], dataset=dataset) for i in range(n)]
    return dataset_cycle_pairs(chosen)


def write_pairs(out: str) -> None:
    split = json.loads(SPLIT.read_text())
    leaked = set(split["train"]) & set(split["val"])
    if leaked:
        sys.exit(f"{SPLIT}: subjects in both train and val: {sorted(leaked)}")
    pairs = cycle_pairs(split["train"])
    save_pairs(out, pairs)
    print(f"{out}: {len(pairs)} training pairs")


def dice_by_dataset(run_dir: str) -> Dict[str, Dict[str, tuple]]:
    """``{dataset: {variant: (n_pairs, mean Dice)}}`` of an ``evaluate`` output folder (``identity``: no registration)."""
    table: Dict[str, Dict[str, tuple]] = defaultdict(dict)
    for row in read_rows_csv(Path(run_dir) / "summary_per_dataset.csv"):
        table[row["dataset"]][row["variant"]] = (int(row["n_pairs"]), float(row["dice_mean"]))
    return table


def gap_table(train_dir: str, val_dir: str) -> str:
    """The text table of ``table`` (see the module doc)."""
    train, val = dice_by_dataset(train_dir), dice_by_dataset(val_dir)
    lines = [f"# mean Dice on the model grid: training pairs ({train_dir}) against validation pairs ({val_dir});",
             "# in brackets the gain over the first checkpoint of the dataset"]
    for dataset in train:
        variants = [v for v in train[dataset] if v != "identity"]
        (n_train, identity_train), (n_val, identity_val) = train[dataset]["identity"], val[dataset]["identity"]
        lines.append(f"\n{dataset}: {n_train} training pairs (Dice {identity_train:.4f} unregistered), "
                     f"{n_val} validation pairs ({identity_val:.4f} unregistered)")
        for variant in variants:
            cells = []
            for name, source in (("training", train), ("validation", val)):
                first, value = source[dataset][variants[0]][1], source[dataset][variant][1]
                cells.append(f"{name} {value:.4f} ({value - first:+.4f})")
            lines.append(f"  {variant:<64} " + "  ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "pairs":
        write_pairs(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "table":
        print(gap_table(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
