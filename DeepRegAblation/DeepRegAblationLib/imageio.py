"""Scalar images in physical space: :class:`ImageData`, NIfTI / NRRD I/O (SimpleITK), validation.

An image is a ``(K, J, I)`` array (numpy axis order, as ``slicer.util.arrayFromVolume`` gives
it) plus its ``(4, 4)`` IJK -> RAS matrix. A 2D image is a single-slice volume ``(1, J, I)``;
it is written as a 3D file with one slice so that its full geometry survives a round trip.
Files are LPS (ITK); the conversion to and from RAS happens here and nowhere else.
"""
from __future__ import annotations

import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from . import geometry

PathLike = Union[str, Path]


@dataclass
class ImageData:
    """One scalar image in physical space.

    Attributes:
        array: ``(K, J, I)`` float or int; a 2D ``(J, I)`` array is stored as ``(1, J, I)``.
        ijk_to_ras: ``(4, 4)`` float64, voxel index ``(i, j, k)`` -> RAS mm (Slicer's IJKToRAS).
        name: display name (file stem by default).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim == 2:
            self.array = self.array[None]
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.ijk_to_ras.shape != (4, 4):
            raise ValueError(f"ijk_to_ras of image {self.name!r} must be (4, 4), got shape {self.ijk_to_ras.shape}")

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def is_2d(self) -> bool:
        """A single-slice volume ``(1, J, I)``: what a 2D model registers."""
        return self.array.ndim == 3 and self.array.shape[0] == 1

    @property
    def spacing_kji(self) -> Tuple[float, float, float]:
        """Voxel size in mm in array axis order ``(k, j, i)``."""
        return geometry.spacing_kji(self.ijk_to_ras)

    def with_array(self, array: np.ndarray, name: Optional[str] = None) -> "ImageData":
        """A new image on the same grid."""
        return ImageData(np.asarray(array), self.ijk_to_ras.copy(), self.name if name is None else name)


# --------------------------------------------------------------------------- validation
def validate_image(image: ImageData, name: str) -> ImageData:
    """Check that ``image`` is a usable scalar image; raise ``ValueError`` naming ``name`` otherwise.

    Rejects: not an ImageData, zero-size / empty arrays, vector or 4D arrays, non-numeric or
    complex dtypes, NaN / inf values, an invalid IJK-to-RAS matrix. Returns ``image``.
    """
    if not isinstance(image, ImageData):
        raise ValueError(f"{name} must be an ImageData, got {type(image).__name__}")
    array = image.array
    if array.ndim != 3:
        raise ValueError(
            f"{name} must be a scalar image (K, J, I) (2D images as (1, J, I)); got an array of shape "
            f"{array.shape} (vector, multi-component and 4D images are not supported)"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype} (shape {array.shape})")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name} contains NaN or inf values ({bad} of {array.size} voxels, shape {array.shape})")
    geometry.validate_ijk_to_ras(image.ijk_to_ras, f"{name} IJK-to-RAS matrix")
    return image


# --------------------------------------------------------------------------- intensities
def intensity_window(array: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> Tuple[float, float]:
    """Robust intensity range: the ``low_pct`` and ``high_pct`` percentiles of all voxels."""
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    values = np.asarray(array, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("array is empty: no intensity window")
    low, high = np.percentile(values, [low_pct, high_pct])
    return float(low), float(high)


def normalize_intensity(
    array: np.ndarray,
    low_pct: float = 1.0,
    high_pct: float = 99.0,
    window: Optional[Tuple[float, float]] = None,
) -> np.ndarray:
    """Map the robust range (percentiles ``low_pct``..``high_pct``, or ``window``) to [0, 1], clipped.

    Returns float32 of the input shape; a constant image gives zeros.
    """
    low, high = intensity_window(array, low_pct, high_pct) if window is None else (float(window[0]), float(window[1]))
    array = np.asarray(array, dtype=np.float32)
    if not high > low:
        return np.zeros(array.shape, dtype=np.float32)
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- files
def _name_from_path(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_image(path: PathLike, name: Optional[str] = None) -> ImageData:
    """Read a scalar NIfTI / NRRD (any SimpleITK format) image into RAS.

    Args:
        path: the file.
        name: how error messages refer to it (e.g. ``"fixed image (--fixed)"``; default
            ``"image"``). ``ImageData.name`` is the file name without extension.

    Raises:
        FileNotFoundError: missing file. ValueError: unreadable, vector or 4D (more than one
        volume) image, or an image that fails :func:`validate_image`.
    """
    import SimpleITK as sitk

    path = Path(path)
    label = name or "image"
    if not path.is_file():
        raise FileNotFoundError(f"{label} file not found: {path}")
    try:
        itk_image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()
        raise ValueError(f"cannot read {label} {path}: {message[-1] if message else exc}") from None
    components = itk_image.GetNumberOfComponentsPerPixel()
    dim = itk_image.GetDimension()
    size = tuple(itk_image.GetSize())
    if components != 1:
        raise ValueError(
            f"{label} {path} is a vector image ({components} components per voxel, size {size}); "
            f"a scalar image is needed"
        )
    array = sitk.GetArrayFromImage(itk_image)
    direction = np.asarray(itk_image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(itk_image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(itk_image.GetOrigin(), dtype=np.float64)
    if dim == 4:
        if size[3] != 1:
            raise ValueError(f"{label} {path} is a 4D image (size {size}); a single 2D or 3D image is needed")
        array = array[0]
        direction, spacing, origin = direction[:3, :3], spacing[:3], origin[:3]
    elif dim == 2:
        array = array[None]
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        spacing = np.append(spacing, 1.0)
        origin = np.append(origin, 0.0)
    elif dim != 3:
        raise ValueError(f"{label} {path} has {dim} dimensions (size {size}); 2D or 3D is needed")
    if array.dtype.kind == "f" and path.name.lower().endswith((".nii", ".nii.gz")):
        nonfinite = _nifti_nonfinite_count(path)
        if nonfinite:
            raise ValueError(f"{label} {path} contains NaN or inf values ({nonfinite} voxels, size {size})")
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing[None, :]
    ijk_to_lps[:3, 3] = origin
    image = ImageData(array, geometry.ijk_to_ras_from_lps(ijk_to_lps), _name_from_path(path))
    return validate_image(image, f"{label} {path}")


def as_image(image: Union[ImageData, PathLike, None], name: str) -> Optional[ImageData]:
    """``image`` as an :class:`ImageData`: read when it is a path, passed through when it already is one (or ``None``)."""
    if image is None or isinstance(image, ImageData):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image, name=name)
    raise ValueError(f"{name} must be an ImageData or a file path, got {type(image).__name__}")


def _nifti_nonfinite_count(path: Path) -> int:
    """Number of NaN / inf voxels stored in a float NIfTI file.

    ITK 5's NIfTI reader silently replaces them with 0 (fixed only in ITK 6), which would turn
    a broken input into plausible data; the stored values are read again with nibabel.
    """
    import nibabel

    stored = np.asanyarray(nibabel.load(str(path)).dataobj)
    return int(stored.size - np.count_nonzero(np.isfinite(stored))) if stored.dtype.kind == "f" else 0


def _storable(array: np.ndarray) -> np.ndarray:
    """Array in a dtype every NIfTI / NRRD reader handles."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float64 or array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype == np.int64 or array.dtype == np.uint64:
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise ValueError(f"label values {array.min()}..{array.max()} do not fit in int32")
        return array.astype(np.int32)
    return array


def itk_image_from_array(array: np.ndarray, ijk_to_ras: np.ndarray, is_vector: bool = False):
    """SimpleITK image of a ``(K, J, I)`` (or ``(K, J, I, C)`` with ``is_vector``) array on a RAS grid.

    The direction must be orthonormal (what NIfTI / NRRD and ITK store).
    """
    import SimpleITK as sitk

    ijk_to_lps = geometry.ijk_to_lps(ijk_to_ras)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing[None, :]
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError(f"ijk_to_ras has a non-orthogonal (sheared) direction, not storable: {ijk_to_ras.tolist()}")
    itk_image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
    itk_image.SetSpacing([float(s) for s in spacing])
    itk_image.SetDirection([float(d) for d in direction.reshape(-1)])
    itk_image.SetOrigin([float(o) for o in ijk_to_lps[:3, 3]])
    return itk_image


def write_image(path: PathLike, image: ImageData, compress: bool = True) -> Path:
    """Write ``image`` as NIfTI (``.nii``/``.nii.gz``) or NRRD (``.nrrd``/``.nhdr``), in LPS.

    A single-slice image is written as a 3D volume with one slice. float64 is stored as float32,
    bool as uint8, int64 as int32. Creates the parent folder. Returns the path.
    """
    import SimpleITK as sitk

    validate_image(image, f"image {image.name!r}" if image.name else "image")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    itk_image = itk_image_from_array(_storable(image.array), image.ijk_to_ras)
    return write_itk_image(itk_image, path, compress)


GZIP_CHUNK_BYTES = 1 << 22
"""``.nii.gz`` files are compressed in chunks of 4 MiB, each a gzip member, on several threads."""


def write_itk_image(itk_image, path: PathLike, compress: bool = True, threads: Optional[int] = None) -> Path:
    """Write a SimpleITK image; a ``.nii.gz`` is compressed on ``threads`` threads (default: CPU count).

    ITK writes the uncompressed ``.nii`` (same header and data as its own ``.nii.gz``) and the
    file is then gzip-compressed in independent chunks, one gzip member each (RFC 1952 allows a
    series of members; ITK, nibabel and ``gzip`` read them as one stream). The file appears
    atomically. Other formats go through ``sitk.WriteImage``.
    """
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (compress and path.name.endswith(".nii.gz")):
        sitk.WriteImage(itk_image, str(path), useCompression=bool(compress))
        return path
    fd, raw_name = tempfile.mkstemp(prefix=path.name[: -len(".gz")] + ".", suffix=".nii", dir=str(path.parent))
    os.close(fd)
    part = path.with_name(path.name + ".part")
    try:
        sitk.WriteImage(itk_image, raw_name, useCompression=False)
        raw = Path(raw_name).read_bytes()
        chunks = [raw[i : i + GZIP_CHUNK_BYTES] for i in range(0, len(raw), GZIP_CHUNK_BYTES)] or [b""]
        workers = max(1, min(len(chunks), os.cpu_count() or 1) if threads is None else int(threads))
        with ThreadPoolExecutor(max_workers=workers) as pool:  # zlib releases Python's lock
            members = list(pool.map(_gzip_member, chunks))
        with open(part, "wb") as handle:
            for member in members:
                handle.write(member)
        os.replace(part, path)
    finally:
        for leftover in (Path(raw_name), part):
            if leftover.exists():
                leftover.unlink()
    return path


def _gzip_member(data: bytes) -> bytes:
    """One complete gzip member (header, deflate stream at level 1: fast, and float images barely compress further)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()
