"""Off-screen VTK snapshots: real renders to PNG, read back and inspected pixel by pixel."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

vtk_rendering = pytest.importorskip("vtkmodules.vtkRenderingOpenGL2", reason="VTK rendering is not installed")

from DeepRegAblationLib import fields, geometry, resampling  # noqa: E402
from DeepRegAblationLib.imageio import ImageData  # noqa: E402
from DeepRegAblationLib.outputs import snapshots  # noqa: E402
from DeepRegAblationLib.registration import RegistrationResult  # noqa: E402


def _read_png(path) -> np.ndarray:
    """``(height, width, 3)`` uint8, row 0 at the TOP of the picture."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkIOImage import vtkPNGReader

    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return pixels[::-1, :, :3]


def _plane_region(pixels: np.ndarray) -> np.ndarray:
    """The part of a glyph / Jacobian snapshot that shows the slice (no title, no colour bar)."""
    height, width = pixels.shape[:2]
    return pixels[int(0.08 * height): int(0.95 * height), : int(0.8 * width)].astype(int)


def _coloured(pixels: np.ndarray, tolerance: int = 12) -> np.ndarray:
    """Pixels that are not grey (arrows, colour maps)."""
    return (np.ptp(pixels, axis=-1) > tolerance)


def _case(shape=(12, 40, 48), amplitude=2.0, fold=False, spacing=(1.1, 0.9, 2.0), angle=0.3):
    """Fixed/moving phantoms on different oblique grids and a smooth known field (RAS mm)."""
    c, s = math.cos(angle), math.sin(angle)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    fixed_matrix = geometry.matrix_from_geometry(spacing, direction, [-20.0, -18.0, -10.0])
    points = geometry.grid_points_ras(shape, fixed_matrix)
    centre = points.reshape(-1, 3).mean(axis=0)

    def phantom(p):
        q = (p - centre) / [18.0, 14.0, 30.0]
        blob = np.exp(-np.sum(((p - centre - [6, 2, 0]) / 5.0) ** 2, -1))
        return (100.0 * (np.sum(q ** 2, axis=-1) < 1.0) + 40.0 * blob).astype(np.float32)

    moving_matrix = geometry.matrix_from_geometry([1.5, 1.5, 1.5], np.eye(3), centre - 45.0)
    moving_points = geometry.grid_points_ras((60, 60, 60), moving_matrix)
    moving = ImageData(phantom(moving_points - [3.0, -2.0, 0.0]), moving_matrix, "moving")
    fixed = ImageData(phantom(points), fixed_matrix, "fixed")
    q = (points - centre) / 8.0
    disp = amplitude * np.stack([np.sin(q[..., 1]) + 0.5, -np.cos(q[..., 0]), 0.2 * np.sin(q[..., 2])], axis=-1)
    if fold:  # stripes where 1 + a k cos(k x) < 0: folding across the whole slice
        wave = 1.0 / 1.5
        disp[..., 0] += 3.0 * np.sin(wave * (points[..., 0] - centre[0]))
    warped = resampling.sample_at_ras(moving.array, moving_matrix, points + disp)
    ndim = 2 if shape[0] == 1 else 3  # a single-slice image has the in-plane (2D) Jacobian
    disp_vox = torch.from_numpy(geometry.ras_mm_to_disp_vox(disp, fixed_matrix, ndim=ndim)).float()[None]
    jacobian = fields.jacobian_determinant(disp_vox)[0].numpy().reshape(shape)
    result = RegistrationResult(
        variant="baseline", fixed_ijk_to_ras=fixed_matrix, warped=warped, warped_labels=None,
        affine_ras=np.eye(4), disp_ras_mm=disp.astype(np.float32), deform_disp_ras_mm=disp.astype(np.float32),
        jacobian=jacobian.astype(np.float32), metrics={}, timings={},
    )
    return fixed, moving, result


@pytest.fixture(scope="module")
def folded_case():
    return _case(fold=True)


def test_write_snapshots_makes_three_real_renders(tmp_path, folded_case):
    fixed, moving, result = folded_case
    paths = snapshots.write_snapshots(tmp_path, fixed, moving, result)
    assert [p.name for p in paths] == ["glyphs.png", "jacobian.png", "checkerboard.png"]
    sizes = {"glyphs.png": (800, 900), "jacobian.png": (800, 900), "checkerboard.png": (800, 1600)}
    for path in paths:
        pixels = _read_png(path)
        assert pixels.shape[:2] == sizes[path.name]
        assert pixels.astype(float).var() > 100.0, path.name  # not blank

    # glyphs: coloured arrows over the grey slice; the same slice without displacement has none
    glyph_colour = _coloured(_plane_region(_read_png(paths[0]))).sum()
    still = RegistrationResult(**{**result.__dict__, "disp_ras_mm": np.zeros_like(result.disp_ras_mm)})
    plain = _plane_region(_read_png(snapshots.render_glyphs(tmp_path / "plain.png", fixed, still)))
    assert _coloured(plain).sum() == 0
    assert plain.var() > 100.0  # the slice itself is drawn
    assert glyph_colour > 500

    # Jacobian: folded voxels exist on the slice and are drawn in the folded colour
    view = snapshots.SliceView(result.fixed_ijk_to_ras, fixed.array.shape)
    assert (view.extract(result.jacobian) <= 0).sum() > 20
    folded_rgb = np.round(np.array(snapshots.FOLDED_RGB) * 255)
    jac = _plane_region(_read_png(paths[1]))
    assert (np.abs(jac - folded_rgb).max(axis=-1) <= 3).sum() > 200

    # checkerboard: before (left) and after (right) differ
    board = _read_png(paths[2]).astype(int)
    left, right = board[:, :800], board[:, 800:]
    assert np.abs(left - right).mean() > 1.0


def test_no_folded_colour_without_folding(tmp_path):
    fixed, moving, result = _case(amplitude=1.0)
    assert (result.jacobian > 0).all()
    folded_rgb = np.round(np.array(snapshots.FOLDED_RGB) * 255)
    jac = _plane_region(_read_png(snapshots.render_jacobian(tmp_path / "jacobian.png", fixed, result)))
    assert (np.abs(jac - folded_rgb).max(axis=-1) <= 3).sum() == 0
    assert (jac.min(axis=-1) > 235).sum() > 10000  # det J close to 1 is drawn (near) white


def test_single_slice_2d_image(tmp_path):
    fixed, moving, result = _case(shape=(1, 40, 48))
    paths = snapshots.write_snapshots(tmp_path, fixed, moving, result)
    assert all(p.is_file() for p in paths)
    assert _coloured(_plane_region(_read_png(paths[0]))).sum() > 300


def test_slice_view_orientation():
    """Radiological display: patient left on screen right, anterior up; the axial axis is cut."""
    shape = (5, 6, 7)
    ras_aligned = np.diag([2.0, 1.0, 3.0, 1.0])  # i -> R, j -> A, k -> S
    view = snapshots.SliceView(ras_aligned, shape)
    assert (view.axis, view.index) == (0, 2)
    assert (view.row_axis, view.col_axis) == (1, 2)
    points = geometry.grid_points_ras(shape, ras_aligned)
    plane = view.extract(points)  # (rows, cols, 3) RAS of each displayed pixel
    assert np.all(np.diff(plane[..., 0], axis=1) < 0)  # R decreases to the right
    assert np.all(np.diff(plane[..., 1], axis=0) > 0)  # A increases upwards
    assert (view.col_spacing_mm, view.row_spacing_mm) == (2.0, 1.0)
    np.testing.assert_allclose(view.col_dir_ras, [-1, 0, 0])
    # an LPS-ordered grid (i -> L, j -> P) shows the same anatomy the same way
    lps_like = np.diag([-2.0, -1.0, 3.0, 1.0])
    view = snapshots.SliceView(lps_like, shape)
    plane = view.extract(geometry.grid_points_ras(shape, lps_like))
    assert np.all(np.diff(plane[..., 0], axis=1) < 0) and np.all(np.diff(plane[..., 1], axis=0) > 0)
    # a coronal acquisition (k -> A): the cut axis is the one closest to S
    coronal = np.eye(4)
    coronal[:3, :3] = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    assert snapshots.SliceView(coronal, shape).axis == 1


def test_jacobian_colours_diverge_at_one_and_mark_folding():
    colors = snapshots.jacobian_colors()
    low, high = snapshots.JACOBIAN_RANGE
    width = (high - low) / len(colors)

    def color_of(det):
        return colors[int(np.clip((det - low) // width, 0, len(colors) - 1))]

    np.testing.assert_allclose(color_of(1.0), [1, 1, 1], atol=0.02)
    np.testing.assert_allclose(color_of(-0.01), snapshots.FOLDED_RGB)
    assert not np.allclose(color_of(0.02), snapshots.FOLDED_RGB)
    assert color_of(0.5)[2] > color_of(0.5)[0] and color_of(2.0)[0] > color_of(2.0)[2]
    # symmetric in log: halving and doubling are equally strong (fraction of the way to full colour)
    def strength(det):
        full = color_of(0.2 if det < 1 else high - width)  # |log det J| >= log 3: full colour
        return np.linalg.norm(1.0 - color_of(det)) / np.linalg.norm(1.0 - full)

    assert strength(0.5) == pytest.approx(strength(2.0), abs=0.05)
    assert strength(0.5) == pytest.approx(math.log(2) / math.log(3), abs=0.05)
    table = snapshots.jacobian_lookup_table()
    rgb = [0.0, 0.0, 0.0]
    table.GetColor(-5.0, rgb)
    np.testing.assert_allclose(rgb, snapshots.FOLDED_RGB, atol=1 / 255)  # VTK stores 8-bit colours


def test_checkerboard_and_input_checks(tmp_path, folded_case):
    a, b = np.zeros((16, 16)), np.ones((16, 16))
    board = snapshots.checkerboard(a, b, tiles=4)
    assert board[0, 0] == 0 and board[0, 4] == 1 and board[4, 4] == 0 and board.mean() == 0.5
    with pytest.raises(ValueError, match="same shape"):
        snapshots.checkerboard(a, b[:3])
    fixed, moving, result = folded_case
    bad = RegistrationResult(**{**result.__dict__, "jacobian": result.jacobian[:2]})
    with pytest.raises(ValueError, match="jacobian"):
        snapshots.write_snapshots(tmp_path, fixed, moving, bad)
