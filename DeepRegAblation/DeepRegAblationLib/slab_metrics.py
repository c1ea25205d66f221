"""``metrics.registration_metrics`` of a large volume, accumulated slab by slab (bounded working memory).

``registration.pipeline`` computes the full-resolution results of a volume larger than
``resampling.CHUNK_VOXELS`` slab by slab along its first axis; :class:`SlabMetrics` takes each slab's
normalised images, field (voxels) and Jacobian determinant and keeps only sums: counts and float64 sums
for folding, SDlogJ, MSE, NCC and the displacement norms, label sizes and overlaps for Dice, label
coordinate sums for the centroid TRE. :func:`ssim_by_slabs` averages ``losses.ssim_map`` over window
positions, each slab read with the ``window - 1`` slices after it. HD95 needs whole label maps and is
computed by ``metrics.mean_hd95`` on them. The values equal ``registration_metrics`` up to the
summation order (float64 sums instead of float32 ones); extrema and counts are exact.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import metrics
from .losses import ssim_map

__all__ = ["SlabMetrics", "ssim_by_slabs", "SSIM_WINDOW"]

SSIM_WINDOW = 11
"""``metrics.ssim``'s window (taps per axis)."""


class SlabMetrics:
    """Sums of the metrics of one registration over consecutive slabs ``[k0, k1)`` of a ``(K, J, I)`` grid.

    Args:
        spacing: voxel size in mm in array axis order (for the mm displacements, HD95 and TRE).
        with_labels: whether label slabs are given (Dice, HD95 and TRE need both label maps).
    """

    def __init__(self, spacing: Sequence[float], with_labels: bool) -> None:
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.with_labels = with_labels
        self.count = 0
        self.folded = 0
        self.sums: Dict[str, float] = dict.fromkeys(("logj", "logj2", "sq", "a", "b", "aa", "bb", "ab", "vox", "mm"),
                                                    0.0)
        self.max_vox = 0.0
        self.max_mm = 0.0
        self.range = [math.inf, -math.inf]  # min and max over both normalised images (SSIM's data range)
        self.sizes: Tuple[Dict[int, int], Dict[int, int], Dict[int, int]] = ({}, {}, {})
        self.centroid_sums: Tuple[Dict[int, np.ndarray], Dict[int, np.ndarray]] = ({}, {})

    def add(self, k0: int, fixed: np.ndarray, warped: np.ndarray, disp_vox: np.ndarray, det: np.ndarray,
            fixed_labels: Optional[np.ndarray] = None, warped_labels: Optional[np.ndarray] = None) -> None:
        """One slab starting at slice ``k0``: images ``(s, J, I)`` float32, ``disp_vox`` ``(3, s, J, I)``, ``det``
        ``(s, J, I)``, label maps ``(s, J, I)`` (with ``with_labels``)."""
        self.count += int(det.size)
        self.folded += int(np.count_nonzero(det <= 0))
        log_det = np.log(np.clip(det, metrics.SDLOGJ_CLIP, None))
        self._add("logj", log_det)
        self._add("logj2", log_det * log_det)
        difference = fixed - warped
        self._add("sq", difference * difference)
        for key, value in (("a", fixed), ("b", warped), ("aa", fixed * fixed), ("bb", warped * warped),
                           ("ab", fixed * warped)):
            self._add(key, value)
        self.range = [min(self.range[0], float(fixed.min()), float(warped.min())),
                      max(self.range[1], float(fixed.max()), float(warped.max()))]
        norm_vox = np.sqrt(np.sum(disp_vox ** 2, axis=0))
        norm_mm = np.sqrt(np.sum((disp_vox * self.spacing.reshape(-1, 1, 1, 1)) ** 2, axis=0))  # float64, as metrics
        self.max_vox, self.max_mm = max(self.max_vox, float(norm_vox.max())), max(self.max_mm, float(norm_mm.max()))
        self._add("vox", norm_vox)
        self._add("mm", norm_mm)
        if self.with_labels and fixed_labels is not None and warped_labels is not None:
            self._add_labels(k0, fixed_labels, warped_labels)

    def _add(self, key: str, values: np.ndarray) -> None:
        self.sums[key] += float(np.sum(values, dtype=np.float64))

    def _add_labels(self, k0: int, fixed_labels: np.ndarray, warped_labels: np.ndarray) -> None:
        """Label sizes, overlaps (Dice) and coordinate sums (centroids) of one slab."""
        for sizes, values in zip(self.sizes, (fixed_labels, warped_labels, fixed_labels[fixed_labels == warped_labels])):
            labels, counts = np.unique(values, return_counts=True)
            for label, count in zip(labels.tolist(), counts.tolist()):
                sizes[label] = sizes.get(label, 0) + count
        grids = np.indices(fixed_labels.shape, dtype=np.float64).reshape(3, -1)
        grids[0] += k0
        for sums, labels in zip(self.centroid_sums, (fixed_labels, warped_labels)):
            flat = labels.reshape(-1).astype(np.int64)
            present = np.unique(flat)
            for axis in range(3):
                totals = np.bincount(np.searchsorted(present, flat), weights=grids[axis], minlength=len(present))
                for label, total in zip(present.tolist(), totals.tolist()):
                    sums.setdefault(label, np.zeros(3))[axis] += total

    def finish(self, ssim: float, hd95_mm: float = float("nan")) -> Dict[str, float]:
        """The metrics (``metrics.METRIC_KEYS``) of everything added; ``ssim`` from :func:`ssim_by_slabs`,
        ``hd95_mm`` from ``metrics.mean_hd95`` on the whole label maps."""
        n = float(self.count)
        s = self.sums
        out = {key: float("nan") for key in metrics.METRIC_KEYS}
        out["folding_pct"] = 100.0 * (self.folded / n)  # as 100 * np.mean(det <= 0)
        out["sdlogj"] = math.sqrt(max(s["logj2"] / n - (s["logj"] / n) ** 2, 0.0))
        out["mse"] = s["sq"] / n
        covariance = s["ab"] - s["a"] * s["b"] / n
        variances = (s["aa"] - s["a"] ** 2 / n) * (s["bb"] - s["b"] ** 2 / n)
        out["ncc"] = covariance / math.sqrt(variances) if variances > 0 else float("nan")
        out["ssim"] = float(ssim)
        out.update(max_disp_vox=self.max_vox, mean_disp_vox=s["vox"] / n, max_disp_mm=self.max_mm,
                   mean_disp_mm=s["mm"] / n)
        if self.with_labels and self.sizes[0]:
            out.update(self._label_metrics(hd95_mm))
        return out

    def _label_metrics(self, hd95_mm: float) -> Dict[str, float]:
        """Dice (exact: integer counts), HD95 (given) and the centroid TRE of the labels in both maps."""
        size_a, size_b, overlap = self.sizes
        shared = sorted((set(size_a) & set(size_b)) - {0})
        if not shared:
            return {"dice": float("nan"), "hd95_mm": float("nan"), "tre_mm": float("nan")}
        dice = float(np.mean([2.0 * overlap.get(label, 0) / (size_a[label] + size_b[label]) for label in shared]))
        sums_a, sums_b = self.centroid_sums
        errors = [float(np.linalg.norm((sums_a[label] / size_a[label] - sums_b[label] / size_b[label]) * self.spacing))
                  for label in shared]
        return {"dice": dice, "hd95_mm": float(hd95_mm), "tre_mm": float(np.mean(errors))}

    @property
    def data_range(self) -> float:
        """``max - min`` over both normalised images, as ``losses.ssim_index`` computes it (float32)."""
        return float(np.float32(self.range[1]) - np.float32(self.range[0]))


def ssim_by_slabs(images: Callable[[int, int], Tuple[np.ndarray, np.ndarray]], depth: int, data_range: float,
                  chunk_slices: int, window: int = SSIM_WINDOW) -> float:
    """``metrics.ssim`` of two ``(K, J, I)`` images of ``depth`` slices that ``images(k0, k1)`` hands out slab by
    slab (float32): the mean of ``losses.ssim_map`` over every window position, ``chunk_slices`` positions along
    K at a time (each slab read with the ``window - 1`` slices after it)."""
    positions = depth - (window - 1)
    if positions < 1:
        raise ValueError(f"SSIM needs at least {window} slices, got {depth}")
    total, count = 0.0, 0
    for first in range(0, positions, max(1, int(chunk_slices))):
        last = min(first + max(1, int(chunk_slices)), positions)
        a, b = images(first, last + window - 1)
        local = ssim_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], data_range, window)
        total += float(torch.sum(local, dtype=torch.float64))
        count += int(local.numel())
    return total / count
