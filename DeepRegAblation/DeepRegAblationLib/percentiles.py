"""Percentiles exactly as ``np.percentile`` computes them, without a float64 copy of the data.

``np.percentile`` (its default, linear method) copies the values, partially sorts the copy and interpolates
linearly between two order statistics in float64: 8 bytes per voxel for an image, the largest working array of
the snapshots of a large registration. :func:`linear_percentiles` takes the order statistics from a float32
array partitioned in place (exact when float32 holds the values exactly); :func:`streamed_percentiles` finds
them in a few passes over chunks of the data (a histogram narrows each wanted order statistic down to one bin,
whose values are then gathered), holding only a chunk and the values near the wanted ranks. Both interpolate as
numpy does: the same virtual indexes ``(n - 1) * q``, the same float64 ``_lerp``, so the results are equal to
``np.percentile`` of the values as float64 bit for bit (checked in the tests against numpy itself).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np

__all__ = ["order_ranks", "interpolate", "linear_percentiles", "streamed_percentiles"]

_BINS = 1 << 14
_GATHER_LIMIT = 1 << 22  # values gathered at most to sort one bin


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


def _bin_of(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The histogram bin of each value in ``[low, high]`` (monotonic in the value: each bin holds an interval)."""
    scaled = (values / 2 - low / 2) * (_BINS / (high / 2 - low / 2))  # halves: no overflow for extreme ranges
    return np.clip(scaled.astype(np.int64), 0, _BINS - 1)


def _inside(chunk: np.ndarray, low: float, high: float) -> np.ndarray:
    return chunk[(chunk >= low) & (chunk <= high)]


def _value_of_rank(chunks: Callable[[], Iterable[np.ndarray]], rank: int, low: float, high: float) -> float:
    """The value of 0-based ``rank`` among all values, all of them in ``[low, high]``: narrowed down to one
    histogram bin per pass, then gathered and sorted (or its interval collapsed to a single value)."""
    below = 0  # values smaller than ``low`` (left of the interval still searched)
    while True:
        if low == high:
            return float(low)
        counts = np.zeros(_BINS, dtype=np.int64)
        for chunk in chunks():
            counts += np.bincount(_bin_of(_inside(chunk, low, high), low, high), minlength=_BINS)
        cumulative = np.cumsum(counts)
        wanted = int(np.searchsorted(cumulative, rank - below, side="right"))
        before = below + (int(cumulative[wanted - 1]) if wanted else 0)
        minimum, maximum, gathered = np.inf, -np.inf, []
        for chunk in chunks():
            inside = _inside(chunk, low, high)
            selected = inside[_bin_of(inside, low, high) == wanted]
            if selected.size:
                minimum, maximum = min(minimum, float(selected.min())), max(maximum, float(selected.max()))
                if counts[wanted] <= _GATHER_LIMIT:
                    gathered.append(selected)
        if gathered or (minimum, maximum) == (low, high):  # few values, or no progress: sort them all
            if not gathered:
                gathered = [_inside(chunk, low, high) for chunk in chunks()]
            return float(np.sort(np.concatenate(gathered))[rank - before])
        low, high, below = minimum, maximum, before  # a crowded bin: its own interval, searched again


def streamed_percentiles(chunks: Callable[[], Iterable[np.ndarray]], percents: Sequence[float]) -> Tuple[float, ...]:
    """``np.percentile`` (linear) of all the values that ``chunks()`` yields (float64 or exactly convertible arrays;
    called once per pass, it must yield the same values each time), exactly, in a few passes."""
    count, low, high = 0, np.inf, -np.inf
    for chunk in chunks():
        if chunk.size:
            count += int(chunk.size)
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    if count == 0:
        raise ValueError("no values: no percentile")
    previous, following, gamma = order_ranks(count, percents)
    found: Dict[int, float] = {}
    for rank in sorted({int(r) % count for r in np.concatenate([previous, following])}):
        found[rank] = _value_of_rank(lambda: (np.asarray(c, dtype=np.float64).reshape(-1) for c in chunks()), rank,
                                     low, high)
    pick: Callable[[np.ndarray], List[float]] = lambda ranks: [found[int(r) % count] for r in ranks]  # noqa: E731
    return interpolate(np.array(pick(previous)), np.array(pick(following)), gamma)
