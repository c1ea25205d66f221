"""On-the-fly augmentation: determinism, rotation bound, smooth fields, synthetic pairs with a known answer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from DeepRegAblationLib import fields
from DeepRegAblationTrainingLib.augment import (
    Augment,
    invert_field,
    random_rotation,
    random_smooth_field,
    seeded_generator,
)


def smooth_image(shape, seed=0):
    """A smooth textured test image (1, *shape) in [0, 1]: a sum of random low-frequency waves."""
    gen = torch.Generator().manual_seed(seed)
    grid = fields.identity_grid(shape)
    image = torch.full(tuple(shape), 0.5)
    for _ in range(4):
        freq = (torch.rand(len(shape), generator=gen) - 0.5) * (2 * math.pi / 8)
        phase = float(torch.rand(1, generator=gen)) * 2 * math.pi
        image = image + 0.12 * torch.cos((freq.view(-1, *[1] * len(shape)) * grid).sum(0) + phase)
    return image.clamp(0, 1)[None]


def fit_affine(disp_vox: torch.Tensor) -> np.ndarray:
    """Least-squares matrix A, b with x + u(x) = A x + b over the grid; returns A (ndim, ndim)."""
    ndim = disp_vox.shape[0]
    grid = fields.identity_grid(disp_vox.shape[1:], dtype=torch.float64).reshape(ndim, -1).T.numpy()
    target = grid + disp_vox.double().reshape(ndim, -1).T.numpy()
    design = np.concatenate([grid, np.ones((grid.shape[0], 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = np.abs(design @ solution - target).max()
    assert residual < 1e-3, f"the field is not affine (residual {residual})"
    return solution[:ndim].T


def test_same_seed_same_augmentation_other_seed_differs():
    image = smooth_image((32, 32))
    labels = (image > 0.5).long()
    a = Augment(seed=3)(image, labels)
    b = Augment(seed=3)(image, labels)
    c = Augment(seed=4)(image, labels)
    for key in ("image", "labels", "disp_vox"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["disp_vox"], c["disp_vox"])
    # an explicit generator overrides the augment's own: keyed by (seed, epoch, index)
    aug = Augment()
    x = aug(image, generator=seeded_generator(0, 5, 7))["image"]
    y = aug(image, generator=seeded_generator(0, 5, 7))["image"]
    z = aug(image, generator=seeded_generator(0, 5, 8))["image"]
    assert torch.equal(x, y) and not torch.equal(x, z)


@pytest.mark.parametrize("ndim", [2, 3])
def test_rotation_stays_within_the_bound(ndim):
    shape = (24,) * ndim
    aug = Augment(max_disp_mm=0.0, translation_vox=0.0, rotation_deg=10.0, gamma=(1, 1), brightness=0.0)
    angles = []
    for seed in range(12):
        disp = aug.spatial_field(shape, generator=seeded_generator(seed))
        linear = fit_affine(disp)
        assert np.allclose(linear @ linear.T, np.eye(ndim), atol=1e-4), "an augmentation rotation must be rigid"
        assert np.linalg.det(linear) > 0
        cos = (np.trace(linear) - (ndim - 2)) / 2.0
        angles.append(math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    assert max(angles) <= 10.0 + 1e-3
    assert max(angles) > 3.0, f"rotations should use the range, got {angles}"
    rot, angle = random_rotation(3, 10.0, seeded_generator(1))
    assert abs(angle) <= 10.0
    assert math.isclose(math.degrees(math.acos((float(torch.trace(rot)) - 1) / 2)), abs(angle), abs_tol=1e-6)


def test_anisotropic_rotation_is_rigid_in_mm():
    aug = Augment(max_disp_mm=0.0, translation_vox=0.0, rotation_deg=10.0)
    spacing = np.array([2.0, 1.0])
    linear = fit_affine(aug.spatial_field((24, 32), spacing_mm=tuple(spacing), generator=seeded_generator(2)))
    physical = np.diag(spacing) @ linear @ np.diag(1 / spacing)
    assert np.allclose(physical @ physical.T, np.eye(2), atol=1e-4)


def test_random_smooth_field_magnitude_and_smoothness():
    gen = seeded_generator(0)
    field = random_smooth_field((48, 40), 5.0, 16, gen)
    assert field.shape == (2, 48, 40)
    assert math.isclose(float(field.norm(dim=0).max()), 5.0, rel_tol=1e-5)
    # smooth: neighbouring vectors differ by far less than the amplitude
    assert float((field[:, 1:] - field[:, :-1]).abs().max()) < 0.6
    per_axis = random_smooth_field((16, 16, 16), (3.0, 1.0, 1.0), 8, seeded_generator(1))
    assert float(per_axis[0].abs().max()) <= 3.0 + 1e-5 and float(per_axis[1:].abs().max()) <= 1.0 + 1e-5
    with pytest.raises(ValueError, match="max_disp_vox"):
        random_smooth_field((16, 16), (1.0, 2.0, 3.0), 8, gen)


def test_intensity_gamma_and_brightness_ranges():
    image = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    aug = Augment(gamma=(0.5, 2.0), brightness=0.2)
    for seed in range(10):
        out = aug.intensity(image, seeded_generator(seed))
        scale = float(out.max())  # the brightest voxel keeps value 1 before the brightness factor
        assert 0.8 - 1e-6 <= scale <= 1.2 + 1e-6
        normalised = (out / scale).flatten()
        assert torch.all(normalised[1:] >= normalised[:-1] - 1e-7), "gamma must keep the intensity order"
        mid = float(normalised[32])
        x = float(image.flatten()[32])
        gamma = math.log(mid) / math.log(x)
        assert 0.5 - 1e-3 <= gamma <= 2.0 + 1e-3


def test_labels_stay_labels():
    image = smooth_image((32, 32), seed=1)
    labels = (image * 4).floor().long().clamp(0, 3)
    out = Augment(seed=0, max_disp_mm=3.0)(image, labels)
    assert out["labels"].dtype == torch.long
    assert set(out["labels"].unique().tolist()) <= set(labels.unique().tolist())


def test_invert_field_composes_to_identity():
    aug = Augment(max_disp_mm=4.0)
    disp = aug.spatial_field((40, 40), generator=seeded_generator(3))[None]
    inverse = invert_field(disp)
    residual = fields.compose(disp, inverse)[..., 6:-6, 6:-6]  # x -> x + v(x) -> ... + u(...)
    assert float(residual.abs().max()) < 0.02


@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 32)])
def test_synthetic_pair_disp_true_registers_moving_onto_fixed(shape):
    image = smooth_image(shape, seed=2)
    labels = (image > 0.5).long()
    aug = Augment(max_disp_mm=5.0, control_spacing_vox=12, gamma=(1.0, 1.0))
    pair = aug.synthetic_pair(image, labels, generator=seeded_generator(5))
    disp = pair["disp_true_vox"]
    assert disp.shape == (len(shape),) + shape
    assert float(disp.norm(dim=0).max()) > 1.0, "the synthetic deformation should be substantial"
    recovered = fields.warp(pair["moving"][None], disp[None])[0]
    # interior: points at least 3 voxels inside the fixed image whose true position in the
    # moving image is at least 3 voxels inside it too (no padding involved)
    grid = fields.identity_grid(shape)
    target = grid + disp
    inside = torch.ones(shape, dtype=torch.bool)
    for axis, n in enumerate(shape):
        for coords in (grid[axis], target[axis]):
            inside &= (coords >= 3) & (coords <= n - 4)
    assert float(inside.float().mean()) > 0.25
    error = (recovered - pair["fixed"]).abs()[0][inside]
    before = (pair["moving"] - pair["fixed"]).abs()[0][inside]
    assert float(error.mean()) < 0.1 * float(before.mean())
    assert float(error.max()) < 0.05
    # the sign convention: the opposite field makes things worse, not better
    wrong = (fields.warp(pair["moving"][None], -disp[None])[0] - pair["fixed"]).abs()[0][inside]
    assert float(wrong.mean()) > float(before.mean())
    warped_labels = fields.warp(pair["moving_labels"][None].float(), disp[None], mode="nearest")[0].long()
    agreement = (warped_labels == pair["fixed_labels"])[0][inside].float().mean()
    assert float(agreement) > 0.97


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="gamma"):
        Augment(gamma=(2.0, 0.5))
    with pytest.raises(ValueError, match="brightness"):
        Augment(brightness=1.5)
    with pytest.raises(ValueError, match="max_disp_mm"):
        Augment(max_disp_mm=-1)
    with pytest.raises(ValueError, match="image"):
        Augment()(torch.zeros(32, 32))
