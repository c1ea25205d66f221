"""Registration results as scene nodes: the warped volume, affine and grid transforms, Jacobian and warped
labels of each result, grouped in a subject hierarchy folder, and the metrics table.

See :mod:`DeepRegAblationLib.scene` for what each node holds and the transform directions.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, Sequence

import numpy as np

from .. import geometry
from .display import (
    hide_other_result_glyphs, jacobian_color_node, jacobian_window_level, remember_automatic_glyphs, show_glyphs,
)
from .nodes import (
    INPUTS_ATTRIBUTE, RESULT_ATTRIBUTE, get_or_add, get_or_add_for_inputs, grid_transform_from_displacement, inputs_key,
    node_ijk_to_ras, require_no_parent_transform, set_volume, vtk_matrix,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..registration.result import RegistrationResult

__all__ = [
    "METRIC_COLUMNS", "METRICS_TABLE_NAME", "add_registration_to_scene", "add_results_to_scene",
    "update_metrics_table",
]

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


# --------------------------------------------------------------------------- subject hierarchy
def _folder(scene, name: str, reuse: bool, inputs: str) -> int:
    """The subject hierarchy folder ``name`` of these ``inputs`` (reused), or a new one."""
    import slicer
    from vtkmodules.vtkCommonCore import vtkIdList

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    root = hierarchy.GetSceneItemID()
    if reuse:
        children = vtkIdList()
        hierarchy.GetItemChildren(root, children)
        for item in (children.GetId(index) for index in range(children.GetNumberOfIds())):
            if hierarchy.GetItemName(item) == name and hierarchy.GetItemAttribute(item, INPUTS_ATTRIBUTE) == inputs:
                return item
    item = hierarchy.CreateFolderItem(root, name)
    hierarchy.SetItemAttribute(item, INPUTS_ATTRIBUTE, inputs)
    return item


def _put_in_folder(scene, folder: int, nodes) -> None:
    import slicer

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
    node_matrix = node_ijk_to_ras(fixed_node)
    if node_shape != shape or not np.allclose(node_matrix, fixed_matrix, atol=1e-4):
        raise ValueError(
            f"result is not on fixed_node {fixed_node.GetName()!r}'s grid: result shape {shape}, "
            f"IJKToRAS {np.round(fixed_matrix, 4).tolist()}; node shape {node_shape}, "
            f"IJKToRAS {np.round(node_matrix, 4).tolist()}"
        )


def _add_warped(scene, base: str, result: "RegistrationResult", fixed_matrix: np.ndarray, moving_node, reuse: bool,
                inputs: str = ""):
    """``<base>-warped``, displayed as the moving volume is (window/level, colours)."""
    warped = get_or_add_for_inputs(scene, "vtkMRMLScalarVolumeNode", f"{base}-warped", reuse, inputs)
    set_volume(warped, result.warped, fixed_matrix, label=False)
    moving_display = moving_node.GetDisplayNode() if moving_node is not None else None
    if moving_display is not None and moving_display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        display = warped.GetDisplayNode()
        display.SetAutoWindowLevel(moving_display.GetAutoWindowLevel())
        if not moving_display.GetAutoWindowLevel():
            display.SetWindowLevel(moving_display.GetWindow(), moving_display.GetLevel())
        if moving_display.GetColorNodeID():
            display.SetAndObserveColorNodeID(moving_display.GetColorNodeID())
    return warped


def _add_jacobian(scene, base: str, result: "RegistrationResult", fixed_matrix: np.ndarray, reuse: bool,
                  inputs: str = ""):
    """``<base>-jacobian`` with the shared Jacobian colours and the count of folded voxels as an attribute."""
    jacobian = get_or_add_for_inputs(scene, "vtkMRMLScalarVolumeNode", f"{base}-jacobian", reuse, inputs)
    set_volume(jacobian, np.asarray(result.jacobian, dtype=np.float32), fixed_matrix, label=False)
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
        reuse: update nodes named ``<moving>-<variant>-...`` made from the same fixed and moving volumes
            (:data:`nodes.INPUTS_ATTRIBUTE`), so running a variant again on the same inputs replaces its
            outputs; results of other inputs are never replaced (new, uniquely named nodes then); ``False``
            always adds new, uniquely named nodes.

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
    inputs = inputs_key(fixed_node, moving_node)

    warped = _add_warped(scene, base, result, fixed_matrix, moving_node, reuse, inputs)
    affine = get_or_add_for_inputs(scene, "vtkMRMLLinearTransformNode", f"{base}-affine", reuse, inputs)
    affine.SetMatrixTransformFromParent(vtk_matrix(result.affine_ras))
    transform = get_or_add_for_inputs(scene, "vtkMRMLGridTransformNode", f"{base}-transform", reuse, inputs)
    transform.SetAndObserveTransformFromParent(grid_transform_from_displacement(result.disp_ras_mm, fixed_matrix))
    show_glyphs(scene, transform, result.disp_ras_mm, fixed_matrix, f"{base}-displacement-colors", reuse,
                 region_node=fixed_node, inputs=inputs)
    jacobian = _add_jacobian(scene, base, result, fixed_matrix, reuse, inputs)

    nodes: Dict[str, object] = {"warped": warped, "affine": affine, "transform": transform, "jacobian": jacobian}
    if result.warped_labels is not None:
        labels = get_or_add_for_inputs(scene, "vtkMRMLLabelMapVolumeNode", f"{base}-warped-labels", reuse, inputs)
        set_volume(labels, result.warped_labels, fixed_matrix, label=True)
        nodes["warped_labels"] = labels
    for node in nodes.values():
        node.SetAttribute(RESULT_ATTRIBUTE, str(result.variant))
    folder = _folder(scene, base, reuse, inputs)
    _put_in_folder(scene, folder, list(nodes.values()))
    nodes["folder"] = int(folder)
    return nodes


def add_results_to_scene(scene, results: Sequence["RegistrationResult"], fixed_node, moving_node,
                         reuse: bool = True, table_node=None) -> tuple:
    """Every result (:func:`add_registration_to_scene`, glyph choices remembered with
    :func:`remember_automatic_glyphs`) and the metrics table (:func:`update_metrics_table`).

    Only the first result's glyphs stay visible (:func:`display.hide_other_result_glyphs`: other variants and
    earlier runs are hidden); ``display.show_result`` switches to another one.

    ``table_node`` (a previous run's table) is filled again only with ``reuse`` and when it holds results of
    the same inputs (or was not made here); otherwise the "DeepRegAblation metrics" table of these inputs is
    used (``reuse``) or a new one added. Returns ``(nodes by variant, table node)``.
    """
    nodes: Dict[str, Dict[str, object]] = {}
    for result in results:
        added = add_registration_to_scene(scene, result, fixed_node, moving_node, reuse=reuse)
        remember_automatic_glyphs(added)
        nodes[result.variant] = added
    if nodes:
        hide_other_result_glyphs(scene, next(iter(nodes.values())))
    inputs = inputs_key(fixed_node, moving_node)
    reusable = table_node is not None and table_node.GetAttribute(INPUTS_ATTRIBUTE) in (None, inputs)
    table = table_node if reuse and reusable else get_or_add_for_inputs(
        scene, "vtkMRMLTableNode", METRICS_TABLE_NAME, reuse, inputs)
    table.SetAttribute(INPUTS_ATTRIBUTE, inputs)
    return nodes, update_metrics_table(scene, results, table_node=table)


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
        table_node = get_or_add(scene, "vtkMRMLTableNode", METRICS_TABLE_NAME, reuse=True)
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

