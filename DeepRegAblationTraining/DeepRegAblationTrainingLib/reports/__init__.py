"""The reports of the experiments and benchmarks: Markdown, CSV and PNG figures.

- :mod:`.tables`: formatting, per-variant summaries with paired statistics, per-dataset tables;
- :mod:`.figures`: matplotlib figures (training curves, accuracy versus folding, examples, sweep curves);
- :mod:`.training_logs`: the trainer's CSV logs as columns;
- :mod:`.ablation`: the ablation report (also the ``evaluate`` command's); :mod:`.sweep`: the sweep report;
- :mod:`.quality`: the Markdown of the registration-quality benchmark (not imported here).

The public names of the first five are re-exported here (``from DeepRegAblationTrainingLib.reports import
write_ablation_report``).
"""
from __future__ import annotations

from .tables import (
    METRIC_LABELS,
    MIXED_DATASETS,
    PER_DATASET_METRICS,
    PER_DATASET_MIN_TEST_PAIRS,
    PathLike,
    REPORT_GROUPS,
    STATS_EXPLANATION,
    ablation_markdown_tables,
    any_finite,
    available_metrics,
    format_percent_change,
    format_value,
    group_by_variant,
    markdown_metric_label,
    markdown_preamble,
    metric_values,
    pair_dataset,
    paired_values,
    per_dataset_markdown,
    rows_by_dataset,
    summarize_ablation,
    summarize_per_dataset,
    write_summary_csv,
)
from .training_logs import (
    read_training_log,
    run_logs,
)
from .figures import (
    REFERENCE_COLOR,
    draw_deformation_grid,
    plot_accuracy_vs_folding,
    plot_deformation_examples,
    plot_sweep_curves,
    plot_training_curves,
    variant_colors,
    write_run_figures,
)
from .ablation import (
    FIGURE_CAPTIONS,
    write_ablation_report,
)
from .sweep import (
    BUILTIN_SWEEP_REFERENCE,
    BUILTIN_SWEEP_REFERENCE_SOURCE,
    SWEEP_METRICS,
    choose_smallest_below,
    parse_reference,
    summarize_sweep,
    write_sweep_report,
)

__all__ = [
    "PathLike", "METRIC_LABELS", "REPORT_GROUPS", "markdown_metric_label", "format_value", "format_percent_change",
    "any_finite", "metric_values", "group_by_variant", "paired_values", "available_metrics", "summarize_ablation",
    "write_summary_csv", "ablation_markdown_tables", "PER_DATASET_METRICS", "PER_DATASET_MIN_TEST_PAIRS",
    "MIXED_DATASETS", "pair_dataset", "rows_by_dataset", "summarize_per_dataset", "per_dataset_markdown",
    "STATS_EXPLANATION", "markdown_preamble", "read_training_log", "run_logs", "REFERENCE_COLOR", "variant_colors",
    "plot_training_curves", "plot_accuracy_vs_folding", "draw_deformation_grid", "plot_deformation_examples",
    "plot_sweep_curves", "write_run_figures", "write_ablation_report", "FIGURE_CAPTIONS", "BUILTIN_SWEEP_REFERENCE",
    "BUILTIN_SWEEP_REFERENCE_SOURCE", "parse_reference", "SWEEP_METRICS", "summarize_sweep",
    "choose_smallest_below", "write_sweep_report"
]
