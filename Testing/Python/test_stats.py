"""evaluation/stats.py: mean ± std, relative change, paired Wilcoxon, Benjamini–Hochberg."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from DeepRegAblationTrainingLib.evaluation import stats


def test_mean_std_ignores_nan_and_uses_sample_std():
    mean, std = stats.mean_std([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3))
    assert all(math.isnan(v) for v in stats.mean_std([float("nan")]))
    m1, s1 = stats.mean_std([7.0])
    assert m1 == 7.0 and math.isnan(s1)
    assert stats.format_mean_std([1.0, 3.0], digits=3) == "2 ± 1.41"


def test_relative_change():
    assert stats.relative_change(0.9, 0.8) == pytest.approx(0.125)
    assert stats.relative_change(-2.0, -1.0) == pytest.approx(-1.0)  # |baseline| in the denominator
    assert math.isnan(stats.relative_change(1.0, 0.0))
    assert math.isnan(stats.relative_change(float("nan"), 1.0))


def test_wilcoxon_exact_small_sample_by_hand():
    # five positive differences with distinct magnitudes: W- = 0, exact two-sided p = 2 / 2**5
    a = np.array([1.1, 2.3, 3.6, 4.0, 5.5])
    b = a - np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    res = stats.paired_wilcoxon(a, b)
    assert res["p_value"] == pytest.approx(2.0 / 32.0)
    assert res["n"] == 5 and res["n_nonzero"] == 5
    assert res["median_diff"] == pytest.approx(0.3)


def test_wilcoxon_all_zero_differences_is_p_one():
    x = [0.5, 0.6, 0.7]
    res = stats.paired_wilcoxon(x, list(x))
    assert res["p_value"] == 1.0 and res["n_nonzero"] == 0


def test_wilcoxon_drops_nan_pairs_and_detects_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + 1.0 + 0.1 * rng.normal(size=30)
    a[3] = np.nan
    res = stats.paired_wilcoxon(a, b)
    assert res["n"] == 29
    assert 0.0 <= res["p_value"] < 1e-4
    assert math.isnan(stats.paired_wilcoxon([np.nan], [1.0])["p_value"])
    with pytest.raises(ValueError, match="paired"):
        stats.paired_wilcoxon([1.0, 2.0], [1.0])


def test_benjamini_hochberg_known_example():
    p = [0.04, 0.005, 0.2, 0.01, 0.03]
    # sorted: 0.005 0.01 0.03 0.04 0.2 -> m p / rank = .025 .025 .05 .05 .2 (already monotone)
    expected = [0.05, 0.025, 0.2, 0.025, 0.05]
    np.testing.assert_allclose(stats.benjamini_hochberg(p), expected)
    # step-up minimum: a large rank can lower the q-value of smaller ranks
    np.testing.assert_allclose(stats.benjamini_hochberg([0.01, 0.02, 0.03, 0.04, 0.05]), [0.05] * 5)


def test_benjamini_hochberg_matches_scipy_and_properties():
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.uniform(0, 0.01, 5), rng.uniform(0, 1, 20)])
    q = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(q, scipy_stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    assert np.all(q >= p - 1e-15) and np.all(q <= 1.0)
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= -1e-15)


def test_benjamini_hochberg_nan_not_counted():
    q = stats.benjamini_hochberg([0.01, float("nan"), 0.04])
    assert math.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.04])
    with pytest.raises(ValueError, match="p_values"):
        stats.benjamini_hochberg([1.5])
