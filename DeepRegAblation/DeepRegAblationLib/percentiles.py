"""Percentiles exactly as ``np.percentile`` computes them, without a float64 copy of the data.

``np.percentile`` (its default, linear method) copies the values, partially sorts the copy and interpolates
linearly between two order statistics in float64: 8 bytes per voxel for an image, the largest working array of
the snapshots of a large registration. :func:`linear_percentiles` takes the order statistics from a float32
array partitioned in place (exact when float32 holds the values exactly) and interpolates as numpy does: the
same virtual indexes ``(n - 1) * q``, the same float64 ``_lerp``, so the results are equal to ``np.percentile``
of the values as float64 bit for bit (checked in the tests against numpy itself).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

__all__ = ["order_ranks", "interpolate", "linear_percentiles"]


def order_ranks(count: int, percents: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(previous ranks, next ranks, gamma)`` of numpy's linear method for ``count`` values (ranks 0-based,
    ``-1`` meaning the largest value)."""
    quantiles = np.true_divide(np.asarray(percents, dtype=np.float64), np.float64(100))
    virtual = (count - 1) * quantiles
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= count - 1
    previous[above], following[above] = -1, -1
    below = virtual < 0
    previous[below], following[below] = 0, 0
    previous, following = previous.astype(np.intp), following.astype(np.intp)
    return previous, following, virtual - previous


def interpolate(low: np.ndarray, high: np.ndarray, gamma: np.ndarray) -> Tuple[float, ...]:
    """numpy's ``_lerp`` in float64: ``low + (high - low) * gamma``, from ``high`` for ``gamma >= 0.5``."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    difference = high - low
    result = low + difference * gamma
    upper = gamma >= 0.5
    result[upper] = (high - difference * (1 - gamma))[upper]
    return tuple(float(v) for v in result)


def linear_percentiles(values: np.ndarray, percents: Sequence[float]) -> Tuple[float, ...]:
    """``np.percentile(values.astype(np.float64), percents)`` for a 1D array whose values its dtype holds exactly,
    partitioned IN PLACE (pass a copy, or a temporary)."""
    previous, following, gamma = order_ranks(values.size, percents)
    values.partition(np.unique(np.concatenate(([0, -1], previous, following))))
    return interpolate(values[previous], values[following], gamma)
