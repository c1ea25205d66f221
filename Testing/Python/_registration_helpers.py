"""Synthetic physical images shared by the geometry / imageio / inference / exports / CLI tests."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from DeepRegAblationLib import geometry
from DeepRegAblationLib.imageio import ImageData


def rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix ``Rz @ Ry @ Rx`` of the three angles (degrees)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_matrix(spacing_ijk, angles_deg, origin_ras) -> np.ndarray:
    """IJKToRAS with anisotropic spacing and an oblique direction."""
    return geometry.matrix_from_geometry(spacing_ijk, rotation(angles_deg), origin_ras)


def smooth_volume(shape, seed: int = 0, sigma: float = 2.0, scale: float = 100.0) -> np.ndarray:
    """Smooth random float32 image in ``[0, scale]``."""
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), sigma)
    return ((a - a.min()) / (a.max() - a.min()) * scale).astype(np.float32)


def label_volume(image: np.ndarray, levels: int = 3) -> np.ndarray:
    """Integer labels 0..levels of an image by quantiles (int16)."""
    edges = np.quantile(image, np.linspace(0, 1, levels + 2)[1:-1])
    return np.digitize(image, edges).astype(np.int16)


def oblique_pair(seed: int = 0):
    """A fixed and a moving image on different oblique, anisotropic grids that overlap.

    fixed (20, 28, 24) at spacing (i, j, k) = (1.2, 0.9, 2.0) mm; moving (22, 26, 25) at
    (1.5, 1.1, 1.3) mm with another orientation and origin.
    """
    fixed_matrix = oblique_matrix([1.2, 0.9, 2.0], [10, -20, 15], [10.0, -5.0, 3.0])
    moving_matrix = oblique_matrix([1.5, 1.1, 1.3], [-5, 8, 30], [8.0, -9.0, 0.0])
    fixed = ImageData(smooth_volume((20, 28, 24), seed), fixed_matrix, "fixed")
    moving = ImageData(smooth_volume((22, 26, 25), seed + 1), moving_matrix, "moving")
    return fixed, moving


CLI = [sys.executable, "-m", "DeepRegAblationTrainingLib.cli"]
"""The command line in a child process (with :data:`CLI_ENV`)."""
CLI_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONUNBUFFERED="1")
"""A child's environment that finds the libraries the way this test process does."""


def write_smooth_images(root, **seeds):
    """``{name: path}`` of 20^3 identity-matrix NIfTI files ``root/<name>.nii.gz`` of :func:`smooth_volume` (seed)."""
    from DeepRegAblationLib.imageio import write_image

    return {name: write_image(Path(root) / f"{name}.nii.gz", ImageData(smooth_volume((20, 20, 20), seed), np.eye(4)))
            for name, seed in seeds.items()}
