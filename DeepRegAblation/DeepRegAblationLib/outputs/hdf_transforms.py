"""ITK HDF5 transform files written with h5py, the displacement field slab by slab (bounded memory).

ITK's ``HDF5TransformIO`` layout (what ``sitk.WriteTransform`` writes for a composite of an affine transform
and a displacement field, and what ITK, SimpleITK and 3D Slicer read)::

    /ITKVersion, /HDFVersion, /OSName, /OSVersion         one variable-length string each
    /TransformGroup/0/TransformType                        "CompositeTransform_double_3_3"
    /TransformGroup/1/TransformType                        "AffineTransform_double_3_3"
    /TransformGroup/1/TransformParameters                  12 float64: the 3x3 matrix (rows), the translation
    /TransformGroup/1/TransformFixedParameters             3 float64: the centre
    /TransformGroup/2/TransformType                        "DisplacementFieldTransform_double_3_3"
    /TransformGroup/2/TransformParameters                  K*J*I*3 float64: the LPS vectors, i fastest
    /TransformGroup/2/TransformFixedParameters             18 float64: size (i, j, k), origin, spacing, direction

SimpleITK needs the whole field as a float64 image, copied once more when added to the composite (48 bytes
per voxel while the file is written); here each slab is converted and written on its own. Used by
``exports.write_composite_h5`` when h5py is installed (:func:`available`).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Union

import numpy as np

from .. import geometry, resampling

__all__ = ["available", "write_composite"]

PathLike = Union[str, Path]


def available() -> bool:
    """Whether h5py can be imported."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _string(group, name: str, text: str) -> None:
    import h5py

    group.create_dataset(name, data=np.array([text.encode("ascii")], dtype=h5py.string_dtype("ascii")))


def _field_fixed_parameters(shape, ijk_to_ras: np.ndarray) -> np.ndarray:
    """ITK's fixed parameters of a displacement field on the grid: size (i, j, k), LPS origin, spacing, direction."""
    ijk_to_lps = geometry.ijk_to_lps(ijk_to_ras)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing[None, :]
    size = [float(n) for n in tuple(shape)[:3][::-1]]
    return np.concatenate([size, ijk_to_lps[:3, 3], spacing, direction.reshape(-1)]).astype(np.float64)


def write_composite(path: PathLike, affine_lps, deform_ras_mm: np.ndarray, fixed_ijk_to_ras: np.ndarray) -> Path:
    """Write ``T(p) = A(p + u_def(p))`` (``affine_lps``: a ``sitk.AffineTransform``; ``deform_ras_mm``: ``(K, J, I, 3)``
    RAS mm on the fixed grid) as an ITK HDF5 composite transform; the file appears atomically."""
    import h5py
    import SimpleITK as sitk

    path = Path(path)
    deform = np.asarray(deform_ras_mm)
    if deform.ndim != 4 or deform.shape[-1] != 3:
        raise ValueError(f"deform_ras_mm must be (K, J, I, 3), got shape {deform.shape}")
    affine = sitk.AffineTransform(affine_lps)
    part = path.with_name(f".{path.name}.part")
    try:
        with h5py.File(part, "w") as handle:
            _string(handle, "ITKVersion", sitk.Version_ITKVersionString())
            _string(handle, "HDFVersion", f"HDF5 library version: {h5py.version.hdf5_version}")
            _string(handle, "OSName", platform.system())
            _string(handle, "OSVersion", platform.release())
            group = handle.create_group("TransformGroup")
            _string(group.create_group("0"), "TransformType", "CompositeTransform_double_3_3")
            first = group.create_group("1")
            _string(first, "TransformType", "AffineTransform_double_3_3")
            first.create_dataset("TransformParameters", data=np.asarray(affine.GetParameters(), np.float64))
            first.create_dataset("TransformFixedParameters", data=np.asarray(affine.GetFixedParameters(), np.float64))
            second = group.create_group("2")
            _string(second, "TransformType", "DisplacementFieldTransform_double_3_3")
            second.create_dataset("TransformFixedParameters", data=_field_fixed_parameters(deform.shape, fixed_ijk_to_ras))
            values = second.create_dataset("TransformParameters", shape=(deform.size,), dtype=np.float64)
            per_slice = int(np.prod(deform.shape[1:]))
            for k0, k1 in resampling.slabs(deform.shape[:3]):
                lps = geometry.vectors_ras_to_lps(deform[k0:k1]).astype(np.float64)
                values[k0 * per_slice: k1 * per_slice] = lps.reshape(-1)
        os.replace(part, path)
    finally:
        if part.exists():
            part.unlink()
    return path
