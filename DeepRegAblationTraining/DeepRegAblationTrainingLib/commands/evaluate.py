"""Evaluate trained checkpoints on fixed validation pairs: per-pair metrics, summary and report.

The pairs come from --pairs (a JSON file as written by train / ablation: val_pairs.json) or
are drawn (--val-pairs N, with --seed) from the validation subjects of --split (a split JSON;
drawn with --val-fraction and --seed and written there when the file does not exist). The
images are preprocessed as in training (same --shape / --spacing / --labels as the run).

Per pair and checkpoint: Dice per label and mean, HD95 (mm), folding % (det J <= 0), SDlogJ,
MSE, NCC, SSIM, max/mean displacement (voxels and mm), label-centroid TRE (mm), end-point
error against the known displacement for synthetic pairs (mm), and the model's runtime.

Writes into --out: per_pair.csv, summary.csv (mean, std, change against the first checkpoint,
paired Wilcoxon p and Benjamini-Hochberg q), report.md, figures/*.png, val_pairs.json and
command.txt.

Example: deepreg-ablation evaluate --checkpoint runs/baseline/last.pt runs/regloss/last.pt
--data oasis2d:../shared/data/neurite-oasis-2d --pairs runs/baseline/val_pairs.json --out eval-out
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

from .ablation import DEFAULT_VAL_PAIRS, add_data_arguments, base_data_spec, canonical_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT", help="checkpoint file(s) to evaluate")
    add_data_arguments(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default), auto or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-identity", dest="no_identity", action="store_true",
                        help="do not add the unregistered pairs ('identity') as a reference row")
    parser.add_argument("--example-pair", dest="example_pair", type=int, default=0,
                        help="index of the pair shown in the example figure (default 0)")
    parser.add_argument("--out", required=True, help="output folder")


def checkpoint_labels(paths: List[str], variants: List[str]) -> List[str]:
    """A unique row label per checkpoint: the variant id, or ``<variant>@<run folder>`` when ids repeat."""
    labels = []
    for path, variant in zip(paths, variants):
        label = variant
        if variants.count(variant) > 1:
            label = f"{variant}@{Path(path).parent.name}/{Path(path).stem}"
        labels.append(label)
    if len(set(labels)) != len(labels):
        labels = [f"{lab}#{i}" for i, lab in enumerate(labels)]
    return labels


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation import evaluate_model, load_trained_model, predict_pair, validation_set, write_rows_csv
    from ..reports import write_ablation_report

    if args.threads:
        torch.set_num_threads(int(args.threads))
    for path in args.checkpoint:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
    models = [load_trained_model(path, device=args.device) for path in args.checkpoint]
    ndims = {m.ndim for m in models}
    if len(ndims) != 1:
        raise ValueError(f"--checkpoint mixes 2D and 3D models: {dict(zip(args.checkpoint, [m.ndim for m in models]))}")
    divisor = max(m.size_multiple for m in models)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = canonical_command("evaluate", args)
    (out_dir / "command.txt").write_text(f"# Reproduce (from the repository root):\n{command}\n")
    spec = base_data_spec(args)
    dataset, info = validation_set(
        spec, ndim=ndims.pop(), seed=args.seed, n_pairs=0 if args.pairs else (args.val_pairs or DEFAULT_VAL_PAIRS),
        split_path=args.split, pairs_path=args.pairs or out_dir / "val_pairs.json", divisor=divisor,
    )
    if args.pairs:
        from ..data import save_pairs

        save_pairs(out_dir / "val_pairs.json", [tuple(p) for p in info["pairs"]])
    if not 0 <= args.example_pair < len(dataset):
        raise ValueError(f"--example-pair must be in [0, {len(dataset) - 1}], got {args.example_pair}")
    labels = checkpoint_labels(list(args.checkpoint), [m.variant.id for m in models])
    rows = [] if args.no_identity else evaluate_model(None, dataset)
    examples: Dict[str, object] = {}
    for label, path, model in zip(labels, args.checkpoint, models):
        vrows = evaluate_model(model, dataset, device=args.device, checkpoint=path)
        for row in vrows:
            row["variant"] = label
        rows += vrows
        examples[label] = predict_pair(model, dataset[args.example_pair], device=args.device)
        print(f"[{label}] evaluated {len(vrows)} pairs", file=sys.stderr, flush=True)
    write_rows_csv(rows, out_dir / "per_pair.csv")
    setup = {
        "checkpoints": "; ".join(f"`{lab}`: {p}" for lab, p in zip(labels, args.checkpoint)),
        "data": f"{spec.get('kind')} {spec.get('path', '')}".strip(),
        "pairs": f"{len(dataset)} pairs (`val_pairs.json`)" if not info.get("synthetic") else f"{len(dataset)} synthetic pairs",
    }
    paths = write_ablation_report(
        out_dir, rows, baseline=labels[0], command=command, setup=setup, examples=examples,
        title="DeepRegAblation evaluation",
    )
    print(f"evaluation: {out_dir / 'per_pair.csv'}, report {paths['report']}")
    return 0
