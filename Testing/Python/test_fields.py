"""fields.py: warping, composition, integration, resizing, affine helpers, Jacobian."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from DeepRegAblationLib import fields

SHAPES = [(32, 32, 32), (64, 64), (13, 17, 11), (20, 28)]


def _sine_field(shape, amplitude=1.5, batch=1, channels=None, phase=0.0):
    """A very smooth field: sums of sines with a wavelength of about the grid size."""
    ndim = len(shape)
    channels = ndim if channels is None else channels
    grid = fields.identity_grid(shape, dtype=torch.float64)
    out = []
    for c in range(channels):
        value = torch.zeros(shape, dtype=torch.float64)
        for a in range(ndim):
            value = value + torch.sin(2 * np.pi * grid[a] / shape[a] + phase + c + a)
        out.append(amplitude * value / ndim)
    return torch.stack(out)[None].expand(batch, channels, *shape).clone()


def _random_image(shape, channels=2, batch=2, dtype=torch.float64):
    return torch.randn(batch, channels, *shape, dtype=dtype)


def _smooth_disp(shape, scale=2.0, batch=2, dtype=torch.float64, seed=0):
    """A smooth random field in voxels: coarse noise upsampled."""
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    coarse = torch.randn(batch, ndim, *([4] * ndim), generator=gen, dtype=dtype) * scale
    mode = "trilinear" if ndim == 3 else "bilinear"
    return torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_zero_displacement_is_exact_identity(shape, mode, padding):
    image = _random_image(shape, dtype=torch.float32)
    zero = torch.zeros(2, len(shape), *shape)
    out = fields.warp(image, zero, mode=mode, padding=padding)
    assert torch.equal(out, image)


def test_zero_displacement_is_exact_with_gradients():
    image = _random_image((16, 16, 16), dtype=torch.float32)
    zero = torch.zeros(2, 3, 16, 16, 16, requires_grad=True)
    out = fields.warp(image, zero)
    assert torch.equal(out, image)
    out.square().sum().backward()
    assert zero.grad is not None and zero.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_integer_shift_recovered_exactly(shape):
    ndim = len(shape)
    image = _random_image(shape, dtype=torch.float32)
    shift = [2, -3, 1][:ndim]
    disp = torch.zeros(2, ndim, *shape)
    for axis, s in enumerate(shift):
        disp[:, axis] = s
    out = fields.warp(image, disp, mode="bilinear", padding="zeros")
    expected = torch.zeros_like(image)
    src = [slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, shape)]
    dst = [slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(shift, shape)]
    expected[(slice(None), slice(None), *dst)] = image[(slice(None), slice(None), *src)]
    assert torch.equal(out, expected)


@pytest.mark.parametrize("shape", [(32, 32, 32), (64, 64), (13, 17, 11)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_warp_agrees_with_monai(shape, mode, padding):
    from monai.networks.blocks import Warp

    image = _random_image(shape)
    disp = torch.randn(2, len(shape), *shape, dtype=torch.float64) * 3
    ours = fields.warp(image, disp, mode=mode, padding=padding)
    theirs = Warp(mode=mode, padding_mode=padding)(image, disp)
    if mode == "nearest":
        # ties (a coordinate exactly at .5) may round differently; they have measure zero
        assert (ours != theirs).float().mean() < 1e-3
    else:
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_warp_gradient_matches_grid_sample_gradient():
    from monai.networks.blocks import Warp

    image = _random_image((12, 14, 10))
    disp = (torch.randn(2, 3, 12, 14, 10, dtype=torch.float64) * 2).requires_grad_(True)
    fields.warp(image, disp).square().sum().backward()
    ours = disp.grad.clone()
    disp.grad = None
    Warp("bilinear", "border")(image, disp).square().sum().backward()
    assert torch.allclose(ours, disp.grad, atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 32, 32), (64, 64)])
def test_integrate_velocity_agrees_with_monai(shape):
    from monai.networks.blocks import DVF2DDF

    vel = _smooth_disp(shape, scale=4.0)
    ours = fields.integrate_velocity(vel, steps=7)
    theirs = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="border")(vel)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_integrate_velocity_zero_steps_and_inverse():
    vel = _sine_field((24, 24, 24), amplitude=1.5)
    assert torch.equal(fields.integrate_velocity(vel, steps=0), vel)
    fwd = fields.integrate_velocity(vel, 7)
    inv = fields.integrate_velocity(-vel, 7)
    composed = fields.compose(fwd, inv)
    interior = composed[..., 4:-4, 4:-4, 4:-4]
    assert interior.abs().max() < 0.03  # exp(v) o exp(-v) = identity up to discretisation


@pytest.mark.parametrize("shape", [(32, 32, 32), (64, 64), (13, 17, 11)])
def test_jacobian_determinant_agrees_with_voxelmorph(shape):
    from voxelmorph.py.utils import jacobian_determinant as vxm_jacdet

    disp = _smooth_disp(shape, scale=3.0, batch=1)
    ours = fields.jacobian_determinant(disp)[0].numpy()
    theirs = vxm_jacdet(np.moveaxis(disp[0].numpy(), 0, -1))
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_linear_field_has_constant_determinant(ndim):
    shape = (20, 24, 16)[:ndim]
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(ndim, ndim, generator=gen, dtype=torch.float64) * 0.3
    grid = fields.identity_grid(shape, dtype=torch.float64)
    disp = torch.einsum("ij,j...->i...", a, grid)[None]
    det = fields.jacobian_determinant(disp)
    expected = torch.det(torch.eye(ndim, dtype=torch.float64) + a)
    assert torch.allclose(det, expected.expand_as(det), atol=1e-10)
    # spacing-aware Jacobian: same determinant (similarity transform of the voxel Jacobian)
    det_mm = fields.jacobian_determinant(disp, spacing=(1.0, 2.5, 0.7)[:ndim])
    assert torch.allclose(det_mm, det, atol=1e-10)


def test_spacing_aware_jacobian_of_mm_field():
    """A field given in mm divided by its spacing is a voxel field; the mm Jacobian matrix is physical."""
    spacing = (2.0, 1.0, 0.5)
    shape = (10, 12, 14)
    grid_mm = fields.identity_grid(shape, dtype=torch.float64) * torch.tensor(spacing, dtype=torch.float64).view(3, 1, 1, 1)
    a = torch.tensor([[0.1, 0.02, 0.0], [0.0, -0.05, 0.03], [0.01, 0.0, 0.2]], dtype=torch.float64)
    disp_mm = torch.einsum("ij,j...->i...", a, grid_mm)[None]
    disp_vox = disp_mm / torch.tensor(spacing, dtype=torch.float64).view(1, 3, 1, 1, 1)
    jac = fields.jacobian_matrix(disp_vox, spacing=spacing)
    expected = torch.eye(3, dtype=torch.float64) + a
    assert torch.allclose(jac[0, :, :, 5, 6, 7], expected, atol=1e-10)


def test_spatial_gradient_matches_numpy_gradient():
    field = torch.randn(1, 2, 9, 11, 7, dtype=torch.float64)
    grad = fields.spatial_gradient(field, spacing=(1.0, 2.0, 0.5))
    expected = np.gradient(field[0, 1].numpy(), 1.0, 2.0, 0.5)
    for axis in range(3):
        np.testing.assert_allclose(grad[0, 1, axis].numpy(), expected[axis], atol=1e-12)


def test_compose_equals_sequential_warps():
    shape = (24, 20, 16)
    image = _sine_field(shape, amplitude=2.0, channels=1, phase=0.3)
    first = _sine_field(shape, amplitude=1.5, phase=1.0)
    second = _sine_field(shape, amplitude=1.5, phase=2.0)
    sequential = fields.warp(fields.warp(image, first), second)
    single = fields.warp(image, fields.compose(first, second))
    interior = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    # sequential warping interpolates twice; agreement up to interpolation error of a smooth image
    assert (sequential - single)[interior].abs().max() < 0.06  # the wrong order gives ~0.2


def test_compose_with_linear_first_is_exact():
    """Composing an affine field (linear) after a deformable one is exact: interpolating a linear field is exact."""
    shape = (16, 18, 14)
    m = torch.eye(4, dtype=torch.float64)[None]
    m[0, :3, :3] += torch.tensor([[0.05, 0.01, 0.0], [0.0, -0.04, 0.02], [0.01, 0.0, 0.03]], dtype=torch.float64)
    m[0, :3, 3] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    aff = fields.affine_to_disp(m, shape)
    deform = _smooth_disp(shape, scale=1.0, batch=1) * 0.5
    total = fields.compose(aff, deform)
    grid = fields.identity_grid(shape, dtype=torch.float64)[None]
    moved = grid + deform
    expected = torch.einsum("ij,bj...->bi...", m[0, :3, :3], moved) + m[0, :3, 3].view(1, 3, 1, 1, 1) - grid
    interior = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert torch.allclose(total[interior], expected[interior], atol=1e-10)


def test_affine_helpers():
    shape = (10, 12)
    linear = torch.eye(2, dtype=torch.float64)[None]
    zero_t = torch.zeros(1, 2, dtype=torch.float64)
    m = fields.centered_affine_matrix(linear, zero_t, shape)
    assert torch.equal(m, fields.identity_matrix(1, 2, dtype=torch.float64))
    assert torch.equal(fields.affine_to_disp(m, shape), torch.zeros(1, 2, *shape, dtype=torch.float64))
    # a rotation about the centre leaves the centre fixed
    theta = torch.tensor(0.3, dtype=torch.float64)
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin()]), torch.stack([theta.sin(), theta.cos()])])[None]
    m = fields.centered_affine_matrix(rot, torch.tensor([[1.0, 2.0]], dtype=torch.float64), shape)
    centre = torch.tensor([4.5, 5.5, 1.0], dtype=torch.float64)
    assert torch.allclose(m[0] @ centre, torch.tensor([5.5, 7.5, 1.0], dtype=torch.float64))


def test_resize_field_rescales_vectors():
    # a linear field u = 0.1 * x keeps its meaning (0.1 * x in the new grid's voxels) after resizing
    shape, new = (9, 17, 5), (17, 33, 9)
    grid = fields.identity_grid(shape, dtype=torch.float64)[None]
    disp = 0.1 * grid
    resized = fields.resize_field(disp, new)
    new_grid = fields.identity_grid(new, dtype=torch.float64)[None]
    assert torch.allclose(resized, 0.1 * new_grid, atol=1e-10)


@pytest.mark.parametrize(
    "image_shape, disp_shape",
    [((1, 1, 8, 8, 8), (1, 2, 8, 8, 8)), ((1, 1, 8, 8), (1, 3, 8, 8, 8)), ((1, 1, 8, 8, 8), (1, 3, 8, 8, 9))],
)
def test_bad_shapes_raise_value_error(image_shape, disp_shape):
    with pytest.raises(ValueError, match="disp_vox|image"):
        fields.warp(torch.zeros(image_shape), torch.zeros(disp_shape))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="mode"):
        fields.warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), mode="cubic")
    with pytest.raises(ValueError, match="NaN"):
        fields.check_finite(torch.tensor([1.0, float("nan")]), "moving")
    with pytest.raises(ValueError, match="spacing"):
        fields.jacobian_determinant(torch.zeros(1, 3, 4, 4, 4), spacing=(1.0, 2.0))
    with pytest.raises(ValueError, match="steps"):
        fields.integrate_velocity(torch.zeros(1, 2, 4, 4), steps=-1)


@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_sample_exact_on_grid_points_and_interpolated_elsewhere(padding):
    """grid_sample values off the grid (within rounding of the exact gathers), exact voxel values on it."""
    image = _random_image((12, 14, 10), dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    coords = torch.rand(2, 3, 9, 8, 7, generator=gen) * torch.tensor([14.0, 16.0, 12.0]).view(1, 3, 1, 1, 1) - 1.0
    coords[:, :, :4] = torch.round(coords[:, :, :4])  # a block of grid points, some outside the image
    out = fields.sample(image, coords, padding=padding)
    exact = fields._gather_sample(image, coords, "bilinear", padding)
    assert torch.equal(out[:, :, :4], exact[:, :, :4])
    torch.testing.assert_close(out, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(12, 14), (8, 10, 12)])
def test_mirror_field_registers_the_mirrored_images(shape):
    generator = torch.Generator().manual_seed(5)
    ndim = len(shape)
    image = torch.rand((1, 1, *shape), generator=generator)
    disp = 2.0 * torch.rand((1, ndim, *shape), generator=generator) - 1.0
    mirrored = fields.mirror_field(disp)
    assert torch.equal(fields.mirror_field(mirrored), disp)
    expected = torch.flip(fields.warp(image, disp), dims=(-1,))
    assert torch.allclose(fields.warp(torch.flip(image, dims=(-1,)), mirrored), expected, atol=1e-5)
    assert not torch.allclose(fields.warp(torch.flip(image, dims=(-1,)), torch.flip(disp, dims=(-1,))), expected, atol=1e-3)
    labels = (image * 4).floor().to(torch.int16)
    warped = fields.warp_labels(labels, disp)
    assert warped.dtype == torch.long and set(warped.unique().tolist()) <= set(labels.unique().tolist())
