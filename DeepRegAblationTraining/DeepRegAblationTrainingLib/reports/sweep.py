"""The regulariser sweep's report: one row per run (type x λ, or multiplier M), reference figures, the chosen value.

``report.md``, ``summary.csv`` and ``figures/*.png`` (the sweep's curves, training curves and
examples, from :mod:`.figures`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..evaluation import stats
from ..evaluation.evaluate import PairPrediction
from .figures import plot_sweep_curves, write_run_figures
from .tables import (
    PathLike,
    any_finite,
    format_percent_change,
    format_value,
    group_by_variant,
    markdown_metric_label,
    markdown_preamble,
    metric_values,
    write_summary_csv,
)

__all__ = [
    "BUILTIN_SWEEP_REFERENCE", "BUILTIN_SWEEP_REFERENCE_SOURCE", "parse_reference", "SWEEP_METRICS", "summarize_sweep",
    "choose_smallest_below", "write_sweep_report",
]

# published VoxelMorph-style L2 sweep on neurite-OASIS 2D (MSE similarity, scan-to-scan):
# lambda -> {metric: value}; folding in % of non-positive Jacobian determinants
BUILTIN_SWEEP_REFERENCE: Dict[Tuple[str, float], Dict[str, float]] = {
    ("l2", 0.001): {"folding_pct": 4.1, "mse": 0.00222},
    ("l2", 0.01): {"folding_pct": 0.21, "mse": 0.00296},
    ("l2", 0.1): {"folding_pct": 0.0},
    ("l2", 0.5): {"folding_pct": 0.0},
}
BUILTIN_SWEEP_REFERENCE_SOURCE = (
    "published figures for the VoxelMorph-style L2 sweep on neurite-OASIS 2D as supplied with the project brief "
    "(MSE similarity, scan-to-scan): λ 0.001 -> 4.1 % non-positive Jacobians, val MSE 0.00222; "
    "λ 0.01 -> 0.21 %, 0.00296; λ >= 0.1 -> 0 %"
)


def parse_reference(text: str) -> Dict[Tuple[str, float], Dict[str, float]]:
    """Parse ``"l2:0.001:folding_pct=4.1,l2:0.001:mse=0.00222,..."`` (``type:lambda:metric=value``)."""
    table: Dict[Tuple[str, float], Dict[str, float]] = {}
    for item in [s.strip() for s in str(text).split(",") if s.strip()]:
        key, sep, value = item.partition("=")
        parts = key.split(":")
        if not sep or len(parts) != 3:
            raise ValueError(f"--reference entries must look like TYPE:LAMBDA:METRIC=VALUE (e.g. l2:0.01:mse=0.003), got {item!r}")
        reg_type, lam, metric = parts[0].strip(), parts[1].strip(), parts[2].strip()
        try:
            table.setdefault((reg_type, float(lam)), {})[metric] = float(value)
        except ValueError:
            raise ValueError(f"--reference entry {item!r}: LAMBDA and VALUE must be numbers") from None
    return table


def _lookup_reference(reference: Mapping[Tuple[str, float], Mapping[str, float]], reg_type: str, lam: float) -> Mapping[str, float]:
    for (rtype, rlam), values in reference.items():
        if rtype == reg_type and math.isclose(rlam, lam, rel_tol=1e-9, abs_tol=1e-12):
            return values
    return {}


SWEEP_METRICS = ("dice", "folding_pct", "sdlogj", "mse", "ncc", "ssim", "hd95_mm", "mean_disp_mm")


def summarize_sweep(
    rows: Sequence[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    reference: Optional[Mapping[Tuple[str, float], Mapping[str, float]]] = None,
    metrics: Sequence[str] = SWEEP_METRICS,
    identity_rows: Optional[Sequence[Mapping[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    """One row per sweep run: ``reg_type``, ``lambda``, ``variant``, ``n_pairs``, ``m_mean``/``m_std``, ``ref_m``.

    ``runs``: dicts with ``variant`` (the id in ``rows``), ``reg_type`` and ``lambda``, in
    table order. With ``identity_rows`` (the unregistered pairs) every row also gets
    ``mse_vs_identity``: the relative change of the mean MSE against no registration.
    """
    groups = group_by_variant(rows)
    metrics = [m for m in metrics if any_finite(metric_values(rows, m).tolist())]
    identity_mse = stats.mean_std(metric_values(identity_rows, "mse"))[0] if identity_rows else math.nan
    out: List[Dict[str, Any]] = []
    for run in runs:
        vrows = groups.get(str(run["variant"]), [])
        entry: Dict[str, Any] = {
            "reg_type": run["reg_type"],
            "lambda": float(run["lambda"]),
            "variant": run["variant"],
            "n_pairs": len(vrows),
        }
        for m in metrics:
            mean, std = stats.mean_std(metric_values(vrows, m)) if vrows else (math.nan, math.nan)
            entry[f"{m}_mean"] = mean
            entry[f"{m}_std"] = std
        if identity_rows:
            entry["mse_vs_identity"] = stats.relative_change(entry.get("mse_mean", math.nan), identity_mse)
        ref = _lookup_reference(reference or {}, str(run["reg_type"]), float(run["lambda"]))
        for m, value in ref.items():
            entry[f"ref_{m}"] = float(value)
        out.append(entry)
    return out


def choose_smallest_below(summary: Sequence[Mapping[str, Any]], target_pct: float,
                          metric: str = "folding_pct_mean") -> Optional[Mapping[str, Any]]:
    """The entry with the smallest ``lambda`` whose ``metric`` (mean folding %) is finite and ``< target_pct``; else ``None``."""
    ok = [e for e in summary if math.isfinite(float(e.get(metric, math.nan))) and float(e[metric]) < float(target_pct)]
    return min(ok, key=lambda e: float(e["lambda"])) if ok else None


def write_sweep_report(
    out_dir: PathLike,
    rows: Sequence[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    reference: Optional[Mapping[Tuple[str, float], Mapping[str, float]]] = None,
    reference_source: str = "",
    command: str = "",
    setup: Optional[Mapping[str, Any]] = None,
    training_logs: Optional[Mapping[str, PathLike]] = None,
    examples: Optional[Mapping[str, PairPrediction]] = None,
    notes: Sequence[str] = (),
    title: str = "DeepRegAblation regulariser sweep",
    identity_rows: Optional[Sequence[Mapping[str, Any]]] = None,
    param_label: str = "λ",
    folding_target: Optional[float] = None,
) -> Dict[str, Path]:
    """Write the sweep's ``report.md``, ``summary.csv`` and ``figures/*.png`` (type × λ table, curves).

    ``identity_rows`` (the unregistered pairs) add a column "MSE vs no registration".
    ``param_label`` names the swept value in the table and figures (``"λ"`` or ``"M"``).
    With ``folding_target`` (%), the report states the chosen value: the smallest whose mean
    folding % is below the target (:func:`choose_smallest_below`), and ``summary.csv`` gets a
    ``chosen`` column.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_sweep(rows, runs, reference, identity_rows=identity_rows)
    if not summary:
        raise ValueError("runs is empty: nothing to report")
    chosen = _mark_chosen(summary, folding_target)
    paths: Dict[str, Path] = {"summary": write_summary_csv(summary, out_dir / "summary.csv")}
    paths["sweep_curves"] = plot_sweep_curves(summary, fig_dir / "sweep_curves.png", param_label=param_label,
                                              folding_target=folding_target)
    paths.update(write_run_figures(fig_dir, training_logs, examples))
    ref_metrics = _reference_metrics(summary)
    md = markdown_preamble(title, command, setup, notes)
    md += _results_section(summary, chosen, param_label, ref_metrics, reference_source)
    if folding_target is not None:
        md += _chosen_section(rows, summary, chosen, param_label, float(folding_target))
    md += _figures_section(paths, param_label, bool(ref_metrics), folding_target is not None)
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    paths["report"] = report
    return paths


def _mark_chosen(summary: List[Dict[str, Any]], folding_target: Optional[float]) -> Optional[Dict[str, Any]]:
    """With a ``folding_target``: the chosen entry (:func:`choose_smallest_below`, or ``None``), and a ``chosen``
    key in every entry. Without: ``None`` and no key."""
    if folding_target is None:
        return None
    if not (math.isfinite(float(folding_target)) and float(folding_target) > 0):
        raise ValueError(f"folding_target must be a positive percentage, got {folding_target!r}")
    chosen = choose_smallest_below(summary, float(folding_target))
    for e in summary:
        e["chosen"] = e is chosen
    return chosen


def _reference_metrics(summary: Sequence[Mapping[str, Any]]) -> List[str]:
    """The metrics with a reference figure (``ref_<metric>`` keys) in any entry, in first-seen order."""
    ref_metrics: List[str] = []
    for e in summary:
        for k in e:
            if k.startswith("ref_") and k[4:] not in ref_metrics:
                ref_metrics.append(k[4:])
    return ref_metrics


def _results_section(summary: Sequence[Mapping[str, Any]], chosen: Optional[Mapping[str, Any]], param_label: str,
                     ref_metrics: Sequence[str], reference_source: str) -> List[str]:
    """The "## Results" section: one table row per run, ours beside the reference figures."""
    metrics = [m for m in SWEEP_METRICS if f"{m}_mean" in summary[0]]
    md = ["## Results", "", "Mean ± sample std over the validation pairs."]
    if ref_metrics:
        md += [f"Columns *ref.*: reference figures ({reference_source or 'user supplied'}), printed beside ours."]
    md.append("")
    vs_identity = "mse_vs_identity" in summary[0]
    header = (["type", param_label, "n"] + [markdown_metric_label(m) for m in metrics]
              + (["MSE vs no registration"] if vs_identity else []) + [f"ref. {markdown_metric_label(m)}" for m in ref_metrics])
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    for e in summary:
        label = f"**{e['lambda']:g}** (chosen)" if chosen is not None and e is chosen else f"{e['lambda']:g}"
        cells = [str(e["reg_type"]), label, str(e["n_pairs"])]
        cells += [f"{format_value(e[f'{m}_mean'])} ± {format_value(e[f'{m}_std'], 3)}" for m in metrics]
        if vs_identity:
            cells.append(format_percent_change(e["mse_vs_identity"]))
        cells += [format_value(e.get(f"ref_{m}", math.nan)) if f"ref_{m}" in e else "" for m in ref_metrics]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "Per-pair values: `per_pair.csv`; summary numbers: `summary.csv`.", ""]
    return md


def _chosen_section(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
                    chosen: Optional[Mapping[str, Any]], param_label: str, folding_target: float) -> List[str]:
    """The "## Chosen <param>" section: the chosen value with its folding and Dice, or that none qualifies."""
    md = [f"## Chosen {param_label}", ""]
    if chosen is not None:
        fold_max = float(np.nanmax(metric_values(group_by_variant(rows).get(str(chosen["variant"]), []), "folding_pct")))
        line = (f"**{param_label} = {chosen['lambda']:g}**: the smallest {param_label} of this sweep whose mean folding over "
                f"the validation pairs is below {folding_target:g} % ({format_value(chosen['folding_pct_mean'])} % mean, "
                f"{format_value(fold_max)} % on the worst pair")
        if "dice_mean" in chosen:
            line += f"; Dice {format_value(chosen['dice_mean'])} ± {format_value(chosen['dice_std'], 3)}"
        md += [line + ")."]
        smaller = [e for e in summary if float(e["lambda"]) < float(chosen["lambda"])]
        if not smaller:
            md += ["", f"It is the smallest {param_label} tried: a smaller value below the target may exist; "
                   "extend the sweep downwards to be sure."]
    else:
        md += [f"No {param_label} of this sweep keeps the mean folding below {folding_target:g} %; "
               f"extend the sweep to larger values."]
    md.append("")
    return md


def _figures_section(paths: Mapping[str, Path], param_label: str, with_reference: bool, with_target: bool) -> List[str]:
    """The "## Figures" section: the sweep's curves, then the training curves and examples when written."""
    md = ["## Figures", ""]
    md += ["![sweep_curves](figures/sweep_curves.png)", "",
           f"Left: accuracy versus folding, one point per {param_label}; middle and right: folding % and MSE versus "
           f"{param_label}" + (" (black crosses: reference figures)." if with_reference else
                               (" (dashed: the folding target)." if with_target else ".")), ""]
    if "training_curves" in paths:
        md += ["![training_curves](figures/training_curves.png)", "", "Left: training loss per step (thin) and its running mean "
               "over 25 steps (thick). Right: the trainer's validation Dice after every epoch on its first validation pairs.", ""]
    if "examples" in paths:
        md += ["![examples](figures/examples.png)", "", "One validation pair for some of the runs: moving, fixed, warped; the lines of "
               "the fixed grid mapped to x + u(x) over the moving image; Jacobian determinant (folds outlined in black).", ""]
    return md
