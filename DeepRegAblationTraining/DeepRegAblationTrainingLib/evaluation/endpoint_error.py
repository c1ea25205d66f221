"""End-point error against a known displacement: two contracts, two names.

- :func:`mean_endpoint_error_mm`: fields in **voxels**, channels first ``(ndim, *S)``, converted to mm
  with the voxel spacing; one float, the mean over every voxel (the evaluation's ``tre_true_mm``).
- :func:`endpoint_error_stats_mm`: fields already in **RAS mm**, channels last ``(K, J, I, 3)``; the
  mean and the 95th percentile over a mask, as a dict (the demo's ``epe_mean_mm`` / ``epe_p95_mm``).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = ["mean_endpoint_error_mm", "endpoint_error_stats_mm"]


def mean_endpoint_error_mm(disp_vox: np.ndarray, disp_true_vox: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Mean over voxels of ``|(disp_vox - disp_true_vox) * spacing|`` in mm; both ``(ndim, *S)``."""
    disp_vox = np.asarray(disp_vox, dtype=np.float64)
    disp_true_vox = np.asarray(disp_true_vox, dtype=np.float64)
    if disp_vox.shape != disp_true_vox.shape:
        raise ValueError(
            f"disp_vox and disp_true_vox shapes differ: {disp_vox.shape} vs {disp_true_vox.shape}"
        )
    ndim = disp_vox.shape[0]
    scale = np.asarray(spacing_mm, dtype=np.float64).reshape((ndim,) + (1,) * ndim)
    return float(np.sqrt((((disp_vox - disp_true_vox) * scale) ** 2).sum(axis=0)).mean())


def endpoint_error_stats_mm(disp_ras_mm: np.ndarray, disp_true_ras_mm: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Mean and 95th percentile of ``|u - u_true|`` (mm) over ``mask``; fields ``(K, J, I, 3)``, mask ``(K, J, I)``.

    Returns ``{"epe_mean_mm": ..., "epe_p95_mm": ...}``.
    """
    err = np.linalg.norm(disp_ras_mm - disp_true_ras_mm, axis=-1)[mask]
    return {"epe_mean_mm": float(err.mean()), "epe_p95_mm": float(np.percentile(err, 95))}
