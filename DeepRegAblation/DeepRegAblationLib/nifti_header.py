"""A NIfTI-1 / NIfTI-2 header read with numpy alone, and where tools disagree on placing its voxels.

**Reading** (no nibabel: Slicer's Python does not ship it). The two header layouts are fixed by the standard
(``nifti1.h``: 348 bytes; ``nifti2.h``: 540 bytes) and are declared here as numpy structured dtypes with
nibabel's field names, so a :class:`NiftiHeader` is read the way a nibabel header is: ``header["dim"]``,
``header["pixdim"]``, ``header["sform_code"]``, ``header["srow_x"]``, ``header["magic"]``,
:meth:`NiftiHeader.get_data_dtype`, :meth:`NiftiHeader.get_data_offset`, :meth:`NiftiHeader.get_qform` and
:meth:`NiftiHeader.get_sform` (4x4 voxel -> RAS+ mm matrices; nibabel serves as the test oracle). The byte
order is the one that makes ``sizeof_hdr`` read 348 or 540. :func:`parse_nifti_header` reads the first bytes
of a file (at least 348 for NIfTI-1, 540 for NIfTI-2) and raises :class:`NiftiHeaderError` (a ``ValueError``)
when they hold no NIfTI header; :func:`read_nifti_header` reads a file's. The values are not checked:
``imageio`` checks them against the file.

**qform and sform.** A NIfTI file can place its voxels in two ways at once: the qform (a rotation stored as a
quaternion, voxel sizes from ``pixdim``, an offset; ``qform_code``) and the sform (a general 3 x 4 matrix,
``srow_x/y/z``; ``sform_code``). When both are set and they differ, tools differ too: nibabel and FSL take
the sform whenever ``sform_code > 0``, ITK (so SimpleITK, ANTs and 3D Slicer) decides as
``itkNiftiImageIO.cxx`` (``SetImageIOOrientationFromNIfTI``, ITK 5.4) does, :func:`itk_choice`:

- neither code set: no orientation (identity directions, origin 0);
- both matrices equal (element-wise 1e-5): the sform;
- otherwise, when the sform has orthogonal axes (rigid + scaling, invertible): the sform if the qform
  code is 0, or if ``sform_code`` is 1 (``SCANNER_ANAT``), or if the two are "very similar" (same
  singular values, rotations and offsets to 1e-4); else the qform (when its code is set);
- a sheared sform with no qform: ITK refuses the file.

So a file whose qform and sform disagree may lie differently in Slicer and in a nibabel-based tool.
:func:`orientation_disagreement` says so, with the choice made: this project reads images with
SimpleITK (``imageio.read_image``), so the command line places them where Slicer does
(:func:`warn_header_disagreements`). The quaternion becomes a rotation as the NIfTI library's
``nifti_quatern_to_mat44`` computes it (:meth:`NiftiHeader.get_qform` and :func:`qform_matrix` alike).
"""
from __future__ import annotations

import gzip
import math
import warnings
import zlib
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "NIFTI1_FIELDS", "NIFTI2_FIELDS", "NIFTI_DATA_TYPES", "NiftiHeaderError", "NiftiHeader", "parse_nifti_header",
    "read_nifti_header", "XFORM_CODES", "TOLERANCE_VOXELS", "qform_matrix", "sform_matrix", "itk_choice",
    "orientation_disagreement", "sform_scale_mismatch", "HeaderDisagreementWarning", "warn_header_disagreements",
]

NIFTI1_FIELDS = [
    ("sizeof_hdr", "i4"), ("data_type", "S10"), ("db_name", "S18"), ("extents", "i4"), ("session_error", "i2"),
    ("regular", "S1"), ("dim_info", "u1"), ("dim", "i2", (8,)), ("intent_p1", "f4"), ("intent_p2", "f4"),
    ("intent_p3", "f4"), ("intent_code", "i2"), ("datatype", "i2"), ("bitpix", "i2"), ("slice_start", "i2"),
    ("pixdim", "f4", (8,)), ("vox_offset", "f4"), ("scl_slope", "f4"), ("scl_inter", "f4"), ("slice_end", "i2"),
    ("slice_code", "u1"), ("xyzt_units", "u1"), ("cal_max", "f4"), ("cal_min", "f4"), ("slice_duration", "f4"),
    ("toffset", "f4"), ("glmax", "i4"), ("glmin", "i4"), ("descrip", "S80"), ("aux_file", "S24"),
    ("qform_code", "i2"), ("sform_code", "i2"), ("quatern_b", "f4"), ("quatern_c", "f4"), ("quatern_d", "f4"),
    ("qoffset_x", "f4"), ("qoffset_y", "f4"), ("qoffset_z", "f4"), ("srow_x", "f4", (4,)), ("srow_y", "f4", (4,)),
    ("srow_z", "f4", (4,)), ("intent_name", "S16"), ("magic", "S4"),
]
"""``nifti_1_header`` (348 bytes) in file order, nibabel's names."""

NIFTI2_FIELDS = [
    ("sizeof_hdr", "i4"), ("magic", "S4"), ("eol_check", "i1", (4,)), ("datatype", "i2"), ("bitpix", "i2"),
    ("dim", "i8", (8,)), ("intent_p1", "f8"), ("intent_p2", "f8"), ("intent_p3", "f8"), ("pixdim", "f8", (8,)),
    ("vox_offset", "i8"), ("scl_slope", "f8"), ("scl_inter", "f8"), ("cal_max", "f8"), ("cal_min", "f8"),
    ("slice_duration", "f8"), ("toffset", "f8"), ("slice_start", "i8"), ("slice_end", "i8"), ("descrip", "S80"),
    ("aux_file", "S24"), ("qform_code", "i4"), ("sform_code", "i4"), ("quatern_b", "f8"), ("quatern_c", "f8"),
    ("quatern_d", "f8"), ("qoffset_x", "f8"), ("qoffset_y", "f8"), ("qoffset_z", "f8"), ("srow_x", "f8", (4,)),
    ("srow_y", "f8", (4,)), ("srow_z", "f8", (4,)), ("slice_code", "i4"), ("xyzt_units", "i4"), ("intent_code", "i4"),
    ("intent_name", "S16"), ("dim_info", "u1"), ("unused_str", "S15"),
]
"""``nifti_2_header`` (540 bytes) in file order, nibabel's names (the 8-byte magic as ``magic`` + ``eol_check``)."""

_LONG_DOUBLE = np.dtype(np.longdouble) if np.dtype(np.longdouble).itemsize == 16 else np.dtype(np.void)
_CLONG_DOUBLE = np.dtype(np.clongdouble) if np.dtype(np.clongdouble).itemsize == 32 else np.dtype(np.void)

NIFTI_DATA_TYPES = {
    0: np.dtype(np.void), 1: np.dtype(np.void), 2: np.dtype(np.uint8), 4: np.dtype(np.int16),
    8: np.dtype(np.int32), 16: np.dtype(np.float32), 32: np.dtype(np.complex64), 64: np.dtype(np.float64),
    128: np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), 255: np.dtype(np.void), 256: np.dtype(np.int8),
    512: np.dtype(np.uint16), 768: np.dtype(np.uint32), 1024: np.dtype(np.int64), 1280: np.dtype(np.uint64),
    1536: _LONG_DOUBLE, 1792: np.dtype(np.complex128), 2048: _CLONG_DOUBLE,
    2304: np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")]),
}
"""NIfTI ``datatype`` code -> numpy dtype of one voxel (native byte order), as nibabel maps them."""

_LAYOUTS = {348: NIFTI1_FIELDS, 540: NIFTI2_FIELDS}
_HEADER_BYTES = 540  # the larger of the two


class NiftiHeaderError(ValueError):
    """The bytes hold no NIfTI-1 or NIfTI-2 header (or too few of them)."""


class NiftiHeader:
    """One NIfTI-1 or NIfTI-2 header: its fields by name (``header["dim"]``) and the derived values.

    Attributes:
        version: 1 or 2.
        endianness: ``"<"`` or ``">"``, the byte order of the header (and of the voxel data).
        fields: the numpy structured scalar holding every field.
    """

    def __init__(self, fields: np.void, version: int, endianness: str) -> None:
        self.fields = fields
        self.version = int(version)
        self.endianness = endianness

    def __getitem__(self, name: str):
        return self.fields[name]

    def keys(self) -> Tuple[str, ...]:
        return tuple(self.fields.dtype.names)

    def get_data_dtype(self) -> np.dtype:
        """The numpy dtype of one voxel in the file's byte order; ``KeyError`` for an unknown ``datatype`` code."""
        code = int(self.fields["datatype"])
        return NIFTI_DATA_TYPES[code].newbyteorder(self.endianness)

    def get_data_offset(self) -> int:
        """``vox_offset``: where the voxel data start in a single-file NIfTI (bytes)."""
        return int(self.fields["vox_offset"])

    def get_sform(self, coded: bool = False) -> Union[np.ndarray, Tuple[Optional[np.ndarray], int]]:
        """The ``(4, 4)`` voxel -> RAS+ mm matrix of ``srow_x/y/z``; with ``coded``, ``(matrix or None when
        sform_code is 0, sform_code)``."""
        code = int(self.fields["sform_code"])
        if coded and code == 0:
            return None, 0
        matrix = np.eye(4)
        matrix[:3] = np.stack([self.fields["srow_x"], self.fields["srow_y"], self.fields["srow_z"]]).astype(np.float64)
        return (matrix, code) if coded else matrix

    def get_qform(self, coded: bool = False) -> Union[np.ndarray, Tuple[Optional[np.ndarray], int]]:
        """The ``(4, 4)`` voxel -> RAS+ mm matrix of the quaternion, ``pixdim`` and ``qoffset`` (``nifti1.h``
        method 2; ``qfac = pixdim[0]`` is -1 or else 1); with ``coded``, ``(matrix or None when qform_code is 0,
        qform_code)``."""
        code = int(self.fields["qform_code"])
        if coded and code == 0:
            return None, 0
        matrix = _quatern_to_mat44(self, np.asarray(self.fields["pixdim"][1:4], dtype=np.float64))
        return (matrix, code) if coded else matrix


def _quatern_to_mat44(header: NiftiHeader, voxel_sizes: np.ndarray) -> np.ndarray:
    """The ``(4, 4)`` qform matrix of ``header`` with ``voxel_sizes`` (3,) along its axes, as the NIfTI library's
    ``nifti_quatern_to_mat44`` builds it (``b, c, d`` renormalised when ``1 - b^2 - c^2 - d^2 < 1e-7``)."""
    b, c, d = (float(header["quatern_" + name]) for name in "bcd")
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:
        norm = 1.0 / math.sqrt(b * b + c * c + d * d)
        b, c, d, a = b * norm, c * norm, d * norm, 0.0
    else:
        a = math.sqrt(a)
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    qfac = -1.0 if float(header["pixdim"][0]) < 0 else 1.0
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * (np.asarray(voxel_sizes, dtype=np.float64) * np.array([1.0, 1.0, qfac]))[None, :]
    matrix[:3, 3] = [float(header["qoffset_" + name]) for name in "xyz"]
    return matrix


def parse_nifti_header(head: bytes, what: str = "the file") -> NiftiHeader:
    """The NIfTI-1 or NIfTI-2 header at the start of ``head`` (the file's first bytes, decompressed).

    ``what`` names the file in the :class:`NiftiHeaderError` raised when ``head`` starts with no NIfTI
    header (``sizeof_hdr`` neither 348 nor 540 in either byte order) or is shorter than the header.
    The magic string is not checked (``imageio`` does, with its own message).
    """
    head = bytes(head)
    for endianness in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{endianness}i4")[0]) if len(head) >= 4 else 0
        layout = _LAYOUTS.get(size)
        if layout is None:
            continue
        dtype = np.dtype(layout).newbyteorder(endianness)
        if dtype.itemsize != size:  # pragma: no cover  (the layouts above are fixed)
            raise AssertionError(f"NIfTI layout of {dtype.itemsize} bytes for sizeof_hdr {size}")
        if len(head) < size:
            break
        fields = np.frombuffer(head[:size], dtype=dtype)[0]
        return NiftiHeader(fields, 1 if size == 348 else 2, endianness)
    raise NiftiHeaderError(
        f"cannot read {what}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header in its first {len(head)} bytes)"
    )


def read_nifti_header(path: Union[str, Path]) -> Optional[NiftiHeader]:
    """The header of the ``.nii`` / ``.nii.gz`` file ``path`` (:func:`parse_nifti_header`), or ``None`` when the
    file holds no NIfTI header or cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            return parse_nifti_header(stream.read(_HEADER_BYTES), str(path))
    except (OSError, EOFError, zlib.error, NiftiHeaderError):
        return None


# --------------------------------------------------------------------------- qform and sform
XFORM_CODES = {0: "UNKNOWN", 1: "SCANNER_ANAT", 2: "ALIGNED_ANAT", 3: "TALAIRACH", 4: "MNI_152", 5: "TEMPLATE_OTHER"}
"""NIfTI ``qform_code`` / ``sform_code`` names."""
TOLERANCE_VOXELS = 0.1
"""qform and sform disagree when they place some voxel of the image more than this many voxels (of the
smallest spacing) apart."""
_ITK_SCALE_TOLERANCE_MM = 1e-3  # itkNiftiImageIO.cxx: "has unexpected scales in sform"


class HeaderDisagreementWarning(UserWarning):
    """A NIfTI header that tools read differently (the command line prints it as one ``warning:`` line)."""


def _codes(header: NiftiHeader) -> Tuple[int, int]:
    """``(qform_code, sform_code)``."""
    return int(header["qform_code"]), int(header["sform_code"])


def _spatial_dims(header: NiftiHeader) -> int:
    """How many of the first three axes the image has (``dim[0]`` clipped to 1..3)."""
    return max(1, min(int(header["dim"][0]), 3))


def _spacing(header: NiftiHeader) -> np.ndarray:
    """``pixdim[1:4]``, a non-positive value read as 1 (as the NIfTI library does for the qform)."""
    values = [float(v) for v in header["pixdim"][1:4]]
    return np.asarray([v if v > 0 and math.isfinite(v) else 1.0 for v in values])


def qform_matrix(header: NiftiHeader) -> np.ndarray:
    """The ``(4, 4)`` voxel -> RAS mm matrix of the qform as the NIfTI library (and so ITK) sets it: its voxel sizes
    ``pixdim``, a non-positive one read as 1; ``diag(pixdim)`` when ``qform_code`` is 0."""
    spacing = _spacing(header)
    if _codes(header)[0] <= 0:
        matrix = np.eye(4)
        matrix[:3, :3] = np.diag(spacing)
        return matrix
    return _quatern_to_mat44(header, spacing)


def sform_matrix(header: NiftiHeader) -> np.ndarray:
    """The ``(4, 4)`` voxel -> RAS mm matrix of the sform rows (zeros above the last row when ``sform_code`` is 0)."""
    matrix = header.get_sform()
    if _codes(header)[1] <= 0:
        matrix[:3, :] = 0.0
    return matrix


def _orthogonal_axes(matrix: np.ndarray) -> bool:
    """ITK's "sform decomposable without skew": invertible, and orthonormal once each column is normalised (1e-4)."""
    top = matrix[:3, :3]
    if not np.all(np.isfinite(top)):
        return False
    norms = np.linalg.norm(top, axis=0)
    if np.any(norms == 0) or abs(np.linalg.det(top)) < 1e-12 * float(np.prod(norms)):
        return False
    unit = top / norms[None, :]
    return bool(np.all(np.abs(unit @ unit.T - np.eye(3)) <= 1e-4))


def _very_similar(s: np.ndarray, q: np.ndarray) -> bool:
    """ITK's second test: same singular values, rotations (U of the SVD) and offsets, to 1e-4."""
    us, ws, _ = np.linalg.svd(s[:3, :3])
    uq, wq, _ = np.linalg.svd(q[:3, :3])
    try:
        candidate = us @ np.linalg.inv(uq)
    except np.linalg.LinAlgError:
        return False
    return bool(np.all(np.abs(ws - wq) <= 1e-4) and np.all(np.abs(candidate - np.eye(3)) <= 1e-4)
                and np.all(np.abs(s[:3, 3] - q[:3, 3]) <= 1e-4))


def itk_choice(header: NiftiHeader) -> str:
    """``"sform"``, ``"qform"``, ``"none"`` (neither code set) or ``"refused"`` (ITK cannot read it): what
    ITK 5.4 places the voxels with (see the module docstring)."""
    qform_code, sform_code = _codes(header)
    if qform_code <= 0 and sform_code <= 0:
        return "none"
    s = sform_matrix(header).astype(np.float32).astype(np.float64)
    q = qform_matrix(header).astype(np.float32).astype(np.float64)
    prefer_sform = bool(np.all(np.abs(s[:3, :3] - q[:3, :3]) <= 1e-5) and np.abs(s[:, 3] - q[:, 3]).sum() <= 1e-7)
    if (not prefer_sform or sform_code != 0) and _orthogonal_axes(s):
        if qform_code <= 0 < sform_code or sform_code == 1:
            prefer_sform = True
        elif qform_code > 0 and sform_code > 0:
            prefer_sform = _very_similar(s, q)
    if prefer_sform:
        return "sform"
    return "qform" if qform_code > 0 else "refused"


def _corners(shape: Sequence[int]) -> np.ndarray:
    """``(4, 8)`` homogeneous voxel indices of the corners of an image of ``shape`` (i, j, k)."""
    extent = [max(int(n), 1) - 1 for n in list(shape)[:3]] + [0] * (3 - len(list(shape)[:3]))
    corners = np.array([[i, j, k, 1.0] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])])
    return corners.T


def _difference(s: np.ndarray, q: np.ndarray, shape: Sequence[int]) -> Tuple[float, str]:
    """How far apart the two matrices place the image (mm, over its corners) and how they differ, in words."""
    corners = _corners(shape)
    distance_mm = float(np.max(np.linalg.norm((s @ corners - q @ corners)[:3], axis=0)))
    if np.linalg.det(s[:3, :3]) * np.linalg.det(q[:3, :3]) < 0:
        how = "one is the mirror image of the other"
    else:
        unit_s = s[:3, :3] / np.linalg.norm(s[:3, :3], axis=0)[None, :]
        unit_q = q[:3, :3] / np.linalg.norm(q[:3, :3], axis=0)[None, :]
        angle = float(np.degrees(np.max(np.arccos(np.clip(np.sum(unit_s * unit_q, axis=0), -1.0, 1.0)))))
        how = f"their axes differ by up to {angle:.1f} degrees" if angle > 0.05 else "they differ by a shift or scale"
    return distance_mm, how


def _closest(ijk_to_ras: np.ndarray, header: NiftiHeader) -> str:
    """``"sform"`` or ``"qform"``: which of the two the geometry an image was read with is (ITK scales the sform's
    directions by ``pixdim``)."""
    spacing = _spacing(header)
    sform = sform_matrix(header)
    sform[:3, :3] = sform[:3, :3] / np.linalg.norm(sform[:3, :3], axis=0)[None, :] * spacing[None, :]
    errors = {name: float(np.abs(matrix - ijk_to_ras).max()) for name, matrix in
              (("sform", sform), ("qform", qform_matrix(header)))}
    return min(errors, key=errors.get)


def orientation_disagreement(header: NiftiHeader, what: str, ijk_to_ras: Optional[np.ndarray] = None) -> str:
    """``""``, or one line saying that the qform and sform of ``header`` (of the file ``what``) disagree,
    by how much, and which one ITK (so this program and Slicer) uses, and that the other tools differ.

    ``ijk_to_ras``: the geometry ITK read the file with, which tells the choice; without it, :func:`itk_choice`."""
    qform_code, sform_code = _codes(header)
    if qform_code <= 0 or sform_code <= 0:
        return ""
    spatial = _spatial_dims(header)
    shape = [int(n) for n in header["dim"][1: spatial + 1]]
    s, q = sform_matrix(header), qform_matrix(header)
    distance_mm, how = _difference(s, q, shape)
    tolerance_mm = TOLERANCE_VOXELS * float(np.min(_spacing(header)[:spatial]))
    if not distance_mm > tolerance_mm:
        return ""
    choice = itk_choice(header) if ijk_to_ras is None else _closest(np.asarray(ijk_to_ras, np.float64), header)
    codes = (f"qform_code {qform_code} {XFORM_CODES.get(qform_code, '?')}, "
             f"sform_code {sform_code} {XFORM_CODES.get(sform_code, '?')}")
    used = f"used the {choice}, as ITK and 3D Slicer do"
    if choice == "sform":
        others = "tools that read the qform place it differently"
    else:
        others = "tools that prefer the sform (nibabel, FSL) place it differently"
    return (f"{what}: its NIfTI qform and sform disagree ({how}; they place the image up to {distance_mm:.1f} mm "
            f"apart; {codes}): {used}; {others}. Check the image's position, or fix the header so both agree")


def sform_scale_mismatch(header: NiftiHeader, what: str) -> str:
    """``""``, or one line saying that the sform ITK places the image with has other voxel sizes than ``pixdim``
    (ITK and Slicer then use ``pixdim`` along the sform's directions; sform-first tools use the sform's sizes)."""
    if _codes(header)[1] <= 0 or itk_choice(header) != "sform":
        return ""
    spatial = _spatial_dims(header)
    sizes = np.linalg.norm(sform_matrix(header)[:3, :3], axis=0)[:spatial]
    pixdim = _spacing(header)[:spatial]
    if np.all(np.abs(sizes - pixdim) <= _ITK_SCALE_TOLERANCE_MM):
        return ""
    return (f"{what}: its NIfTI sform has voxel sizes {np.round(sizes, 4).tolist()} mm but pixdim says "
            f"{np.round(pixdim, 4).tolist()} mm: used pixdim along the sform's directions, as ITK and 3D Slicer do; "
            f"tools that use the sform as it is (nibabel, FSL) scale the image differently")


def warn_header_disagreements(path: Union[str, Path], what: str, ijk_to_ras: Optional[np.ndarray] = None) -> Tuple[str, ...]:
    """Warn (:class:`HeaderDisagreementWarning`) about what tools read differently in the header of the NIfTI file
    ``path`` (:func:`orientation_disagreement`, :func:`sform_scale_mismatch`), ``ijk_to_ras`` the geometry ITK read
    it with; returns the messages."""
    header = read_nifti_header(path)
    if header is None:
        return ()
    messages = tuple(m for m in (orientation_disagreement(header, what, ijk_to_ras),
                                 sform_scale_mismatch(header, what)) if m)
    for message in messages:
        warnings.warn(message, HeaderDisagreementWarning, stacklevel=3)
    return messages
