"""Evaluation of trained models on fixed validation pairs.

- :mod:`.evaluate`: predict and score pairs (one metrics row per pair), the validation pairs of a
  data spec, the per-pair CSV;
- :mod:`.endpoint_error`: end-point error against a known displacement;
- :mod:`.stats`: mean ± std, relative change, paired Wilcoxon test, Benjamini–Hochberg q-values.

The names of :mod:`.evaluate` are re-exported here (``from DeepRegAblationTrainingLib.evaluation
import evaluate_model``).
"""
from __future__ import annotations

from .endpoint_error import endpoint_error_stats_mm, mean_endpoint_error_mm
from .evaluate import (
    HIGHER_IS_BETTER,
    ID_COLUMNS,
    METRIC_COLUMNS,
    PairPrediction,
    evaluate_checkpoint,
    evaluate_model,
    load_trained_model,
    pair_metrics,
    predict_pair,
    read_rows_csv,
    row_columns,
    validation_set,
    write_rows_csv,
)

__all__ = [
    "HIGHER_IS_BETTER", "ID_COLUMNS", "METRIC_COLUMNS", "PairPrediction", "evaluate_checkpoint", "evaluate_model",
    "load_trained_model", "pair_metrics", "predict_pair", "read_rows_csv", "row_columns", "validation_set",
    "write_rows_csv", "mean_endpoint_error_mm", "endpoint_error_stats_mm",
]
