"""The MNI152 2009c template that ships inside the ``nilearn`` wheel (no download).

:func:`load_mni_template` gives the template with a tissue label map, for synthetic pairs on a fresh
machine (``mni-synthetic``); :func:`find_mni_ixi_subjects` the template plus a folder of real heads
with optional label maps (``mni-ixi:/folder``; made for the IXI T1 heads at 2 mm with their DLMUSE
labels): scan-to-scan pairs among all of them for training, the labelled heads' pairs for validation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from DeepRegAblationLib.imageio import ImageData

from .preprocess import reorient_to_ras
from .reading import read_volume
from .subjects import PathLike, Subject, check_unique_ids, find_generic_subjects

__all__ = ["MNI_TEMPLATE", "MNI_GM", "MNI_WM", "nilearn_data_dir", "load_mni_template", "find_mni_ixi_subjects"]

MNI_TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_data_dir() -> Path:
    """The folder of data files inside the installed ``nilearn`` package (no download)."""
    try:
        import nilearn
    except ImportError:
        raise ValueError("the MNI152 template ships inside the 'nilearn' package, which is not installed") from None
    return Path(nilearn.__file__).resolve().parent / "datasets" / "data"


def load_mni_template(ndim: int = 3, with_labels: bool = True) -> Dict[str, Any]:
    """The MNI152 2009c T1 template (1 mm, RAS) from the nilearn wheel, with a tissue label map.

    Labels: 0 background, 1 grey matter, 2 white matter (the larger of the GM / WM
    probabilities where their sum exceeds one half). ``ndim=2`` gives the coronal slice through
    the centre of the volume as a single-slice image ``(1, S, R)`` (superior-inferior x left-right).

    Returns ``{"id": "MNI152", "image": ImageData, "labels": ImageData | None}``.
    """
    folder = nilearn_data_dir()
    path = folder / MNI_TEMPLATE
    image = reorient_to_ras(read_volume(path, "MNI152 template"))
    labels = None
    if with_labels:
        gm = reorient_to_ras(read_volume(folder / MNI_GM, "MNI152 grey matter map")).array.astype(np.float32)
        wm = reorient_to_ras(read_volume(folder / MNI_WM, "MNI152 white matter map")).array.astype(np.float32)
        scale = max(float(gm.max()), float(wm.max()), 1e-6)
        gm, wm = gm / scale, wm / scale
        label_array = np.where(gm + wm > 0.5, np.where(wm > gm, 2, 1), 0).astype(np.int16)
        labels = ImageData(label_array, image.ijk_to_ras.copy(), "MNI152_tissue")
    if ndim == 2:
        j0 = image.array.shape[1] // 2  # RAS (K, J, I) = (S, A, R): fix the A index

        def coronal(img: ImageData) -> ImageData:
            array = np.ascontiguousarray(img.array[:, j0, :])[None]  # (1, S, R)
            m = img.ijk_to_ras
            # new (i, j, k) = old (i, k, j0): columns i, k, j
            new = np.eye(4)
            new[:3, 0], new[:3, 1], new[:3, 2] = m[:3, 0], m[:3, 2], m[:3, 1]
            new[:3, 3] = m[:3, 3] + j0 * m[:3, 1]
            return ImageData(array, new, img.name)

        image = coronal(image)
        labels = coronal(labels) if labels is not None else None
    elif ndim != 3:
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return {"id": "MNI152", "image": image, "labels": labels}


def find_mni_ixi_subjects(heads: PathLike) -> List[Subject]:
    """The MNI152 T1 template (nilearn wheel, 1 mm, no labels) followed by the heads of ``heads``.

    ``heads`` is read as a generic folder (:func:`find_generic_subjects`: ``*_DLMUSE`` /
    ``*_labels`` ... partners are label maps), e.g. the IXI T1 heads at 2 mm. The template keeps
    its file path; :class:`Preprocess` resamples it to the model spacing like any image.
    """
    template = nilearn_data_dir() / MNI_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"MNI152 template not found inside the nilearn package: {template}")
    heads_list = find_generic_subjects(heads)
    subjects = [Subject("MNI152", template, None)] + heads_list
    check_unique_ids(subjects, f"MNI152 + {heads}")
    return subjects
