"""NIfTI files written in bounded memory: ITK's own header, the voxels streamed from the array, gzip members.

A ``.nii.gz`` is written as ITK writes it (SimpleITK's uncompressed ``.nii``, compressed in chunks of
:data:`GZIP_CHUNK_BYTES`, one gzip member each, on several threads: RFC 1952 allows a series of members;
ITK, nibabel and ``gzip`` read them as one stream). :func:`write_gzip_members` compresses a byte stream that
way with a bounded number of chunks in flight, so the compressed file never needs the whole stream in
memory. :func:`write_nifti_streamed` writes a 3D scalar or vector image without handing SimpleITK the
whole array (which copies it): the header is the one ITK writes for the same geometry and type (taken from
a two-slice image and given the real slice count; nothing else in it depends on the voxels), the voxels
are the array's bytes in NIfTI order (vector images component by component), slab by slab. The file is
byte for byte what ``sitk.WriteImage`` of the whole image and :func:`write_gzip_members` give.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

__all__ = ["GZIP_CHUNK_BYTES", "gzip_member", "rechunk", "write_gzip_members", "file_chunks", "itk_nifti_header",
           "streamable", "write_nifti_streamed"]

GZIP_CHUNK_BYTES = 1 << 22
"""``.nii.gz`` files are compressed in chunks of 4 MiB, each a gzip member."""
_NIFTI1_DIM_OFFSET = 40  # int16 dim[8] of a NIfTI-1 header
_NIFTI1_MAX_DIM = 32767

PathLike = Union[str, Path]


def gzip_member(data: bytes) -> bytes:
    """One complete gzip member (header, deflate stream at level 1: fast, and float images barely compress further)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def rechunk(pieces: Iterable[Union[bytes, memoryview]], size: Optional[int] = None) -> Iterator[bytes]:
    """The concatenation of ``pieces`` cut into chunks of exactly ``size`` bytes (default :data:`GZIP_CHUNK_BYTES`;
    the last one shorter)."""
    size = int(size or GZIP_CHUNK_BYTES)
    buffer = bytearray()
    for piece in pieces:
        view = memoryview(piece).cast("B")
        start = 0
        while start < len(view):
            take = min(size - len(buffer), len(view) - start)
            buffer += view[start:start + take]
            start += take
            if len(buffer) == size:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


def file_chunks(path: PathLike, size: Optional[int] = None) -> Iterator[bytes]:
    """The bytes of a file, ``size`` (default :data:`GZIP_CHUNK_BYTES`) at a time."""
    size = int(size or GZIP_CHUNK_BYTES)
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(size)
            if not chunk:
                return
            yield chunk


def write_gzip_members(path: PathLike, chunks: Iterable[bytes], threads: Optional[int] = None) -> Path:
    """Write ``chunks`` (e.g. :func:`rechunk` of a stream) as one gzip member each, compressed on ``threads`` threads
    (default: the CPU count), at most two chunks per thread in flight; the file appears atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, (os.cpu_count() or 1) if threads is None else int(threads))
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as handle, ThreadPoolExecutor(max_workers=workers) as pool:  # zlib releases Python's lock
            pending = []
            for chunk in chunks:
                pending.append(pool.submit(gzip_member, chunk))
                if len(pending) >= 2 * workers:
                    handle.write(pending.pop(0).result())
            for future in pending:
                handle.write(future.result())
            if handle.tell() == 0:
                handle.write(gzip_member(b""))
        os.replace(part, path)
    finally:
        if part.exists():
            part.unlink()
    return path


def itk_nifti_header(itk_image_of_two_slices, slices: int) -> bytes:
    """The NIfTI-1 header (and extension flag: everything before the voxels) that ITK writes for an image like
    ``itk_image_of_two_slices`` (same spacing, origin, direction, pixel type, I and J) with ``slices`` slices."""
    import SimpleITK as sitk

    if not 1 <= int(slices) <= _NIFTI1_MAX_DIM:
        raise ValueError(f"slices must be 1..{_NIFTI1_MAX_DIM}, got {slices}")
    fd, name = tempfile.mkstemp(suffix=".nii")
    os.close(fd)
    try:
        sitk.WriteImage(itk_image_of_two_slices, name, useCompression=False)
        with open(name, "rb") as handle:
            head = handle.read(352)
            if struct.unpack("<i", head[:4])[0] != 348:
                raise ValueError("SimpleITK did not write a little-endian NIfTI-1 header")
            offset = int(struct.unpack("<f", head[108:112])[0])
            handle.seek(0)
            header = bytearray(handle.read(offset))
    finally:
        os.unlink(name)
    dims = struct.unpack_from("<8h", header, _NIFTI1_DIM_OFFSET)
    if dims[3] != 2:
        raise ValueError(f"expected a header of two slices, got dim {dims}")
    struct.pack_into("<h", header, _NIFTI1_DIM_OFFSET + 6, int(slices))
    return bytes(header)


def streamable(shape: Sequence[int]) -> bool:
    """Whether an image of ``shape`` ``(K, J, I[, C])`` can be written by :func:`write_nifti_streamed`: a volume of
    at least two slices whose sizes fit a NIfTI-1 header."""
    return len(shape) in (3, 4) and shape[0] >= 2 and max(shape[:3]) <= _NIFTI1_MAX_DIM


def write_nifti_streamed(path: PathLike, array: np.ndarray, header_image: Callable[[np.ndarray], object],
                         signs: Optional[Sequence[float]] = None, compress: bool = True,
                         slab_voxels: int = 1 << 21) -> Path:
    """Write a ``(K, J, I)`` scalar or ``(K, J, I, C)`` vector ``array`` as a NIfTI file slab by slab.

    Args:
        header_image: ``header_image(two_slices)`` -> the SimpleITK image ITK would write for those two slices
            (geometry and pixel type; e.g. ``imageio.itk_image_from_array`` with the grid): its header is used.
        signs: per component of a vector array, a factor applied as the voxels are written (``(-1, -1, 1)``:
            RAS vectors written as LPS); exact for +-1.
        compress: a ``.nii.gz`` of gzip members (:func:`write_gzip_members`), else a plain ``.nii``.
    """
    array = np.asarray(array)
    if not streamable(array.shape):
        raise ValueError(f"write_nifti_streamed writes volumes of 2..{_NIFTI1_MAX_DIM} slices, got shape {array.shape}")
    header = itk_nifti_header(header_image(_two_slices(array, signs)), array.shape[0])
    stream = rechunk(_with_header(header, _voxel_pieces(array, signs, slab_voxels)))
    path = Path(path)
    if compress and path.name.endswith(".gz"):
        return write_gzip_members(path, stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for chunk in stream:
            handle.write(chunk)
    return path


def _two_slices(array: np.ndarray, signs: Optional[Sequence[float]]) -> np.ndarray:
    two = np.array(array[:2])
    if signs is not None:
        two = two * np.asarray(signs, dtype=two.dtype)
    return two


def _with_header(header: bytes, pieces: Iterable) -> Iterator:
    yield header
    yield from pieces


def _voxel_pieces(array: np.ndarray, signs: Optional[Sequence[float]], slab_voxels: int) -> Iterator:
    """The voxel bytes in NIfTI order (i fastest, then j, k; vector components last, one after the other)."""
    per_slice = max(1, int(np.prod(array.shape[1:3])))
    step = max(1, slab_voxels // per_slice)
    little = array.dtype.newbyteorder("<")
    if array.ndim == 3:
        for k0 in range(0, array.shape[0], step):
            yield np.ascontiguousarray(array[k0:k0 + step], dtype=little).reshape(-1).view(np.uint8)
        return
    factors = np.ones(array.shape[3]) if signs is None else np.asarray(signs, dtype=np.float64)
    for component in range(array.shape[3]):
        for k0 in range(0, array.shape[0], step):
            plane = np.ascontiguousarray(array[k0:k0 + step, ..., component], dtype=little)
            if factors[component] != 1:
                plane = plane * plane.dtype.type(factors[component])
            yield plane.reshape(-1).view(np.uint8)
