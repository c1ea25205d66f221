"""Preprocessing: an image (and its label map) -> the model-grid tensors a network trains on.

:class:`Preprocess` mirrors ``DeepRegAblationLib.inference`` so that a model sees the same kind of
input in training and in use: 3D volumes are reoriented to RAS (:func:`reorient_to_ras`, an exact
permutation / flip of the voxels), intensities mapped to [0, 1] by robust percentiles, then the
image is resampled onto the *model grid* (``geometry.model_grid_for``: the target spacing and a
shape divisible by the network's size multiple, centred on the image). 2D images are
single-slice volumes ``(1, J, I)`` and keep their in-plane axes (the inference convention).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from DeepRegAblationLib import geometry, resampling
from DeepRegAblationLib.imageio import ImageData, intensity_window, normalize_intensity

from .reading import read_volume
from .subjects import Subject

__all__ = ["GRID_CENTERS", "reorient_to_ras", "Preprocess"]

GRID_CENTERS = ("image", "com")


def reorient_to_ras(image: ImageData) -> ImageData:
    """The same voxels permuted / flipped so that i, j, k point (closest) to R, A, S. Exact (no interpolation).

    The grid is ``geometry.closest_ras_view`` (what ``inference.register`` uses for RAS-trained
    models); the voxels are copied onto it (``resampling.resample_to_grid`` copies when the grids
    share their voxel lattice, as here), keeping the dtype.
    """
    view, view_shape = geometry.closest_ras_view(image.ijk_to_ras, image.shape)
    if np.allclose(view, image.ijk_to_ras, atol=1e-12) and tuple(view_shape) == tuple(image.shape):
        return image
    array = resampling.resample_to_grid(image.array, image.ijk_to_ras, view, view_shape, mode="nearest")
    return ImageData(array, view, image.name)


class Preprocess:
    """Image -> model-grid tensors: reorient, robust normalisation, resample + crop/pad.

    Args:
        spacing_mm: target voxel size in tensor axis order (``ndim`` numbers, or one number for
            all axes); ``None`` keeps each image's spacing.
        shape: model grid shape in tensor axis order; ``None``: the image's extent at the target
            spacing, rounded up to a multiple of ``divisor``. Must be divisible by ``divisor``.
        divisor: the network's size multiple (``2 ** len(enc_features)``, 16 by default).
        normalize: map the ``percentiles`` window of every image to [0, 1] (clipped), as the
            inference pipeline does.
        ndim: 2 or 3; ``None`` decides per image (a single-slice ``(1, J, I)`` image is 2D).
        reorient: reorient 3D volumes to RAS first (2D single-slice images keep their axes).
        percentiles: ``(low, high)`` of the normalisation window.
        center: ``"image"``: the grid is centred on the image's field of view; ``"com"`` (3D):
            on its intensity centre of mass, so that any two training images are aligned by
            their centres of mass, as ``inference.register`` aligns them (``initial_alignment``
            ``"com"``, grid centred on the fixed image's centre of mass) for such a model.

    The grid is ``geometry.model_grid_for`` (centred on the image, its axes), the resampling
    ``resampling.resample_to_grid`` (linear for images, nearest for labels, 0 outside): when the
    spacing is unchanged the voxels are copied, not interpolated.
    """

    def __init__(
        self,
        spacing_mm: Optional[Union[float, Sequence[float]]] = None,
        shape: Optional[Sequence[int]] = None,
        divisor: int = 16,
        normalize: bool = True,
        ndim: Optional[int] = None,
        reorient: bool = True,
        percentiles: Tuple[float, float] = (1.0, 99.0),
        center: str = "image",
    ):
        if center not in GRID_CENTERS:
            raise ValueError(f"center must be one of {list(GRID_CENTERS)}, got {center!r}")
        self.center = center
        if ndim not in (None, 2, 3):
            raise ValueError(f"ndim must be 2, 3 or None, got {ndim!r}")
        if int(divisor) < 1:
            raise ValueError(f"divisor must be >= 1, got {divisor}")
        self.divisor = int(divisor)
        if spacing_mm is not None:
            spacing = [float(spacing_mm)] if isinstance(spacing_mm, (int, float)) else [float(s) for s in spacing_mm]
            if any(not math.isfinite(s) or s <= 0 for s in spacing) or len(spacing) not in (1, 2, 3):
                raise ValueError(f"spacing_mm must be 1 to 3 positive numbers, got {spacing_mm!r}")
            spacing_mm = spacing
        if shape is not None:
            shape = [int(n) for n in shape]
            if len(shape) not in (2, 3) or any(n < 1 for n in shape):
                raise ValueError(f"shape must be 2 or 3 positive sizes, got {shape}")
            bad = [n for n in shape if n % self.divisor]
            if bad:
                raise ValueError(f"shape {shape} must be divisible by {self.divisor} along every axis (the network's down-sampling)")
            if ndim is None:
                ndim = len(shape)
            elif len(shape) != ndim:
                raise ValueError(f"shape {shape} has {len(shape)} entries but ndim is {ndim}")
        if spacing_mm is not None and len(spacing_mm) > 1:
            if ndim is None:
                ndim = len(spacing_mm)
            elif len(spacing_mm) != ndim:
                raise ValueError(f"spacing_mm {spacing_mm} has {len(spacing_mm)} entries but ndim is {ndim}")
        self.spacing_mm = spacing_mm
        self.shape = shape
        self.normalize = bool(normalize)
        self.ndim = ndim
        self.reorient = bool(reorient)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def __repr__(self) -> str:
        return (
            f"Preprocess(spacing_mm={self.spacing_mm}, shape={self.shape}, divisor={self.divisor}, "
            f"normalize={self.normalize}, ndim={self.ndim}, reorient={self.reorient}, center={self.center!r})"
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "spacing_mm": self.spacing_mm,
            "shape": self.shape,
            "divisor": self.divisor,
            "normalize": self.normalize,
            "ndim": self.ndim,
            "reorient": self.reorient,
            "percentiles": list(self.percentiles),
            "center": self.center,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocess":
        d = dict(d)
        if "percentiles" in d:
            d["percentiles"] = tuple(d["percentiles"])
        return cls(**d)

    def describe(self, spacing_mm: Sequence[float], shape: Sequence[int]) -> Dict[str, Any]:
        """The checkpoint's ``preprocessing`` entry for a model trained on grids of ``spacing_mm``/``shape``."""
        return {
            "spacing_mm": [float(s) for s in spacing_mm],
            "shape": [int(n) for n in shape],
            "normalization": (
                {"method": "percentile", "low_pct": self.percentiles[0], "high_pct": self.percentiles[1], "range": [0.0, 1.0]}
                if self.normalize
                else {"method": "none"}
            ),
            "orientation": "RAS" if self.reorient else "native",
            "divisor": self.divisor,
            "center": self.center,
            "initial_alignment": "com" if self.center == "com" else "none",
        }

    def _image_ndim(self, image: ImageData, where: str) -> int:
        single_slice = image.array.shape[0] == 1
        if self.ndim is None:
            return 2 if single_slice else 3
        if self.ndim == 2 and not single_slice:
            raise ValueError(f"{where} has shape {image.array.shape}: a 2D model needs single-slice images (1, J, I)")
        if self.ndim == 3 and min(image.array.shape) < 2:
            raise ValueError(f"{where} has shape {image.array.shape}: a 3D model needs at least 2 voxels along every axis")
        return self.ndim

    def apply(
        self, image: ImageData, labels: Optional[ImageData] = None, name: str = "image"
    ) -> Dict[str, Any]:
        """Preprocess one image (and its label map).

        Returns:
            ``{"image": (1, *S) float32, "labels": (1, *S) int64 or None, "spacing_mm": tuple (ndim,),
            "ijk_to_ras": (4, 4) model grid}``.
        """
        from DeepRegAblationLib.registration.model_grid import model_grid_spec

        if labels is not None and tuple(labels.array.shape) != tuple(image.array.shape):
            raise ValueError(
                f"labels of {name} have shape {tuple(labels.array.shape)} but the image has {tuple(image.array.shape)} "
                f"(labels {labels.name!r}, image {image.name!r})"
            )
        if labels is not None:
            values = labels.array
            if values.dtype.kind == "f":
                if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
                    raise ValueError(f"labels of {name} ({labels.name!r}) hold non-integer values")
        ndim = self._image_ndim(image, name)
        if self.reorient and ndim == 3:
            image = reorient_to_ras(image)
            labels = reorient_to_ras(labels) if labels is not None else None
        array = image.array.astype(np.float32, copy=False)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} ({image.name!r}) contains NaN or inf values")
        if self.normalize:
            lo, hi = self.percentiles
            array = normalize_intensity(array, window=intensity_window(array, lo, hi))
        spacing = self.spacing_mm
        if spacing is not None and len(spacing) == 1:
            spacing = spacing * ndim
        spec = {"spacing_mm": spacing, "shape": self.shape}
        spacing, shape = model_grid_spec(image, ndim, self.divisor, spec)
        centre = None
        if self.center == "com" and ndim == 3:
            centre = geometry.center_of_mass_ras(array if self.normalize else normalize_intensity(array), image.ijk_to_ras)
        grid, grid_shape = geometry.model_grid_for(image, spacing, shape, center_ras=centre)
        out_image = resampling.resample_to_grid(array, image.ijk_to_ras, grid, grid_shape, mode="linear")
        out_labels = None
        if labels is not None:
            out_labels = resampling.resample_to_grid(
                np.round(labels.array).astype(np.int64), labels.ijk_to_ras, grid, grid_shape, mode="nearest"
            )
        if ndim == 2:
            out_image = out_image[0]
            out_labels = out_labels[0] if out_labels is not None else None
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out_image, dtype=np.float32))[None],
            "labels": None if out_labels is None else torch.from_numpy(np.ascontiguousarray(out_labels, dtype=np.int64))[None],
            "spacing_mm": tuple(float(s) for s in spacing),
            "ijk_to_ras": grid,
        }

    def load(self, subject: Subject) -> Dict[str, Any]:
        """Read and preprocess one subject (see :meth:`apply`); errors name the subject's files."""
        image = read_volume(subject.image, "image")
        labels = read_volume(subject.labels, "labels") if subject.labels is not None else None
        if labels is not None and tuple(labels.array.shape) != tuple(image.array.shape):
            raise ValueError(
                f"label map {subject.labels} has shape {tuple(labels.array.shape)} but image {subject.image} "
                f"has shape {tuple(image.array.shape)} (subject {subject.id})"
            )
        return self.apply(image, labels, name=f"subject {subject.id} ({subject.image})")
