"""NIfTI-1 and NIfTI-2 headers read with numpy alone (no nibabel: Slicer's Python does not ship it).

The two header layouts are fixed by the standard (``nifti1.h``: 348 bytes; ``nifti2.h``: 540 bytes) and
are declared here as numpy structured dtypes with nibabel's field names, so a :class:`NiftiHeader` is
read the way a nibabel header is: ``header["dim"]``, ``header["pixdim"]``, ``header["sform_code"]``,
``header["srow_x"]``, ``header["magic"]``, :meth:`NiftiHeader.get_data_dtype`,
:meth:`NiftiHeader.get_data_offset`, :meth:`NiftiHeader.get_qform` and :meth:`NiftiHeader.get_sform`
(4x4 voxel -> RAS+ mm matrices; nibabel serves as the test oracle). The byte order is the one that
makes ``sizeof_hdr`` read 348 or 540.

:func:`parse_nifti_header` reads the first bytes of a file (at least 348 for NIfTI-1, 540 for NIfTI-2);
it raises :class:`NiftiHeaderError` (a ``ValueError``) when they hold no NIfTI header. The values are
not checked: ``imageio`` checks them against the file.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

__all__ = ["NIFTI1_FIELDS", "NIFTI2_FIELDS", "NIFTI_DATA_TYPES", "NiftiHeaderError", "NiftiHeader",
           "parse_nifti_header"]

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
        b, c, d = (float(self.fields[name]) for name in ("quatern_b", "quatern_c", "quatern_d"))
        a = float(np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d))))
        rotation = np.array([
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ])
        pixdim = np.asarray(self.fields["pixdim"], dtype=np.float64)
        voxel = pixdim[1:4].copy()
        voxel[2] *= -1.0 if pixdim[0] < 0 else 1.0
        matrix = np.eye(4)
        matrix[:3, :3] = rotation * voxel[None, :]
        matrix[:3, 3] = [float(self.fields[name]) for name in ("qoffset_x", "qoffset_y", "qoffset_z")]
        return (matrix, code) if coded else matrix


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
