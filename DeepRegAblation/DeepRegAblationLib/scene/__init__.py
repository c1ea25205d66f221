"""MRML scene adapter: registration results as Slicer nodes (MRML and VTK only, never Qt).

The only part of the libraries that imports ``slicer`` / MRML. Works on any ``vtkMRMLScene``: Slicer's
own ``slicer.mrmlScene`` in the application, or a scene made with the ``slicer-core`` package
(``slicer.vtkMRMLScene()``) headless. ``from DeepRegAblationLib import scene; scene.X`` gives every
public name of the package's modules:

- :mod:`.nodes`: volume nodes from :class:`ImageData` and back, NRRD files of volume nodes, the grid
  transform of a displacement field, the parent-transform rule (inputs under a transform are refused);
- :mod:`.inputs`: the panel's inputs: checks, segmentations exported to label maps, input files for the
  background run;
- :mod:`.results`: the nodes of each result and the metrics table;
- :mod:`.display`: glyphs, the Jacobian and label colour tables, slice view layers, the Display settings;
- :mod:`.files`: saving and loading scene files.

What :func:`add_registration_to_scene` makes for one :class:`RegistrationResult`, named after
the moving volume and the variant (``<moving>-<variant>-...``) and grouped in one subject
hierarchy folder ``<moving>-<variant>``; each node records the fixed and moving volumes it was made
from (:data:`INPUTS_ATTRIBUTE`), and "reuse" replaces only the results of the same volumes:

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
  arrows coloured by length in slice and 3D views (:func:`glyph_settings`); Slicer draws them for
  the transform to world, the inverse of the stored field (``outputs.arrows``): each arrow starts at
  a point of the moving image and points to where that point goes when the moving image is registered;
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
nodes removed with :func:`remove_nodes`); :func:`add_results_to_scene` (the first result's glyphs shown, every
other result's hidden), :func:`show_result` (one result shown: its glyphs only, the Display settings applied)
and :func:`apply_display_settings` (the Display section: glyphs relative to the automatic ones, Jacobian range).
"""
from __future__ import annotations

from .display import (
    AUTO_GLYPH_SCALE_ATTRIBUTE, AUTO_GLYPH_SPACING_ATTRIBUTE, JACOBIAN_COLOR_NAME, SLICE_VIEW_NAMES,
    add_default_label_colors, apply_display_settings, glyph_settings, hide_other_result_glyphs, jacobian_color_node,
    jacobian_window_level, remember_automatic_glyphs, result_label_layer, show_in_slice_views, show_result,
)
from .files import SCENE_FILE_NAME, load_results_scene, save_scene, write_results_scene
from .inputs import (
    TEMP_COLORS_NAME, TEMP_LABELS_NAME, check_inputs, label_images, labelmap_for_labels, labelmaps_for_inputs,
    remove_nodes, segment_names, shared_label_colors, write_input_files,
)
from .nodes import (
    INPUTS_ATTRIBUTE, RESULT_ATTRIBUTE, add_volume_node, grid_transform_from_displacement, image_data_from_volume_node,
    parent_transform_problem, require_no_parent_transform, write_volume_file,
)
from .results import (
    METRIC_COLUMNS, METRICS_TABLE_NAME, add_registration_to_scene, add_results_to_scene, update_metrics_table,
)

__all__ = [
    "METRIC_COLUMNS", "METRICS_TABLE_NAME", "JACOBIAN_COLOR_NAME", "SCENE_FILE_NAME", "SLICE_VIEW_NAMES",
    "RESULT_ATTRIBUTE", "INPUTS_ATTRIBUTE", "AUTO_GLYPH_SPACING_ATTRIBUTE", "AUTO_GLYPH_SCALE_ATTRIBUTE",
    "TEMP_LABELS_NAME", "TEMP_COLORS_NAME", "parent_transform_problem", "require_no_parent_transform",
    "image_data_from_volume_node",
    "add_volume_node", "write_volume_file", "check_inputs", "segment_names", "shared_label_colors",
    "labelmap_for_labels", "labelmaps_for_inputs", "remove_nodes", "label_images", "write_input_files",
    "grid_transform_from_displacement", "glyph_settings", "jacobian_color_node", "add_default_label_colors",
    "jacobian_window_level", "add_registration_to_scene", "add_results_to_scene", "update_metrics_table",
    "show_in_slice_views", "result_label_layer", "remember_automatic_glyphs", "apply_display_settings",
    "hide_other_result_glyphs", "show_result", "save_scene", "write_results_scene", "load_results_scene",
]
