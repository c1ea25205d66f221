"""Statistics for comparing registration variants on the same validation pairs.

- :func:`mean_std`: mean and sample standard deviation (``ddof=1``) over the finite values.
- :func:`relative_change`: ``(value - baseline) / |baseline|`` (a fraction; x100 for percent).
- :func:`paired_wilcoxon`: two-sided paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``)
  on per-pair values of two variants, with the degenerate cases handled explicitly
  (all differences zero -> p = 1; fewer than one usable pair -> NaN).
- :func:`benjamini_hochberg`: Benjamini–Hochberg false-discovery-rate adjusted p-values
  (q-values), NaN-aware.

Every function takes plain sequences / numpy arrays of floats and returns floats or numpy
arrays; NaN means "not available" (e.g. Dice on a pair without labels) and is never counted.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["mean_std", "format_mean_std", "relative_change", "paired_wilcoxon", "benjamini_hochberg"]


def _as_1d(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1D sequence of numbers, got shape {arr.shape}")
    return arr


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the finite entries of ``values``.

    Returns ``(nan, nan)`` when there is no finite value and ``(mean, nan)`` for a single one.
    """
    arr = _as_1d(values, "values")
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return mean, std


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``"mean ± std"`` with ``digits`` significant digits (``"n/a"`` when nothing is finite)."""
    mean, std = mean_std(values)
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(std):
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {std:.{digits}g}"


def relative_change(value: float, baseline: float) -> float:
    """``(value - baseline) / |baseline|`` as a fraction; NaN if either is not finite or baseline is 0."""
    value = float(value)
    baseline = float(baseline)
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0.0:
        return math.nan
    return (value - baseline) / abs(baseline)


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Two-sided paired Wilcoxon signed-rank test of ``a`` against ``b`` (same pairs, same order).

    Pairs where either value is not finite are dropped. Zero differences are dropped too
    (Wilcoxon's original treatment, ``zero_method="wilcox"``); if *every* difference is zero
    the two variants are identical on these pairs and ``p_value`` is 1.0 (scipy would raise).

    Args:
        a, b: per-pair values, equal lengths ``(n,)``.

    Returns:
        ``{"statistic": W, "p_value": p, "n": usable pairs, "n_nonzero": pairs with a
        non-zero difference, "median_diff": median of a - b}``; ``p_value`` is NaN when no
        pair is usable.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (same length), got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    n = int(diff.size)
    nonzero = int(np.count_nonzero(diff))
    result = {
        "statistic": math.nan,
        "p_value": math.nan,
        "n": float(n),
        "n_nonzero": float(nonzero),
        "median_diff": float(np.median(diff)) if n else math.nan,
    }
    if n == 0:
        return result
    if nonzero == 0:
        result["statistic"] = 0.0
        result["p_value"] = 1.0
        return result
    test = _scipy_stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    result["statistic"] = float(test.statistic)
    result["p_value"] = float(min(1.0, max(0.0, test.pvalue)))
    return result


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) for a family of tests.

    With the ``m`` finite p-values sorted ascending ``p_(1) <= ... <= p_(m)``,
    ``q_(i) = min(1, min_{j >= i} m * p_(j) / j)``, returned in the input order. NaN entries stay
    NaN and do not count in ``m``. Properties: ``q >= p``, and ``q`` is non-decreasing in ``p``.

    Args:
        p_values: ``(n,)`` values in ``[0, 1]`` or NaN.

    Returns:
        ``(n,)`` float64 array of q-values.
    """
    p = _as_1d(p_values, "p_values")
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p_values must lie in [0, 1], got {p[finite].tolist()}")
    q = np.full(p.shape, np.nan)
    idx = np.flatnonzero(finite)
    m = idx.size
    if m == 0:
        return q
    order = idx[np.argsort(p[idx], kind="mergesort")]
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q[order] = np.minimum(ranked, 1.0)
    return q
