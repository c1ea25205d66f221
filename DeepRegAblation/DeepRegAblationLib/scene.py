"""MRML scene adapter: registration results as Slicer nodes (MRML and VTK only, never Qt).

Works on any ``vtkMRMLScene``: Slicer's own ``slicer.mrmlScene`` in the application, or a
scene made with the ``slicer-core`` package (``slicer.vtkMRMLScene()``) headless.

What :func:`add_registration_to_scene` makes for one :class:`RegistrationResult`, named after
the moving volume and the variant (``<moving>-<variant>-...``) and grouped in one subject
hierarchy folder ``<moving>-<variant>``:

- ``-warped``: scalar volume on the fixed grid (same IJKToRAS as the fixed volume);
- ``-affine``: ``vtkMRMLLinearTransformNode``, the affine part; ``affine_ras`` maps a fixed
  point to a moving point (the resampling direction), which Slicer calls the transform
  FROM parent, so it is set with ``SetMatrixTransformFromParent``;
- ``-transform``: ``vtkMRMLGridTransformNode`` holding a ``vtkOrientedGridTransform`` whose
  displacement grid is the TOTAL ``disp_ras_mm`` on the fixed grid (origin, spacing and
  direction matrix of the fixed IJKToRAS, oblique included), set as the transform FROM
  parent. Put the moving volume under it (``moving.SetAndObserveTransformNodeID``) and it
  appears aligned with the fixed volume; hardening resamples it. It is not nested under
  the affine node (the grid already contains the affine part). Its display node shows
  arrows coloured by displacement magnitude in slice and 3D views (:func:`glyph_settings`);
- ``-jacobian``: scalar volume of det(J), shown with the shared "DeepRegAblation Jacobian"
  colour table (:func:`snapshots.jacobian_colors`): window/level centred at 1 (white), blue
  for contraction, red for expansion, folded voxels (det <= 0) bright green;
- ``-warped-labels``: label map volume, when the result has warped labels.

:func:`write_results_scene` saves a complete scene (``.mrml`` + NRRD volumes, HDF5
transforms, TSV table, colour files) that opens in Slicer with the fixed volume as background
and the first warped volume as foreground; :func:`load_results_scene` reads it back.

For the module panel: :func:`check_inputs`; the inputs of a registration as images
(:func:`label_images`) or NRRD files for the background run (:func:`write_input_files`), segmentations
exported to label maps with one label value per segment name (:func:`labelmaps_for_inputs`, temporary
nodes removed with :func:`remove_nodes`); :func:`add_results_to_scene` and :func:`apply_display_settings`
(the Display section: glyphs relative to the automatic ones, Jacobian range).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

import numpy as np

from . import geometry
from .outputs import snapshots
from .imageio import ImageData

if TYPE_CHECKING:  # pragma: no cover
    from .registration.result import RegistrationResult
    from .panel import DisplaySettings

__all__ = [
    "METRIC_COLUMNS", "METRICS_TABLE_NAME", "JACOBIAN_COLOR_NAME", "SCENE_FILE_NAME", "SLICE_VIEW_NAMES",
    "RESULT_ATTRIBUTE", "AUTO_GLYPH_SPACING_ATTRIBUTE", "AUTO_GLYPH_SCALE_ATTRIBUTE", "TEMP_LABELS_NAME",
    "TEMP_COLORS_NAME", "parent_transform_problem", "require_no_parent_transform", "image_data_from_volume_node",
    "add_volume_node", "write_volume_file", "check_inputs", "segment_names", "shared_label_colors",
    "labelmap_for_labels", "labelmaps_for_inputs", "remove_nodes", "label_images", "write_input_files",
    "grid_transform_from_displacement", "glyph_settings", "jacobian_color_node", "add_default_label_colors",
    "jacobian_window_level", "add_registration_to_scene", "add_results_to_scene", "update_metrics_table",
    "show_in_slice_views", "result_label_layer", "remember_automatic_glyphs", "apply_display_settings",
    "save_scene", "write_results_scene", "load_results_scene",
]

PathLike = Union[str, Path]

METRIC_COLUMNS = (
    "variant", "dice", "hd95_mm", "folding_pct", "sdlogj", "mse", "ncc", "ssim", "max_disp_mm", "runtime_s",
)
_COLUMN_INFO = {
    "dice": ("", "mean Dice over labels present in both label maps"),
    "hd95_mm": ("mm", "95th-percentile Hausdorff distance, mean over labels"),
    "folding_pct": ("%", "voxels with Jacobian determinant <= 0"),
    "sdlogj": ("", "standard deviation of log Jacobian determinant"),
    "mse": ("", "mean squared intensity error, fixed vs warped"),
    "ncc": ("", "normalized cross-correlation, fixed vs warped"),
    "ssim": ("", "structural similarity, fixed vs warped"),
    "max_disp_mm": ("mm", "largest displacement"),
    "runtime_s": ("s", "registration run time"),
}
METRICS_TABLE_NAME = "DeepRegAblation metrics"
JACOBIAN_COLOR_NAME = "DeepRegAblation Jacobian"
SCENE_FILE_NAME = "DeepRegAblation-results.mrml"
SLICE_VIEW_NAMES = ("Red", "Yellow", "Green")
RESULT_ATTRIBUTE = "DeepRegAblation.variant"
"""Attribute set on every output node (its value: the variant)."""
AUTO_GLYPH_SPACING_ATTRIBUTE = "DeepRegAblation.autoGlyphSpacingMm"
AUTO_GLYPH_SCALE_ATTRIBUTE = "DeepRegAblation.autoGlyphScalePercent"
"""Attributes of a result's transform node: the glyph spacing / scale chosen for it (:func:`remember_automatic_glyphs`)."""
TEMP_LABELS_NAME = "DeepRegAblationTempLabels"
TEMP_COLORS_NAME = "DeepRegAblationTempColors"
"""Names (made unique) of the temporary nodes of a segmentation export (:func:`labelmaps_for_inputs`)."""


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
def _vtk_matrix(matrix: np.ndarray):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    vtk_matrix = vtkMatrix4x4()
    vtk_matrix.DeepCopy(np.asarray(matrix, dtype=np.float64).ravel())
    return vtk_matrix


def _numpy_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _node_ijk_to_ras(volume_node) -> np.ndarray:
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
    return ImageData(array, _node_ijk_to_ras(volume_node), volume_node.GetName() or "")


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


def _set_volume(node, array: np.ndarray, ijk_to_ras: np.ndarray, label: bool) -> None:
    """Fill a volume node with ``array`` ``(K, J, I)`` on grid ``ijk_to_ras`` and give it display nodes."""
    slicer = _slicer()
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(_storable_array(array, label)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def _get_or_add(scene, class_name: str, name: str, reuse: bool):
    """The first node of ``class_name`` named exactly ``name`` (``reuse``), else a new one."""
    if reuse:
        node = scene.GetFirstNode(name, class_name)
        if node is not None and node.IsA(class_name):
            return node
    return scene.AddNewNodeByClass(class_name, name if reuse else scene.GenerateUniqueName(name))


def add_volume_node(scene, image: ImageData, name: Optional[str] = None, label: bool = False,
                    reuse: bool = True):
    """Add (or update, by name, with ``reuse``) a scalar / label map volume node from an :class:`ImageData`."""
    if not isinstance(image, ImageData):
        raise ValueError(f"image must be an ImageData, got {type(image).__name__}")
    if np.asarray(image.array).ndim != 3:
        raise ValueError(f"image.array must be (K, J, I), got shape {np.shape(image.array)}")
    class_name = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = _get_or_add(scene, class_name, name or image.name or ("labels" if label else "volume"), reuse)
    _set_volume(node, image.array, image.ijk_to_ras, label)
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


# --------------------------------------------------------------------------- registration inputs
def check_inputs(fixed_volume, moving_volume, fixed_labels=None, moving_labels=None) -> None:
    """Plain-words ``ValueError`` for missing or unusable inputs, and for inputs under a parent transform
    (the rule of :func:`parent_transform_problem`, checked before anything runs)."""
    for node, role in ((fixed_volume, "fixed volume"), (moving_volume, "moving volume")):
        if node is None:
            raise ValueError(f"No {role} was selected.")
        if node.GetImageData() is None:
            raise ValueError(f"The {role} '{node.GetName()}' has no image data.")
        if node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise ValueError(f"The {role} '{node.GetName()}' is not a scalar (single-component) image.")
    if fixed_volume.GetID() == moving_volume.GetID():
        raise ValueError("Fixed and moving volumes must be different volumes.")
    for node, role in ((fixed_volume, "fixed volume"), (moving_volume, "moving volume"),
                       (fixed_labels, "fixed labels"), (moving_labels, "moving labels")):
        require_no_parent_transform(node, role)


def segment_names(label_nodes: Sequence[object]) -> List[str]:
    """The segment names of the segmentation nodes among ``label_nodes`` (``None`` and label maps skipped),
    each once, in order of first appearance."""
    names: List[str] = []
    for node in label_nodes:
        if node is not None and node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                name = segmentation.GetNthSegment(index).GetName()
                if name not in names:
                    names.append(name)
    return names


def shared_label_colors(scene, names: Sequence[str]):
    """A new colour table (:data:`TEMP_COLORS_NAME`) giving ``names`` the label values 1, 2, ... (0: background).

    Exporting segmentations with it gives equally named segments of different segmentations the same value.
    """
    color_table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(TEMP_COLORS_NAME))
    color_table.SetTypeToUser()
    color_table.SetNumberOfColors(len(names) + 1)
    color_table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for label_value, name in enumerate(names, start=1):
        color_table.SetColor(label_value, name, 0.5, 0.5, 0.5, 1.0)
    return color_table


def labelmap_for_labels(scene, labels_node, reference_volume, color_table, temp_nodes: list):
    """A label map node for ``labels_node``: itself, or a temporary export of a segmentation.

    Segmentations are exported on the grid of ``reference_volume`` with the label values of
    ``color_table`` (:func:`shared_label_colors`); the new node is appended to ``temp_nodes`` (the
    caller removes it with :func:`remove_nodes`). ``None`` gives ``None``; other nodes, an empty
    segmentation or a failed export raise ``ValueError``.
    """
    from vtkmodules.vtkCommonCore import vtkStringArray

    slicer = _slicer()
    if labels_node is None:
        return None
    if labels_node.IsA("vtkMRMLLabelMapVolumeNode"):
        return labels_node
    if not labels_node.IsA("vtkMRMLSegmentationNode"):
        raise ValueError(f"'{labels_node.GetName()}' must be a label map volume or a segmentation.")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(TEMP_LABELS_NAME))
    temp_nodes.append(labelmap)
    segment_ids = vtkStringArray()
    labels_node.GetSegmentation().GetSegmentIDs(segment_ids)
    if segment_ids.GetNumberOfValues() == 0:
        raise ValueError(f"The segmentation '{labels_node.GetName()}' has no segments.")
    exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        labels_node, segment_ids, labelmap, reference_volume,
        slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, color_table,
    )
    if not exported:
        raise ValueError(f"The segmentation '{labels_node.GetName()}' could not be converted to a label map.")
    return labelmap


def labelmaps_for_inputs(scene, fixed_volume, moving_volume, fixed_labels, moving_labels, temp_nodes: list) -> tuple:
    """``(fixed_labelmap, moving_labelmap)``, exporting segmentations into temporary nodes (in ``temp_nodes``).

    Every segment name of the segmentations gets one label value (1, 2, ... in order of first
    appearance, fixed first), so that equally named segments of the fixed and the moving
    segmentation get the same value. Label map volumes are used with their own values.
    """
    if fixed_labels is None and moving_labels is None:
        return None, None
    color_table = shared_label_colors(scene, segment_names([fixed_labels, moving_labels]))
    temp_nodes.append(color_table)
    return (
        labelmap_for_labels(scene, fixed_labels, fixed_volume, color_table, temp_nodes),
        labelmap_for_labels(scene, moving_labels, moving_volume, color_table, temp_nodes),
    )


def remove_nodes(scene, nodes: list) -> None:
    """Remove ``nodes`` from ``scene`` (last first; those already gone are skipped) and empty the list."""
    for node in reversed(nodes):
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)
    nodes.clear()


def label_images(scene, fixed_volume, moving_volume, fixed_labels=None, moving_labels=None) -> tuple:
    """``(fixed_labels, moving_labels)`` as :class:`ImageData` (``None`` where not given), segmentations
    exported as :func:`labelmaps_for_inputs` does; the temporary nodes are removed again."""
    temp_nodes: list = []
    try:
        fixed_labelmap, moving_labelmap = labelmaps_for_inputs(
            scene, fixed_volume, moving_volume, fixed_labels, moving_labels, temp_nodes)
        return (
            image_data_from_volume_node(fixed_labelmap) if fixed_labelmap is not None else None,
            image_data_from_volume_node(moving_labelmap) if moving_labelmap is not None else None,
        )
    finally:
        remove_nodes(scene, temp_nodes)


def write_input_files(scene, work_dir: PathLike, fixed_volume, moving_volume,
                      fixed_labels=None, moving_labels=None) -> Dict[str, Path]:
    """Write the inputs of a background registration as NRRD files in ``work_dir``.

    Files ``fixed.nrrd``, ``moving.nrrd`` and, when labels are given, ``fixed_labels.nrrd`` /
    ``moving_labels.nrrd`` (segmentations exported as :func:`labelmaps_for_inputs` does; the temporary
    nodes are removed again). Returns role -> path (``"fixed"``, ``"moving"``, ``"fixed_labels"``,
    ``"moving_labels"``).
    """
    work_dir = Path(work_dir)
    temp_nodes: list = []
    try:
        fixed_labelmap, moving_labelmap = labelmaps_for_inputs(
            scene, fixed_volume, moving_volume, fixed_labels, moving_labels, temp_nodes)
        nodes = {"fixed": fixed_volume, "moving": moving_volume,
                 "fixed_labels": fixed_labelmap, "moving_labels": moving_labelmap}
        return {role: write_volume_file(node, work_dir / f"{role}.nrrd", node.GetName())
                for role, node in nodes.items() if node is not None}
    finally:
        remove_nodes(scene, temp_nodes)


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
    transform.SetGridDirectionMatrix(_vtk_matrix(direction_matrix))
    transform.SetInterpolationModeToLinear()
    return transform


def glyph_settings(disp_ras_mm: np.ndarray, ijk_to_ras: np.ndarray, arrows_across: int = 16) -> Dict[str, float]:
    """Glyph display parameters for a displacement field (all mm unless stated).

    ``spacing_mm``: about ``arrows_across`` arrows across the smallest in-plane extent of the
    grid (at least one voxel); ``scale_percent``: arrow length = magnitude x scale / 100 such
    that the 99th-percentile magnitude spans 0.8 glyph spacings; ``diameter_mm``: 0.3
    spacings; ``range_min_mm`` / ``range_max_mm``: magnitudes drawn (all non-zero ones);
    ``color_top_mm``: magnitude given the top colour (99th percentile).
    """
    disp_ras_mm = np.asarray(disp_ras_mm, dtype=np.float64)
    matrix = geometry.validate_ijk_to_ras(ijk_to_ras, "ijk_to_ras")
    spacing_ijk = geometry.spacing_from_matrix(matrix)
    sizes_ijk = np.asarray(disp_ras_mm.shape[:3][::-1])
    extents = [n * s for n, s in zip(sizes_ijk, spacing_ijk) if n > 1]
    voxel = [s for n, s in zip(sizes_ijk, spacing_ijk) if n > 1] or list(spacing_ijk)
    spacing_mm = max(max(voxel), (min(extents) if extents else max(voxel)) / float(arrows_across))
    magnitude = np.linalg.norm(disp_ras_mm, axis=-1)
    top = float(np.percentile(magnitude, 99)) if magnitude.size else 0.0
    scale_percent = 100.0 * 0.8 * spacing_mm / top if top > 1e-6 else 100.0
    largest = float(magnitude.max()) if magnitude.size else 0.0
    return {
        "spacing_mm": float(spacing_mm),
        "scale_percent": float(scale_percent),
        "diameter_mm": float(0.3 * spacing_mm),
        "range_min_mm": 1e-3,
        "range_max_mm": float(largest * 1.001 + 1e-3),
        "color_top_mm": float(top if top > 1e-6 else max(largest, 1.0)),
    }


def _magnitude_color_node(scene, name: str, top_mm: float, reuse: bool):
    from vtkmodules.vtkRenderingCore import vtkColorTransferFunction

    node = _get_or_add(scene, "vtkMRMLProceduralColorNode", name, reuse)
    ramp = vtkColorTransferFunction()
    for value, r, g, b in snapshots.magnitude_color_points(top_mm):
        ramp.AddRGBPoint(value, r, g, b)
    node.SetAndObserveColorTransferFunction(ramp)
    node.SetAttribute("Category", "Transform display")
    node.SetHideFromEditors(False)  # hidden colour nodes with a storage node are not saved
    return node


def _show_glyphs(scene, transform_node, disp_ras_mm, ijk_to_ras, color_name: str, reuse: bool, region_node=None):
    slicer = _slicer()
    if transform_node.GetDisplayNode() is None:
        transform_node.CreateDefaultDisplayNodes()
    display = transform_node.GetDisplayNode()
    settings = glyph_settings(disp_ras_mm, ijk_to_ras)
    color_node = _magnitude_color_node(scene, color_name, settings["color_top_mm"], reuse)
    was_modifying = display.StartModify()
    display.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH)
    display.SetGlyphType(slicer.vtkMRMLTransformDisplayNode.GLYPH_TYPE_ARROW)
    display.SetGlyphSpacingMm(settings["spacing_mm"])
    display.SetGlyphScalePercent(settings["scale_percent"])
    display.SetGlyphDiameterMm(settings["diameter_mm"])
    display.SetGlyphDisplayRangeMinMm(settings["range_min_mm"])
    display.SetGlyphDisplayRangeMaxMm(settings["range_max_mm"])
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.SetScalarVisibility(True)
    if region_node is not None:
        display.SetAndObserveRegionNode(region_node)
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    display.SetVisibility3D(True)
    display.EndModify(was_modifying)
    return display


# --------------------------------------------------------------------------- colours
def jacobian_color_node(scene):
    """The shared "DeepRegAblation Jacobian" ``vtkMRMLColorTableNode`` (created once per scene).

    Its entries span :data:`snapshots.JACOBIAN_RANGE`; display it with window/level
    :func:`jacobian_window_level` so that detJ = 1 is white and detJ <= 0 is green.
    """
    node = scene.GetFirstNode(JACOBIAN_COLOR_NAME, "vtkMRMLColorTableNode")
    if node is not None:
        return node
    colors = snapshots.jacobian_colors()
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", JACOBIAN_COLOR_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(colors))
    low, high = snapshots.JACOBIAN_RANGE
    width = (high - low) / len(colors)
    for index, (r, g, b) in enumerate(colors):
        start = low + index * width
        name = "folded" if start + width <= 0.0 else f"detJ {start:.3f}"
        node.SetColor(index, name, float(r), float(g), float(b), 1.0)
    node.SetAttribute("Category", "DeepRegAblation")
    node.SetDescription(
        f"Jacobian determinant {low:g}..{high:g} (window {high - low:g}, level {(high + low) / 2:g}): "
        f"white at 1, blue contraction, red expansion, green folding (det <= 0)"
    )
    node.SetHideFromEditors(False)
    return node


def add_default_label_colors(scene):
    """The generic "Labels" colour table, as Slicer's Colors module adds it to every scene.

    Label map display nodes refer to it by ID (``vtkMRMLColorTableNodeLabels``). In Slicer it is
    always there; a headless ``slicer-core`` scene has none, and every label map would log
    "the color table node ... can't be found". Added the way ``vtkMRMLColorLogic`` does (same
    singleton tag, hence the same ID; not saved with the scene: Slicer provides its own).
    Returns the node (the existing one when present).
    """
    slicer = _slicer()
    labels = slicer.vtkMRMLColorTableNode()
    labels.SetTypeToLabels()
    existing = scene.GetNodeByID(f"vtkMRMLColorTableNode{labels.GetTypeAsString()}")
    if existing is not None:
        return existing
    labels.SetAttribute("Category", "Discrete")
    labels.SaveWithSceneOff()
    labels.SetName(labels.GetTypeAsString())
    labels.SetSingletonTag(labels.GetTypeAsString())
    return scene.AddNode(labels)


def jacobian_window_level() -> tuple:
    """``(window, level)`` that spreads the Jacobian colour table over its range: level 1."""
    low, high = snapshots.JACOBIAN_RANGE
    return high - low, (high + low) / 2.0


# --------------------------------------------------------------------------- subject hierarchy
def _folder(scene, name: str, reuse: bool) -> int:
    slicer = _slicer()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    root = hierarchy.GetSceneItemID()
    if reuse:
        item = hierarchy.GetItemChildWithName(root, name)
        if item:
            return item
    return hierarchy.CreateFolderItem(root, name)


def _put_in_folder(scene, folder: int, nodes) -> None:
    slicer = _slicer()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, folder)
        else:  # no subject hierarchy logic (slicer-core without the application) to add it
            hierarchy.CreateItem(folder, node)


# --------------------------------------------------------------------------- results
def _check_result(result: "RegistrationResult") -> tuple:
    warped = np.asarray(result.warped)
    if warped.ndim != 3:
        raise ValueError(f"result.warped must be (K, J, I), got shape {warped.shape}")
    shape = warped.shape
    checks = {
        "disp_ras_mm": shape + (3,),
        "jacobian": shape,
    }
    for name, expected in checks.items():
        if np.shape(getattr(result, name)) != expected:
            raise ValueError(
                f"result.{name} must be {expected} like result.warped {shape}, got {np.shape(getattr(result, name))}"
            )
    if result.warped_labels is not None and np.shape(result.warped_labels) != shape:
        raise ValueError(f"result.warped_labels must be {shape}, got {np.shape(result.warped_labels)}")
    if np.shape(result.affine_ras) != (4, 4):
        raise ValueError(f"result.affine_ras must be (4, 4), got {np.shape(result.affine_ras)}")
    geometry.validate_ijk_to_ras(result.fixed_ijk_to_ras, "result.fixed_ijk_to_ras")
    return shape


def _check_on_fixed_grid(fixed_node, shape: tuple, fixed_matrix: np.ndarray) -> None:
    """``ValueError`` unless ``fixed_node`` (not under a parent transform) has the result's grid."""
    require_no_parent_transform(fixed_node, "fixed volume")
    fixed_image = fixed_node.GetImageData()
    node_shape = tuple(reversed(fixed_image.GetDimensions())) if fixed_image is not None else None
    node_matrix = _node_ijk_to_ras(fixed_node)
    if node_shape != shape or not np.allclose(node_matrix, fixed_matrix, atol=1e-4):
        raise ValueError(
            f"result is not on fixed_node {fixed_node.GetName()!r}'s grid: result shape {shape}, "
            f"IJKToRAS {np.round(fixed_matrix, 4).tolist()}; node shape {node_shape}, "
            f"IJKToRAS {np.round(node_matrix, 4).tolist()}"
        )


def _add_warped(scene, base: str, result: "RegistrationResult", fixed_matrix: np.ndarray, moving_node, reuse: bool):
    """``<base>-warped``, displayed as the moving volume is (window/level, colours)."""
    warped = _get_or_add(scene, "vtkMRMLScalarVolumeNode", f"{base}-warped", reuse)
    _set_volume(warped, result.warped, fixed_matrix, label=False)
    moving_display = moving_node.GetDisplayNode() if moving_node is not None else None
    if moving_display is not None and moving_display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        display = warped.GetDisplayNode()
        display.SetAutoWindowLevel(moving_display.GetAutoWindowLevel())
        if not moving_display.GetAutoWindowLevel():
            display.SetWindowLevel(moving_display.GetWindow(), moving_display.GetLevel())
        if moving_display.GetColorNodeID():
            display.SetAndObserveColorNodeID(moving_display.GetColorNodeID())
    return warped


def _add_jacobian(scene, base: str, result: "RegistrationResult", fixed_matrix: np.ndarray, reuse: bool):
    """``<base>-jacobian`` with the shared Jacobian colours and the count of folded voxels as an attribute."""
    jacobian = _get_or_add(scene, "vtkMRMLScalarVolumeNode", f"{base}-jacobian", reuse)
    _set_volume(jacobian, np.asarray(result.jacobian, dtype=np.float32), fixed_matrix, label=False)
    jacobian_display = jacobian.GetDisplayNode()
    jacobian_display.SetAndObserveColorNodeID(jacobian_color_node(scene).GetID())
    jacobian_display.SetAutoWindowLevel(False)
    jacobian_display.SetWindowLevel(*jacobian_window_level())
    jacobian_display.SetInterpolate(False)  # show single folded voxels as voxels
    jacobian.SetAttribute("DeepRegAblation.folded_voxels", str(int(np.count_nonzero(np.asarray(result.jacobian) <= 0))))
    return jacobian


def add_registration_to_scene(scene, result: "RegistrationResult", fixed_node, moving_node,
                              reuse: bool = True) -> Dict[str, object]:
    """Add (or, with ``reuse``, update by name) the nodes of one registration result.

    Args:
        scene: a ``vtkMRMLScene``.
        result: a :class:`RegistrationResult` on ``fixed_node``'s grid.
        fixed_node: the fixed volume node (its grid must be ``result.fixed_ijk_to_ras`` and
            shape ``result.warped.shape``; ``None`` skips the check and names it "fixed").
        moving_node: the moving volume node (names the outputs; left unchanged).
        reuse: update nodes named ``<moving>-<variant>-...`` if they exist (so running a
            variant again replaces its outputs); ``False`` always adds new, uniquely named nodes.

    Returns:
        ``{"warped", "affine", "transform", "jacobian", ["warped_labels"], "folder"}``: the
        nodes, and the subject hierarchy folder item id (int).
    """
    if scene is None or not scene.IsA("vtkMRMLScene"):
        raise ValueError(f"scene must be a vtkMRMLScene, got {type(scene).__name__}")
    shape = _check_result(result)
    fixed_matrix = np.asarray(result.fixed_ijk_to_ras, dtype=np.float64)
    if fixed_node is not None:
        _check_on_fixed_grid(fixed_node, shape, fixed_matrix)
    moving_name = moving_node.GetName() if moving_node is not None else "moving"
    base = f"{moving_name}-{result.variant}"

    warped = _add_warped(scene, base, result, fixed_matrix, moving_node, reuse)
    affine = _get_or_add(scene, "vtkMRMLLinearTransformNode", f"{base}-affine", reuse)
    affine.SetMatrixTransformFromParent(_vtk_matrix(result.affine_ras))
    transform = _get_or_add(scene, "vtkMRMLGridTransformNode", f"{base}-transform", reuse)
    transform.SetAndObserveTransformFromParent(grid_transform_from_displacement(result.disp_ras_mm, fixed_matrix))
    _show_glyphs(scene, transform, result.disp_ras_mm, fixed_matrix, f"{base}-displacement-colors", reuse,
                 region_node=fixed_node)
    jacobian = _add_jacobian(scene, base, result, fixed_matrix, reuse)

    nodes: Dict[str, object] = {"warped": warped, "affine": affine, "transform": transform, "jacobian": jacobian}
    if result.warped_labels is not None:
        labels = _get_or_add(scene, "vtkMRMLLabelMapVolumeNode", f"{base}-warped-labels", reuse)
        _set_volume(labels, result.warped_labels, fixed_matrix, label=True)
        nodes["warped_labels"] = labels
    for node in nodes.values():
        node.SetAttribute(RESULT_ATTRIBUTE, str(result.variant))
    folder = _folder(scene, base, reuse)
    _put_in_folder(scene, folder, list(nodes.values()))
    nodes["folder"] = int(folder)
    return nodes


def add_results_to_scene(scene, results: Sequence["RegistrationResult"], fixed_node, moving_node,
                         reuse: bool = True, table_node=None) -> tuple:
    """Every result (:func:`add_registration_to_scene`, glyph choices remembered with
    :func:`remember_automatic_glyphs`) and the metrics table (:func:`update_metrics_table`).

    ``table_node`` (a previous run's table) is filled again only with ``reuse``; otherwise the scene's
    "DeepRegAblation metrics" table is used or added. Returns ``(nodes by variant, table node)``.
    """
    nodes: Dict[str, Dict[str, object]] = {}
    for result in results:
        added = add_registration_to_scene(scene, result, fixed_node, moving_node, reuse=reuse)
        remember_automatic_glyphs(added)
        nodes[result.variant] = added
    table = update_metrics_table(scene, results, table_node=table_node if reuse else None)
    return nodes, table


def _metric_value(result: "RegistrationResult", key: str) -> float:
    value = (result.metrics or {}).get(key)
    if value is None and key == "runtime_s" and result.timings:
        value = float(sum(result.timings.values()))
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def update_metrics_table(scene, results: Sequence["RegistrationResult"], table_node=None):
    """Fill a ``vtkMRMLTableNode`` with one row per result and the columns :data:`METRIC_COLUMNS`.

    ``table_node=None`` reuses the scene's "DeepRegAblation metrics" table or adds it. Missing
    metrics are NaN (e.g. dice without labels). Returns the table node.
    """
    from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkStringArray

    if scene is None or not scene.IsA("vtkMRMLScene"):
        raise ValueError(f"scene must be a vtkMRMLScene, got {type(scene).__name__}")
    results = list(results)
    if table_node is None:
        table_node = _get_or_add(scene, "vtkMRMLTableNode", METRICS_TABLE_NAME, reuse=True)
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    variants = vtkStringArray()
    variants.SetName("variant")
    for result in results:
        variants.InsertNextValue(str(result.variant))
    table_node.AddColumn(variants)
    for key in METRIC_COLUMNS[1:]:
        column = vtkDoubleArray()
        column.SetName(key)
        for result in results:
            column.InsertNextValue(_metric_value(result, key))
        table_node.AddColumn(column)
        unit, description = _COLUMN_INFO[key]
        if unit:
            table_node.SetColumnUnitLabel(key, unit)
        table_node.SetColumnDescription(key, description)
    table_node.SetColumnDescription("variant", "model variant")
    table_node.SetUseColumnTitleAsColumnHeader(True)  # SetUseColumnNameAsColumnHeader is deprecated
    table_node.EndModify(was_modifying)
    return table_node


def show_in_slice_views(scene, background=None, foreground=None, label=None, foreground_opacity: float = 0.5,
                        create_missing: bool = False) -> List[object]:
    """Set background / foreground / label volumes of the scene's slice composite nodes.

    With ``create_missing`` and no composite node in the scene (a scene built headless), adds
    the Red, Yellow and Green ones (singletons, as Slicer's layout makes them) so that a saved
    scene opens with these layers. Returns the composite nodes.
    """
    slicer = _slicer()
    composites = [scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
                  for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    if not composites and create_missing:
        for layout_name in SLICE_VIEW_NAMES:
            composite = slicer.vtkMRMLSliceCompositeNode()
            composite.SetLayoutName(layout_name)  # also its singleton tag
            composites.append(scene.AddNode(composite))
    for composite in composites:
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(float(foreground_opacity))
        if label is not None:
            composite.SetLabelVolumeID(label.GetID())
    return composites


def result_label_layer(nodes: Dict[str, object], current_label=None):
    """What the slice views' label layer shows with one result (``slicer.util.setSliceViewerLayers``'s
    ``label``): the result's warped labels; without them, ``None`` (cleared) when the layer shows an
    earlier run's output (a node with :data:`RESULT_ATTRIBUTE`), else ``"keep-current"`` (a label map
    of the user's own stays)."""
    labels = nodes.get("warped_labels")
    if labels is not None:
        return labels
    if current_label is not None and current_label.GetAttribute(RESULT_ATTRIBUTE) is not None:
        return None
    return "keep-current"



# --------------------------------------------------------------------------- display settings
def remember_automatic_glyphs(nodes: Dict[str, object]) -> None:
    """Store the glyph spacing/scale that :func:`add_registration_to_scene` chose for this field
    (in attributes of the transform node, saved with the scene): the Display section is relative to them."""
    transform_node = nodes.get("transform")
    display_node = transform_node.GetDisplayNode() if transform_node is not None else None
    if display_node is not None:
        transform_node.SetAttribute(AUTO_GLYPH_SPACING_ATTRIBUTE, repr(display_node.GetGlyphSpacingMm()))
        transform_node.SetAttribute(AUTO_GLYPH_SCALE_ATTRIBUTE, repr(display_node.GetGlyphScalePercent()))


def _apply_glyph_settings(transform_node, display: "DisplaySettings") -> None:
    slicer = _slicer()
    if transform_node.GetDisplayNode() is None:
        transform_node.CreateDefaultDisplayNodes()
    display_node = transform_node.GetDisplayNode()
    auto_spacing = float(transform_node.GetAttribute(AUTO_GLYPH_SPACING_ATTRIBUTE) or display_node.GetGlyphSpacingMm())
    auto_scale = float(transform_node.GetAttribute(AUTO_GLYPH_SCALE_ATTRIBUTE) or display_node.GetGlyphScalePercent())
    spacing = display.glyph_spacing_mm if display.glyph_spacing_mm > 0 else auto_spacing
    was_modifying = display_node.StartModify()
    display_node.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH)
    display_node.SetGlyphSpacingMm(spacing)
    display_node.SetGlyphScalePercent(auto_scale * (spacing / auto_spacing) * display.glyph_scale_percent / 100.0)
    display_node.SetVisibility(display.show_glyphs)
    display_node.SetVisibility2D(display.show_glyphs)
    display_node.EndModify(was_modifying)


def apply_display_settings(nodes: Dict[str, object], display: "DisplaySettings") -> None:
    """Glyphs on the displacement transform and the detJ range of the Jacobian colour table.

    Glyph spacing 0 keeps the automatic spacing; the arrow length is the automatic one times
    ``glyph_scale_percent`` / 100, and grows with the spacing so that arrows keep their room.
    ``display``: a ``panel.DisplaySettings``.
    """
    transform_node = nodes.get("transform")
    if transform_node is not None:
        _apply_glyph_settings(transform_node, display)
    jacobian_node = nodes.get("jacobian")
    if jacobian_node is not None:
        if jacobian_node.GetDisplayNode() is None:
            jacobian_node.CreateDefaultDisplayNodes()
        display_node = jacobian_node.GetDisplayNode()
        display_node.SetAutoWindowLevel(False)
        display_node.SetWindowLevelMinMax(display.jacobian_min, max(display.jacobian_max, display.jacobian_min + 1e-3))

# --------------------------------------------------------------------------- saving and loading scenes
_DEFAULT_EXTENSIONS = {
    "vtkMRMLVolumeNode": "nrrd",
    "vtkMRMLTransformNode": "h5",
    "vtkMRMLTableNode": "tsv",
}


def _safe_file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "node"


def save_scene(scene, mrml_path: PathLike) -> Path:
    """Write every storable node's data next to ``mrml_path`` and the scene file itself.

    Volumes go to ``.nrrd`` (compressed), transforms to ``.h5``, tables to ``.tsv``, colour
    nodes to their default format. File names come from node names (made unique). Returns
    the ``.mrml`` path.
    """
    mrml_path = Path(mrml_path).resolve()
    out_dir = mrml_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    used = set()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if not node.GetSaveWithScene():
            continue
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is None:
            continue
        if node.GetStorageNode() is None and not node.AddDefaultStorageNode():
            continue
        storage = node.GetStorageNode()
        extension = next((ext for cls, ext in _DEFAULT_EXTENSIONS.items() if node.IsA(cls)), None)
        extension = extension or storage.GetDefaultWriteFileExtension()
        stem = _safe_file_stem(node.GetName() or node.GetID())
        file_name = f"{stem}.{extension}"
        counter = 1
        while file_name.lower() in used:
            counter += 1
            file_name = f"{stem}_{counter}.{extension}"
        used.add(file_name.lower())
        if storage.IsA("vtkMRMLVolumeArchetypeStorageNode"):
            storage.SetUseCompression(1)
        storage.SetFileName(str(out_dir / file_name))
        if not storage.WriteData(node):
            raise ValueError(
                f"could not write node {node.GetName()!r} ({node.GetClassName()}) to {out_dir / file_name}"
            )
    scene.SetRootDirectory(str(out_dir))
    scene.SetURL(str(mrml_path))
    if not scene.Commit(str(mrml_path)):
        raise ValueError(f"could not write the scene file {mrml_path}")
    return mrml_path


def write_results_scene(out_dir: PathLike, fixed: ImageData, moving: ImageData,
                        results: Sequence["RegistrationResult"]) -> Path:
    """Build a new scene with ``fixed``, ``moving``, every result and the metrics table; save it.

    Writes ``out_dir/DeepRegAblation-results.mrml`` and its data files (NRRD volumes, HDF5
    transforms, TSV table, colour tables). The fixed volume is the background and the first
    warped volume the foreground (50 %) of the Red, Yellow and Green slice views; the first
    result's warped labels, if any, are the label layer. Returns the ``.mrml`` path.
    """
    slicer = _slicer()
    for name, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, ImageData):
            raise ValueError(f"{name} must be an ImageData, got {type(image).__name__}")
    results = list(results)
    if not results:
        raise ValueError("results is empty: nothing to write")
    for index, result in enumerate(results):
        if np.shape(result.warped) != np.shape(fixed.array):
            raise ValueError(
                f"results[{index}].warped shape {np.shape(result.warped)} differs from fixed {np.shape(fixed.array)}"
            )
    scene = slicer.vtkMRMLScene()
    add_default_label_colors(scene)  # what Slicer's own scenes have; label maps refer to it
    # reuse=False: distinct nodes even when both images carry the same name
    fixed_node = add_volume_node(scene, fixed, fixed.name or "fixed", reuse=False)
    moving_node = add_volume_node(scene, moving, moving.name or "moving", reuse=False)
    added = [add_registration_to_scene(scene, result, fixed_node, moving_node, reuse=True) for result in results]
    update_metrics_table(scene, results)
    show_in_slice_views(scene, background=fixed_node, foreground=added[0]["warped"],
                        label=added[0].get("warped_labels"), create_missing=True)
    return save_scene(scene, Path(out_dir) / SCENE_FILE_NAME)


def load_results_scene(mrml_path: PathLike):
    """Read a ``.mrml`` scene and its data files into a new ``vtkMRMLScene`` and return it."""
    slicer = _slicer()
    mrml_path = Path(mrml_path)
    if not mrml_path.is_file():
        raise FileNotFoundError(f"scene file not found: {mrml_path}")
    scene = slicer.vtkMRMLScene()
    add_default_label_colors(scene)  # label maps in the file refer to it, as in Slicer
    scene.SetURL(str(mrml_path.resolve()))
    scene.SetRootDirectory(str(mrml_path.resolve().parent))
    if not scene.Import():
        raise ValueError(f"could not read the scene file {mrml_path}")
    return scene
