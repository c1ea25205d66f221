"""The ablation report (``report.md``, ``summary.csv``, ``figures/*.png``) of variants evaluated on the same pairs.

Also written by the ``evaluate`` command for its checkpoints. The tables and statistics are
:mod:`.tables`'s, the figures :mod:`.figures`'s.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..evaluation.evaluate import METRIC_COLUMNS, PairPrediction
from .components import COMPONENT_METRICS, component_contrasts, component_markdown
from .figures import plot_accuracy_vs_folding, write_run_figures
from .tables import (
    PER_DATASET_MIN_TEST_PAIRS,
    REPORT_GROUPS,
    STATS_EXPLANATION,
    PathLike,
    ablation_markdown_tables,
    available_metrics,
    markdown_preamble,
    per_dataset_markdown,
    summarize_ablation,
    summarize_per_dataset,
    write_summary_csv,
)

__all__ = ["write_ablation_report", "FIGURE_CAPTIONS"]

FIGURE_CAPTIONS = {
    "training_curves": "Left: training loss per step (thin) and its running mean over 25 steps (thick). Right: the trainer's "
    "own validation score after every epoch (Dice, or the similarity loss without labels) on its first validation pairs.",
    "accuracy_vs_folding": "Accuracy versus folding: one small dot per validation pair, squares = mean ± std per variant.",
    "examples": "One validation pair per variant: moving, fixed, warped; the lines of the fixed grid mapped to x + u(x) "
    "over the moving image; Jacobian determinant (blue < 1 < red, folds outlined in black).",
}
"""Figure name -> the caption under it in the report (in this order)."""


def write_ablation_report(
    out_dir: PathLike,
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "baseline",
    command: str = "",
    setup: Optional[Mapping[str, Any]] = None,
    training_logs: Optional[Mapping[str, PathLike]] = None,
    examples: Optional[Mapping[str, PairPrediction]] = None,
    notes: Sequence[str] = (),
    title: str = "DeepRegAblation ablation report",
) -> Dict[str, Path]:
    """Write ``report.md``, ``summary.csv`` and ``figures/*.png`` into ``out_dir``.

    Args:
        rows: per-pair rows of every variant (and optionally ``"identity"``), same pairs.
        baseline: the variant the others are compared with.
        command: the exact command line that reproduces the report.
        setup: ``name -> value`` lines for the "Setup" section (data, split, steps, timing...).
        training_logs: ``variant -> trainer CSV log`` for the training-curve figure.
        examples: ``variant -> PairPrediction`` of one validation pair for the example figure.
        notes: extra paragraphs (e.g. the honest statement of the training budget).

    When the four variants of the 2 x 2 design are among the rows, a "What each component buys" section
    (:mod:`.components`: the affine stage with and without the regularisers and the regularisers with and
    without the affine stage, paired tests) and ``components.csv`` are added.

    When the pair ids name subjects of several datasets (``lpba40-S05->lpba40-S18``, see
    :func:`.tables.pair_dataset`), a "Per dataset" section adds Dice, HD95, folding % and SDlogJ per
    dataset and variant (paired tests where a dataset has at least 5 pairs) and
    ``summary_per_dataset.csv``.

    Returns:
        ``{"report": ..., "summary": ..., "<figure name>": ...}`` paths.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    metrics = available_metrics(rows, METRIC_COLUMNS)
    summary = summarize_ablation(rows, baseline=baseline, metrics=metrics)
    paths: Dict[str, Path] = {"summary": write_summary_csv(summary, out_dir / "summary.csv")}
    paths.update(_write_figures(fig_dir, rows, metrics, training_logs, examples))
    per_dataset = summarize_per_dataset(rows, baseline=baseline)
    if per_dataset:
        paths["summary_per_dataset"] = write_summary_csv(per_dataset, out_dir / "summary_per_dataset.csv")
    contrasts = component_contrasts(rows, [m for m in COMPONENT_METRICS if m in metrics])
    if contrasts:
        paths["components"] = write_summary_csv(contrasts, out_dir / "components.csv")
    md = markdown_preamble(title, command, setup, notes)
    md += _results_section(summary, baseline, metrics)
    md += component_markdown(contrasts)
    md += _per_dataset_section(per_dataset, baseline)
    md += ["Per-pair values: `per_pair.csv`; all summary numbers (means, stds, changes, p, q, pairs tested): `summary.csv`"
           + ("; per dataset: `summary_per_dataset.csv`." if per_dataset else "."), ""]
    md += _figures_section(paths)
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    paths["report"] = report
    return paths


def _write_figures(fig_dir: Path, rows: Sequence[Mapping[str, Any]], metrics: Sequence[str],
                   training_logs: Optional[Mapping[str, PathLike]],
                   examples: Optional[Mapping[str, PairPrediction]]) -> Dict[str, Path]:
    """Accuracy (Dice, else NCC) versus folding when both were measured, then the training curves and examples."""
    paths: Dict[str, Path] = {}
    accuracy = "dice" if "dice" in metrics else ("ncc" if "ncc" in metrics else None)
    if accuracy and "folding_pct" in metrics:
        paths["accuracy_vs_folding"] = plot_accuracy_vs_folding(rows, fig_dir / "accuracy_vs_folding.png", accuracy=accuracy)
    paths.update(write_run_figures(fig_dir, training_logs, examples))
    return paths


def _results_section(summary: Sequence[Mapping[str, Any]], baseline: str, metrics: Sequence[str]) -> List[str]:
    """The "## Results" section: what the cells mean, then one pair of tables per metric group of :data:`.tables.REPORT_GROUPS`."""
    md = ["## Results", "", "Mean ± sample std over the validation pairs; in brackets the relative change of the mean against "
          f"`{baseline}`.", "", STATS_EXPLANATION.format(baseline=baseline), ""]
    for heading, group in REPORT_GROUPS:
        shown = [m for m in group if m in metrics]
        if shown:
            md += [f"### {heading}", "", ablation_markdown_tables(summary, baseline, shown), ""]
    return md


def _per_dataset_section(per_dataset: Sequence[Mapping[str, Any]], baseline: str) -> List[str]:
    """The "## Per dataset" section (nothing when the pairs come from one dataset)."""
    if not per_dataset:
        return []
    return ["## Per dataset", "",
            "The validation pairs come from several datasets (each pair within one dataset, labels of that dataset). "
            f"Mean ± sample std over the pairs of each dataset; in brackets the change of the mean against `{baseline}` "
            f"on the same pairs. Paired Wilcoxon tests against `{baseline}` where a dataset has at least "
            f"{PER_DATASET_MIN_TEST_PAIRS} pairs, Benjamini–Hochberg adjusted over the variants within one dataset "
            "and metric.", "", per_dataset_markdown(per_dataset, baseline)]


def _figures_section(paths: Mapping[str, Path]) -> List[str]:
    """The "## Figures" section: each figure written, with its caption."""
    md = ["## Figures", ""]
    for key, caption in FIGURE_CAPTIONS.items():
        if key in paths:
            md += [f"![{key}](figures/{paths[key].name})", "", caption, ""]
    return md
