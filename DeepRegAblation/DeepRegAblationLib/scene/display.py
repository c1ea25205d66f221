"""How results look in Slicer: displacement glyphs, the Jacobian and label colour tables, slice view layers,
and the panel's Display settings.

The colours are those of the snapshots (:mod:`DeepRegAblationLib.outputs.snapshots`), so a snapshot and
the Slicer views agree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

import numpy as np

from .. import geometry
from ..outputs import arrows, snapshots
from .nodes import RESULT_ATTRIBUTE, get_or_add_for_inputs

if TYPE_CHECKING:  # pragma: no cover
    from ..panel import DisplaySettings

__all__ = [
    "JACOBIAN_COLOR_NAME", "SLICE_VIEW_NAMES", "AUTO_GLYPH_SPACING_ATTRIBUTE", "AUTO_GLYPH_SCALE_ATTRIBUTE",
    "glyph_settings", "show_glyphs", "jacobian_color_node", "add_default_label_colors", "jacobian_window_level",
    "show_in_slice_views", "result_label_layer", "remember_automatic_glyphs", "apply_display_settings",
    "hide_other_result_glyphs", "show_result",
]

JACOBIAN_COLOR_NAME = "DeepRegAblation Jacobian"
SLICE_VIEW_NAMES = ("Red", "Yellow", "Green")
AUTO_GLYPH_SPACING_ATTRIBUTE = "DeepRegAblation.autoGlyphSpacingMm"
AUTO_GLYPH_SCALE_ATTRIBUTE = "DeepRegAblation.autoGlyphScalePercent"
"""Attributes of a result's transform node: the glyph spacing / scale chosen for it (:func:`remember_automatic_glyphs`)."""


# --------------------------------------------------------------------------- glyphs
def glyph_settings(disp_ras_mm: np.ndarray, ijk_to_ras: np.ndarray, arrows_across: int = 16) -> Dict[str, float]:
    """Glyph display parameters for a displacement field (all mm unless stated).

    ``spacing_mm``: about ``arrows_across`` arrows across the smallest in-plane extent of the
    grid (at least one voxel); ``scale_percent``: arrow length = magnitude x scale / 100 such
    that the 99th-percentile magnitude spans 0.8 glyph spacings; ``diameter_mm``: 0.3
    spacings; ``color_top_mm``: the top of the colour ramp, the longest arrow Slicer can draw
    (``arrows.longest_arrow_mm``: Slicer draws ``T^-1(x) - x``, never longer than ``max |u|``);
    ``range_min_mm`` / ``range_max_mm``: the lengths drawn: every non-zero one (the upper bound
    leaves room for an arrow where VTK's inverse of a folded field does not converge).
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
    longest = arrows.longest_arrow_mm(disp_ras_mm)
    return {
        "spacing_mm": float(spacing_mm),
        "scale_percent": float(scale_percent),
        "diameter_mm": float(0.3 * spacing_mm),
        "range_min_mm": 1e-3,
        "range_max_mm": float(2.0 * longest + 1.0),
        "color_top_mm": float(longest * 1.001 + 1e-3 if longest > 1e-6 else 1.0),
    }


def _magnitude_color_node(scene, name: str, top_mm: float, reuse: bool, inputs: str = ""):
    from vtkmodules.vtkRenderingCore import vtkColorTransferFunction

    node = get_or_add_for_inputs(scene, "vtkMRMLProceduralColorNode", name, reuse, inputs)
    ramp = vtkColorTransferFunction()
    for value, r, g, b in snapshots.magnitude_color_points(top_mm):
        ramp.AddRGBPoint(value, r, g, b)
    node.SetAndObserveColorTransferFunction(ramp)
    node.SetAttribute("Category", "Transform display")
    node.SetHideFromEditors(False)  # hidden colour nodes with a storage node are not saved
    return node


def show_glyphs(scene, transform_node, disp_ras_mm, ijk_to_ras, color_name: str, reuse: bool, region_node=None,
                inputs: str = ""):
    """Show the transform as arrows coloured by their length (:func:`glyph_settings`), in slice and 3D views,
    with its own magnitude colour node ``color_name`` (reused for the same ``inputs`` only, ``nodes.inputs_key``);
    ``region_node``: the volume whose extent the glyphs cover.

    Slicer draws the transform to world, the inverse of the stored fixed -> moving field
    (:mod:`..outputs.arrows`): each arrow starts at a point of the moving image and points to where that
    point goes when the moving image is registered to the fixed one. Returns the transform's display node."""
    import slicer

    if transform_node.GetDisplayNode() is None:
        transform_node.CreateDefaultDisplayNodes()
    display = transform_node.GetDisplayNode()
    settings = glyph_settings(disp_ras_mm, ijk_to_ras)
    color_node = _magnitude_color_node(scene, color_name, settings["color_top_mm"], reuse, inputs)
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
    import slicer

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


# --------------------------------------------------------------------------- slice views
def show_in_slice_views(scene, background=None, foreground=None, label=None, foreground_opacity: float = 0.5,
                        create_missing: bool = False) -> List[object]:
    """Set background / foreground / label volumes of the scene's slice composite nodes.

    With ``create_missing`` and no composite node in the scene (a scene built headless), adds
    the Red, Yellow and Green ones (singletons, as Slicer's layout makes them) so that a saved
    scene opens with these layers. Returns the composite nodes.
    """
    import slicer

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
    import slicer

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


# --------------------------------------------------------------------------- one result at a time
def hide_other_result_glyphs(scene, nodes: Dict[str, object]) -> List[object]:
    """Hide the glyphs of every result's grid transform in ``scene`` (nodes with :data:`RESULT_ATTRIBUTE`) but
    ``nodes["transform"]``: one field of arrows at a time (Compare all made four, over each other). Returns the
    transforms hidden."""
    shown = nodes.get("transform")
    hidden = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLGridTransformNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLGridTransformNode")
        display_node = node.GetDisplayNode()
        if node is shown or node.GetAttribute(RESULT_ATTRIBUTE) is None or display_node is None:
            continue
        if display_node.GetVisibility():
            display_node.SetVisibility(False)
            hidden.append(node)
    return hidden


def show_result(scene, nodes: Dict[str, object], display: "DisplaySettings") -> None:
    """Show one result (a variant's ``nodes``, e.g. the row chosen in the metrics table): its glyphs only
    (:func:`hide_other_result_glyphs`), with the panel's Display settings (:func:`apply_display_settings`)."""
    hide_other_result_glyphs(scene, nodes)
    apply_display_settings(nodes, display)
