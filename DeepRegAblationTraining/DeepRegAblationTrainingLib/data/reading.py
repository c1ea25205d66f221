"""Reading the files of a subject: every supported format as an ``ImageData``, checked completely.

NIfTI / NRRD / MHA go through ``DeepRegAblationLib.imageio.read_image``; ``.npy`` arrays are taken in
tensor axis order ``(K, J, I)`` with 1 mm voxels; the seed study's ``*onehot.npy`` files (one-hot
``(L, *S)``) give their label map, or an intensity image drawn from it (:func:`render_label_image`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from DeepRegAblationLib.imageio import ImageData, ImageFileNotFoundError, ImageReadError, read_image, validate_image

from .subjects import PathLike, Subject, strip_extension

__all__ = ["SEG4_T1_INTENSITY", "one_hot_to_labels", "render_label_image", "read_volume", "check_subject_files"]

# T1-like intensity of the seg4 classes (0 background, 1 cortex, 2 subcortical GM, 3 WM, 4 CSF)
SEG4_T1_INTENSITY = (0.0, 0.55, 0.65, 1.0, 0.25)


def _is_one_hot_file(path: Path) -> bool:
    return path.name.lower().endswith("onehot.npy")


def _read_npy(path: Path, name: str) -> np.ndarray:
    try:
        return np.load(str(path), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {name} {path}: {exc}") from None


def one_hot_to_labels(one_hot: np.ndarray, name: str = "one-hot labels") -> np.ndarray:
    """``(L, *S)`` one-hot (or probability) array -> ``(*S)`` int64 label map (argmax over ``L``)."""
    one_hot = np.asarray(one_hot)
    if one_hot.ndim not in (3, 4) or one_hot.shape[0] < 2:
        raise ValueError(f"{name} must be (L, H, W) or (L, D, H, W) with L >= 2 channels, got shape {one_hot.shape}")
    return np.argmax(one_hot, axis=0).astype(np.int64)


def render_label_image(labels: np.ndarray, num_labels: Optional[int] = None) -> np.ndarray:
    """Intensity image drawn from a label map (for formats that store labels only), float32.

    Five classes (the seed study's seg4: background, cortex, subcortical GM, WM, CSF) get a
    T1-like contrast :data:`SEG4_T1_INTENSITY`; other label sets ``label / (L - 1)``.
    """
    labels = np.asarray(labels)
    num = int(num_labels if num_labels is not None else labels.max() + 1)
    if num == len(SEG4_T1_INTENSITY):
        return np.asarray(SEG4_T1_INTENSITY, dtype=np.float32)[labels]
    return (labels / max(num - 1, 1)).astype(np.float32)


def read_volume(path: PathLike, role: str = "image") -> ImageData:
    """Read one file as an :class:`ImageData` (``(K, J, I)``, RAS), checked completely.

    NIfTI / NRRD / MHA through ``imageio.read_image``; ``.npy`` arrays are taken in tensor axis
    order with 1 mm voxels and an identity IJK->RAS; ``*onehot.npy`` files give the label map
    (``role="labels"``) or :func:`render_label_image` (``role="image"``). ``role`` names the
    file in messages; ``"labels"`` must hold integers >= 0, any other role an image with some
    contrast. Every problem raises ``imageio.ImageReadError`` (a ``ValueError``) naming the file.
    """
    path = Path(path)
    kind = "labels" if role == "labels" else "image"
    if not path.name.lower().endswith(".npy"):
        try:
            return read_image(path, name=role, kind=kind)
        except ValueError:
            raise
        except Exception as exc:  # anything else a corrupt file makes SimpleITK / numpy raise
            raise ImageReadError(f"cannot read {role} {path}: {type(exc).__name__}: {exc}") from None
    if not path.is_file():
        raise ImageFileNotFoundError(f"{role} file not found: {path}")
    try:
        array = _read_npy(path, role)
        if _is_one_hot_file(path):
            labels = one_hot_to_labels(array, f"{role} {path}")
            array = labels if role == "labels" else render_label_image(labels, int(np.asarray(array).shape[0]))
    except ValueError as exc:
        raise ImageReadError(str(exc)) from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.size == 0 or array.dtype.kind not in "biuf":
        raise ImageReadError(f"{role} {path} must hold a real 2D or 3D array, got shape {array.shape} dtype {array.dtype}")
    return validate_image(ImageData(np.ascontiguousarray(array), np.eye(4), strip_extension(path.name)), f"{role} {path}", kind)


def check_subject_files(subjects: Sequence[Subject], where: str, threads: Optional[int] = None) -> None:
    """Read every image and label file of ``subjects`` and list EVERY one that cannot be used.

    Each file goes through :func:`read_volume` (the whole file is read and checked); a label map
    must also have its image's shape. Raises ONE ``imageio.ImageReadError`` naming ``where`` and
    every bad file with its problem, so that training or evaluation stops before its first step
    with the whole list instead of at the first bad file hours later. Reads on ``threads``
    threads (default: up to 8).
    """
    from concurrent.futures import ThreadPoolExecutor

    def problems(subject: Subject) -> List[str]:
        found, read = [], {}
        for role, path in (("image", subject.image), ("labels", subject.labels)):
            if path is None:
                continue
            try:
                read[role] = read_volume(path, role)
            except ValueError as exc:  # ImageReadError
                found.append(str(exc))
        if len(read) == 2 and read["labels"].shape != read["image"].shape:
            found.append(
                f"labels {subject.labels} have shape {read['labels'].shape} but their image {subject.image} has "
                f"{read['image'].shape} (subject {subject.id})"
            )
        return found

    subjects = list(subjects)
    with ThreadPoolExecutor(max_workers=max(1, int(threads or min(8, os.cpu_count() or 1)))) as pool:
        found = [problem for listed in pool.map(problems, subjects) for problem in listed]
    if found:
        raise ImageReadError(
            f"{where}: {len(found)} problem(s) in the files of its {len(subjects)} subject(s), checked before the "
            f"first step: " + "; ".join(found)
        )
