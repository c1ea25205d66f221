"""The orientation fields of a NIfTI header, parsed from its raw bytes, and where tools disagree on them.

A NIfTI file can place its voxels in two ways at once: the **qform** (a rotation stored as a quaternion,
voxel sizes from ``pixdim``, an offset; ``qform_code``) and the **sform** (a general 3 x 4 matrix,
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
SimpleITK (``imageio.read_image``), so the command line places them where Slicer does. Only the raw bytes
are parsed here (``struct``; NIfTI-1 348-byte and NIfTI-2 540-byte headers, either byte order).
"""
from __future__ import annotations

import gzip
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "XFORM_CODES", "TOLERANCE_VOXELS", "NiftiOrientation", "read_orientation", "parse_orientation",
    "qform_matrix", "sform_matrix", "itk_choice", "orientation_disagreement", "sform_scale_mismatch",
    "HeaderDisagreementWarning", "warn_header_disagreements",
]

XFORM_CODES = {0: "UNKNOWN", 1: "SCANNER_ANAT", 2: "ALIGNED_ANAT", 3: "TALAIRACH", 4: "MNI_152", 5: "TEMPLATE_OTHER"}
"""NIfTI ``qform_code`` / ``sform_code`` names."""
TOLERANCE_VOXELS = 0.1
"""qform and sform disagree when they place some voxel of the image more than this many voxels (of the
smallest spacing) apart."""
_HEADER_BYTES = 544
_ITK_SCALE_TOLERANCE_MM = 1e-3  # itkNiftiImageIO.cxx: "has unexpected scales in sform"


class HeaderDisagreementWarning(UserWarning):
    """A NIfTI header that tools read differently (the command line prints it as one ``warning:`` line)."""


@dataclass
class NiftiOrientation:
    """The fields of a NIfTI header that place its voxels (NIfTI-1 or -2, any byte order).

    ``dim``: the ``dim`` array (``dim[0]`` = number of dimensions); ``pixdim``: the ``pixdim`` array
    (``pixdim[0]`` = qfac); ``quatern``: ``(b, c, d)``; ``qoffset``: ``(x, y, z)`` mm; ``srow``: ``(3, 4)``.
    """

    version: int
    dim: Tuple[int, ...]
    pixdim: Tuple[float, ...]
    qform_code: int
    sform_code: int
    quatern: Tuple[float, float, float]
    qoffset: Tuple[float, float, float]
    srow: np.ndarray


def _fields(head: bytes) -> Optional[Tuple[int, str]]:
    """``(version, byte order)`` of the header at the start of ``head``, or ``None``."""
    for order in "<>":
        if len(head) >= 4:
            size = struct.unpack(order + "i", head[:4])[0]
            if size == 348 and len(head) >= 348:
                return 1, order
            if size == 540 and len(head) >= 540:
                return 2, order
    return None


def parse_orientation(head: bytes) -> Optional[NiftiOrientation]:
    """The orientation fields of the NIfTI header at the start of ``head`` (``None``: no NIfTI-1/-2 header)."""
    found = _fields(head)
    if found is None:
        return None
    version, o = found
    if version == 1:
        dim = struct.unpack_from(o + "8h", head, 40)
        pixdim = struct.unpack_from(o + "8f", head, 76)
        qform_code, sform_code = struct.unpack_from(o + "2h", head, 252)
        quatern = struct.unpack_from(o + "3f", head, 256)
        qoffset = struct.unpack_from(o + "3f", head, 268)
        srow = struct.unpack_from(o + "12f", head, 280)
    else:
        dim = struct.unpack_from(o + "8q", head, 16)
        pixdim = struct.unpack_from(o + "8d", head, 104)
        qform_code, sform_code = struct.unpack_from(o + "2i", head, 344)
        quatern = struct.unpack_from(o + "3d", head, 352)
        qoffset = struct.unpack_from(o + "3d", head, 376)
        srow = struct.unpack_from(o + "12d", head, 400)
    return NiftiOrientation(version, tuple(int(d) for d in dim), tuple(float(p) for p in pixdim), int(qform_code),
                            int(sform_code), tuple(quatern), tuple(qoffset), np.asarray(srow, np.float64).reshape(3, 4))


def read_orientation(path: Union[str, Path]) -> Optional[NiftiOrientation]:
    """The orientation fields of a ``.nii`` / ``.nii.gz`` file (``None`` when it has no NIfTI header)."""
    path = Path(path)
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            return parse_orientation(stream.read(_HEADER_BYTES))
    except (OSError, EOFError, struct.error):
        return None


def _spacing(header: NiftiOrientation) -> np.ndarray:
    """``pixdim[1:4]``, a non-positive value read as 1 (as the NIfTI library does for the qform)."""
    values = [header.pixdim[i] if i < len(header.pixdim) else 1.0 for i in (1, 2, 3)]
    return np.asarray([v if v > 0 and math.isfinite(v) else 1.0 for v in values])


def qform_matrix(header: NiftiOrientation) -> np.ndarray:
    """The ``(4, 4)`` voxel -> RAS mm matrix of the qform (``nifti_quatern_to_mat44``); ``diag(pixdim)`` when
    ``qform_code`` is 0, as the NIfTI library sets it."""
    spacing = _spacing(header)
    matrix = np.eye(4)
    if header.qform_code <= 0:
        matrix[:3, :3] = np.diag(spacing)
        return matrix
    b, c, d = (float(v) for v in header.quatern)
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
    qfac = -1.0 if header.pixdim[0] < 0 else 1.0
    matrix[:3, :3] = rotation * (spacing * np.array([1.0, 1.0, qfac]))[None, :]
    matrix[:3, 3] = header.qoffset
    return matrix


def sform_matrix(header: NiftiOrientation) -> np.ndarray:
    """The ``(4, 4)`` voxel -> RAS mm matrix of the sform rows (zeros above the last row when ``sform_code`` is 0)."""
    matrix = np.eye(4)
    matrix[:3, :] = header.srow if header.sform_code > 0 else 0.0
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


def itk_choice(header: NiftiOrientation) -> str:
    """``"sform"``, ``"qform"``, ``"none"`` (neither code set) or ``"refused"`` (ITK cannot read it): what
    ITK 5.4 places the voxels with (see the module docstring)."""
    if header.qform_code <= 0 and header.sform_code <= 0:
        return "none"
    s = sform_matrix(header).astype(np.float32).astype(np.float64)
    q = qform_matrix(header).astype(np.float32).astype(np.float64)
    prefer_sform = bool(np.all(np.abs(s[:3, :3] - q[:3, :3]) <= 1e-5) and np.abs(s[:, 3] - q[:, 3]).sum() <= 1e-7)
    if (not prefer_sform or header.sform_code != 0) and _orthogonal_axes(s):
        if header.qform_code <= 0 < header.sform_code or header.sform_code == 1:
            prefer_sform = True
        elif header.qform_code > 0 and header.sform_code > 0:
            prefer_sform = _very_similar(s, q)
    if prefer_sform:
        return "sform"
    return "qform" if header.qform_code > 0 else "refused"


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


def _closest(ijk_to_ras: np.ndarray, header: NiftiOrientation) -> str:
    """``"sform"`` or ``"qform"``: which of the two the geometry an image was read with is (ITK scales the sform's
    directions by ``pixdim``)."""
    spacing = _spacing(header)
    sform = sform_matrix(header)
    sform[:3, :3] = sform[:3, :3] / np.linalg.norm(sform[:3, :3], axis=0)[None, :] * spacing[None, :]
    errors = {name: float(np.abs(matrix - ijk_to_ras).max()) for name, matrix in
              (("sform", sform), ("qform", qform_matrix(header)))}
    return min(errors, key=errors.get)


def orientation_disagreement(header: NiftiOrientation, what: str, ijk_to_ras: Optional[np.ndarray] = None) -> str:
    """``""``, or one line saying that the qform and sform of ``header`` (of the file ``what``) disagree,
    by how much, and which one ITK (so this program and Slicer) uses, and that the other tools differ.

    ``ijk_to_ras``: the geometry ITK read the file with, which tells the choice; without it, :func:`itk_choice`."""
    if header.qform_code <= 0 or header.sform_code <= 0:
        return ""
    spatial = max(1, min(int(header.dim[0]), 3))
    shape = list(header.dim[1: spatial + 1])
    s, q = sform_matrix(header), qform_matrix(header)
    distance_mm, how = _difference(s, q, shape)
    tolerance_mm = TOLERANCE_VOXELS * float(np.min(_spacing(header)[:spatial]))
    if not distance_mm > tolerance_mm:
        return ""
    choice = itk_choice(header) if ijk_to_ras is None else _closest(np.asarray(ijk_to_ras, np.float64), header)
    codes = (f"qform_code {header.qform_code} {XFORM_CODES.get(header.qform_code, '?')}, "
             f"sform_code {header.sform_code} {XFORM_CODES.get(header.sform_code, '?')}")
    used = f"used the {choice}, as ITK and 3D Slicer do"
    if choice == "sform":
        others = "tools that read the qform place it differently"
    else:
        others = "tools that prefer the sform (nibabel, FSL) place it differently"
    return (f"{what}: its NIfTI qform and sform disagree ({how}; they place the image up to {distance_mm:.1f} mm "
            f"apart; {codes}): {used}; {others}. Check the image's position, or fix the header so both agree")


def sform_scale_mismatch(header: NiftiOrientation, what: str) -> str:
    """``""``, or one line saying that the sform ITK places the image with has other voxel sizes than ``pixdim``
    (ITK and Slicer then use ``pixdim`` along the sform's directions; sform-first tools use the sform's sizes)."""
    if header.sform_code <= 0 or itk_choice(header) != "sform":
        return ""
    spatial = max(1, min(int(header.dim[0]), 3))
    sizes = np.linalg.norm(header.srow[:, :3], axis=0)[:spatial]
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
    header = read_orientation(path)
    if header is None:
        return ()
    messages = tuple(m for m in (orientation_disagreement(header, what, ijk_to_ras),
                                 sform_scale_mismatch(header, what)) if m)
    for message in messages:
        warnings.warn(message, HeaderDisagreementWarning, stacklevel=3)
    return messages
