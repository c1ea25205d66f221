"""MRML nodes from arrays and back: volumes, the grid transform of a displacement field, the parent-transform rule.

The base of the scene adapter (:mod:`DeepRegAblationLib.scene`): the other modules of the package build on
these helpers. Arrays are ``(K, J, I)`` as ``slicer.util.arrayFromVolume`` gives them; matrices are 4x4
IJKToRAS (RAS mm). Works on any ``vtkMRMLScene`` (Slicer's own, or ``slicer-core``'s, headless).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from .. import geometry
from ..imageio import ImageData

__all__ = [
    "RESULT_ATTRIBUTE", "INPUTS_ATTRIBUTE", "parent_transform_problem", "require_no_parent_transform", "vtk_matrix",
    "node_ijk_to_ras", "image_data_from_volume_node", "set_volume", "get_or_add", "inputs_key", "get_or_add_for_inputs",
    "add_volume_node", "write_volume_file", "grid_transform_from_displacement",
]

PathLike = Union[str, Path]

RESULT_ATTRIBUTE = "DeepRegAblation.variant"
"""Attribute set on every output node (its value: the variant)."""
INPUTS_ATTRIBUTE = "DeepRegAblation.inputs"
"""Attribute of every output node: the inputs it was made from (:func:`inputs_key`); reuse is for the same
inputs only."""


def _slicer():
    """The ``slicer`` package (Slicer's own, or ``slicer-core``'s), with ``slicer.util`` imported.

    In Slicer's PythonSlicer (the background registration process), ``import slicer`` loads the
    MRML classes but not ``slicer.util``: only the application's start-up imports it. So the
    submodule is imported here explicitly.
    """
    import slicer
    import slicer.util  # noqa: F401  (not imported by ``import slicer`` in PythonSlicer)

    return slicer


# --------------------------------------------------------------------------- parent transforms
def parent_transform_problem(node, role: str = "input") -> str:
    """Plain-words reason why ``node`` cannot be used as a registration input ("" if it can).

    The one rule of both the blocking and the background path: inputs under a parent transform
    are refused, linear or not, because the registration works on the voxels as stored (the
    file written for the background process carries the node's own IJKToRAS only) and its
    outputs live on the fixed grid without a parent. Hardening the transform first makes the
    transformed position the stored one.
    """
    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return ""
    return (
        f"The {role} '{node.GetName()}' is under the transform '{parent.GetName()}'. Harden the transform "
        f"first (Data module: right-click the transform, 'Harden transform'), or remove it, then run again."
    )


def require_no_parent_transform(node, role: str = "input") -> None:
    """Raise ``ValueError`` with :func:`parent_transform_problem`'s message when ``node`` has a parent transform."""
    problem = parent_transform_problem(node, role)
    if problem:
        raise ValueError(problem)


# --------------------------------------------------------------------------- matrices
def vtk_matrix(matrix: np.ndarray):
    """A ``vtkMatrix4x4`` copy of a ``(4, 4)`` array."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    vtk_matrix = vtkMatrix4x4()
    vtk_matrix.DeepCopy(np.asarray(matrix, dtype=np.float64).ravel())
    return vtk_matrix


def _numpy_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def node_ijk_to_ras(volume_node) -> np.ndarray:
    """The volume node's own IJKToRAS (callers refuse nodes under a parent transform)."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _numpy_matrix(matrix)


# --------------------------------------------------------------------------- volumes
def image_data_from_volume_node(volume_node) -> ImageData:
    """An :class:`ImageData` copy of a scalar or label map volume node.

    ``array`` is ``(K, J, I)`` as ``slicer.util.arrayFromVolume`` gives it (copied);
    ``ijk_to_ras`` is the node's IJKToRAS. A node under a parent transform (linear or not)
    raises ``ValueError`` asking to harden it (:func:`parent_transform_problem`).
    """
    slicer = _slicer()
    if volume_node is None or not volume_node.IsA("vtkMRMLVolumeNode"):
        raise ValueError(f"volume_node must be a vtkMRMLVolumeNode, got {type(volume_node).__name__}")
    if volume_node.GetImageData() is None:
        raise ValueError(f"volume_node {volume_node.GetName()!r} has no image data")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLTensorVolumeNode"):
        raise ValueError(
            f"volume_node {volume_node.GetName()!r} is a {volume_node.GetClassName()}; "
            f"a scalar or label map volume is needed"
        )
    require_no_parent_transform(volume_node, "volume")
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    if array.ndim != 3:
        raise ValueError(
            f"volume_node {volume_node.GetName()!r} has {volume_node.GetImageData().GetNumberOfScalarComponents()} "
            f"components (array shape {array.shape}); a scalar volume is needed"
        )
    return ImageData(array, node_ijk_to_ras(volume_node), volume_node.GetName() or "")


def _storable_array(array: np.ndarray, label: bool) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if label:
        if array.dtype.kind == "f":
            return np.rint(array).astype(np.int32)
        if array.dtype.itemsize > 4:  # VTK long long volumes do not display
            return array.astype(np.int32)
        return array
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize > 4:
        return array.astype(np.float32)
    return array


def set_volume(node, array: np.ndarray, ijk_to_ras: np.ndarray, label: bool) -> None:
    """Fill a volume node with ``array`` ``(K, J, I)`` on grid ``ijk_to_ras`` and give it display nodes."""
    slicer = _slicer()
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(_storable_array(array, label)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def get_or_add(scene, class_name: str, name: str, reuse: bool):
    """The first node of ``class_name`` named exactly ``name`` (``reuse``), else a new one."""
    if reuse:
        node = scene.GetFirstNode(name, class_name)
        if node is not None and node.IsA(class_name):
            return node
    return scene.AddNewNodeByClass(class_name, name if reuse else scene.GenerateUniqueName(name))


def inputs_key(fixed_node, moving_node) -> str:
    """``"<fixed node ID>|<moving node ID>"``: which registration inputs a result's nodes belong to ("" for none)."""
    return "|".join(node.GetID() if node is not None else "" for node in (fixed_node, moving_node))


def get_or_add_for_inputs(scene, class_name: str, name: str, reuse: bool, inputs: str):
    """With ``reuse``, the first node of ``class_name`` named ``name`` made from the same ``inputs``
    (:data:`INPUTS_ATTRIBUTE`); else (or when there is none: another fixed or moving volume made the one of that
    name) a new, uniquely named node. The node carries ``inputs`` either way."""
    node = None
    if reuse:
        count = scene.GetNumberOfNodesByClass(class_name)
        candidates = (scene.GetNthNodeByClass(index, class_name) for index in range(count))
        node = next((c for c in candidates if c.GetName() == name and c.GetAttribute(INPUTS_ATTRIBUTE) == inputs), None)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name) if scene.GetFirstNodeByName(name)
                                       else name)
    node.SetAttribute(INPUTS_ATTRIBUTE, inputs)
    return node


def add_volume_node(scene, image: ImageData, name: Optional[str] = None, label: bool = False,
                    reuse: bool = True):
    """Add (or update, by name, with ``reuse``) a scalar / label map volume node from an :class:`ImageData`."""
    if not isinstance(image, ImageData):
        raise ValueError(f"image must be an ImageData, got {type(image).__name__}")
    if np.asarray(image.array).ndim != 3:
        raise ValueError(f"image.array must be (K, J, I), got shape {np.shape(image.array)}")
    class_name = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = get_or_add(scene, class_name, name or image.name or ("labels" if label else "volume"), reuse)
    set_volume(node, image.array, image.ijk_to_ras, label)
    return node


def write_volume_file(volume_node, path: PathLike, role: str = "volume") -> Path:
    """Write a volume node to ``path`` (NRRD, uncompressed) with a standalone storage node.

    The node's own storage node is left untouched. A node under a parent transform raises
    ``ValueError`` (the file would hold the untransformed position): the same rule as
    :func:`image_data_from_volume_node`. Returns ``path``.
    """
    slicer = _slicer()
    require_no_parent_transform(volume_node, role)
    path = Path(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.UseCompressionOff()
    if not storage.WriteData(volume_node):
        raise RuntimeError(f"Could not write '{volume_node.GetName()}' to the file {path}.")
    return path


# --------------------------------------------------------------------------- transforms
def grid_transform_from_displacement(disp_ras_mm: np.ndarray, ijk_to_ras: np.ndarray):
    """``vtkOrientedGridTransform`` whose displacement at voxel ``(i, j, k)`` of the grid is
    ``disp_ras_mm[k, j, i]`` (RAS mm), linear interpolation in between.

    Args:
        disp_ras_mm: ``(K, J, I, 3)``.
        ijk_to_ras: ``(4, 4)`` grid the field lives on; its origin, spacing and (oblique)
            direction matrix become the grid's origin, spacing and ``GridDirectionMatrix``.

    Returns:
        The transform (point ``p`` -> ``p + u(p)``), to be set as a transform FROM parent.
    """
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    slicer = _slicer()
    disp_ras_mm = np.asarray(disp_ras_mm)
    if disp_ras_mm.ndim != 4 or disp_ras_mm.shape[-1] != 3:
        raise ValueError(f"disp_ras_mm must be (K, J, I, 3), got shape {disp_ras_mm.shape}")
    if not np.all(np.isfinite(disp_ras_mm)):
        raise ValueError(f"disp_ras_mm contains NaN or inf values (shape {disp_ras_mm.shape})")
    matrix = geometry.validate_ijk_to_ras(ijk_to_ras, "ijk_to_ras")
    spacing = geometry.spacing_from_matrix(matrix)
    direction = geometry.direction_from_matrix(matrix)
    k_size, j_size, i_size = disp_ras_mm.shape[:3]
    grid = vtkImageData()
    grid.SetDimensions(i_size, j_size, k_size)
    grid.SetOrigin(*matrix[:3, 3])
    grid.SetSpacing(*spacing)
    # C order of (K, J, I, 3) is VTK's point order (i fastest); double, as Slicer's own grids
    vectors = numpy_support.numpy_to_vtk(disp_ras_mm.reshape(-1, 3).astype(np.float64), deep=True)
    vectors.SetName("displacement_ras_mm")
    grid.GetPointData().SetScalars(vectors)
    direction_matrix = np.eye(4)
    direction_matrix[:3, :3] = direction
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(vtk_matrix(direction_matrix))
    transform.SetInterpolationModeToLinear()
    return transform

