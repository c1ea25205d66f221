"""Files of a registration: NIfTI images, ITK transforms (LPS) and the metrics table.

Per variant (:func:`write_result_files`), all on the fixed image grid:

- ``warped.nii.gz``, ``warped_labels.nii.gz`` (when labels were given), ``jacobian.nii.gz``;
- ``affine.tfm``: ITK ``AffineTransform`` of the affine part, LPS, fixed point -> moving point
  (the resampling direction, what ``sitk.Resample(moving, fixed, transform)`` expects);
- ``displacement.nii.gz``: the TOTAL displacement as an ITK displacement-field image (3-vector
  per fixed voxel, LPS mm components): ``sitk.DisplacementFieldTransform`` of it maps fixed
  point ``p`` to moving point ``p + u(p)``;
- ``transform.h5``: one ITK ``CompositeTransform`` = the affine, then the deformable residual
  field (LPS). ITK applies the LAST added transform first, so the affine is added first and the
  field second: ``T(p) = A(p + u_def(p))``, the same mapping as ``displacement.nii.gz``.

The metrics table (:func:`write_metrics`) has one record per variant with the columns
:data:`METRIC_COLUMNS`, as ``metrics.csv`` and ``metrics.json`` (NaN -> empty cell / ``null``);
``metrics.json`` also lists each result's ``warnings`` (inputs outside what the models know).
"""
from __future__ import annotations

import csv
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import geometry, nifti_writer, resampling
from ..imageio import ImageData, itk_image_from_array, validate_image, write_image, write_itk_image

__all__ = [
    "METRIC_COLUMNS", "RESULT_FILES", "affine_transform_lps", "affine_ras_from_itk", "displacement_image_lps",
    "displacement_transform", "composite_transform", "write_affine_tfm", "write_volume", "write_displacement_field",
    "write_composite_h5", "write_result_files", "metrics_record", "write_metrics", "read_metrics_csv",
]

PathLike = Union[str, Path]

METRIC_COLUMNS = (
    "variant", "dice", "hd95_mm", "folding_pct", "sdlogj", "mse", "ncc", "ssim", "max_disp_mm", "runtime_s", "metrics_s",
)  # fmt: skip
"""Columns of ``metrics.csv`` / keys of each ``metrics.json`` record, in order."""

RESULT_FILES = (
    "warped.nii.gz", "warped_labels.nii.gz", "jacobian.nii.gz", "affine.tfm", "displacement.nii.gz", "transform.h5",
)  # fmt: skip


# --------------------------------------------------------------------------- transforms
def affine_transform_lps(affine_ras: np.ndarray):
    """``sitk.AffineTransform`` (LPS, centre 0) of a ``(4, 4)`` RAS point transform (fixed -> moving)."""
    import SimpleITK as sitk

    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4) or not np.all(np.isfinite(affine_ras)):
        raise ValueError(f"affine_ras must be a finite (4, 4) matrix, got shape {affine_ras.shape}")
    affine_lps = geometry.transform_ras_to_lps(affine_ras)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in affine_lps[:3, :3].reshape(-1)])
    transform.SetTranslation([float(v) for v in affine_lps[:3, 3]])
    return transform


def affine_ras_from_itk(transform) -> np.ndarray:
    """``(4, 4)`` RAS point transform of a SimpleITK affine-like transform (inverse of :func:`affine_transform_lps`)."""
    import SimpleITK as sitk

    affine = sitk.AffineTransform(transform)
    matrix = np.eye(4)
    linear = np.asarray(affine.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(affine.GetCenter(), dtype=np.float64)
    translation = np.asarray(affine.GetTranslation(), dtype=np.float64)
    matrix[:3, :3] = linear
    matrix[:3, 3] = translation + centre - linear @ centre
    return geometry.transform_lps_to_ras(matrix)


def displacement_image_lps(disp_ras_mm: np.ndarray, fixed_ijk_to_ras: np.ndarray, dtype=np.float64):
    """ITK displacement-field image: ``(K, J, I, 3)`` RAS mm vectors -> vector image of LPS mm vectors on the fixed grid."""
    disp_ras_mm = np.asarray(disp_ras_mm)
    if disp_ras_mm.ndim != 4 or disp_ras_mm.shape[-1] != 3:
        raise ValueError(f"disp_ras_mm must be (K, J, I, 3), got shape {disp_ras_mm.shape}")
    disp_lps = _lps_vectors(disp_ras_mm, dtype)
    image = itk_image_from_array(disp_lps, fixed_ijk_to_ras, is_vector=True)
    del disp_lps  # SimpleITK holds its own copy
    return image


def _lps_vectors(disp_ras_mm: np.ndarray, dtype) -> np.ndarray:
    """``(K, J, I, 3)`` RAS vectors as LPS in ``dtype`` (x and y negated, exactly), one slab at a time."""
    out = np.empty(disp_ras_mm.shape, dtype=dtype)
    for k0, k1 in resampling.slabs(disp_ras_mm.shape[:3]):
        out[k0:k1] = geometry.vectors_ras_to_lps(disp_ras_mm[k0:k1])
    return out


def displacement_transform(disp_ras_mm: np.ndarray, fixed_ijk_to_ras: np.ndarray):
    """``sitk.DisplacementFieldTransform``: fixed LPS point ``p`` -> ``p + u(p)`` (linear interpolation)."""
    import SimpleITK as sitk

    return sitk.DisplacementFieldTransform(displacement_image_lps(disp_ras_mm, fixed_ijk_to_ras, np.float64))


def composite_transform(result):
    """One ``sitk.CompositeTransform``, fixed -> moving: ``T(p) = A(p + u_def(p))`` (affine added first)."""
    import SimpleITK as sitk

    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine_transform_lps(result.affine_ras))
    deform = displacement_transform(result.deform_disp_ras_mm, result.fixed_ijk_to_ras)
    composite.AddTransform(deform)  # a copy: the field is held once as soon as ``deform`` goes
    del deform
    return composite


# --------------------------------------------------------------------------- files
def write_affine_tfm(path: PathLike, affine_ras: np.ndarray) -> Path:
    """Write the affine part as an ITK ``.tfm`` (or ``.h5``/``.txt``) ``AffineTransform`` in LPS."""
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteTransform(affine_transform_lps(affine_ras), str(path))
    return path


def write_volume(path: PathLike, array: np.ndarray, fixed_ijk_to_ras: np.ndarray, name: str) -> Path:
    """Write a result volume (warped image, labels, Jacobian) on the fixed grid as NIfTI: streamed slab by slab
    (``nifti_writer.write_nifti_streamed``, the same file as ``imageio.write_image``) for float32 / int32 volumes,
    else through ``imageio.write_image``."""
    array = np.asarray(array)
    grid = np.asarray(fixed_ijk_to_ras, dtype=np.float64)
    if array.dtype not in (np.float32, np.int32) or not nifti_writer.streamable(array.shape):
        return write_image(path, ImageData(array, grid, name))
    validate_image(ImageData(array, grid, name), f"image {name!r}")
    return nifti_writer.write_nifti_streamed(path, array, lambda two: itk_image_from_array(two, grid))


def write_displacement_field(path: PathLike, disp_ras_mm: np.ndarray, fixed_ijk_to_ras: np.ndarray) -> Path:
    """Write an ITK displacement-field image (float32 LPS vectors on the fixed grid), e.g. ``.nii.gz``; a volume
    is streamed slab by slab (no whole LPS copy), the same file as through SimpleITK."""
    disp_ras_mm = np.asarray(disp_ras_mm)
    grid = np.asarray(fixed_ijk_to_ras, dtype=np.float64)
    if disp_ras_mm.ndim == 4 and disp_ras_mm.shape[-1] == 3 and nifti_writer.streamable(disp_ras_mm.shape) \
            and str(path).endswith((".nii", ".nii.gz")):
        return nifti_writer.write_nifti_streamed(
            path, disp_ras_mm.astype(np.float32, copy=False), lambda two: itk_image_from_array(two, grid, is_vector=True),
            signs=(-1.0, -1.0, 1.0))
    return write_itk_image(displacement_image_lps(disp_ras_mm, grid, np.float32), path)


def write_composite_h5(path: PathLike, result) -> Path:
    """Write :func:`composite_transform` of ``result`` as one ITK HDF5 transform file: with h5py (when installed) the
    field is written slab by slab (``outputs.hdf_transforms``: bounded memory), else through SimpleITK (the field held in
    float64 twice while it is written)."""
    from . import hdf_transforms

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if hdf_transforms.available():
        return hdf_transforms.write_composite(path, affine_transform_lps(result.affine_ras), result.deform_disp_ras_mm,
                                      result.fixed_ijk_to_ras)
    import SimpleITK as sitk

    sitk.WriteTransform(composite_transform(result), str(path))
    return path


def write_result_files(out_dir: PathLike, result, threads: Optional[int] = None) -> Dict[str, Path]:
    """Write every per-variant file of ``result`` into ``out_dir``; returns ``{file name: path}``.

    The files are written concurrently by ``threads`` threads (default: the CPU count, at most
    4): SimpleITK and zlib compress and write without holding Python's lock. Each volume is
    streamed slab by slab, so the working memory does not grow with the image.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = np.asarray(result.fixed_ijk_to_ras, dtype=np.float64)
    jobs: Dict[str, Callable[[Path], Path]] = {
        "warped.nii.gz": lambda path: write_volume(path, result.warped, grid, "warped"),
        "jacobian.nii.gz": lambda path: write_volume(path, result.jacobian, grid, "jacobian"),
        "affine.tfm": lambda path: write_affine_tfm(path, result.affine_ras),
        "displacement.nii.gz": lambda path: write_displacement_field(path, result.disp_ras_mm, grid),
        "transform.h5": lambda path: write_composite_h5(path, result),
    }
    if result.warped_labels is not None:
        jobs["warped_labels.nii.gz"] = lambda path: write_volume(path, result.warped_labels, grid, "warped_labels")
    workers = max(1, min(4, os.cpu_count() or 1) if threads is None else int(threads))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(job, out_dir / name) for name, job in jobs.items()}
        return {name: futures[name].result() for name in RESULT_FILES if name in futures}


# --------------------------------------------------------------------------- metrics table
def metrics_record(result) -> Dict[str, Union[str, float]]:
    """One row of the metrics table: ``{column: value}`` for :data:`METRIC_COLUMNS` (NaN when missing)."""
    record: Dict[str, Union[str, float]] = {"variant": result.variant}
    for column in METRIC_COLUMNS[1:]:
        record[column] = float(result.metrics.get(column, float("nan")))
    return record


def write_metrics(out_dir: PathLike, results: Sequence) -> Tuple[Path, Path]:
    """Write ``metrics.csv`` and ``metrics.json`` (one record per result) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [metrics_record(r) for r in results]
    csv_path, json_path = out_dir / "metrics.csv", out_dir / "metrics.json"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(METRIC_COLUMNS))
        writer.writeheader()
        for record in records:
            writer.writerow({k: _csv_value(v) for k, v in record.items()})
    json_records = [
        dict({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()},
             warnings=[str(w) for w in getattr(result, "warnings", [])])
        for record, result in zip(records, results)
    ]
    json_path.write_text(json.dumps(json_records, indent=2) + "\n")
    return csv_path, json_path


def _csv_value(value: Union[str, float]) -> str:
    if isinstance(value, str):
        return value
    return "" if not math.isfinite(value) else repr(float(value))


def read_metrics_csv(path: PathLike) -> List[Dict[str, Union[str, float]]]:
    """Read a ``metrics.csv`` written by :func:`write_metrics` (empty cells -> NaN)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {k: (v if k == "variant" else (float(v) if v != "" else float("nan"))) for k, v in row.items()}
        for row in rows
    ]
