"""Tests of DeepRegAblationLib.metrics on shapes and fields with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from DeepRegAblationLib import fields, metrics


def cube(shape, start, size, label=1):
    out = np.zeros(shape, dtype=np.int64)
    out[tuple(slice(s, s + size) for s in start)] = label
    return out


def linear_disp(matrix, shape):
    """``u(x) = A (x - c)``: ``(ndim, *shape)`` numpy."""
    a = np.asarray(matrix, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    centre = np.array([(n - 1) / 2 for n in shape]).reshape(-1, *([1] * len(shape)))
    return np.einsum("ij,j...->i...", a, grid - centre)


def smooth_image(shape, seed):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return (img - img.min()) / (img.max() - img.min())


# --------------------------------------------------------------------------- offset cubes
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_offset_cubes_dice_hd95_tre(axis):
    shape, n, d = (32, 32, 32), 10, 3
    spacing = (2.0, 1.0, 0.5)
    a = cube(shape, (8, 8, 8), n)
    start = [8, 8, 8]
    start[axis] += d
    b = cube(shape, start, n)
    # overlap n^2 (n - d) -> Dice = (n - d) / n
    assert metrics.dice_per_label(a, b) == {1: pytest.approx((n - d) / n)}
    assert metrics.mean_dice(a, b) == pytest.approx(0.7)
    # every surface distance is <= d * s (the shifted copy), and the two faces normal to the
    # shift (1/6 of the surface, > 5%) are exactly that far: HD95 = d * spacing[axis]
    assert metrics.hd95_mm(a, b, spacing) == pytest.approx(d * spacing[axis], abs=1e-12)
    assert metrics.mean_hd95(a, b, spacing) == pytest.approx(d * spacing[axis], abs=1e-12)
    assert metrics.tre_centroids(a, b, spacing) == pytest.approx(d * spacing[axis], abs=1e-12)


def test_dice_per_label_skips_background_and_absent_labels():
    shape = (24, 24)
    a = cube(shape, (2, 2), 8, label=1) + cube(shape, (14, 14), 6, label=2) + cube(shape, (2, 14), 4, label=5)
    b = cube(shape, (4, 2), 8, label=1) + cube(shape, (14, 14), 6, label=2) + cube(shape, (14, 2), 4, label=7)
    dice = metrics.dice_per_label(a, b)
    assert set(dice) == {1, 2}  # 0 is background; 5 and 7 are missing from one map each
    assert dice[1] == pytest.approx(6 / 8) and dice[2] == 1.0
    assert metrics.dice_per_label(a, b, labels=[2, 5]) == {2: 1.0}
    assert math.isnan(metrics.mean_dice(a, np.zeros_like(a)))
    assert set(metrics.hd95_per_label(a, b)) == {1, 2}
    assert metrics.hd95_per_label(a, b)[2] == 0.0


def test_hd95_matches_brute_force_on_blobs():
    rng = np.random.default_rng(1)
    a = ndimage.gaussian_filter(rng.random((28, 30, 26)), 2.5) > 0.5
    b = ndimage.gaussian_filter(rng.random((28, 30, 26)), 2.5) > 0.5
    spacing = np.array([1.5, 1.0, 0.8])
    structure = ndimage.generate_binary_structure(3, 1)
    pts = [np.argwhere(m & ~ndimage.binary_erosion(m, structure)) * spacing for m in (a, b)]
    d_ab, _ = cKDTree(pts[1]).query(pts[0])
    d_ba, _ = cKDTree(pts[0]).query(pts[1])
    expected = np.percentile(np.concatenate([d_ab, d_ba]), 95)
    assert metrics.hd95_mm(a, b, tuple(spacing)) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(metrics.hd95_mm(a, np.zeros_like(a), tuple(spacing)))


# --------------------------------------------------------------------------- field metrics
@pytest.mark.parametrize(
    "matrix,expected",
    [
        ([[0.2, 0.1], [-0.3, 0.1]], 0.0),  # det(I + A) = 1.35
        ([[-1.5, 0.0], [0.0, 0.2]], 100.0),  # det = -0.6
        ([[-0.5, 0.9], [-1.2, 0.1]], 0.0),  # det = 0.55 + 1.08 > 0 (rotation-like)
        ([[-2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]], 100.0),  # det = -1.5
        ([[0.3, 0.2, 0.0], [0.1, -0.2, 0.0], [0.0, 0.4, 0.1]], 0.0),
    ],
)
def test_folding_percentage_of_linear_fields(matrix, expected):
    ndim = len(matrix)
    det = np.linalg.det(np.eye(ndim) + np.asarray(matrix))
    assert (det <= 0) == (expected == 100.0)
    disp = linear_disp(matrix, (10,) * ndim)
    assert metrics.folding_percentage(disp) == expected
    assert metrics.folding_percentage(torch.from_numpy(disp).float()) == expected


def test_sdlogj_and_plausibility():
    for ndim in (2, 3):
        shape = (12,) * ndim
        scaling = linear_disp(np.eye(ndim) * 0.3, shape)  # det = 1.3^ndim everywhere
        assert metrics.sdlogj(scaling) == pytest.approx(0.0, abs=1e-10)
        assert metrics.anatomical_plausibility(scaling) == (1.0 if 1.3**ndim < 2 else 0.0)
        assert metrics.anatomical_plausibility(np.zeros((ndim, *shape))) == 1.0
    rng = np.random.default_rng(0)
    random = np.stack([ndimage.gaussian_filter(rng.standard_normal((32, 32)), 2) for _ in range(2)]) * 3
    det = fields.jacobian_determinant(torch.from_numpy(random)[None])[0].numpy()
    expected = np.std(np.log(np.clip(det, 1e-9, None)))
    assert metrics.sdlogj(random) == pytest.approx(expected, rel=1e-12) and expected > 0.05
    plaus = np.mean((det > 0.5) & (det < 2))
    assert metrics.anatomical_plausibility(random) == pytest.approx(plaus)


def test_displacement_stats_units():
    disp = np.zeros((2, 8, 8))
    disp[0], disp[1] = 3.0, 4.0
    disp[:, 0, 0] = 0.0
    stats = metrics.displacement_stats(disp, spacing=(2.0, 0.5))
    assert stats["max_disp_vox"] == pytest.approx(5.0)
    assert stats["mean_disp_vox"] == pytest.approx(5.0 * 63 / 64)
    assert stats["max_disp_mm"] == pytest.approx(math.hypot(6.0, 2.0))
    assert stats["mean_disp_mm"] == pytest.approx(math.hypot(6.0, 2.0) * 63 / 64)


def test_tre_landmarks_linear_field():
    shape = (16, 16, 16)
    matrix = [[0.1, 0.0, 0.05], [0.0, -0.1, 0.0], [0.02, 0.0, 0.0]]
    disp = linear_disp(matrix, shape)
    fixed_pts = np.array([[3.5, 4.25, 8.0], [10.0, 2.0, 7.5], [7.5, 7.5, 7.5]])
    centre = np.full(3, 7.5)
    mapped = fixed_pts + (fixed_pts - centre) @ np.asarray(matrix).T  # linear sampling is exact here
    assert metrics.tre_landmarks(fixed_pts, mapped, disp, spacing=(1.0, 2.0, 3.0)) == pytest.approx(0.0, abs=1e-12)
    spacing = np.array([1.0, 2.0, 3.0])
    expected = np.mean(np.linalg.norm((mapped - fixed_pts) * spacing, axis=1))
    assert metrics.tre_landmarks(fixed_pts, fixed_pts, disp, spacing=tuple(spacing)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="fixed_pts_vox"):
        metrics.tre_landmarks(fixed_pts[:, :2], fixed_pts[:, :2], disp)


# --------------------------------------------------------------------------- intensity metrics
def test_intensity_metrics():
    from skimage.metrics import structural_similarity

    a = smooth_image((40, 48), seed=2)
    b = np.clip(a + 0.1 * np.random.default_rng(3).random(a.shape), 0, 1)
    assert metrics.mse(a, b) == pytest.approx(np.mean((a - b) ** 2))
    assert metrics.ncc(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert metrics.ncc(a, -2 * a) == pytest.approx(-1.0)
    assert math.isnan(metrics.ncc(a, np.ones_like(a)))
    rng = max(a.max(), b.max()) - min(a.min(), b.min())
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=rng)
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-10)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.gradient_correlation(a, 3 * a + 1) == pytest.approx(1.0)
    shifted = np.roll(a, 3, axis=0)
    assert metrics.gradient_correlation(a, shifted) < 0.9
    small = smooth_image((8, 9), seed=5)  # smaller than the 11-voxel window: a 7-voxel window
    small_b = np.clip(small + 0.3 * np.random.default_rng(6).random(small.shape), 0, 1)
    assert metrics.ssim(small, small) == pytest.approx(1.0)
    assert 0 < metrics.ssim(small, small_b) < 0.99
    vol = smooth_image((16, 16, 16), seed=4)
    assert metrics.ssim(vol, vol) == pytest.approx(1.0)
    assert metrics.gradient_correlation(vol, vol) == pytest.approx(1.0)


# --------------------------------------------------------------------------- summary and validation
def test_registration_metrics_keys_and_values():
    shape = (32, 32, 32)
    spacing = (2.0, 1.0, 0.5)
    fixed = smooth_image(shape, seed=5)
    disp = np.zeros((3, *shape))
    disp[0] = 1.0
    warped = fields.warp(torch.from_numpy(fixed)[None, None], torch.from_numpy(disp)[None])[0, 0].numpy()
    out = metrics.registration_metrics(fixed, warped, disp, spacing)
    assert list(out) == [
        "dice", "hd95_mm", "folding_pct", "sdlogj", "mse", "ncc", "ssim",
        "max_disp_mm", "mean_disp_mm", "max_disp_vox", "mean_disp_vox", "tre_mm",
    ]  # fmt: skip
    assert all(math.isnan(out[k]) for k in ("dice", "hd95_mm", "tre_mm"))
    assert out["folding_pct"] == 0.0 and out["sdlogj"] == pytest.approx(0.0, abs=1e-12)
    assert out["max_disp_mm"] == pytest.approx(2.0) and out["mean_disp_vox"] == pytest.approx(1.0)
    assert out["mse"] == pytest.approx(metrics.mse(fixed, warped)) and out["ncc"] < 1.0
    a, b = cube(shape, (8, 8, 8), 10), cube(shape, (11, 8, 8), 10)
    out = metrics.registration_metrics(fixed, warped, disp, spacing, fixed_labels=a, warped_labels=b)
    assert out["dice"] == pytest.approx(0.7)
    assert out["hd95_mm"] == pytest.approx(6.0) and out["tre_mm"] == pytest.approx(6.0)
    assert all(isinstance(v, float) for v in out.values())


def test_registration_metrics_reuses_a_given_jacobian_and_float32():
    shape = (24, 24, 24)
    fixed = smooth_image(shape, seed=2)
    rng = np.random.default_rng(0)
    disp = ndimage.gaussian_filter(rng.normal(0, 20, (3, *shape)), (0, 1.5, 1.5, 1.5))  # folds somewhere
    warped = fields.warp(torch.from_numpy(fixed)[None, None], torch.from_numpy(disp)[None])[0, 0].numpy()
    det = fields.jacobian_determinant(torch.from_numpy(disp)[None])[0].numpy()
    out = metrics.registration_metrics(fixed, warped, disp)
    assert out["folding_pct"] > 0
    reused = metrics.registration_metrics(fixed, warped, disp, jacobian=det)
    assert all(reused[k] == out[k] for k in out if not math.isnan(out[k]))
    wrong = metrics.registration_metrics(fixed, warped, disp, jacobian=np.ones(shape))
    assert wrong["folding_pct"] == 0 and wrong["sdlogj"] == 0  # the given determinant is the one used
    single = metrics.registration_metrics(fixed.astype(np.float32), warped.astype(np.float32), disp.astype(np.float32))
    for key in ("folding_pct", "mse", "ncc", "ssim", "max_disp_mm"):
        assert single[key] == pytest.approx(out[key], rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="jacobian shape"):
        metrics.registration_metrics(fixed, warped, disp, jacobian=np.ones((4, 4, 4)))


def test_bad_inputs_raise_value_error_naming_argument():
    a = np.zeros((16, 16))
    with pytest.raises(ValueError, match=r"a and b shapes differ: \(16, 16\) vs \(16, 15\)"):
        metrics.mse(a, np.zeros((16, 15)))
    bad = a.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="b contains NaN"):
        metrics.ncc(a, bad)
    with pytest.raises(ValueError, match="labels_a is empty"):
        metrics.dice_per_label(np.zeros((0, 4), int), np.zeros((0, 4), int))
    with pytest.raises(ValueError, match="labels_b must hold integer labels"):
        metrics.dice_per_label(a.astype(int), a + 0.5)
    with pytest.raises(ValueError, match="disp_vox"):
        metrics.folding_percentage(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="disp_vox grid"):
        metrics.registration_metrics(a, a, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95_mm(a > 0, a > 0, spacing=(1.0, 1.0, 1.0))
