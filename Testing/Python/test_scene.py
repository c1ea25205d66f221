"""Scene adapter tests on a REAL vtkMRMLScene (the slicer-core package): grid transform
semantics, hardening, node reuse, display settings, metrics table, scene files.

Geometry is deliberately awkward: anisotropic spacing, OBLIQUE direction matrices, and
different fixed and moving grids.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

from DeepRegAblationLib import fields, geometry, metrics, resampling, scene  # noqa: E402
from DeepRegAblationLib.outputs import snapshots  # noqa: E402
from DeepRegAblationLib.imageio import ImageData  # noqa: E402
from DeepRegAblationLib.registration.result import RegistrationResult  # noqa: E402


# --------------------------------------------------------------------------- synthetic case
def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    a, b = [n for n in range(3) if n != axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


FIXED_SHAPE = (9, 14, 12)  # (K, J, I)
FIXED_MATRIX = geometry.matrix_from_geometry(
    [1.3, 0.9, 2.1], _rotation(2, 0.35) @ _rotation(0, 0.25), [-6.0, -4.0, -7.0]
)


def _centre(shape, matrix) -> np.ndarray:
    return geometry.voxel_to_ras((np.asarray(shape[::-1]) - 1) / 2.0, matrix)


def _grid_centred_on(centre_ras, shape, spacing_ijk, direction) -> np.ndarray:
    origin = np.asarray(centre_ras) - direction @ (np.asarray(spacing_ijk) * (np.asarray(shape[::-1]) - 1) / 2.0)
    return geometry.matrix_from_geometry(spacing_ijk, direction, origin)


MOVING_SHAPE = (28, 30, 30)  # covers the fixed field of view plus the displacement
MOVING_MATRIX = _grid_centred_on(
    _centre(FIXED_SHAPE, FIXED_MATRIX) + [0.7, -0.4, 0.3], MOVING_SHAPE, [1.1, 1.2, 1.0], _rotation(1, -0.3)
)


def _moving_intensity(points_ras: np.ndarray) -> np.ndarray:
    """A smooth test image defined everywhere in RAS (mm)."""
    c = _centre(FIXED_SHAPE, FIXED_MATRIX)
    q = points_ras - c
    blob = np.exp(-np.sum((q / [6.0, 7.0, 8.0]) ** 2, axis=-1))
    waves = 20.0 * np.sin(q[..., 0] / 4.0) * np.cos(q[..., 1] / 5.0)
    return (100.0 * blob + waves + 5.0 * q[..., 2] / 10.0).astype(np.float32)


def _displacement(points_ras: np.ndarray, amplitude: float = 2.5) -> np.ndarray:
    """A smooth, invertible displacement (RAS mm), not aligned with any grid axis."""
    c = _centre(FIXED_SHAPE, FIXED_MATRIX)
    q = (points_ras - c) / 6.0
    return amplitude * np.stack(
        [np.sin(q[..., 1]) + 0.3, np.cos(q[..., 0]) * 0.8 - 0.2, 0.5 * np.sin(q[..., 0] + q[..., 2])], axis=-1
    )


def _affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation(2, 0.05) * 1.02
    affine[:3, 3] = [1.5, -0.7, 0.4]
    return affine


def _make_case(variant: str = "baseline", amplitude: float = 2.5, with_labels: bool = True):
    fixed_points = geometry.grid_points_ras(FIXED_SHAPE, FIXED_MATRIX)
    moving_points = geometry.grid_points_ras(MOVING_SHAPE, MOVING_MATRIX)
    moving = ImageData(_moving_intensity(moving_points), MOVING_MATRIX, "moving")
    fixed = ImageData(_moving_intensity(fixed_points), FIXED_MATRIX, "fixed")
    disp_ras_mm = _displacement(fixed_points, amplitude).astype(np.float32)
    # OUR warp: the moving image sampled at p + u(p) (geometry/fields, not VTK)
    warped = resampling.sample_at_ras(moving.array, moving.ijk_to_ras, fixed_points + disp_ras_mm)
    disp_vox = torch.from_numpy(geometry.ras_mm_to_disp_vox(disp_ras_mm, FIXED_MATRIX)).float()[None]
    jacobian = fields.jacobian_determinant(disp_vox)[0].numpy()
    labels = (warped > np.percentile(warped, 60)).astype(np.int32) + (warped > np.percentile(warped, 90))
    fixed_labels = (fixed.array > np.percentile(fixed.array, 60)).astype(np.int32)
    values = metrics.registration_metrics(
        fixed.array, warped, disp_vox[0].numpy(), geometry.spacing_kji(FIXED_MATRIX),
        fixed_labels if with_labels else None, labels if with_labels else None,
    )
    values["runtime_s"] = 0.25 + len(variant) / 100.0
    result = RegistrationResult(
        variant=variant,
        fixed_ijk_to_ras=FIXED_MATRIX.copy(),
        warped=warped.astype(np.float32),
        warped_labels=labels if with_labels else None,
        affine_ras=_affine(),
        disp_ras_mm=disp_ras_mm,
        deform_disp_ras_mm=disp_ras_mm,
        jacobian=jacobian.astype(np.float32),
        metrics=values,
        timings={"model": 0.2},
    )
    return fixed, moving, result


def _scene_with_inputs(fixed: ImageData, moving: ImageData):
    mrml = slicer.vtkMRMLScene()
    fixed_node = scene.add_volume_node(mrml, fixed, "fixed")
    moving_node = scene.add_volume_node(mrml, moving, "moving")
    return mrml, fixed_node, moving_node


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _interior(points_ras: np.ndarray, shape, matrix, margin: float = 1.0) -> np.ndarray:
    """Mask of points at least ``margin`` voxels inside a grid."""
    ijk = geometry.ras_to_voxel(points_ras, matrix)
    sizes = np.asarray(shape[::-1], dtype=float)
    return np.all((ijk >= margin) & (ijk <= sizes - 1 - margin), axis=-1)


@pytest.fixture(scope="module")
def case():
    return _make_case()


# --------------------------------------------------------------------------- volumes
def test_image_data_round_trip_through_volume_node(case):
    fixed, _, _ = case
    mrml = slicer.vtkMRMLScene()
    node = scene.add_volume_node(mrml, fixed, "fixed")
    back = scene.image_data_from_volume_node(node)
    assert back.array.shape == fixed.array.shape == tuple(slicer.util.arrayFromVolume(node).shape)
    np.testing.assert_array_equal(back.array, fixed.array)
    np.testing.assert_allclose(back.ijk_to_ras, FIXED_MATRIX, atol=1e-12)
    assert back.name == "fixed"
    with pytest.raises(ValueError, match="volume_node"):
        scene.image_data_from_volume_node(mrml.AddNewNodeByClass("vtkMRMLLinearTransformNode", "not a volume"))
    with pytest.raises(ValueError, match="no image data"):
        scene.image_data_from_volume_node(mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))


# --------------------------------------------------------------------------- inputs under a parent transform
def _under_shift(mrml, node):
    shift = np.eye(4)
    shift[:3, 3] = [3.0, -2.0, 5.0]
    parent = mrml.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(parent.GetID())
    return shift


def test_fixed_volume_under_a_linear_transform_is_refused_on_both_paths_until_hardened(tmp_path, case):
    """One rule for the blocking path (volume node -> ImageData in this process) and the background
    path (volume node -> file for the command line, results back onto the fixed node): a parent
    transform is refused up front with a message that says to harden it; once hardened, both paths
    see the same transformed grid and the results go onto the fixed node."""
    import SimpleITK as sitk

    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    shift = _under_shift(mrml, fixed_node)
    nodes_before = mrml.GetNumberOfNodes()

    assert "Harden the transform" in scene.parent_transform_problem(fixed_node, "fixed volume")
    assert scene.parent_transform_problem(moving_node, "moving volume") == ""
    with pytest.raises(ValueError, match="fixed.*under the transform 'shift'.*Harden"):  # blocking path
        scene.image_data_from_volume_node(fixed_node)
    with pytest.raises(ValueError, match="under the transform 'shift'.*Harden"):  # background path: input file
        scene.write_volume_file(fixed_node, tmp_path / "fixed.nrrd", "fixed volume")
    assert not (tmp_path / "fixed.nrrd").exists()
    with pytest.raises(ValueError, match="under the transform 'shift'.*Harden"):  # results onto the node
        scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)
    assert mrml.GetNumberOfNodes() == nodes_before  # nothing was added

    assert slicer.vtkSlicerTransformLogic.hardenTransform(fixed_node)
    in_process = scene.image_data_from_volume_node(fixed_node)
    np.testing.assert_allclose(in_process.ijk_to_ras, shift @ FIXED_MATRIX, atol=1e-9)
    written = sitk.ReadImage(str(scene.write_volume_file(fixed_node, tmp_path / "fixed.nrrd")))
    origin_ras = np.asarray(written.GetOrigin()) * [-1, -1, 1]  # the file is LPS
    np.testing.assert_allclose(origin_ras, in_process.ijk_to_ras[:3, 3], atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), fixed.array)
    moved = RegistrationResult(**{**result.__dict__, "fixed_ijk_to_ras": in_process.ijk_to_ras})
    nodes = scene.add_registration_to_scene(mrml, moved, fixed_node, moving_node)
    np.testing.assert_allclose(scene.image_data_from_volume_node(nodes["warped"]).ijk_to_ras,
                               in_process.ijk_to_ras, atol=1e-9)


def test_label_layer_replaces_only_earlier_results(case):
    """Showing a result without warped labels clears a label layer left by an earlier run, keeps a
    label map of the user's own, and a result with labels shows its own."""
    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    with_labels = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)
    no_labels_result = _make_case("regloss", with_labels=False)[2]
    without_labels = scene.add_registration_to_scene(mrml, no_labels_result, fixed_node, moving_node)
    users_labels = scene.add_volume_node(mrml, fixed.with_array(fixed.array > 50), "my labels", label=True)

    assert scene.result_label_layer(with_labels, current_label=users_labels) is with_labels["warped_labels"]
    assert scene.result_label_layer(without_labels, current_label=with_labels["warped_labels"]) is None
    assert scene.result_label_layer(without_labels, current_label=users_labels) == "keep-current"
    assert scene.result_label_layer(without_labels, current_label=None) == "keep-current"


# --------------------------------------------------------------------------- the grid transform
def test_grid_transform_from_parent_is_p_plus_u_at_voxel_centres(case):
    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    nodes = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)
    transform_node = nodes["transform"]
    assert transform_node.IsA("vtkMRMLGridTransformNode")
    from_parent = transform_node.GetTransformFromParent()
    assert from_parent.IsA("vtkOrientedGridTransform")
    assert not from_parent.GetInverseFlag()  # stored FROM parent (resampling direction)
    direction = _matrix(from_parent.GetGridDirectionMatrix())[:3, :3]
    np.testing.assert_allclose(direction, geometry.direction_from_matrix(FIXED_MATRIX), atol=1e-12)
    assert not np.allclose(direction, np.eye(3), atol=0.1)  # really oblique
    np.testing.assert_allclose(slicer.util.arrayFromGridTransform(transform_node), result.disp_ras_mm, atol=1e-6)

    points = geometry.grid_points_ras(FIXED_SHAPE, FIXED_MATRIX).reshape(-1, 3)
    expected = points + result.disp_ras_mm.reshape(-1, 3)
    mapped = np.array([from_parent.TransformPoint(*p) for p in points])
    assert np.abs(mapped - expected).max() < 1e-4
    # the node's own world mapping agrees (no parent: from parent = from world)
    from vtkmodules.vtkCommonTransforms import vtkGeneralTransform

    from_world = vtkGeneralTransform()
    transform_node.GetTransformFromWorld(from_world)
    picks = np.random.default_rng(0).choice(len(points), 50, replace=False)
    mapped_world = np.array([from_world.TransformPoint(*points[n]) for n in picks])
    assert np.abs(mapped_world - expected[picks]).max() < 1e-4

    # between voxel centres: trilinear interpolation of u in the fixed index space, as ours
    rng = np.random.default_rng(1)
    ijk = rng.uniform(0, 1, (200, 3)) * (np.asarray(FIXED_SHAPE[::-1]) - 1)
    between = geometry.voxel_to_ras(ijk, FIXED_MATRIX)
    ours = np.stack([resampling.sample_at_ras(result.disp_ras_mm[..., c], FIXED_MATRIX, between) for c in range(3)], -1)
    theirs = np.array([from_parent.TransformPoint(*p) for p in between]) - between
    assert np.abs(theirs - ours).max() < 1e-4


def test_resampling_moving_through_mrml_transform_reproduces_our_warp(case):
    """What Slicer's slice views / resampling do: world point -> TransformFromWorld -> moving IJK."""
    from vtkmodules.vtkCommonTransforms import vtkGeneralTransform
    from vtkmodules.vtkImagingCore import vtkImageReslice
    from vtkmodules.util import numpy_support

    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    nodes = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)
    moving_node.SetAndObserveTransformNodeID(nodes["transform"].GetID())

    world_to_moving = vtkGeneralTransform()
    moving_node.GetParentTransformNode().GetTransformFromWorld(world_to_moving)
    resample = vtkGeneralTransform()
    resample.PostMultiply()
    resample.Concatenate(slicer.util.vtkMatrixFromArray(FIXED_MATRIX))  # output IJK -> world
    resample.Concatenate(world_to_moving)  # world -> moving volume's RAS
    resample.Concatenate(slicer.util.vtkMatrixFromArray(np.linalg.inv(MOVING_MATRIX)))  # -> moving IJK
    reslice = vtkImageReslice()
    reslice.SetInputData(moving_node.GetImageData())
    reslice.SetResliceTransform(resample)
    reslice.SetInterpolationModeToLinear()
    reslice.SetOutputOrigin(0.0, 0.0, 0.0)
    reslice.SetOutputSpacing(1.0, 1.0, 1.0)
    reslice.SetOutputExtent(0, FIXED_SHAPE[2] - 1, 0, FIXED_SHAPE[1] - 1, 0, FIXED_SHAPE[0] - 1)
    reslice.SetBackgroundLevel(0.0)
    reslice.Update()
    resliced = numpy_support.vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars()).reshape(FIXED_SHAPE)

    points = geometry.grid_points_ras(FIXED_SHAPE, FIXED_MATRIX)
    inside = _interior(points + result.disp_ras_mm, MOVING_SHAPE, MOVING_MATRIX)
    assert inside.mean() > 0.8
    scale = float(np.ptp(result.warped))
    error = np.abs(resliced - result.warped)[inside].max()
    assert error < 1e-4 * scale, error
    # and the check has teeth: the unwarped moving image differs a lot
    unwarped = resampling.resample_to_grid(moving.array, MOVING_MATRIX, FIXED_MATRIX, FIXED_SHAPE)
    assert np.abs(unwarped - result.warped)[inside].max() > 0.05 * scale


def test_hardening_the_transform_on_the_moving_volume_reproduces_our_warp(case):
    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    nodes = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)
    hardened_node = scene.add_volume_node(mrml, moving, "moving-hardened", reuse=False)
    hardened_node.SetAndObserveTransformNodeID(nodes["transform"].GetID())
    assert slicer.vtkSlicerTransformLogic.hardenTransform(hardened_node)
    assert hardened_node.GetParentTransformNode() is None
    hardened = scene.image_data_from_volume_node(hardened_node)  # on the moving grid: m(q + u(q))

    points = geometry.grid_points_ras(FIXED_SHAPE, FIXED_MATRIX)
    inside = _interior(points, MOVING_SHAPE, MOVING_MATRIX, margin=2.0) & _interior(
        points + result.disp_ras_mm, MOVING_SHAPE, MOVING_MATRIX, margin=2.0)
    assert inside.mean() > 0.6
    on_fixed = resampling.sample_at_ras(hardened.array, hardened.ijk_to_ras, points)  # one more linear interpolation
    scale = float(np.ptp(result.warped))
    error = np.abs(on_fixed - result.warped)[inside]
    # the opposite direction (transform TO parent) for comparison
    reverse_node = scene.add_volume_node(mrml, moving, "moving-reverse", reuse=False)
    inverse = mrml.AddNewNodeByClass("vtkMRMLGridTransformNode", "inverse")
    inverse.SetAndObserveTransformToParent(nodes["transform"].GetTransformFromParent())
    reverse_node.SetAndObserveTransformNodeID(inverse.GetID())
    assert slicer.vtkSlicerTransformLogic.hardenTransform(reverse_node)
    reverse = scene.image_data_from_volume_node(reverse_node)
    reverse_error = np.abs(resampling.sample_at_ras(reverse.array, reverse.ijk_to_ras, points) - result.warped)[inside]
    assert error.mean() < 0.01 * scale, (error.mean(), scale)
    assert error.max() < 0.06 * scale, (error.max(), scale)
    assert reverse_error.mean() > 5 * error.mean()


# --------------------------------------------------------------------------- nodes, reuse, display
def test_nodes_affine_reuse_and_display(case):
    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    nodes = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)
    assert set(nodes) == {"warped", "affine", "transform", "jacobian", "warped_labels", "folder"}
    assert nodes["warped"].GetName() == "moving-baseline-warped"

    # warped volume and labels on the fixed grid
    np.testing.assert_allclose(scene.image_data_from_volume_node(nodes["warped"]).ijk_to_ras, FIXED_MATRIX, atol=1e-12)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["warped"]), result.warped)
    assert nodes["warped_labels"].IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["warped_labels"]), result.warped_labels)

    # affine: fixed -> moving = transform FROM parent
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    from_parent, to_parent = vtkMatrix4x4(), vtkMatrix4x4()
    nodes["affine"].GetMatrixTransformFromParent(from_parent)
    nodes["affine"].GetMatrixTransformToParent(to_parent)
    np.testing.assert_allclose(_matrix(from_parent), result.affine_ras, atol=1e-12)
    np.testing.assert_allclose(_matrix(to_parent), np.linalg.inv(result.affine_ras), atol=1e-12)

    # Jacobian: colour table attached, window/level centred at 1, 1 -> white, folded -> green
    jac_display = nodes["jacobian"].GetDisplayNode()
    color_node = jac_display.GetColorNode()
    assert color_node is not None and color_node.GetName() == scene.JACOBIAN_COLOR_NAME
    assert not jac_display.GetAutoWindowLevel()
    assert jac_display.GetLevel() == pytest.approx(1.0)
    low = jac_display.GetLevel() - jac_display.GetWindow() / 2
    high = jac_display.GetLevel() + jac_display.GetWindow() / 2
    n_colors = color_node.GetNumberOfColors()

    def color_of(det: float) -> np.ndarray:
        index = int(np.clip(np.floor((det - low) / (high - low) * n_colors), 0, n_colors - 1))
        rgba = [0.0] * 4
        color_node.GetColor(index, rgba)
        return np.array(rgba[:3])

    np.testing.assert_allclose(color_of(1.0), [1, 1, 1], atol=0.02)
    np.testing.assert_allclose(color_of(-0.3), snapshots.FOLDED_RGB, atol=1 / 255)  # stored as 8 bit
    assert color_of(0.4)[2] > color_of(0.4)[0]  # contraction blue
    assert color_of(2.5)[0] > color_of(2.5)[2]  # expansion red
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["jacobian"]), result.jacobian)

    # grid transform display: glyphs (arrows) coloured by magnitude, visible in 2D and 3D
    display = nodes["transform"].GetDisplayNode()
    assert display.GetVisualizationMode() == slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH
    assert display.GetGlyphType() == slicer.vtkMRMLTransformDisplayNode.GLYPH_TYPE_ARROW
    assert display.GetVisibility() and display.GetVisibility2D() and display.GetVisibility3D()
    settings = scene.glyph_settings(result.disp_ras_mm, FIXED_MATRIX)
    assert display.GetGlyphSpacingMm() == pytest.approx(settings["spacing_mm"])
    assert display.GetGlyphSpacingMm() >= geometry.spacing_from_matrix(FIXED_MATRIX).max()
    top = np.percentile(np.linalg.norm(result.disp_ras_mm, axis=-1), 99)
    assert top * display.GetGlyphScalePercent() / 100 == pytest.approx(0.8 * display.GetGlyphSpacingMm())
    assert display.GetGlyphDisplayRangeMaxMm() >= np.linalg.norm(result.disp_ras_mm, axis=-1).max()
    ramp = display.GetColorNode().GetColorTransferFunction()
    assert ramp.GetRange()[1] == pytest.approx(settings["color_top_mm"])

    # subject hierarchy: one folder per variant holding all its nodes
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    assert hierarchy.GetItemName(nodes["folder"]) == "moving-baseline"
    for key in ("warped", "affine", "transform", "jacobian", "warped_labels"):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(nodes[key])) == nodes["folder"]

    # running again reuses every node (same IDs, same node count), and updates the data
    count = mrml.GetNumberOfNodes()
    _, _, changed = _make_case(amplitude=1.0)
    again = scene.add_registration_to_scene(mrml, changed, fixed_node, moving_node, reuse=True)
    assert mrml.GetNumberOfNodes() == count
    ids = {k: v.GetID() for k, v in nodes.items() if k != "folder"}
    assert {k: v.GetID() for k, v in again.items() if k != "folder"} == ids
    assert again["folder"] == nodes["folder"]
    np.testing.assert_allclose(slicer.util.arrayFromGridTransform(again["transform"]), changed.disp_ras_mm, atol=1e-6)
    # another variant gets its own nodes and folder; reuse=False always adds
    other = scene.add_registration_to_scene(mrml, _make_case("regloss")[2], fixed_node, moving_node)
    assert other["warped"].GetName() == "moving-regloss-warped" and other["folder"] != nodes["folder"]
    count = mrml.GetNumberOfNodes()
    fresh = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node, reuse=False)
    assert mrml.GetNumberOfNodes() > count and fresh["warped"].GetID() != nodes["warped"].GetID()


def test_single_slice_2d_result():
    """A 2D registration lives on a single-slice grid (1, J, I): the grid transform still maps
    every pixel centre p to p + u(p), and the glyph spacing ignores the slice thickness."""
    shape = (1, 20, 24)
    matrix = geometry.matrix_from_geometry([0.8, 1.1, 3.0], _rotation(2, 0.4), [-8.0, -9.0, 2.0])
    points = geometry.grid_points_ras(shape, matrix)
    disp = np.zeros(shape + (3,), dtype=np.float32)
    in_plane = geometry.direction_from_matrix(matrix)[:, :2]
    disp += (np.sin(points[..., :1] / 5.0) * in_plane[:, 0]
             + np.cos(points[..., 1:2] / 4.0) * in_plane[:, 1]).astype(np.float32)
    image = ImageData(np.random.default_rng(0).random(shape).astype(np.float32), matrix, "slice")
    result = RegistrationResult("baseline", matrix, image.array, None, np.eye(4), disp, disp,
                                np.ones(shape, np.float32), {}, {})
    mrml = slicer.vtkMRMLScene()
    node = scene.add_volume_node(mrml, image, "slice")
    nodes = scene.add_registration_to_scene(mrml, result, node, node)
    assert "warped_labels" not in nodes
    from_parent = nodes["transform"].GetTransformFromParent()
    flat = points.reshape(-1, 3)
    mapped = np.array([from_parent.TransformPoint(*p) for p in flat])
    assert np.abs(mapped - flat - disp.reshape(-1, 3)).max() < 1e-4
    settings = scene.glyph_settings(disp, matrix)
    assert settings["spacing_mm"] == pytest.approx(max(1.1, min(24 * 0.8, 20 * 1.1) / 16))  # not 3 mm


def test_bad_inputs_raise_value_errors(case):
    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    _, _, bad = _make_case()
    bad.disp_ras_mm = bad.disp_ras_mm[:, :, :5]
    with pytest.raises(ValueError, match="disp_ras_mm"):
        scene.add_registration_to_scene(mrml, bad, fixed_node, moving_node)
    with pytest.raises(ValueError, match="grid"):  # the result belongs to another fixed grid
        scene.add_registration_to_scene(mrml, result, moving_node, moving_node)
    with pytest.raises(ValueError, match="scene"):
        scene.add_registration_to_scene(None, result, fixed_node, moving_node)
    with pytest.raises(ValueError, match="disp_ras_mm"):
        scene.grid_transform_from_displacement(np.zeros((3, 4, 5)), FIXED_MATRIX)


# --------------------------------------------------------------------------- metrics table
def test_metrics_table_has_one_row_per_result(case):
    _, _, result = case
    no_labels = _make_case("affine_enhanced", with_labels=False)[2]
    mrml = slicer.vtkMRMLScene()
    table = scene.update_metrics_table(mrml, [result, no_labels])
    assert table.IsA("vtkMRMLTableNode") and table.GetName() == scene.METRICS_TABLE_NAME
    assert table.GetNumberOfRows() == 2
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(scene.METRIC_COLUMNS)
    vtk_table = table.GetTable()
    assert [vtk_table.GetValueByName(r, "variant").ToString() for r in range(2)] == ["baseline", "affine_enhanced"]
    for key in scene.METRIC_COLUMNS[1:]:
        column = slicer.util.arrayFromTableColumn(table, key)
        np.testing.assert_allclose(column, [result.metrics[key], no_labels.metrics[key]], rtol=1e-12, equal_nan=True)
    assert not math.isnan(result.metrics["dice"]) and math.isnan(slicer.util.arrayFromTableColumn(table, "dice")[1])
    assert table.GetColumnUnitLabel("hd95_mm") == "mm"
    # updating again reuses the table node and replaces its rows
    again = scene.update_metrics_table(mrml, [no_labels])
    assert again.GetID() == table.GetID() and again.GetNumberOfRows() == 1
    assert mrml.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1


# --------------------------------------------------------------------------- scene files
def test_write_results_scene_loads_back_with_nodes_and_data(tmp_path, case):
    fixed, moving, result = case
    second = _make_case("affine_basic", amplitude=1.5, with_labels=False)[2]
    path = scene.write_results_scene(tmp_path / "out", fixed, moving, [result, second])
    assert path.suffix == ".mrml" and path.is_file()
    files = {p.name for p in path.parent.iterdir()}
    assert "moving-baseline-warped.nrrd" in files and "moving-baseline-transform.h5" in files
    assert "moving-baseline-affine.h5" in files and "DeepRegAblation_metrics.tsv" in files
    text = path.read_text()
    assert str(tmp_path) not in text  # data files referenced relative to the scene file

    loaded = scene.load_results_scene(path)

    def node(name, class_name):
        found = loaded.GetFirstNode(name, class_name)
        assert found is not None, name
        return found

    fixed_back = scene.image_data_from_volume_node(node("fixed", "vtkMRMLScalarVolumeNode"))
    np.testing.assert_allclose(fixed_back.array, fixed.array)
    np.testing.assert_allclose(fixed_back.ijk_to_ras, FIXED_MATRIX, atol=1e-5)
    moving_back = scene.image_data_from_volume_node(node("moving", "vtkMRMLScalarVolumeNode"))
    np.testing.assert_allclose(moving_back.array, moving.array)
    np.testing.assert_allclose(moving_back.ijk_to_ras, MOVING_MATRIX, atol=1e-5)
    for res, labels in ((result, True), (second, False)):
        base = f"moving-{res.variant}"
        warped = scene.image_data_from_volume_node(node(f"{base}-warped", "vtkMRMLScalarVolumeNode"))
        np.testing.assert_allclose(warped.array, res.warped)
        np.testing.assert_allclose(warped.ijk_to_ras, FIXED_MATRIX, atol=1e-5)
        jacobian_node = node(f"{base}-jacobian", "vtkMRMLScalarVolumeNode")
        np.testing.assert_allclose(slicer.util.arrayFromVolume(jacobian_node), res.jacobian)
        assert jacobian_node.GetDisplayNode().GetColorNode().GetName() == scene.JACOBIAN_COLOR_NAME
        assert jacobian_node.GetDisplayNode().GetLevel() == pytest.approx(1.0)
        labels_node = loaded.GetFirstNode(f"{base}-warped-labels", "vtkMRMLLabelMapVolumeNode")
        assert (labels_node is not None) == labels
        if labels:
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(labels_node), res.warped_labels)
        grid = node(f"{base}-transform", "vtkMRMLGridTransformNode")
        np.testing.assert_allclose(slicer.util.arrayFromGridTransform(grid), res.disp_ras_mm, atol=1e-5)
        from_parent = grid.GetTransformFromParent()
        points = geometry.grid_points_ras(FIXED_SHAPE, FIXED_MATRIX).reshape(-1, 3)[::37]
        mapped = np.array([from_parent.TransformPoint(*p) for p in points])
        np.testing.assert_allclose(mapped, points + res.disp_ras_mm.reshape(-1, 3)[::37], atol=1e-4)
        display = grid.GetDisplayNode()
        assert display.GetVisualizationMode() == slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH
        assert display.GetVisibility2D() and display.GetColorNode() is not None
        from vtkmodules.vtkCommonMath import vtkMatrix4x4

        matrix = vtkMatrix4x4()
        node(f"{base}-affine", "vtkMRMLLinearTransformNode").GetMatrixTransformFromParent(matrix)
        np.testing.assert_allclose(_matrix(matrix), res.affine_ras, atol=1e-6)
    # the transform files mean the same to ITK (SimpleITK as the oracle; files are LPS)
    import SimpleITK as sitk

    points = geometry.grid_points_ras(FIXED_SHAPE, FIXED_MATRIX).reshape(-1, 3)[::11]
    grid_file = sitk.ReadTransform(str(path.parent / "moving-baseline-transform.h5"))
    affine_file = sitk.ReadTransform(str(path.parent / "moving-baseline-affine.h5"))
    for itk_transform, expected in (
        (grid_file, points + result.disp_ras_mm.reshape(-1, 3)[::11]),
        (affine_file, points @ result.affine_ras[:3, :3].T + result.affine_ras[:3, 3]),
    ):
        mapped = np.array([itk_transform.TransformPoint(tuple(p)) for p in geometry.vectors_ras_to_lps(points)])
        np.testing.assert_allclose(geometry.vectors_lps_to_ras(mapped), expected, atol=1e-4)

    table = node(scene.METRICS_TABLE_NAME, "vtkMRMLTableNode")
    assert table.GetNumberOfRows() == 2
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "ncc"),
                               [result.metrics["ncc"], second.metrics["ncc"]], rtol=1e-5)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(loaded)
    folder = hierarchy.GetItemChildWithName(hierarchy.GetSceneItemID(), "moving-baseline")
    jacobian_item = hierarchy.GetItemByDataNode(node("moving-baseline-jacobian", "vtkMRMLScalarVolumeNode"))
    assert folder and hierarchy.GetItemParent(jacobian_item) == folder
    composites = [loaded.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
                  for n in range(loaded.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    assert sorted(c.GetLayoutName() for c in composites) == sorted(scene.SLICE_VIEW_NAMES)
    for composite in composites:
        assert loaded.GetNodeByID(composite.GetBackgroundVolumeID()).GetName() == "fixed"
        assert loaded.GetNodeByID(composite.GetForegroundVolumeID()).GetName() == "moving-baseline-warped"
        assert loaded.GetNodeByID(composite.GetLabelVolumeID()).GetName() == "moving-baseline-warped-labels"


def test_write_results_scene_rejects_bad_input(tmp_path, case):
    fixed, moving, result = case
    with pytest.raises(ValueError, match="results"):
        scene.write_results_scene(tmp_path, fixed, moving, [])
    with pytest.raises(ValueError, match="fixed"):
        scene.write_results_scene(tmp_path, fixed.array, moving, [result])
    with pytest.raises(FileNotFoundError):
        scene.load_results_scene(tmp_path / "missing.mrml")


@pytest.fixture
def vtk_messages():
    """Everything VTK reports (warnings, errors) while the test runs, as one string.

    VTK's messages (``vtkWarningMacro`` in MRML included) go to the ``vtkOutputWindow`` instance;
    a ``vtkStringOutputWindow`` in its place collects them.
    """
    from vtkmodules.vtkCommonCore import vtkOutputWindow, vtkStringOutputWindow

    previous = vtkOutputWindow.GetInstance()
    window = vtkStringOutputWindow()
    vtkOutputWindow.SetInstance(window)
    try:
        yield window
    finally:
        vtkOutputWindow.SetInstance(previous)


def test_vtk_message_capture_sees_mrml_warnings(vtk_messages):
    """The capture works: a label map with no colour table in the scene is what MRML warns about."""
    mrml = slicer.vtkMRMLScene()
    node = scene.add_volume_node(mrml, ImageData(np.ones((2, 3, 4), np.int32), np.eye(4), "l"), label=True)
    node.GetDisplayNode().Modified()
    assert "color table node" in vtk_messages.GetOutput()


def test_writing_and_loading_the_results_scene_prints_no_vtk_warnings(tmp_path, case, vtk_messages):
    """`register`, `demo` and `bench` write this scene: no "color table node ... can't be found"
    for the label maps, no deprecated table call, nothing else."""
    fixed, moving, result = case
    second = _make_case("affine_basic", amplitude=1.5, with_labels=False)[2]
    path = scene.write_results_scene(tmp_path / "out", fixed, moving, [result, second])
    loaded = scene.load_results_scene(path)
    assert vtk_messages.GetOutput() == ""
    labels = loaded.GetFirstNode("moving-baseline-warped-labels", "vtkMRMLLabelMapVolumeNode")
    color = labels.GetDisplayNode().GetColorNode()
    assert color is not None and color.GetID() == "vtkMRMLColorTableNodeLabels"  # Slicer's own default table
    assert not any(f.name.startswith("Labels") for f in path.parent.iterdir())  # not saved: Slicer has its own
    table = loaded.GetFirstNode(scene.METRICS_TABLE_NAME, "vtkMRMLTableNode")
    assert table.GetUseColumnTitleAsColumnHeader()


# --------------------------------------------------------------------------- the module panel's inputs
def test_check_inputs_refuses_unusable_inputs_in_plain_words(case):
    fixed, moving, _ = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    scene.check_inputs(fixed_node, moving_node)  # fine
    empty = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    vector = mrml.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(vector, np.zeros((2, 3, 4, 3), np.float32))
    for arguments, message in [
        ((None, moving_node), "No fixed volume was selected."),
        ((fixed_node, None), "No moving volume was selected."),
        ((empty, moving_node), "The fixed volume 'empty' has no image data."),
        ((fixed_node, vector), "The moving volume 'rgb' is not a scalar (single-component) image."),
        ((fixed_node, fixed_node), "Fixed and moving volumes must be different volumes."),
    ]:
        with pytest.raises(ValueError) as raised:
            scene.check_inputs(*arguments)
        assert str(raised.value) == message
    labels = scene.add_volume_node(mrml, ImageData(np.ones(FIXED_SHAPE, np.int32), FIXED_MATRIX), "fl", label=True)
    _under_shift(mrml, labels)
    with pytest.raises(ValueError, match=r"^The fixed labels 'fl' is under the transform 'shift'\. Harden the transform"):
        scene.check_inputs(fixed_node, moving_node, labels, None)


def _segmentation(mrml, labels: np.ndarray, matrix: np.ndarray, names, node_name: str):
    """A segmentation node with one segment per label value 1, 2, ... named ``names`` (real import from a
    label map node with the Segmentations module logic that slicer-core has)."""
    source = scene.add_volume_node(mrml, ImageData(labels, matrix), f"{node_name}-source", label=True)
    segmentation = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, segmentation)
    for index, name in enumerate(names):
        segmentation.GetSegmentation().GetNthSegment(index).SetName(name)
    mrml.RemoveNode(source)
    return segmentation


def _blocks(shape, values) -> np.ndarray:
    """Labels in slabs along K: 0 first, then each value of ``values``."""
    labels = np.zeros(shape, np.int16)
    for index, value in enumerate(values):
        labels[1 + 2 * index: 3 + 2 * index] = value
    return labels


def _node_ids(mrml) -> set:
    return {mrml.GetNthNode(index).GetID() for index in range(mrml.GetNumberOfNodes())}


def _left_behind(mrml, before: set) -> list:
    """Nodes added since ``before`` other than those the segmentation export makes that the Slicer application
    removes or has anyway: the temporary label map's display node (Slicer's Data module logic removes the display
    and storage nodes of a removed node; slicer-core has no Data module), the scene's subject hierarchy node (always
    there in Slicer), and the "<segmentation>_ColorTable" that the export of Slicer after 5.8 (slicer-core 5.13)
    adds and 5.8 does not (a leftover of the real application, left for another issue)."""
    left = []
    for node_id in sorted(_node_ids(mrml) - before):
        node = mrml.GetNodeByID(node_id)
        if node.IsA("vtkMRMLDisplayNode") or node.IsA("vtkMRMLSubjectHierarchyNode"):
            continue
        if node.IsA("vtkMRMLColorTableNode") and re.search(r"_ColorTable(_\d+)?$", node.GetName()):
            continue
        left.append(f"{node.GetClassName()} {node.GetName()}")
    return left


@pytest.fixture
def labelled_inputs(case):
    """Fixed and moving volumes with segmentations whose segments share names in another order:
    fixed (Brain, Tumor), moving (Ventricles, Brain, Tumor)."""
    fixed, moving, _ = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    scene.add_default_label_colors(mrml)
    fixed_labels = _blocks(FIXED_SHAPE, [1, 2])
    moving_labels = _blocks(MOVING_SHAPE, [1, 2, 3])
    fixed_seg = _segmentation(mrml, fixed_labels, FIXED_MATRIX, ["Brain", "Tumor"], "fixed-seg")
    moving_seg = _segmentation(mrml, moving_labels, MOVING_MATRIX, ["Ventricles", "Brain", "Tumor"], "moving-seg")
    return mrml, fixed_node, moving_node, fixed_seg, moving_seg, fixed_labels, moving_labels


def test_segmentations_become_label_images_with_one_value_per_segment_name(labelled_inputs):
    """Equally named segments get the same label value (1, 2, ... in order of first appearance, fixed
    first), each exported on its own volume's grid; the temporary nodes are removed again."""
    mrml, fixed_node, moving_node, fixed_seg, moving_seg, fixed_labels, moving_labels = labelled_inputs
    assert scene.segment_names([fixed_seg, None, moving_seg]) == ["Brain", "Tumor", "Ventricles"]
    before = _node_ids(mrml)
    fixed_image, moving_image = scene.label_images(mrml, fixed_node, moving_node, fixed_seg, moving_seg)
    assert _left_behind(mrml, before) == []
    np.testing.assert_allclose(fixed_image.ijk_to_ras, FIXED_MATRIX, atol=1e-9)
    np.testing.assert_allclose(moving_image.ijk_to_ras, MOVING_MATRIX, atol=1e-9)
    np.testing.assert_array_equal(fixed_image.array, fixed_labels)  # Brain 1, Tumor 2 as in the fixed source
    expected_moving = np.select([moving_labels == 1, moving_labels == 2, moving_labels == 3], [3, 1, 2], 0)
    np.testing.assert_array_equal(moving_image.array, expected_moving)  # Ventricles 3, Brain 1, Tumor 2

    # a label map volume is used with its own values; no labels at all gives None, None
    own = scene.add_volume_node(mrml, ImageData(_blocks(FIXED_SHAPE, [7]), FIXED_MATRIX), "own", label=True)
    fixed_image, moving_image = scene.label_images(mrml, fixed_node, moving_node, own, moving_seg)
    np.testing.assert_array_equal(fixed_image.array, _blocks(FIXED_SHAPE, [7]))
    np.testing.assert_array_equal(moving_image.array, np.select([moving_labels == 1, moving_labels == 2,
                                                                 moving_labels == 3], [1, 2, 3], 0))
    assert scene.label_images(mrml, fixed_node, moving_node) == (None, None)
    assert _left_behind(mrml, before) == ["vtkMRMLLabelMapVolumeNode own"]


def test_unusable_labels_are_refused_and_leave_no_temporary_node(labelled_inputs):
    mrml, fixed_node, moving_node, fixed_seg, _, _, _ = labelled_inputs
    empty = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing")
    before = _node_ids(mrml)
    with pytest.raises(ValueError, match=r"^The segmentation 'nothing' has no segments\.$"):
        scene.label_images(mrml, fixed_node, moving_node, fixed_seg, empty)
    with pytest.raises(ValueError, match=r"^'moving' must be a label map volume or a segmentation\.$"):
        scene.label_images(mrml, fixed_node, moving_node, fixed_seg, moving_node)
    assert _left_behind(mrml, before) == []


def test_write_input_files_for_the_background_run(tmp_path, labelled_inputs):
    """The files the background command reads: NRRD volumes with the nodes' grids and the exported labels."""
    import SimpleITK as sitk

    mrml, fixed_node, moving_node, fixed_seg, moving_seg, fixed_labels, moving_labels = labelled_inputs
    before = _node_ids(mrml)
    files = scene.write_input_files(mrml, tmp_path, fixed_node, moving_node, fixed_seg, moving_seg)
    assert _left_behind(mrml, before) == []
    assert list(files) == ["fixed", "moving", "fixed_labels", "moving_labels"]
    assert {role: path.name for role, path in files.items()} == {
        "fixed": "fixed.nrrd", "moving": "moving.nrrd", "fixed_labels": "fixed_labels.nrrd",
        "moving_labels": "moving_labels.nrrd"}
    fixed_file = sitk.ReadImage(str(files["fixed"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fixed_file), slicer.util.arrayFromVolume(fixed_node))
    np.testing.assert_allclose(np.asarray(fixed_file.GetOrigin()) * [-1, -1, 1], FIXED_MATRIX[:3, 3], atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(files["fixed_labels"]))), fixed_labels)
    moving_file = sitk.ReadImage(str(files["moving_labels"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(moving_file),
                                  np.select([moving_labels == 1, moving_labels == 2, moving_labels == 3], [3, 1, 2], 0))
    np.testing.assert_allclose(moving_file.GetSpacing(), [1.1, 1.2, 1.0], atol=1e-6)
    (tmp_path / "plain").mkdir()
    assert list(scene.write_input_files(mrml, tmp_path / "plain", fixed_node, moving_node)) == ["fixed", "moving"]
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["fixed.nrrd", "moving.nrrd"]


# --------------------------------------------------------------------------- results in the panel
def test_add_results_to_scene_remembers_glyphs_and_fills_the_table(case):
    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    second = _make_case("regloss", amplitude=1.0, with_labels=False)[2]
    mine = mrml.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    nodes, table = scene.add_results_to_scene(mrml, [result, second], fixed_node, moving_node, True, mine)
    assert list(nodes) == ["baseline", "regloss"] and table is mine and table.GetNumberOfRows() == 2
    assert nodes["regloss"]["warped"].GetName() == "moving-regloss-warped" and "warped_labels" not in nodes["regloss"]
    transform = nodes["baseline"]["transform"]
    display = transform.GetDisplayNode()
    assert float(transform.GetAttribute(scene.AUTO_GLYPH_SPACING_ATTRIBUTE)) == display.GetGlyphSpacingMm()
    assert float(transform.GetAttribute(scene.AUTO_GLYPH_SCALE_ATTRIBUTE)) == display.GetGlyphScalePercent()
    # without reuse, new nodes and the scene's own metrics table, not the one given
    fresh, other_table = scene.add_results_to_scene(mrml, [result], fixed_node, moving_node, False, mine)
    assert fresh["baseline"]["warped"].GetID() != nodes["baseline"]["warped"].GetID()
    assert other_table is not mine and other_table.GetName() == scene.METRICS_TABLE_NAME


def test_display_settings_are_relative_to_the_automatic_glyphs(case):
    from DeepRegAblationLib.panel import DisplaySettings

    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    nodes = scene.add_results_to_scene(mrml, [result], fixed_node, moving_node)[0]["baseline"]
    display = nodes["transform"].GetDisplayNode()
    auto_spacing, auto_scale = display.GetGlyphSpacingMm(), display.GetGlyphScalePercent()

    scene.apply_display_settings(nodes, DisplaySettings())  # the defaults: the automatic glyphs
    assert display.GetGlyphSpacingMm() == pytest.approx(auto_spacing)
    assert display.GetGlyphScalePercent() == pytest.approx(auto_scale)
    assert display.GetVisibility() and display.GetVisibility2D()
    jacobian_display = nodes["jacobian"].GetDisplayNode()
    assert not jacobian_display.GetAutoWindowLevel()
    assert (jacobian_display.GetWindowLevelMin(), jacobian_display.GetWindowLevelMax()) == pytest.approx((-1.0, 3.0))

    # twice the spacing and 50 %: arrows keep their room (x2) at half the automatic length (x0.5)
    scene.apply_display_settings(nodes, DisplaySettings(
        show_glyphs=False, glyph_spacing_mm=2 * auto_spacing, glyph_scale_percent=50.0,
        jacobian_min=0.5, jacobian_max=0.2))
    assert display.GetVisualizationMode() == slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH
    assert display.GetGlyphSpacingMm() == pytest.approx(2 * auto_spacing)
    assert display.GetGlyphScalePercent() == pytest.approx(auto_scale)
    assert not display.GetVisibility() and not display.GetVisibility2D()
    assert jacobian_display.GetWindowLevelMin() == pytest.approx(0.5)
    assert jacobian_display.GetWindowLevelMax() == pytest.approx(0.501)  # never an empty range
    # back to automatic spacing: still relative to the remembered automatic values
    scene.apply_display_settings(nodes, DisplaySettings(glyph_scale_percent=200.0))
    assert display.GetGlyphSpacingMm() == pytest.approx(auto_spacing)
    assert display.GetGlyphScalePercent() == pytest.approx(2 * auto_scale)
    scene.apply_display_settings({}, DisplaySettings())  # nothing shown: nothing to do


# --------------------------------------------------------------------------- what the arrows show (issue 23)
def _slicer_arrows(transform_node, points_ras: np.ndarray) -> np.ndarray:
    """What Slicer's glyphs draw at ``points_ras`` ``(N, 3)``: the transform TO WORLD (Slicer v5.8.0
    ``vtkSlicerTransformLogic::GetTransformedPointSamples(..., transformToWorld=true)``: ``GetTransformToWorld``,
    then ``TransformPoint(p) - p``)."""
    from vtkmodules.vtkCommonTransforms import vtkGeneralTransform

    to_world = vtkGeneralTransform()
    transform_node.GetTransformToWorld(to_world)
    return np.array([np.subtract(to_world.TransformPoint(*p), p) for p in np.asarray(points_ras, dtype=float)])


def test_slicers_glyph_logic_draws_the_transform_to_world(case):
    """The real ``vtkSlicerTransformLogic`` samples the result's grid transform TO WORLD (the inverse of the stored
    fixed -> moving field, roughly ``-u``): the direction every other test of the arrows relies on."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    node = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)["transform"]
    image = vtkImageData()
    image.SetExtent(0, FIXED_SHAPE[2] - 1, 0, FIXED_SHAPE[1] - 1, 0, FIXED_SHAPE[0] - 1)
    assert slicer.vtkSlicerTransformLogic.GetTransformedPointSamplesAsVectorImage(
        image, node, scene.nodes.vtk_matrix(FIXED_MATRIX))  # transformToWorld defaults to true
    drawn = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(-1, 3)
    points = geometry.grid_points_ras(FIXED_SHAPE, FIXED_MATRIX).reshape(-1, 3)
    np.testing.assert_allclose(drawn, _slicer_arrows(node, points), atol=1e-6)
    u = result.disp_ras_mm.reshape(-1, 3)
    assert np.mean(np.sum(drawn * u, axis=-1) < 0) > 0.95  # opposite to the stored field


def test_snapshot_arrows_are_the_arrows_slicer_draws_and_mean_what_the_help_says(case):
    """The glyph snapshot's arrows (``snapshots.glyph_samples``) are Slicer's arrows at the same points, projected on
    the slice (they drew ``+u``: the other way); and each says where the moving image's content at its start goes
    once registered: the fixed point ``x + v`` maps back to ``x`` (``T(p) = p + u(p)``)."""
    from DeepRegAblationLib.outputs import arrows

    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    node = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)["transform"]
    view = snapshots.SliceView(FIXED_MATRIX, FIXED_SHAPE)
    samples = snapshots.glyph_samples(view, FIXED_MATRIX, result.disp_ras_mm, arrows_across=6)
    starts = view.points_ras(samples.rows, samples.cols, FIXED_MATRIX)
    drawn = _slicer_arrows(node, starts)
    np.testing.assert_allclose(samples.u_x, drawn @ view.col_dir_ras, atol=0.02)
    np.testing.assert_allclose(samples.u_y, drawn @ view.row_dir_ras, atol=0.02)
    np.testing.assert_allclose(samples.magnitude, np.linalg.norm(drawn, axis=-1), atol=0.02)
    ends = starts + arrows.displayed_displacement_ras_mm(starts, result.disp_ras_mm, FIXED_MATRIX)
    inside = _interior(ends, FIXED_SHAPE, FIXED_MATRIX, margin=0.0)  # where the field is defined
    assert inside.sum() > 20
    u_at_ends = np.stack([resampling.sample_at_ras(result.disp_ras_mm[..., c], FIXED_MATRIX, ends) for c in range(3)], -1)
    np.testing.assert_allclose((ends + u_at_ends)[inside], starts[inside], atol=0.02)


def test_glyph_colours_cover_the_longest_arrow_drawn(case):
    """Slicer's glyph colours span the colour node's range (``GetVisualization2d`` sets the display node's scalar
    range from it): that range must reach the longest arrow drawn (it stopped at the 99th percentile of |u|),
    and the display range must hide none of them; checked on the real 2D glyphs of slices through the field."""
    from DeepRegAblationLib.outputs import arrows
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    display = scene.add_registration_to_scene(mrml, result, fixed_node, moving_node)["transform"].GetDisplayNode()
    top = display.GetColorNode().GetScalarsToColors().GetRange()[1]
    longest = arrows.longest_arrow_mm(result.disp_ras_mm)
    assert top >= longest and display.GetGlyphDisplayRangeMaxMm() >= longest
    centre = _centre(FIXED_SHAPE, FIXED_MATRIX)
    drawn_max = 0.0
    for offset in (-4.0, -2.0, 0.0, 2.0, 4.0):
        slice_to_ras = scene.nodes.vtk_matrix(geometry.translation_matrix(centre + [0.0, 0.0, offset]))
        glyphs = vtkPolyData()
        assert slicer.vtkSlicerTransformLogic.GetVisualization2d(glyphs, display, slice_to_ras, [0, 0, 0], [40, 40, 1])
        assert display.GetScalarRange()[1] == pytest.approx(top)
        drawn_max = max(drawn_max, glyphs.GetPointData().GetArray("DisplacementMagnitude").GetRange()[1])
    assert 0.5 * longest < drawn_max <= top


# --------------------------------------------------------------------------- one result shown at a time (issue 23)
def _visible_glyphs(mrml) -> list:
    """The names of the grid transforms whose glyphs are visible."""
    names = []
    for index in range(mrml.GetNumberOfNodesByClass("vtkMRMLGridTransformNode")):
        node = mrml.GetNthNodeByClass(index, "vtkMRMLGridTransformNode")
        display = node.GetDisplayNode()
        if display is not None and display.GetVisibility():
            names.append(node.GetName())
    return names


def test_compare_all_shows_one_glyph_field_and_the_display_follows_the_shown_variant(case):
    """Compare all: only the first variant's glyphs are visible after the run (all four were); showing another
    variant (a row of the metrics table) switches the glyphs to it and applies the Display settings to it, not
    to the first; the table's first column names the variant of each row (what the panel reads on a click)."""
    from DeepRegAblationLib.panel import DisplaySettings

    fixed, moving, _ = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    variants = ["baseline", "regloss", "affine_basic", "affine_enhanced"]
    results = [_make_case(variant, amplitude=1.0 + 0.5 * n)[2] for n, variant in enumerate(variants)]
    nodes, table = scene.add_results_to_scene(mrml, results, fixed_node, moving_node)
    assert _visible_glyphs(mrml) == ["moving-baseline-transform"]
    assert [table.GetCellText(row, 0) for row in range(table.GetNumberOfRows())] == variants

    baseline_scale = nodes["baseline"]["transform"].GetDisplayNode().GetGlyphScalePercent()
    auto_scale = nodes["regloss"]["transform"].GetDisplayNode().GetGlyphScalePercent()
    scene.show_result(mrml, nodes["regloss"], DisplaySettings(glyph_scale_percent=50.0))
    assert _visible_glyphs(mrml) == ["moving-regloss-transform"]
    assert nodes["regloss"]["transform"].GetDisplayNode().GetGlyphScalePercent() == pytest.approx(0.5 * auto_scale)
    assert nodes["baseline"]["transform"].GetDisplayNode().GetGlyphScalePercent() == pytest.approx(baseline_scale)
    scene.show_result(mrml, nodes["affine_enhanced"], DisplaySettings(show_glyphs=False))
    assert _visible_glyphs(mrml) == []
    scene.show_result(mrml, nodes["affine_enhanced"], DisplaySettings())
    assert _visible_glyphs(mrml) == ["moving-affine_enhanced-transform"]
    # a later run (one variant) hides the glyphs of the earlier results too
    later = scene.add_results_to_scene(mrml, [_make_case("baseline")[2]], fixed_node, moving_node, reuse=False)[0]
    assert _visible_glyphs(mrml) == [later["baseline"]["transform"].GetName()]


# --------------------------------------------------------------------------- reuse only for the same inputs (issue 23)
def test_reuse_replaces_only_the_results_of_the_same_fixed_and_moving_volumes(case):
    """"Reuse" overwrote ``<moving>-<variant>-*`` nodes made with another fixed volume, silently replacing those
    results (the tooltip promises reuse for the same inputs only). With another fixed volume, new nodes, folder,
    colours and table; the earlier ones stay as they were; the same inputs again reuse them."""
    fixed, moving, result = case
    mrml, fixed_node, moving_node = _scene_with_inputs(fixed, moving)
    other_fixed = scene.add_volume_node(mrml, fixed, "other fixed")  # same grid, another volume
    first, first_table = scene.add_results_to_scene(mrml, [result], fixed_node, moving_node, reuse=True)
    first = first["baseline"]
    kept = {key: slicer.util.arrayFromVolume(first[key]).copy() for key in ("warped", "jacobian")}
    kept_field = slicer.util.arrayFromGridTransform(first["transform"]).copy()

    changed = _make_case(amplitude=1.0)[2]
    second, second_table = scene.add_results_to_scene(mrml, [changed], other_fixed, moving_node, reuse=True,
                                                      table_node=first_table)
    second = second["baseline"]
    for key in ("warped", "affine", "transform", "jacobian", "warped_labels"):
        assert second[key].GetID() != first[key].GetID(), key
        assert mrml.IsNodePresent(first[key]), key
    assert second["folder"] != first["folder"] and second_table is not first_table
    assert (second["transform"].GetDisplayNode().GetColorNodeID()
            != first["transform"].GetDisplayNode().GetColorNodeID())
    for key, array in kept.items():
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(first[key]), array)
    np.testing.assert_array_equal(slicer.util.arrayFromGridTransform(first["transform"]), kept_field)
    assert first_table.GetNumberOfRows() == 1

    again, again_table = scene.add_results_to_scene(mrml, [changed], fixed_node, moving_node, reuse=True,
                                                    table_node=first_table)
    assert {k: v.GetID() for k, v in again["baseline"].items() if k != "folder"} == {
        k: v.GetID() for k, v in first.items() if k != "folder"}
    assert again["baseline"]["folder"] == first["folder"] and again_table is first_table
    np.testing.assert_allclose(slicer.util.arrayFromGridTransform(first["transform"]), changed.disp_ras_mm, atol=1e-6)
