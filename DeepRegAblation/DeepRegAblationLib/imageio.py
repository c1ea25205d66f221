"""Scalar images in physical space: :class:`ImageData`, NIfTI / NRRD I/O (SimpleITK), validation.

An image is a ``(K, J, I)`` array (numpy axis order, as ``slicer.util.arrayFromVolume`` gives
it) plus its ``(4, 4)`` IJK -> RAS matrix. A 2D image is a single-slice volume ``(1, J, I)``;
it is written as a 3D file with one slice so that its full geometry survives a round trip.
Files are LPS (ITK); the conversion to and from RAS happens here and nowhere else.
"""
from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from . import geometry, nifti_header, nifti_writer
from .nifti_header import NiftiHeaderError, parse_nifti_header
from .percentiles import linear_percentiles

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
class ImageReadError(ValueError):
    """An image or label file (or in-memory image) that cannot be used.

    The message names the file (or the argument) and the problem. A ``ValueError``, so that
    ``except ValueError`` catches it; the command line prints it as one line ``error: <message>``
    and exits with status 2.
    """


class ImageFileNotFoundError(ImageReadError, FileNotFoundError):
    """The file does not exist (an :class:`ImageReadError` and a ``FileNotFoundError``)."""


def validate_image(image: ImageData, name: str, kind: Optional[str] = None) -> ImageData:
    """Check that ``image`` is a usable scalar image; raise :class:`ImageReadError` naming ``name`` otherwise.

    Rejects: not an ImageData, zero-size / empty arrays, vector or 4D arrays, non-numeric or
    complex dtypes, NaN / inf values, an invalid IJK-to-RAS matrix. With ``kind="image"`` also a
    constant image (no contrast: blank or corrupt); with ``kind="labels"`` non-integer or
    negative values. Returns ``image``.
    """
    if not isinstance(image, ImageData):
        raise ImageReadError(f"{name} must be an ImageData, got {type(image).__name__}")
    array = image.array
    if array.ndim != 3:
        raise ImageReadError(
            f"{name} must be a scalar image (K, J, I) (2D images as (1, J, I)); got an array of shape "
            f"{array.shape} (vector, multi-component and 4D images are not supported)"
        )
    if array.size == 0:
        raise ImageReadError(f"{name} is empty (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        raise ImageReadError(f"{name} must hold real numbers, got dtype {array.dtype} (shape {array.shape})")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ImageReadError(f"{name} contains NaN or inf values ({bad} of {array.size} voxels, shape {array.shape})")
    try:
        geometry.validate_ijk_to_ras(image.ijk_to_ras, f"{name} IJK-to-RAS matrix")
    except ValueError as exc:
        raise ImageReadError(str(exc)) from None
    if kind == "image":
        low, high = float(np.min(array)), float(np.max(array))
        if low == high:
            raise ImageReadError(
                f"{name} is constant (every voxel is {low:g}, shape {array.shape}): an image without contrast "
                f"(blank or corrupt)"
            )
    elif kind == "labels":
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise ImageReadError(
                f"{name} must hold integer labels, got non-integer values (dtype {array.dtype}, shape {array.shape}): "
                f"an intensity or probability image?"
            )
        low = float(np.min(array))
        if low < 0:
            raise ImageReadError(f"{name} holds negative label values (minimum {low:g}); labels are integers >= 0")
    elif kind is not None:
        raise ValueError(f"kind must be None or one of {list(IMAGE_KINDS)}, got {kind!r}")
    return image


# --------------------------------------------------------------------------- intensities
def intensity_window(array: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0,
                     overwrite_input: bool = False) -> Tuple[float, float]:
    """Robust intensity range: the ``low_pct`` and ``high_pct`` percentiles of all voxels.

    Exactly ``np.percentile`` of the voxels as float64 (its default, linear method). Images whose values float32
    holds exactly (float32, integers of up to 16 bits) are partitioned as float32 (4 bytes per voxel instead of 8;
    ``overwrite_input``: a float32 array is partitioned in place, e.g. a temporary the caller no longer needs).
    """
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    array = np.asarray(array)
    if array.size == 0:
        raise ValueError("array is empty: no intensity window")
    if array.dtype == np.float32 or (array.dtype.kind in "iub" and array.dtype.itemsize <= 2):
        own = overwrite_input and array.dtype == np.float32 and array.flags.writeable and array.flags.c_contiguous
        low, high = linear_percentiles(array.reshape(-1) if own else array.astype(np.float32).reshape(-1),
                                       (low_pct, high_pct))
        return low, high
    values = np.asarray(array, dtype=np.float64).reshape(-1)
    own_copy = overwrite_input or not np.shares_memory(values, array)  # partition a copy in place: one copy, not two
    low, high = np.percentile(values, [low_pct, high_pct], overwrite_input=own_copy)
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
    out = np.subtract(array, low, dtype=np.float32)  # one array, updated in place
    np.divide(out, high - low, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------- files
IMAGE_KINDS = ("image", "labels")
"""What a file must hold: ``"image"`` (intensities with some contrast) or ``"labels"`` (integers >= 0)."""

WORKING_BYTES_PER_VOXEL = 16
"""Memory a voxel needs while it is registered (the image as stored plus float working copies)."""

MAX_VOXELS_UNKNOWN_MEMORY = 1 << 30
"""Voxel limit where the available memory cannot be found out (no /proc/meminfo, no sysconf)."""

_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK_BYTES = 1 << 22


def _name_from_path(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_image(path: PathLike, name: Optional[str] = None, kind: str = "image") -> ImageData:
    """Read a scalar image file (NIfTI, NRRD, MHA: any SimpleITK format) into RAS, checked completely.

    This is the one reading path for every image and label file the project opens. Checked, in
    this order (so that nothing is decompressed for a file whose header is already wrong):

    1. the file exists, is a regular file and is not empty;
    2. NIfTI (``.nii`` / ``.nii.gz``): the header (magic, size, finite positive ``pixdim``, a
       non-singular ``sform``), then the WHOLE byte stream: a truncated or corrupt gzip stream, or
       fewer bytes than ``vox_offset + prod(dim) * bitpix / 8``, is an error (ITK would fill the
       missing voxels with zeros), and so are NaN / inf voxels (ITK 5 reads them as 0);
    3. what ITK reads from the header (every format): one component per voxel, 2 or 3 spatial
       dimensions after dropping trailing singleton axes (the ``(X, Y, Z, 1)`` headers of some
       data sets), finite positive spacing, a non-singular direction matrix, a number of voxels
       that fits in the available memory, a single slice only along k;
    4. the voxels (:func:`validate_image` with ``kind``): finite; an ``"image"`` is not constant;
       ``"labels"`` are integers >= 0.

    Args:
        path: the file.
        name: how messages refer to it, e.g. ``"fixed image (--fixed)"`` (default: ``kind``).
            ``ImageData.name`` is the file name without extension.
        kind: ``"image"`` or ``"labels"`` (see :data:`IMAGE_KINDS`).

    Raises:
        ImageReadError: (a ``ValueError``) naming ``name``, the file and the problem;
        :class:`ImageFileNotFoundError` (also a ``FileNotFoundError``) for a missing file.
    """
    import SimpleITK as sitk

    if kind not in IMAGE_KINDS:
        raise ValueError(f"kind must be one of {list(IMAGE_KINDS)}, got {kind!r}")
    path = Path(path)
    label = name or kind
    what = f"{label} {path}"
    _check_is_file(path, label)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_file(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_declared_grid(
            what, reader.GetNumberOfComponents(), reader.GetSize(), reader.GetSpacing(), reader.GetDirection()
        )
        itk_image = reader.Execute()
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()
        raise ImageReadError(f"cannot read {what}: {message[-1] if message else exc}") from None
    dim = itk_image.GetDimension()
    array = sitk.GetArrayFromImage(itk_image)
    direction = np.asarray(itk_image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(itk_image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(itk_image.GetOrigin(), dtype=np.float64)
    if dim > 3:  # trailing singleton axes (checked above): numpy puts them first
        array = array.reshape(array.shape[dim - 3 :])
        direction, spacing, origin = direction[:3, :3], spacing[:3], origin[:3]
    elif dim == 2:
        array = array[None]
        direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        spacing = np.append(spacing, 1.0)
        origin = np.append(origin, 0.0)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing[None, :]
    ijk_to_lps[:3, 3] = origin
    try:
        image = ImageData(array, geometry.ijk_to_ras_from_lps(ijk_to_lps), _name_from_path(path))
    except ValueError as exc:  # e.g. a spacing so small that the matrix is numerically singular
        raise ImageReadError(f"{what} has an unusable geometry: {exc}") from None
    if path.name.lower().endswith((".nii", ".nii.gz")):  # qform vs sform: placed as ITK / Slicer do, reported
        nifti_header.warn_header_disagreements(path, what, image.ijk_to_ras)
    return validate_image(image, what, kind)


def as_image(image: Union[ImageData, PathLike, None], name: str, kind: str = "image") -> Optional[ImageData]:
    """``image`` as an :class:`ImageData`: read (:func:`read_image`) when it is a path, passed through
    when it already is one (or ``None``)."""
    if image is None or isinstance(image, ImageData):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image, name=name, kind=kind)
    raise ValueError(f"{name} must be an ImageData or a file path, got {type(image).__name__}")


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


def _check_is_file(path: Path, label: str) -> None:
    if not path.exists():
        raise ImageFileNotFoundError(f"{label} file not found: {path}")
    if path.is_dir():
        raise ImageReadError(f"{label} {path} is a directory, not an image file")
    if not path.is_file():
        raise ImageReadError(f"{label} {path} is not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{label} {path} is an empty file (0 bytes)")


def available_memory_bytes() -> Optional[int]:
    """Memory available to a new allocation (Linux ``MemAvailable``, else the physical memory), or ``None``."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_voxel_count(what: str, size: Tuple[int, ...]) -> None:
    """Refuse a declared size whose voxels do not fit in the available memory (before reading them)."""
    voxels = int(np.prod([int(n) for n in size], dtype=object))
    available = available_memory_bytes()
    needed = voxels * WORKING_BYTES_PER_VOXEL
    if available is None:
        if voxels > MAX_VOXELS_UNKNOWN_MEMORY:
            raise ImageReadError(f"{what} declares {voxels:.3g} voxels (size {tuple(size)}), more than {MAX_VOXELS_UNKNOWN_MEMORY:.3g}")
    elif needed > available:
        raise ImageReadError(
            f"{what} declares {voxels:.3g} voxels (size {tuple(size)}), which need about {needed / 1e9:.3g} GB of "
            f"memory to register; {available / 1e9:.3g} GB are available (corrupt header, or crop / downsample it)"
        )


def _is_singular(matrix: np.ndarray) -> bool:
    """A square matrix with non-finite entries, a zero column or (nearly) dependent columns."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if not np.all(np.isfinite(matrix)):
        return True
    norms = np.linalg.norm(matrix, axis=0)
    return bool(np.any(norms == 0) or abs(np.linalg.det(matrix)) < 1e-6 * float(np.prod(norms)))


def _check_declared_grid(what: str, components: int, size, spacing, direction) -> None:
    """The grid a file declares (what ITK reads from any header), before its voxels are read."""
    size, dim = tuple(int(n) for n in size), len(size)
    if components != 1:
        raise ImageReadError(
            f"{what} is a vector image ({components} components per voxel, size {size}); a scalar image is needed"
        )
    if dim < 2 or any(n < 1 for n in size):
        raise ImageReadError(f"{what} has size {size}; a 2D or 3D image is needed")
    if any(n != 1 for n in size[3:]):
        raise ImageReadError(
            f"{what} is a 4D image with {int(np.prod(size[3:]))} volumes (size {size}); a single 2D or 3D image is needed"
        )
    spatial = min(dim, 3)
    spacing = np.asarray(spacing, dtype=np.float64)[:spatial]
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ImageReadError(
            f"{what} has voxel spacing {spacing.tolist()} mm: every spacing must be a finite positive number"
        )
    direction = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:spatial, :spatial]
    if _is_singular(direction):
        raise ImageReadError(f"{what} has a singular direction matrix {np.round(direction, 4).tolist()}: its axes must be independent")
    _check_voxel_count(what, size[:spatial])
    thin = [axis for axis, n in zip("ij", size[:2]) if n == 1]
    if thin:
        raise ImageReadError(
            f"{what} is one voxel thick along its {' and '.join(thin)} axis (size {size[:spatial]} in i, j, k): a 2D "
            f"image must be a single slice along k, its third axis, and a 3D image needs 2 or more voxels along every axis"
        )


def _nifti_header(head: bytes, what: str):
    """The NIfTI-1 / NIfTI-2 header of the first bytes of a file (:mod:`.nifti_header`: numpy only, no nibabel,
    which Slicer's Python does not ship), unchecked (``ImageReadError`` if there is none)."""
    try:
        header = parse_nifti_header(head, what)
    except NiftiHeaderError as exc:
        raise ImageReadError(str(exc)) from None
    magic = bytes(header["magic"].item())
    if not magic.startswith((b"n+1", b"n+2")):
        raise ImageReadError(f"cannot read {what}: not a single-file NIfTI image (bad magic {magic!r}; expected 'n+1' or 'n+2')")
    return header


def _voxel_offset(vox_offset: float, header_bytes: int, what: str) -> int:
    """Where the voxels of a single-file NIfTI start: ``vox_offset`` (an offset inside the header means right after
    it and its 4-byte extension flag, as the NIfTI library reads it); NaN, inf, a negative or a fractional offset is
    a corrupt header."""
    if not np.isfinite(vox_offset) or vox_offset < 0 or vox_offset != int(vox_offset) or vox_offset > 2**40:
        raise ImageReadError(f"{what} declares an invalid voxel data offset (NIfTI vox_offset {vox_offset!r}): a "
                             f"corrupt header")
    return max(int(vox_offset), abs(int(header_bytes)) + 4)


def _check_nifti_file(path: Path, what: str) -> None:
    """Check a NIfTI file against its own header, reading its whole (decompressed) byte stream.

    ITK fills the missing voxels of a truncated file with zeros, replaces zero / negative / NaN
    ``pixdim`` silently, and ITK 5 reads NaN / inf voxels as 0: each would turn a broken file
    into plausible data, so they are checked here on the bytes as stored.
    """
    data = bytearray()
    expected = None  # bytes the header declares: vox_offset + prod(dim) * bitpix / 8
    compressed = _starts_with(path, _GZIP_MAGIC)
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            data += stream.read(544)
            header = _nifti_header(bytes(data), what)
            ndim = int(header["dim"][0])
            shape = tuple(int(n) for n in header["dim"][1 : ndim + 1]) if 1 <= ndim <= 7 else ()
            if not shape or any(n < 1 for n in shape):
                raise ImageReadError(f"{what} declares an invalid size (NIfTI dim {header['dim'].tolist()})")
            spatial = min(ndim, 3)
            pixdim = np.asarray(header["pixdim"][1 : spatial + 1], dtype=np.float64)
            if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
                raise ImageReadError(
                    f"{what} declares voxel spacing {pixdim.tolist()} mm (NIfTI pixdim): every spacing must be a finite "
                    f"positive number"
                )
            if int(header["sform_code"]) > 0:
                sform = np.stack([header["srow_x"], header["srow_y"], header["srow_z"]]).astype(np.float64)[:, :3]
                if _is_singular(sform):
                    raise ImageReadError(
                        f"{what} has a singular or invalid orientation (NIfTI sform {np.round(sform, 4).tolist()}): "
                        f"its axes must be independent"
                    )
            _check_voxel_count(what, shape)
            try:
                dtype = header.get_data_dtype()
            except (KeyError, ValueError):
                raise ImageReadError(f"{what} has an unknown NIfTI datatype code {int(header['datatype'])}") from None
            offset = _voxel_offset(float(header["vox_offset"]), int(header["sizeof_hdr"]), what)
            expected = offset + int(np.prod(shape)) * dtype.itemsize
            while True:
                chunk = stream.read(_READ_CHUNK_BYTES)
                if not chunk:
                    break
                data += chunk
    except (EOFError, OSError, zlib.error) as exc:
        problem = "its gzip stream ends early" if isinstance(exc, EOFError) else f"its data are corrupt ({exc})"
        declared = f"; its header declares {expected} bytes uncompressed" if expected is not None else ""
        raise ImageReadError(
            f"{what} is truncated or corrupt: {problem} ({path.stat().st_size} bytes on disk{declared})"
        ) from None
    voxels = int(np.prod(shape))
    declared = voxels * dtype.itemsize
    if len(data) < offset + declared:
        raise ImageReadError(
            f"{what} is truncated: it holds {max(len(data) - offset, 0)} bytes of voxel data but its header declares "
            f"{declared} ({'x'.join(map(str, shape))} voxels of {dtype.name})"
        )
    if dtype.kind in "fc":
        values = np.frombuffer(data, dtype=dtype, count=voxels, offset=offset)
        bad = int(voxels - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ImageReadError(f"{what} contains NaN or inf values ({bad} of {voxels} voxels, size {shape})")


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


def write_itk_image(itk_image, path: PathLike, compress: bool = True, threads: Optional[int] = None) -> Path:
    """Write a SimpleITK image; a ``.nii.gz`` is compressed on ``threads`` threads (default: CPU count).

    ITK writes the uncompressed ``.nii`` (same header and data as its own ``.nii.gz``) and the
    file is then gzip-compressed in independent chunks, one gzip member each
    (``nifti_writer.write_gzip_members``: a few chunks in memory at a time). The file appears
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
    try:
        sitk.WriteImage(itk_image, raw_name, useCompression=False)
        nifti_writer.write_gzip_members(path, nifti_writer.file_chunks(raw_name), threads)
    finally:
        if Path(raw_name).exists():
            Path(raw_name).unlink()
    return path
