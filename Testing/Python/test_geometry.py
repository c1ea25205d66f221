"""geometry.py: IJK/RAS/LPS conversions, axis order, resampling between physical grids."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from _registration_helpers import label_volume, oblique_matrix, oblique_pair, smooth_volume
from DeepRegAblationLib import geometry, resampling
from DeepRegAblationLib.imageio import ImageData, itk_image_from_array


def test_ijk_ras_round_trip_and_spacing():
    matrix = oblique_matrix([1.2, 0.9, 2.0], [10, -20, 15], [10.0, -5.0, 3.0])
    rng = np.random.default_rng(1)
    ijk = rng.uniform(-5, 30, size=(50, 3))
    ras = geometry.voxel_to_ras(ijk, matrix)
    np.testing.assert_allclose(ras, (matrix @ np.c_[ijk, np.ones(50)].T).T[:, :3], atol=1e-12)
    np.testing.assert_allclose(geometry.ras_to_voxel(ras, matrix), ijk, atol=1e-10)
    np.testing.assert_allclose(geometry.spacing_from_matrix(matrix), [1.2, 0.9, 2.0], atol=1e-12)
    assert geometry.spacing_kji(matrix) == pytest.approx((2.0, 0.9, 1.2))
    direction = geometry.direction_from_matrix(matrix)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    rebuilt = geometry.matrix_from_geometry([1.2, 0.9, 2.0], direction, matrix[:3, 3])
    np.testing.assert_allclose(rebuilt, matrix, atol=1e-12)


def test_ras_lps_conversions():
    matrix = oblique_matrix([1.0, 2.0, 3.0], [5, 10, -15], [1.0, 2.0, 3.0])
    lps = geometry.ijk_to_lps(matrix)
    np.testing.assert_allclose(lps[:2], -matrix[:2])
    np.testing.assert_allclose(lps[2:], matrix[2:])
    np.testing.assert_allclose(geometry.ijk_to_ras_from_lps(lps), matrix)
    transform = np.eye(4)
    transform[:3, :3] = oblique_matrix([1, 1, 1], [3, 4, 5], [0, 0, 0])[:3, :3] * 1.1
    transform[:3, 3] = [4.0, -2.0, 7.0]
    point_ras = np.array([3.0, -8.0, 12.0])
    moved_lps = geometry.transform_ras_to_lps(transform) @ np.r_[geometry.vectors_ras_to_lps(point_ras), 1.0]
    np.testing.assert_allclose(geometry.vectors_lps_to_ras(moved_lps[:3]), (transform @ np.r_[point_ras, 1])[:3])
    with pytest.raises(ValueError, match="singular"):
        geometry.validate_ijk_to_ras(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        geometry.validate_ijk_to_ras(np.eye(3))


def test_axis_reorder_and_displacement_units():
    matrix = oblique_matrix([1.2, 0.9, 2.0], [10, -20, 15], [0.0, 0.0, 0.0])
    rng = np.random.default_rng(2)
    disp_vox = rng.normal(size=(3, 4, 5, 6))  # channels (k, j, i)
    disp_ras = geometry.disp_vox_to_ras_mm(disp_vox, matrix)
    assert disp_ras.shape == (4, 5, 6, 3)
    k, j, i = 1, 2, 3
    u_ijk = disp_vox[::-1, k, j, i]
    np.testing.assert_allclose(disp_ras[k, j, i], matrix[:3, :3] @ u_ijk, atol=1e-12)
    np.testing.assert_allclose(geometry.ras_mm_to_disp_vox(disp_ras, matrix), disp_vox, atol=1e-12)
    np.testing.assert_array_equal(geometry.kji_to_ijk(np.array([1, 2, 3])), [3, 2, 1])
    # a 2D field (channels (j, i)) of a single-slice grid: no k component
    disp_2d = rng.normal(size=(2, 5, 6))
    ras_2d = geometry.disp_vox_to_ras_mm(disp_2d, matrix)
    assert ras_2d.shape == (1, 5, 6, 3)
    np.testing.assert_allclose(ras_2d[0, 1, 2], matrix[:3, :3] @ [disp_2d[1, 1, 2], disp_2d[0, 1, 2], 0.0], atol=1e-12)
    np.testing.assert_allclose(geometry.ras_mm_to_disp_vox(ras_2d, matrix, ndim=2), disp_2d, atol=1e-12)


def test_matrix_vox_to_ras_maps_grid_points():
    grid = oblique_matrix([1.5, 1.0, 2.5], [0, 30, 10], [5.0, 5.0, 5.0])
    matrix_vox = np.eye(4)
    matrix_vox[:3, :3] += np.array([[0.05, 0.01, 0.0], [0.02, -0.04, 0.03], [0.0, 0.01, 0.02]])
    matrix_vox[:3, 3] = [1.0, -2.0, 0.5]
    affine_ras = geometry.matrix_vox_to_ras(matrix_vox, grid)
    x_kji = np.array([3.0, 7.0, 2.0])
    y_kji = matrix_vox[:3, :3] @ x_kji + matrix_vox[:3, 3]
    p = geometry.voxel_to_ras(x_kji[::-1], grid)
    q = geometry.voxel_to_ras(y_kji[::-1], grid)
    np.testing.assert_allclose(affine_ras[:3, :3] @ p + affine_ras[:3, 3], q, atol=1e-10)


def test_resample_identical_grid_is_exact():
    fixed, _ = oblique_pair()
    out = resampling.resample_to_grid(fixed.array, fixed.ijk_to_ras, fixed.ijk_to_ras, fixed.shape)
    np.testing.assert_array_equal(out, fixed.array)
    labels = label_volume(fixed.array)
    out_labels = resampling.resample_to_grid(labels, fixed.ijk_to_ras, fixed.ijk_to_ras, fixed.shape, mode="nearest")
    assert out_labels.dtype == labels.dtype
    np.testing.assert_array_equal(out_labels, labels)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_resample_matches_simpleitk_on_oblique_anisotropic_grids(mode):
    fixed, moving = oblique_pair()
    array = moving.array if mode == "linear" else label_volume(moving.array)
    out = resampling.resample_to_grid(array, moving.ijk_to_ras, fixed.ijk_to_ras, fixed.shape, mode=mode)
    reference = sitk.Resample(
        itk_image_from_array(array, moving.ijk_to_ras),
        itk_image_from_array(np.zeros(fixed.shape, np.float32), fixed.ijk_to_ras),
        sitk.Transform(),
        sitk.sitkLinear if mode == "linear" else sitk.sitkNearestNeighbor,
        0.0,
    )
    expected = sitk.GetArrayFromImage(reference)
    assert 0.2 < np.mean(expected != 0) < 0.9  # partial overlap: the outside is exercised too
    np.testing.assert_allclose(out, expected, atol=1e-4 * float(np.abs(array).max()))


def test_model_grid_centred_and_axis_aligned():
    fixed, _ = oblique_pair()
    grid, shape = geometry.model_grid_for(fixed, [1.5, 1.5, 1.5], [16, 32, 16])
    assert shape == (16, 32, 16)
    np.testing.assert_allclose(geometry.spacing_from_matrix(grid), [1.5, 1.5, 1.5])
    np.testing.assert_allclose(geometry.direction_from_matrix(grid), geometry.direction_from_matrix(fixed.ijk_to_ras))
    centre = lambda m, s: geometry.voxel_to_ras((np.asarray(s[::-1]) - 1) / 2.0, m)  # noqa: E731
    np.testing.assert_allclose(centre(grid, shape), centre(fixed.ijk_to_ras, fixed.shape), atol=1e-9)
    # same spacing as the fixed image: model voxels coincide with fixed voxels (padding only)
    same, same_shape = geometry.model_grid_for(fixed, fixed.spacing_kji, [32, 32, 32])
    offset = geometry.ras_to_voxel(same[:3, 3], fixed.ijk_to_ras)
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-9)
    padded = resampling.resample_to_grid(fixed.array, fixed.ijk_to_ras, same, same_shape)
    start = np.round(offset).astype(int)[::-1]  # (k, j, i)
    crop = padded[-start[0] : -start[0] + 20, -start[1] : -start[1] + 28, -start[2] : -start[2] + 24]
    np.testing.assert_array_equal(crop, fixed.array)


def test_model_grid_2d_single_slice():
    image = ImageData(smooth_volume((1, 20, 30)), np.diag([0.8, 1.1, 3.0, 1.0]))
    grid, shape = geometry.model_grid_for(image, [1.1, 0.8], [32, 32])
    assert shape == (1, 32, 32)
    np.testing.assert_allclose(geometry.spacing_from_matrix(grid), [0.8, 1.1, 3.0])
    with pytest.raises(ValueError, match="single-slice"):
        geometry.model_grid_for(ImageData(np.zeros((4, 5, 6)), np.eye(4)), [1.0, 1.0], [16, 16])


def test_overlap_check_names_both_inputs():
    fixed, moving = oblique_pair()
    assert geometry.check_overlap(fixed, moving) > 0.1
    far = ImageData(moving.array, moving.ijk_to_ras.copy())
    far.ijk_to_ras[:3, 3] += [500.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="fixed and moving do not overlap"):
        geometry.check_overlap(fixed, far)


def _lps_image(shape=(12, 14, 10), spacing_ijk=(1.5, 1.2, 2.0)):
    """An axis-aligned LPS-ordered image: i -> L, j -> P, k -> S (ITK's default), float32."""
    matrix = geometry.matrix_from_geometry(spacing_ijk, np.diag([-1.0, -1.0, 1.0]), [20.0, 15.0, -8.0])
    return ImageData(smooth_volume(shape, seed=4), matrix, "lps")


def test_closest_ras_view_is_the_same_voxels_reindexed_like_nibabel():
    from nibabel import orientations

    psr = np.zeros((4, 4))
    psr[:3, :3] = [[0, 0, 2.0], [-2.0, 0, 0], [0, 2.0, 0]]  # i -> P, j -> S, k -> R (the IXI heads)
    psr[:, 3] = [-88.0, 118.0, -135.0, 1.0]
    for image in (_lps_image(), ImageData(smooth_volume((9, 12, 11), seed=6), psr, "psr")):
        view, view_shape = geometry.closest_ras_view(image.ijk_to_ras, image.shape)
        np.testing.assert_allclose(geometry.direction_from_matrix(view), np.eye(3), atol=1e-12)
        # nibabel's closest canonical of the same image is the same grid
        ornt = orientations.io_orientation(image.ijk_to_ras)
        shape_ijk = image.shape[::-1]
        canonical = image.ijk_to_ras @ orientations.inv_ornt_aff(ornt, shape_ijk)
        np.testing.assert_allclose(view, canonical, atol=1e-9)
        # the same voxels: resampling onto the view is an exact permutation / flip
        copied = resampling.resample_to_grid(image.array, image.ijk_to_ras, view, view_shape)
        expected = np.transpose(orientations.apply_orientation(np.transpose(image.array, (2, 1, 0)), ornt), (2, 1, 0))
        np.testing.assert_array_equal(copied, expected)


def test_model_grid_ras_orientation_oblique_and_lps():
    centre = lambda m, s: geometry.voxel_to_ras((np.asarray(s[::-1]) - 1) / 2.0, m)  # noqa: E731
    fixed, _ = oblique_pair()
    grid, shape = geometry.model_grid_for(fixed, [2.0, 1.5, 1.0], [16, 32, 16], orientation="RAS")
    assert shape == (16, 32, 16)
    # axis-aligned with RAS: a diagonal, positive 3x3 with the model spacing (i, j, k) = (1.0, 1.5, 2.0)
    np.testing.assert_allclose(grid[:3, :3], np.diag([1.0, 1.5, 2.0]), atol=1e-12)
    np.testing.assert_allclose(centre(grid, shape), centre(fixed.ijk_to_ras, fixed.shape), atol=1e-9)
    native, _ = geometry.model_grid_for(fixed, [2.0, 1.5, 1.0], [16, 32, 16])
    assert np.abs(native[:3, :3] - grid[:3, :3]).max() > 0.1  # the native grid follows the oblique axes

    lps = _lps_image()  # RAS view: the same axis order (k, j, i) = (S, A, R), i and j flipped
    grid, shape = geometry.model_grid_for(lps, lps.spacing_kji, [16, 16, 16], orientation="RAS")
    np.testing.assert_allclose(grid[:3, :3], np.diag([1.5, 1.2, 2.0]), atol=1e-12)
    # same spacing: grid points fall on fixed voxels, the image is padded and flipped, not interpolated
    view, _ = geometry.closest_ras_view(lps.ijk_to_ras, lps.shape)
    offset_ijk = geometry.ras_to_voxel(grid[:3, 3], view)
    np.testing.assert_allclose(offset_ijk, np.round(offset_ijk), atol=1e-9)
    start = -np.round(offset_ijk).astype(int)[::-1]  # (k, j, i) of the first image voxel in the grid
    padded = resampling.resample_to_grid(lps.array, lps.ijk_to_ras, grid, shape)
    window = tuple(slice(s0, s0 + n) for s0, n in zip(start, lps.shape))
    np.testing.assert_array_equal(padded[window], lps.array[:, ::-1, ::-1])
    with pytest.raises(ValueError, match="orientation 'RAS' needs a 3D model grid"):
        geometry.model_grid_for(ImageData(np.zeros((1, 8, 8)), np.eye(4)), [1.0, 1.0], [16, 16], orientation="RAS")
    with pytest.raises(ValueError, match="orientation must be one of"):
        geometry.model_grid_for(lps, [1.0, 1.0, 1.0], [16, 16, 16], orientation="LPI")


@pytest.mark.parametrize("fill_value", [0.0, None])
def test_shared_lattice_copies_voxels_without_interpolation(fill_value):
    """Same spacing, axes permuted / flipped, whole-voxel shift: the fast path copies voxels."""
    fixed, _ = oblique_pair()
    labels = label_volume(fixed.array)
    view, view_shape = geometry.closest_ras_view(fixed.ijk_to_ras, fixed.shape)  # permutation + flips
    shifted = view.copy()
    shifted[:3, 3] += view[:3, :3] @ [-2.0, 3.0, 1.0]  # and a shift by whole voxels, partly outside
    matrix = resampling.index_map(fixed.ijk_to_ras, shifted)
    field = np.stack([fixed.array, 2 * fixed.array, labels.astype(np.float32)])
    fast = resampling._exact_index_view(field, matrix, view_shape, fill_value)
    assert fast is not None  # the fast path applies
    # the general path: every destination voxel's source index, sampled (float64, so exact on grid points)
    coords = geometry.affine_on_grid(matrix[[2, 1, 0]], view_shape, dtype=torch.float64)
    general = resampling.sample_voxels(torch.from_numpy(field.astype(np.float64)), coords, "linear", fill_value).numpy()
    np.testing.assert_array_equal(fast, general.astype(np.float32))
    outside = general[0] == 0.0  # (the image is > 0 inside, up to its minimum voxel)
    assert 0.05 < np.mean(outside) < 0.95 if fill_value is not None else np.mean(outside) < 0.01
    for array, mode in ((fixed.array, "linear"), (labels, "nearest")):  # the public entry point, through RAS points
        out = resampling.resample_to_grid(array, fixed.ijk_to_ras, shifted, view_shape, mode=mode)
        reference = resampling.sample_at_ras(array, fixed.ijk_to_ras, geometry.grid_points_ras(view_shape, shifted), mode=mode)
        np.testing.assert_array_equal(out, reference)


def _scaled_permuted_grid(spacing=(1.1, 0.9, 1.3)):
    """A grid whose axes are the RAS axes scaled, permuted and flipped (as a scanner's volume against a model grid)."""
    grid = np.eye(4)
    grid[:3, :3] = [[0.0, 0.0, -spacing[2]], [spacing[0], 0.0, 0.0], [0.0, spacing[1], 0.0]]
    grid[:3, 3] = [30.0, -40.0, -35.0]
    return grid


def test_separable_field_upsampling_is_the_trilinear_interpolation():
    """Fields (linear, border values beyond the border) onto an axis-aligned grid take three one-axis
    interpolations: the float64 trilinear values to float32 rounding, a slab the whole grid's values there."""
    rng = np.random.default_rng(0)
    field = rng.normal(size=(3, 12, 16, 12)).astype(np.float32)
    coarse = np.diag([4.0, 4.0, 4.0, 1.0])
    coarse[:3, 3] = [-20.0, -30.0, -25.0]
    fine, shape = _scaled_permuted_grid(), (40, 70, 60)  # reaches beyond the coarse grid: the border is exercised
    matrix = resampling.index_map(coarse, fine)
    assert resampling._separable_linear(field, matrix, shape, (0, shape[0])) is not None  # the separable path applies
    out = resampling.resample_channels(field, coarse, fine, shape, mode="linear", fill_value=None)
    coords = geometry.affine_on_grid(matrix[[2, 1, 0]], shape, dtype=torch.float64)
    reference = resampling.sample_voxels(torch.from_numpy(field.astype(np.float64)), coords, "linear", None).numpy()
    assert out.dtype == np.float32 and out.shape == (3,) + shape
    np.testing.assert_allclose(out, reference, atol=2e-6)
    inside = (coords >= 0).all(0) & (coords <= torch.tensor([11.0, 15.0, 11.0])[:, None, None, None]).all(0)
    assert 0.1 < float(inside.float().mean()) < 0.9
    slab = resampling.resample_channels(field, coarse, fine, shape, mode="linear", fill_value=None, k_range=(5, 17))
    np.testing.assert_array_equal(slab, out[:, 5:17])
    on_grid = resampling.resample_channels(field, coarse, coarse, (12, 16, 12), mode="linear", fill_value=None)
    np.testing.assert_array_equal(on_grid, field)  # grid points: the voxels themselves
    oblique = oblique_matrix((1.1, 0.9, 1.3), (10.0, -5.0, 20.0), (30.0, -40.0, -35.0))
    assert resampling._separable_linear(field, resampling.index_map(coarse, oblique), shape, (0, shape[0])) is None


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.float32])
def test_nearest_sampling_copies_label_values_of_any_dtype(dtype):
    """Nearest sampling reads the nearest voxel by index (no float round trip): values of any dtype exactly,
    ``fill_value`` outside (``-0.5 <= c < n - 0.5`` inside), the border voxel beyond it when ``None``."""
    rng = np.random.default_rng(1)
    big = np.iinfo(np.int64).max - 7 if dtype == np.int64 else 200
    labels = rng.integers(0, 5, size=(1, 6, 7, 8)).astype(dtype)
    labels[0, 2, 3, 4] = big  # beyond float64's exact integers for int64
    coords = torch.from_numpy(rng.uniform(-1.5, 8.5, size=(3, 500)))
    coords[:, 0] = torch.tensor([2.2, 2.9, 4.4])
    for fill_value in (0.0, None):
        out = resampling.sample_voxels(torch.from_numpy(labels), coords, "nearest", fill_value).numpy()
        assert out.dtype == labels.dtype
        index = np.round(coords.numpy())
        sizes = np.array(labels.shape[1:])[:, None]
        inside = np.all((coords.numpy() >= -0.5) & (coords.numpy() < sizes - 0.5), axis=0)
        k, j, i = np.clip(index, 0, sizes - 1).astype(int)
        expected = labels[0, k, j, i]
        if fill_value is not None:
            expected = np.where(inside, expected, 0).astype(dtype)
            assert 0.1 < inside.mean() < 0.9
        np.testing.assert_array_equal(out[0], expected)
        assert out[0, 0] == big


def test_float32_grid_resampling_agrees_with_float64_points():
    fixed, moving = oblique_pair()
    fast = resampling.resample_to_grid(moving.array, moving.ijk_to_ras, fixed.ijk_to_ras, fixed.shape)
    reference = resampling.sample_at_ras(moving.array, moving.ijk_to_ras, geometry.grid_points_ras(fixed.shape, fixed.ijk_to_ras))
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=1e-5 * float(np.abs(moving.array).max()))


def test_affine_on_grid_and_affine_after_displacement():
    fixed, _ = oblique_pair()
    rng = np.random.default_rng(3)
    disp = torch.from_numpy(rng.normal(0, 2, (3,) + fixed.shape).astype(np.float32))
    points = geometry.grid_points_ras(fixed.shape, fixed.ijk_to_ras)
    np.testing.assert_allclose(
        np.moveaxis(geometry.affine_on_grid(fixed.ijk_to_ras, fixed.shape).numpy(), 0, -1), points, atol=1e-4
    )
    transform = oblique_matrix([1.05, 0.95, 1.0], [4, -3, 2], [2.0, -1.0, 3.0])
    total = geometry.affine_after_displacement(transform, disp, fixed.ijk_to_ras)
    expected = geometry.apply_affine(points + np.moveaxis(disp.numpy(), 0, -1), transform) - points
    np.testing.assert_allclose(np.moveaxis(total.numpy(), 0, -1), expected, atol=1e-3)
    back = geometry.affine_after_displacement(np.linalg.inv(transform), total, fixed.ijk_to_ras)  # the deformable part again
    np.testing.assert_allclose(back.numpy(), disp.numpy(), atol=1e-3)
