"""A tiny synthetic dataset in the neurite-OASIS 2D layout, for smoke tests and demos."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from DeepRegAblationLib.imageio import ImageData, write_image

from ..augment import seed_from
from .reading import SEG4_T1_INTENSITY
from .subjects import PathLike

__all__ = ["write_toy_oasis2d"]


def write_toy_oasis2d(folder: PathLike, n_subjects: int = 6, shape: Tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """Write a tiny synthetic dataset in the neurite-OASIS 2D layout (for smoke tests and demos).

    Each subject ``OASIS_TOY_xxxx`` gets ``slice_norm.nii.gz`` (float32 in [0, 1]) and
    ``slice_seg4.nii.gz`` (uint8: nested ellipses 0 background, 1 cortex, 3 white matter, 2 deep
    grey, 4 ventricle) with random sizes, offsets and smooth intensity noise; NIfTI size
    ``(shape[1], shape[0], 1)`` with the real data's orientation (so arrays are ``(1, *shape)``). Written
    with SimpleITK (``imageio.write_image``), so it works in Slicer's Python, which has no nibabel.
    """
    from scipy import ndimage

    folder = Path(folder)
    rng = np.random.default_rng(seed_from(seed, 11))
    h, w = (int(n) for n in shape)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    affine = np.array([[-1.0, 0, 0, w / 2], [0, 0, 1, -0.5], [0, -1.0, 0, h / 2], [0, 0, 0, 1]])
    ids = []
    for n in range(int(n_subjects)):
        cy, cx = (h - 1) / 2 + rng.uniform(-2, 2), (w - 1) / 2 + rng.uniform(-2, 2)
        ry, rx = h * rng.uniform(0.32, 0.42), w * rng.uniform(0.3, 0.4)
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        labels = np.zeros((h, w), dtype=np.uint8)
        labels[r < 1.0] = 1
        labels[r < rng.uniform(0.65, 0.8)] = 3
        labels[r < rng.uniform(0.35, 0.45)] = 2
        labels[r < rng.uniform(0.12, 0.2)] = 4
        image = np.asarray(SEG4_T1_INTENSITY, dtype=np.float64)[labels]
        image = image + 0.05 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.5)
        image = np.clip(ndimage.gaussian_filter(image, 0.6), 0, 1).astype(np.float32)
        sid = f"OASIS_TOY_{n:04d}"
        ids.append(sid)
        sub = folder / sid
        sub.mkdir(parents=True, exist_ok=True)
        # (K, J, I) = (1, h, w), NIfTI size (I, J, K) = (w, h, 1)
        write_image(sub / "slice_norm.nii.gz", ImageData(image[None], affine, sid))
        write_image(sub / "slice_seg4.nii.gz", ImageData(labels[None], affine, sid))
    (folder / "subjects.txt").write_text("\n".join(ids) + "\n")
    return folder
