"""Trained checkpoints evaluated on fixed validation pairs (the ``evaluate`` command): per-pair CSV and report.

The pairs come from a pairs file or are drawn from the validation subjects of a split; the images
are preprocessed as in training. The report is the ablation report's
(``reports.ablation.write_ablation_report``), the first checkpoint being the baseline.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .runs import DEFAULT_VAL_PAIRS, base_data_spec

__all__ = ["checkpoint_labels", "evaluate_checkpoints"]


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


def evaluate_checkpoints(args: argparse.Namespace, command: str) -> Dict[str, Path]:
    """Evaluate ``args.checkpoint`` (and the unregistered pairs unless ``--no-identity``) and write the report.

    Writes ``command.txt``, ``val_pairs.json``, ``per_pair.csv``, ``summary.csv``, ``report.md`` and
    ``figures/`` into ``args.out``; ``command`` is the command line that reproduces them. Returns the
    report's paths.
    """
    import torch

    from ..evaluation import write_rows_csv
    from ..reports.ablation import write_ablation_report

    if args.threads:
        torch.set_num_threads(int(args.threads))
    models = _load_models(args.checkpoint, args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "command.txt").write_text(f"# Reproduce (from the repository root):\n{command}\n")
    spec = base_data_spec(args)
    dataset, info = _validation_pairs(args, spec, models, out_dir)
    labels = checkpoint_labels(list(args.checkpoint), [m.variant.id for m in models])
    rows, examples = _evaluate(args, dataset, labels, models)
    write_rows_csv(rows, out_dir / "per_pair.csv")
    setup = {
        "checkpoints": "; ".join(f"`{lab}`: {p}" for lab, p in zip(labels, args.checkpoint)),
        "data": f"{spec.get('kind')} {spec.get('path', '')}".strip(),
        "pairs": f"{len(dataset)} pairs (`val_pairs.json`)" if not info.get("synthetic") else f"{len(dataset)} synthetic pairs",
    }
    return write_ablation_report(
        out_dir, rows, baseline=labels[0], command=command, setup=setup, examples=examples,
        title="DeepRegAblation evaluation",
    )


def _load_models(paths: Sequence[str], device: str) -> List[Any]:
    """The checkpoints' models (``FileNotFoundError`` naming a missing one; all must be 2D or all 3D)."""
    from ..evaluation import load_trained_model

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
    models = [load_trained_model(path, device=device) for path in paths]
    if len({m.ndim for m in models}) != 1:
        raise ValueError(f"--checkpoint mixes 2D and 3D models: {dict(zip(paths, [m.ndim for m in models]))}")
    return models


def _validation_pairs(args: argparse.Namespace, spec: Dict[str, Any], models: Sequence[Any],
                      out_dir: Path) -> Tuple[Any, Dict[str, Any]]:
    """The validation pairs (``--pairs``, or drawn from ``--split``), preprocessed for the models; a copy of the
    pairs in ``val_pairs.json``; ``--example-pair`` checked."""
    from ..evaluation import validation_set

    dataset, info = validation_set(
        spec, ndim=models[0].ndim, seed=args.seed, n_pairs=0 if args.pairs else (args.val_pairs or DEFAULT_VAL_PAIRS),
        split_path=args.split, pairs_path=args.pairs or out_dir / "val_pairs.json",
        divisor=max(m.size_multiple for m in models),
    )
    if args.pairs:
        from ..data import save_pairs

        save_pairs(out_dir / "val_pairs.json", [tuple(p) for p in info["pairs"]])
    if not 0 <= args.example_pair < len(dataset):
        raise ValueError(f"--example-pair must be in [0, {len(dataset) - 1}], got {args.example_pair}")
    return dataset, info


def _evaluate(args: argparse.Namespace, dataset: Any, labels: Sequence[str],
              models: Sequence[Any]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Per-pair rows (the identity's first unless ``--no-identity``) and each model's example pair."""
    from ..evaluation import evaluate_model, predict_pair

    rows = [] if args.no_identity else evaluate_model(None, dataset)
    examples: Dict[str, Any] = {}
    for label, path, model in zip(labels, args.checkpoint, models):
        vrows = evaluate_model(model, dataset, device=args.device, checkpoint=path)
        for row in vrows:
            row["variant"] = label
        rows += vrows
        examples[label] = predict_pair(model, dataset[args.example_pair], device=args.device)
        print(f"[{label}] evaluated {len(vrows)} pairs", file=sys.stderr, flush=True)
    return rows, examples
