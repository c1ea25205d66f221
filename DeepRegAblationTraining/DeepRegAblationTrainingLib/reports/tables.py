"""Summary tables of the ablation and sweep reports: formatting, paired statistics, per-dataset tables.

Inputs are the per-pair rows of :mod:`..evaluation` (one dict per variant and validation pair,
with ``variant`` and ``pair_id``). Every variant is evaluated on the same pairs, so
comparisons against the baseline are *paired* by ``pair_id``:

- per variant and metric: mean ± sample std, relative change of the mean against the
  baseline's mean (``(v - b) / |b|``), two-sided paired Wilcoxon signed-rank p-value against
  the baseline, and Benjamini–Hochberg q-values; the BH family is one metric (the comparisons
  of every non-baseline variant with the baseline on that metric).
- rows whose variant is in ``reference_variants`` (default ``"identity"``: no registration)
  are summarised but never tested.
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..evaluation import stats
from ..evaluation.evaluate import HIGHER_IS_BETTER, METRIC_COLUMNS

__all__ = [
    "PathLike", "METRIC_LABELS", "REPORT_GROUPS", "markdown_metric_label", "format_value", "format_percent_change",
    "any_finite", "metric_values", "group_by_variant", "paired_values", "available_metrics", "summarize_ablation",
    "write_summary_csv", "ablation_markdown_tables", "PER_DATASET_METRICS", "PER_DATASET_MIN_TEST_PAIRS",
    "MIXED_DATASETS", "pair_dataset", "rows_by_dataset", "summarize_per_dataset", "per_dataset_markdown",
    "STATS_EXPLANATION", "markdown_preamble", "markdown_from_docstring",
]

PathLike = Union[str, os.PathLike]


METRIC_LABELS: Dict[str, str] = {
    "dice": "Dice",
    "hd95_mm": "HD95 (mm)",
    "folding_pct": "folding (% det<=0)",
    "sdlogj": "SDlogJ",
    "mse": "MSE",
    "ncc": "NCC",
    "ssim": "SSIM",
    "max_disp_vox": "max |u| (vox)",
    "mean_disp_vox": "mean |u| (vox)",
    "max_disp_mm": "max |u| (mm)",
    "mean_disp_mm": "mean |u| (mm)",
    "tre_mm": "centroid TRE (mm)",
    "tre_true_mm": "end-point error vs truth (mm)",
    "runtime_s": "runtime (s)",
}
# metric groups of the Markdown tables (every metric goes to the CSV)
REPORT_GROUPS = (
    ("Accuracy", ("dice", "hd95_mm", "tre_mm", "tre_true_mm", "mse", "ncc", "ssim")),
    ("Deformation quality and cost", ("folding_pct", "sdlogj", "mean_disp_mm", "max_disp_mm", "runtime_s")),
)


# --------------------------------------------------------------------------- formatting and grouping
def markdown_metric_label(metric: str) -> str:
    """Metric label for a Markdown table cell (``|`` escaped)."""
    return METRIC_LABELS.get(metric, metric).replace("|", "\\|")


def format_value(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits; ``"n/a"`` when it is not a finite number."""
    if value is None or not isinstance(value, (int, float, np.floating)) or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}g}"


def format_percent_change(fraction: float) -> str:
    """A relative change (a fraction) as signed percent, ``"+12.3 %"``; ``"n/a"`` when not finite."""
    if fraction is None or not math.isfinite(fraction):
        return "n/a"
    return f"{100.0 * fraction:+.1f} %"


def any_finite(values: Sequence[float]) -> bool:
    """Whether at least one entry of ``values`` is a finite number."""
    return any(isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)) for v in values)


def group_by_variant(rows: Sequence[Mapping[str, Any]]) -> "OrderedDict[str, List[Mapping[str, Any]]]":
    """Rows grouped by ``row["variant"]``, variants in first-seen order."""
    groups: "OrderedDict[str, List[Mapping[str, Any]]]" = OrderedDict()
    for row in rows:
        if "variant" not in row:
            raise ValueError(f"every row needs a 'variant' key, got keys {sorted(row)}")
        groups.setdefault(str(row["variant"]), []).append(row)
    return groups


def metric_values(rows: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray:
    """``(len(rows),)`` float64 values of ``metric`` (NaN where absent or not a number)."""
    out = []
    for row in rows:
        try:
            out.append(float(row.get(metric, math.nan)))
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=np.float64)


def paired_values(
    rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]], metric: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Values of ``metric`` for the pairs both row lists share, aligned by ``pair_id``."""
    by_id_b = {str(r["pair_id"]): r for r in rows_b}
    a, b = [], []
    for row in rows_a:
        other = by_id_b.get(str(row["pair_id"]))
        if other is not None:
            a.append(row)
            b.append(other)
    return metric_values(a, metric), metric_values(b, metric)


def available_metrics(rows: Sequence[Mapping[str, Any]], candidates: Sequence[str] = METRIC_COLUMNS) -> List[str]:
    """The ``candidates`` that have at least one finite value in ``rows``."""
    return [m for m in candidates if any_finite(metric_values(rows, m).tolist())]


# --------------------------------------------------------------------------- ablation summary
def summarize_ablation(
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "baseline",
    metrics: Optional[Sequence[str]] = None,
    reference_variants: Sequence[str] = ("identity",),
) -> List[Dict[str, Any]]:
    """One summary row per variant (first-seen order).

    Keys: ``variant``, ``n_pairs``, and for each metric ``m``: ``m_mean``, ``m_std``,
    ``m_rel_change`` (fraction vs the baseline mean), ``m_p`` (paired Wilcoxon vs baseline),
    ``m_q`` (BH over the non-baseline variants for that metric), ``m_n`` (pairs tested).
    The baseline and reference variants get NaN p/q. ``ValueError`` if ``baseline`` is absent.
    """
    groups = group_by_variant(rows)
    if baseline not in groups:
        raise ValueError(f"baseline variant {baseline!r} not among the evaluated variants {list(groups)}")
    metrics = list(metrics) if metrics is not None else available_metrics(rows)
    base_rows = groups[baseline]
    summary: List[Dict[str, Any]] = []
    for variant, vrows in groups.items():
        entry: Dict[str, Any] = {"variant": variant, "n_pairs": len(vrows)}
        for metric in metrics:
            mean, std = stats.mean_std(metric_values(vrows, metric))
            base_mean, _ = stats.mean_std(metric_values(base_rows, metric))
            entry[f"{metric}_mean"] = mean
            entry[f"{metric}_std"] = std
            entry[f"{metric}_rel_change"] = stats.relative_change(mean, base_mean)
            entry[f"{metric}_p"] = math.nan
            entry[f"{metric}_q"] = math.nan
            entry[f"{metric}_n"] = 0
            if variant != baseline and variant not in reference_variants:
                a, b = paired_values(vrows, base_rows, metric)
                test = stats.paired_wilcoxon(a, b)
                entry[f"{metric}_p"] = test["p_value"]
                entry[f"{metric}_n"] = int(test["n"])
        summary.append(entry)
    for metric in metrics:
        tested = [e for e in summary if e["variant"] != baseline and e["variant"] not in reference_variants]
        q = stats.benjamini_hochberg([e[f"{metric}_p"] for e in tested])
        for e, qv in zip(tested, q):
            e[f"{metric}_q"] = float(qv)
    return summary


def write_summary_csv(summary: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Write summary rows (dicts with the same keys) as CSV."""
    if not summary:
        raise ValueError("summary is empty: nothing to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: List[str] = []
    for row in summary:
        for key in row:
            if key not in columns:
                columns.append(key)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    return path


def ablation_markdown_tables(
    summary: Sequence[Mapping[str, Any]], baseline: str, metrics: Sequence[str], reference_variants: Sequence[str] = ("identity",)
) -> str:
    """Two Markdown tables for ``metrics``: ``mean ± std (change vs baseline)`` and ``p / q`` per variant."""
    lines = ["| variant | n | " + " | ".join(markdown_metric_label(m) for m in metrics) + " |"]
    lines.append("|---|---|" + "---|" * len(metrics))
    for e in summary:
        cells = []
        for m in metrics:
            cell = f"{format_value(e[f'{m}_mean'])} ± {format_value(e[f'{m}_std'], 3)}"
            compared = e["variant"] != baseline and e["variant"] not in reference_variants
            if compared and math.isfinite(e[f"{m}_rel_change"]):
                cell += f" ({format_percent_change(e[f'{m}_rel_change'])})"
            cells.append(cell)
        name = f"{e['variant']} (no registration)" if e["variant"] in reference_variants else e["variant"]
        lines.append(f"| {name} | {e['n_pairs']} | " + " | ".join(cells) + " |")
    tested = [e for e in summary if any(math.isfinite(e[f"{m}_p"]) for m in metrics)]
    if tested:
        lines.append("")
        lines.append("| p / q vs " + baseline + " | " + " | ".join(markdown_metric_label(m) for m in metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for e in tested:
            cells = []
            for m in metrics:
                p, q, rel = e[f"{m}_p"], e[f"{m}_q"], e[f"{m}_rel_change"]
                if not math.isfinite(p):
                    cells.append("n/a")
                    continue
                arrow = "" if not math.isfinite(rel) or rel == 0 else ("↑ " if rel > 0 else "↓ ")
                better = HIGHER_IS_BETTER.get(m)
                good = better is not None and math.isfinite(rel) and q < 0.05 and rel != 0 and ((rel > 0) == better)
                cells.append(f"{arrow}{p:.3g} / {q:.3g}{' ✓' if good else ''}")
            lines.append(f"| {e['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- per dataset
PER_DATASET_METRICS = ("dice", "hd95_mm", "folding_pct", "sdlogj")
PER_DATASET_MIN_TEST_PAIRS = 5
MIXED_DATASETS = "mixed"


def _known_datasets() -> Tuple[str, ...]:
    from ..data import DATASET_LAYOUTS

    return tuple(DATASET_LAYOUTS)


def pair_dataset(pair_id: Any, datasets: Optional[Sequence[str]] = None) -> Optional[str]:
    """The dataset of a pair id ``<dataset>-<subject>-><dataset>-<subject>`` (e.g. ``lpba40-S05->lpba40-S18``).

    ``datasets``: the known dataset names (default the keys of ``data.DATASET_LAYOUTS``:
    miccai2012, lpba40, ibsr18, ixi). Returns the dataset when both subjects belong to the same
    known one, :data:`MIXED_DATASETS` when they belong to two different known ones, ``None``
    when the id does not look like that (e.g. OASIS ids, synthetic pairs).
    """
    names = tuple(datasets) if datasets is not None else _known_datasets()
    moving, sep, fixed = str(pair_id).partition("->")
    if not sep:
        return None
    found = []
    for subject in (moving.strip(), fixed.strip()):
        kind, dash, stem = subject.partition("-")
        if not dash or not stem or kind not in names:
            return None
        found.append(kind)
    return found[0] if found[0] == found[1] else MIXED_DATASETS


def rows_by_dataset(rows: Sequence[Mapping[str, Any]], datasets: Optional[Sequence[str]] = None
                    ) -> "OrderedDict[str, List[Mapping[str, Any]]]":
    """Rows grouped by :func:`pair_dataset` of their ``pair_id`` when they come from at least two datasets, else empty.

    Groups follow the order of ``datasets`` (default ``data.DATASET_LAYOUTS``), then
    ``"mixed"`` (pairs across two datasets) and ``"other"`` (ids of no known dataset).
    """
    names = tuple(datasets) if datasets is not None else _known_datasets()
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for row in rows:
        key = pair_dataset(row.get("pair_id", ""), names) or "other"
        groups.setdefault(key, []).append(row)
    if sum(1 for k in groups if k in names) < 2:
        return OrderedDict()
    order = list(names) + [MIXED_DATASETS, "other"]
    return OrderedDict((k, groups[k]) for k in order if k in groups)


def summarize_per_dataset(
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "baseline",
    metrics: Sequence[str] = PER_DATASET_METRICS,
    min_test_pairs: int = PER_DATASET_MIN_TEST_PAIRS,
    reference_variants: Sequence[str] = ("identity",),
    datasets: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """:func:`summarize_ablation` within each dataset (see :func:`rows_by_dataset`), with a ``dataset`` key first.

    Paired tests (p, and BH q over the variants of one dataset and metric) only where the
    dataset has at least ``min_test_pairs`` pairs; below that p/q are NaN and ``m_n`` is 0.
    Empty when the rows do not come from several datasets.
    """
    out: List[Dict[str, Any]] = []
    for dataset, drows in rows_by_dataset(rows, datasets).items():
        shown = [m for m in metrics if any_finite(metric_values(drows, m).tolist())]
        if not shown or baseline not in group_by_variant(drows):
            continue
        summary = summarize_ablation(drows, baseline=baseline, metrics=shown, reference_variants=reference_variants)
        n_pairs = max((e["n_pairs"] for e in summary), default=0)
        for e in summary:
            if n_pairs < int(min_test_pairs):
                for m in shown:
                    e[f"{m}_p"], e[f"{m}_q"], e[f"{m}_n"] = math.nan, math.nan, 0
            out.append(OrderedDict([("dataset", dataset)] + list(e.items())))
    return out


def per_dataset_markdown(
    summary: Sequence[Mapping[str, Any]], baseline: str, min_test_pairs: int = PER_DATASET_MIN_TEST_PAIRS,
    reference_variants: Sequence[str] = ("identity",),
) -> str:
    """The "Per dataset" section body: one mean ± std table (and a p / q table where tested) per dataset."""
    lines: List[str] = []
    datasets = list(dict.fromkeys(e["dataset"] for e in summary))
    for dataset in datasets:
        entries = [e for e in summary if e["dataset"] == dataset]
        metrics = [k[: -len("_mean")] for k in entries[0] if k.endswith("_mean")]
        n_pairs = max(e["n_pairs"] for e in entries)
        title = {MIXED_DATASETS: "pairs across two datasets", "other": "pairs of no known dataset"}.get(dataset, dataset)
        lines += [f"### {title}: {n_pairs} pairs", ""]
        lines.append(ablation_markdown_tables(entries, baseline, metrics, reference_variants))
        if n_pairs < int(min_test_pairs):
            lines += ["", f"No paired tests: fewer than {int(min_test_pairs)} pairs."]
        lines.append("")
    return "\n".join(lines)


STATS_EXPLANATION = (
    "Statistics: two-sided paired Wilcoxon signed-rank test of each variant against `{baseline}` on the same "
    "validation pairs (p), Benjamini–Hochberg adjusted over the variants compared on one metric (q). "
    "↑/↓: direction of the change of the mean; ✓: a change in the better direction with q < 0.05."
)


def markdown_preamble(title: str, command: str = "", setup: Optional[Mapping[str, Any]] = None,
                      notes: Sequence[str] = ()) -> List[str]:
    """The first lines of a report: title, the command that reproduces it, the "Setup" list and the notes."""
    md: List[str] = [f"# {title}", ""]
    if command:
        md += ["Reproduce with:", "", "```", command, "```", ""]
    if setup:
        md += ["## Setup", ""] + [f"- **{k}**: {v}" for k, v in setup.items()] + [""]
    for note in notes:
        md += [note, ""]
    return md


def markdown_from_docstring(text: str) -> str:
    """A docstring's reStructuredText as Markdown, for the reports that quote their module's docstring: a role
    (:func:`x`, :data:`x`, ...) and a ``literal`` both become `x`."""
    text = re.sub(r":(?:func|data|class|mod|meth|attr|obj):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")
