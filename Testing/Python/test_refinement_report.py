"""The refinement comparison of issue 21 (bench --refinement): rows, the model-grid ceiling, the refinement without a
network, Dice against time and the report."""
from __future__ import annotations

import math

import numpy as np
import pytest

from test_quality import _write_subjects

from DeepRegAblationLib.models.resolve import resolve_models
from DeepRegAblationLib.registration.pipeline import refine_without_network
from DeepRegAblationTrainingLib.benchmarks import classical, quality, refinement
from DeepRegAblationTrainingLib.reports.refinement import (
    markdown_refinement, plot_dice_against_time, summarize_refinement, time_to_reach,
)


def test_refinement_without_a_network_starts_at_the_centre_of_mass(tmp_path):
    fixed_subject, moving_subject = _write_subjects(tmp_path)
    images = quality.read_pair(fixed_subject, moving_subject)
    identity = classical.identity_register(*images)
    result = refine_without_network(*images, refine=5)
    assert result.variant == "com+refine" and result.metrics["dice"] > identity.metrics["dice"] + 0.2
    assert result.timings["refine"] > 0 and result.metrics["runtime_s"] >= result.timings["refine"]
    with pytest.raises(ValueError, match="needs a refinement schedule"):
        refine_without_network(*images, refine=0)


def test_rows_of_a_pair_and_the_ceiling(tmp_path):
    subjects = _write_subjects(tmp_path)
    loaded = resolve_models(None, ["baseline"], 3, untrained=True, seed=0)["baseline"]
    rows = refinement.refinement_table({"phantom": quality.dataset_pairs(subjects, 1)}, loaded, budgets=[2], threads=1,
                                       syn=False)
    methods = [r["method"] for r in rows]
    assert methods == ["network", "com", "network+refine@2", "com+refine@2", "network+refine", "com+refine", "ceiling"]
    assert all(tuple(r) == refinement.REFINEMENT_COLUMNS for r in rows)
    by = {r["method"]: r for r in rows}
    assert math.isnan(by["ceiling"]["runtime_s"]) and 0 < by["ceiling"]["dice"] <= 1
    # a field on a grid as coarse as the untrained model's (the image's own spacing here) keeps the refined alignment
    assert by["ceiling"]["dice"] == pytest.approx(by["com+refine"]["dice"], abs=0.05)
    assert by["com+refine"]["dice"] > by["network"]["dice"]  # an untrained network does little


def _rows(dataset, syn, network, curves):
    rows = [dict(dataset=dataset, method="ants_syn", dice=syn[0], runtime_s=syn[1], folding_pct=0.0),
            dict(dataset=dataset, method="network", dice=network[0], runtime_s=network[1], folding_pct=0.01),
            dict(dataset=dataset, method="com", dice=0.5, runtime_s=0.3, folding_pct=0.0)]
    for start, points in curves.items():
        prefix = "network+refine" if start == "network" else "com+refine"
        for budget, (dice, seconds) in points.items():
            rows.append(dict(dataset=dataset, method=prefix if budget == "recommended" else f"{prefix}@{budget}",
                             dice=dice, runtime_s=seconds, folding_pct=0.0))
    rows.append(dict(dataset=dataset, method="ceiling", dice=0.70, runtime_s=float("nan"), folding_pct=0.0))
    return rows


def test_time_to_reach_syn_and_the_goal_lines(tmp_path):
    rows = _rows("lpba40", (0.69, 40.0), (0.67, 1.2), {
        "network": {"2": (0.685, 2.0), "5": (0.695, 3.5), "recommended": (0.705, 8.0)},
        "com": {"2": (0.60, 2.5), "5": (0.66, 4.5), "recommended": (0.706, 10.0)},
    })
    summary = summarize_refinement(rows)["lpba40"]
    assert time_to_reach(summary, "network", 0.69) == ("5", 3.5)
    assert time_to_reach(summary, "com", 0.69) == ("recommended", 10.0)
    assert time_to_reach(summary, "com", 0.8) is None
    text = markdown_refinement(rows, "Setup: test.", "fig.png")
    assert "network 0.97 x SyN (met)" in text and "in 3.5 s = 0.09 x SyN's time, 0.35 x the centre-of-mass start (met)" in text
    assert "| network | 0.670 in 1.2 s | 0.685 in 2.0 s | 0.695 in 3.5 s | 0.705 in 8.0 s |" in text
    assert "| start | 0 | 2 | 5 | recommended |" in text
    assert time_to_reach(summary, "network", 0.67) == ("0", 1.2)  # the network alone already reaches it
    assert "The network start needs 0.35 x the time of the centre-of-mass start." in text
    path = plot_dice_against_time(rows, tmp_path / "curves.png")
    assert path.is_file() and path.stat().st_size > 1000
