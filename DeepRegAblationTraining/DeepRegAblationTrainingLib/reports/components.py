"""What each model component buys: the four paired contrasts of the 2 x 2 ablation, with tests.

The four variants form a 2 x 2 design (affine stage: no / yes; regularisers: no / yes):

================  ===============  ===============
                  no regularisers  regularisers
no affine stage   ``baseline``     ``regloss``
affine stage      ``affine_basic`` ``affine_enhanced``
================  ===============  ===============

The ablation report's main tables test every variant against ``baseline`` only. This module adds the
four within-design contrasts (the affine stage with and without the regularisers, the regularisers
with and without the affine stage), each a paired Wilcoxon signed-rank test on the same validation
pairs, Benjamini–Hochberg adjusted over the four contrasts of one metric.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..evaluation import stats
from .tables import format_value, group_by_variant, markdown_metric_label, paired_values

__all__ = ["CONTRASTS", "COMPONENT_METRICS", "variant_labels", "component_contrasts", "component_markdown"]

CONTRASTS = (
    ("affine stage, without regularisers", "affine_basic", "baseline"),
    ("affine stage, with regularisers", "affine_enhanced", "regloss"),
    ("regularisers, without affine stage", "regloss", "baseline"),
    ("regularisers, with affine stage", "affine_enhanced", "affine_basic"),
)
"""``(name, with the component, without it)``: variant ids of the 2 x 2 design."""

COMPONENT_METRICS = ("dice", "hd95_mm", "folding_pct", "sdlogj")
"""The metrics the contrasts are reported for, where measured."""


def variant_labels(labels: Sequence[str]) -> Dict[str, str]:
    """Variant id -> the first row label of that variant (``regloss@run/file`` -> ``regloss``, ``x#2`` -> ``x``).

    Labels that name no variant of the design (``identity``) are left out.
    """
    ids = {variant for _, with_it, without_it in CONTRASTS for variant in (with_it, without_it)}
    found: Dict[str, str] = {}
    for label in labels:
        variant = str(label).split("@", 1)[0].split("#", 1)[0]
        if variant in ids and variant not in found:
            found[variant] = str(label)
    return found


def component_contrasts(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = COMPONENT_METRICS
                        ) -> List[Dict[str, Any]]:
    """The four contrasts, or ``[]`` unless all four variants were evaluated.

    Args:
        rows: per-pair rows (``variant``, ``pair_id`` and the metrics); several files of one variant:
            the first one seen is used (:func:`variant_labels`).
        metrics: metric columns to contrast (those without any value are skipped).

    Returns:
        One dict per contrast: ``name``, ``with``, ``without`` (row labels), and per metric ``m``:
        ``m_diff`` (mean over pairs of with - without), ``m_p`` (paired Wilcoxon), ``m_q`` (BH over the
        four contrasts), ``m_n`` (pairs tested).
    """
    groups = group_by_variant(rows)
    labels = variant_labels(list(groups))
    if len(labels) < 4:
        return []
    out = [{"name": name, "with": labels[a], "without": labels[b]} for name, a, b in CONTRASTS]
    for metric in metrics:
        for entry in out:
            with_it, without_it = paired_values(groups[entry["with"]], groups[entry["without"]], metric)
            test = stats.paired_wilcoxon(with_it, without_it)
            diff = with_it - without_it
            entry[f"{metric}_diff"] = float(np.mean(diff[np.isfinite(diff)])) if test["n"] else float("nan")
            entry[f"{metric}_p"] = test["p_value"]
            entry[f"{metric}_n"] = int(test["n"])
        for entry, q in zip(out, stats.benjamini_hochberg([e[f"{metric}_p"] for e in out])):
            entry[f"{metric}_q"] = float(q)
    return out


def component_markdown(contrasts: Sequence[Mapping[str, Any]], metrics: Optional[Sequence[str]] = None) -> List[str]:
    """The "## What each component buys" section (nothing when ``contrasts`` is empty)."""
    if not contrasts:
        return []
    metrics = [m for m in (metrics or COMPONENT_METRICS) if f"{m}_diff" in contrasts[0]]
    md = ["## What each component buys", "",
          "The four variants form a 2 x 2 design (affine stage no/yes x regularisers no/yes). Each row compares the "
          "variant with the component against the one without it on the same pairs: mean of the per-pair "
          "differences (with - without), paired Wilcoxon p, Benjamini–Hochberg q over the four contrasts of one "
          "metric.", "",
          "| component | with - without | " + " | ".join(markdown_metric_label(m) for m in metrics) + " |",
          "|---|---|" + "---|" * len(metrics)]
    for entry in contrasts:
        cells = [f"{_signed(entry[f'{m}_diff'])} (p {format_value(entry[f'{m}_p'], 3)}, "
                 f"q {format_value(entry[f'{m}_q'], 3)})" for m in metrics]
        md.append(f"| {entry['name']} | `{entry['with']}` - `{entry['without']}` | " + " | ".join(cells) + " |")
    return md + [""]


def _signed(value: float) -> str:
    """``value`` with a sign and 4 significant digits (``format_value``'s ``"n/a"`` when not finite)."""
    text = format_value(value)
    return text if text == "n/a" or text.startswith("-") else "+" + text
