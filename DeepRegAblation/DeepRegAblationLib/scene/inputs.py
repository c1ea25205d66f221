"""The inputs of a registration from the scene: checks, segmentations exported to label maps, files for the
background run.

Segmentations become label maps with one label value per segment name (:func:`labelmaps_for_inputs`), in
temporary nodes that are removed again (:func:`remove_nodes`); :func:`label_images` gives them as images for
the blocking run, :func:`write_input_files` as NRRD files for the background process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Union

from .nodes import image_data_from_volume_node, require_no_parent_transform, write_volume_file

__all__ = [
    "TEMP_LABELS_NAME", "TEMP_COLORS_NAME", "check_inputs", "segment_names", "shared_label_colors",
    "labelmap_for_labels", "labelmaps_for_inputs", "remove_nodes", "label_images", "write_input_files",
]

PathLike = Union[str, Path]

TEMP_LABELS_NAME = "DeepRegAblationTempLabels"
TEMP_COLORS_NAME = "DeepRegAblationTempColors"
"""Names (made unique) of the temporary nodes of a segmentation export (:func:`labelmaps_for_inputs`)."""


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

    import slicer

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

