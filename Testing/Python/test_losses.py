"""Tests of DeepRegAblationLib.losses: similarities, label losses, regularizers, CompositeLoss."""
from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from DeepRegAblationLib import fields, losses, metrics


def smooth_field(shape, amplitude, sigma=3.0, seed=0, dtype=torch.float64):
    """Random smooth displacement ``(1, ndim, *shape)`` with max |component| = ``amplitude`` voxels."""
    rng = np.random.default_rng(seed)
    comps = [ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in shape]
    field = np.stack(comps)
    field *= amplitude / np.abs(field).max()
    return torch.tensor(field[None], dtype=dtype)


def smooth_image(shape, seed=0, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    return torch.tensor(img[None, None], dtype=dtype)


def linear_field(matrix, shape, dtype=torch.float64):
    """``u(x) = A (x - c)`` on a grid of ``shape``: ``(1, ndim, *shape)``."""
    a = torch.tensor(matrix, dtype=dtype)
    grid = fields.identity_grid(shape, dtype=dtype)
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=dtype).view(-1, *([1] * len(shape)))
    return torch.einsum("ij,j...->i...", a, grid - centre)[None]


# --------------------------------------------------------------------------- MONAI agreement
@pytest.mark.parametrize("shape", [(2, 2, 12, 15), (2, 3, 9, 10, 11)])
def test_bending_energy_and_grad_l2_match_monai(shape):
    from monai.losses import BendingEnergyLoss, DiffusionLoss

    u = torch.randn(*shape, dtype=torch.float64) * 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own list-indexing deprecation warnings
        ref_bend = float(BendingEnergyLoss()(u))
        ref_diff = float(DiffusionLoss()(u))
    assert float(losses.bending_energy(u)) == pytest.approx(ref_bend, rel=1e-5, abs=1e-12)
    assert float(losses.grad_l2(u)) == pytest.approx(ref_diff, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_regularizers_on_linear_and_quadratic_fields(ndim):
    shape = (12,) * ndim
    spacing = (2.0, 0.5, 1.0)[:ndim]
    a = np.arange(1, ndim * ndim + 1, dtype=np.float64).reshape(ndim, ndim) / 20.0
    u = linear_field(a, shape)
    # grad_l2 of u = A x is mean_i sum_j A_ij^2 (mean over channels, as MONAI); in mm, du_i/dx_j = A_ij s_i / s_j
    assert float(losses.grad_l2(u)) == pytest.approx(float(np.sum(a**2)) / ndim, rel=1e-10)
    s = np.asarray(spacing)
    a_mm = a * s[:, None] / s[None, :]
    assert float(losses.grad_l2(u, spacing)) == pytest.approx(float(np.sum(a_mm**2)) / ndim, rel=1e-10)
    assert float(losses.grad_l1(u)) == pytest.approx(float(np.sum(np.abs(a))) / ndim, rel=1e-10)
    assert float(losses.bending_energy(u)) == pytest.approx(0.0, abs=1e-20)
    # u_0 = x_0 * x_1: d2u_0/dx0dx1 = 1, counted twice; pure second derivatives are 0
    grid = fields.identity_grid(shape, dtype=torch.float64)
    q = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    q[0, 0] = grid[0] * grid[1]
    assert float(losses.bending_energy(q)) == pytest.approx(2.0 / ndim, rel=1e-12)
    assert float(losses.bending_energy(q, spacing)) == pytest.approx(
        2.0 / ndim * (spacing[0] / (spacing[0] * spacing[1])) ** 2, rel=1e-12
    )


# --------------------------------------------------------------------------- folding penalty
def test_jacobian_penalty_pushes_folded_voxels_back():
    disp = smooth_field((32, 32), amplitude=6.0, sigma=2.0, seed=3)
    folded_before = metrics.folding_percentage(disp[0])
    assert folded_before > 1.0, "the test field must fold"
    disp.requires_grad_(True)
    penalty = losses.jacobian_penalty(disp)
    penalty.backward()
    assert float(penalty.detach()) > 0
    det = fields.jacobian_determinant(disp.detach())[0]
    folded = det <= 0
    # the determinant at a voxel depends on its face neighbours: they must receive gradient
    near_folds = torch.from_numpy(ndimage.binary_dilation(folded.numpy(), iterations=1))
    grad_norm = disp.grad[0].norm(dim=0)
    assert float(grad_norm[near_folds].max()) > 0
    assert float(grad_norm[~torch.from_numpy(ndimage.binary_dilation(near_folds.numpy(), iterations=2))].max()) == 0

    # the reference's clamped penalty has no gradient through folded voxels; ours does
    clamped = fields.jacobian_determinant(disp).clamp(1e-6, 10)
    (g_clamped,) = torch.autograd.grad(clamped[0][folded].sum(), disp)
    assert float(g_clamped.abs().max()) == 0

    opt = torch.optim.Adam([disp], lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        losses.jacobian_penalty(disp).backward()
        opt.step()
    folded_after = metrics.folding_percentage(disp.detach()[0])
    assert folded_after < 0.25 * folded_before, (folded_before, folded_after)


def test_jacobian_penalty_zero_for_identity_and_3d():
    assert float(losses.jacobian_penalty(torch.zeros(1, 3, 8, 8, 8))) == 0.0
    u = linear_field([[-1.5, 0, 0], [0, 0, 0], [0, 0, 0]], (8, 8, 8))  # det = -0.5 everywhere
    assert float(losses.jacobian_penalty(u)) == pytest.approx(0.51, rel=1e-9)


def test_displacement_hinge_threshold_in_voxels():
    u = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    u[:, 0] = 6.0
    u[:, 1] = 7.9  # |u| = 9.9 voxels
    assert float(losses.displacement_hinge(u)) == 0.0
    u[:, 1] = 8.0  # |u| = 10 exactly
    assert float(losses.displacement_hinge(u)) == 0.0
    u[:, 0], u[:, 1] = 6.3, 8.4  # |u| = 10.5
    assert float(losses.displacement_hinge(u)) == pytest.approx(0.25, rel=1e-9)
    assert float(losses.displacement_hinge(u, threshold_vox=5.0)) == pytest.approx(30.25, rel=1e-9)
    z = torch.zeros(1, 3, 4, 4, 4, requires_grad=True)
    losses.displacement_hinge(z).backward()
    assert torch.isfinite(z.grad).all() and float(z.grad.abs().max()) == 0


def test_local_rigidity_zero_for_rotation_positive_for_scaling():
    th = 0.3
    rot = [[math.cos(th) - 1, -math.sin(th)], [math.sin(th), math.cos(th) - 1]]
    assert float(losses.local_rigidity(linear_field(rot, (16, 16)))) == pytest.approx(0.0, abs=1e-20)
    # J = 1.1 I: J^T J - I = 0.21 I -> ||.||_F^2 = 2 * 0.21^2
    assert float(losses.local_rigidity(linear_field([[0.1, 0], [0, 0.1]], (16, 16)))) == pytest.approx(
        2 * 0.21**2, rel=1e-9
    )
    # diffusion does penalise rotation: mean over channels of sum_j A_ij^2
    assert float(losses.grad_l2(linear_field(rot, (16, 16)))) == pytest.approx(np.sum(np.square(rot)) / 2, rel=1e-9)


# --------------------------------------------------------------------------- similarities
@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 24)])
def test_lncc_identical_is_minimum_and_safe(shape):
    fixed = smooth_image(shape, seed=1)
    same = float(losses.lncc(fixed, fixed))
    assert same == pytest.approx(0.0, abs=1e-3)
    shifted = torch.roll(fixed, 2, dims=2)
    noisy = fixed + 0.1 * torch.rand_like(fixed)
    other = smooth_image(shape, seed=2)
    for w in (shifted, noisy, other, 1.0 - fixed):
        assert float(losses.lncc(fixed, w)) > same + 1e-3
    assert float(losses.lncc(fixed, 1.0 - fixed)) == pytest.approx(2.0, abs=1e-2)  # anticorrelated
    const = torch.full_like(fixed, 0.7)
    for a, b in ((const, const), (const, fixed), (fixed, const)):
        b = b.clone().requires_grad_(True)
        loss = losses.lncc(a, b)
        loss.backward()
        assert math.isfinite(float(loss.detach())) and torch.isfinite(b.grad).all()
    w = noisy.clone().requires_grad_(True)
    losses.lncc(fixed, w).backward()
    assert torch.isfinite(w.grad).all() and float(w.grad.abs().max()) > 0


def test_lncc_matches_brute_force_windows():
    rng = np.random.default_rng(0)
    a = rng.random((11, 13))
    b = a + 0.5 * rng.random((11, 13))
    win, eps = 5, 1e-8
    cc = np.zeros_like(a)
    for i in range(11):
        for j in range(13):
            pa = a[max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3]
            pb = b[max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3]
            cov = np.mean(pa * pb) - pa.mean() * pb.mean()
            cc[i, j] = cov / np.sqrt(pa.var() * pb.var() + eps)
    got = losses.lncc(torch.tensor(a)[None, None], torch.tensor(b)[None, None], window=win, eps=eps)
    assert float(got) == pytest.approx(1 - cc.mean(), rel=1e-10)


def test_lncc_mask_counts_the_voxels_outside_as_flat_windows():
    """Masked lncc = 1 - mean(cc * mask) over every voxel: what lies outside stops counting, the scale stays."""
    fixed, warped = smooth_image((24, 24, 24), seed=1), smooth_image((24, 24, 24), seed=2)
    full = torch.ones(1, 1, 24, 24, 24)
    assert float(losses.lncc(fixed, warped, 5, mask=full)) == pytest.approx(float(losses.lncc(fixed, warped, 5)), rel=1e-6)
    mask = torch.zeros(1, 1, 24, 24, 24)
    mask[..., 6:18, 6:18, 6:18] = 1
    # brute force: the cc map of the unmasked loss, zero outside the mask
    stacked = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], 1)
    mf, mw, mff, mww, mfw = torch.split(F.avg_pool3d(F.pad(stacked, (2,) * 6), 5, stride=1)
                                        / F.avg_pool3d(F.pad(torch.ones(1, 1, 24, 24, 24), (2,) * 6), 5, stride=1), 1, 1)
    cc = (mfw - mf * mw) / torch.sqrt((mff - mf ** 2).clamp_min(0) * (mww - mw ** 2).clamp_min(0) + 1e-8)
    assert float(losses.lncc(fixed, warped, 5, mask=mask)) == pytest.approx(1 - float((cc * mask).mean()), rel=1e-5)
    # changing the image far outside the mask (beyond the window's reach) changes nothing; inside it does
    outside, inside = warped.clone(), warped.clone()
    outside[..., :3, :, :] = torch.rand(1, 1, 3, 24, 24)
    inside[..., 10:14, 10:14, 10:14] = 0.0
    masked = float(losses.lncc(fixed, warped, 5, mask=mask))
    assert float(losses.lncc(fixed, outside, 5, mask=mask)) == pytest.approx(masked, rel=1e-6)
    assert float(losses.lncc(fixed, outside, 5)) != pytest.approx(float(losses.lncc(fixed, warped, 5)), rel=1e-4)
    assert float(losses.lncc(fixed, inside, 5, mask=mask)) != pytest.approx(masked, rel=1e-4)
    with pytest.raises(ValueError, match=r"mask must be \(B, 1, \*S\)"):
        losses.lncc(fixed, warped, 5, mask=torch.ones(1, 2, 24, 24, 24))


def test_foreground_mask_grows_the_labelled_voxels():
    labels = torch.zeros(1, 1, 9, 9, 9, dtype=torch.long)
    labels[..., 4, 4, 4] = 3
    assert int(losses.foreground_mask(labels, 0).sum()) == 1
    grown = losses.foreground_mask(labels, 1)
    assert grown.shape == (1, 1, 9, 9, 9) and int(grown.sum()) == 27 and float(grown[..., 3:6, 3:6, 3:6].min()) == 1
    one_hot = F.one_hot(labels[:, 0], 4).movedim(-1, 1).float()
    assert torch.equal(losses.foreground_mask(one_hot, 1), grown)
    flat = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    flat[..., 0, 0] = 1
    assert int(losses.foreground_mask(flat, 2).sum()) == 9  # 2D, cut at the border
    with pytest.raises(ValueError, match="dilation_vox must be an integer >= 0"):
        losses.foreground_mask(labels, -1)


def test_composite_loss_similarity_mask_ignores_what_lies_outside_the_fixed_labels():
    """similarity_mask_dilation: the similarity (and the affine stage's) count the fixed labels grown by N voxels."""
    fixed, moving = smooth_image((32, 32), seed=1), smooth_image((32, 32), seed=2)
    labels_f = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    labels_f[..., 10:22, 10:22] = 1
    labels_m = (moving > 0.5).long()
    affine = torch.zeros(1, 2, 32, 32)
    out = {"disp_vox": torch.zeros(1, 2, 32, 32), "affine_disp_vox": affine, "warped": moving}
    masked = losses.CompositeLoss("lncc", similarity_mask_dilation=2, affine_weight=1.0)
    mask = losses.foreground_mask(labels_f, 2)
    _, terms = masked(out, fixed, moving, fixed_labels=labels_f, moving_labels=labels_m)
    assert terms["similarity"] == pytest.approx(float(losses.lncc(fixed, moving, 9, mask=mask)), rel=1e-6)
    assert terms["affine_similarity"] == pytest.approx(terms["similarity"], rel=1e-6)
    _, plain = losses.CompositeLoss("lncc")(out, fixed, moving)
    assert plain["similarity"] != pytest.approx(terms["similarity"], rel=1e-3)
    # fixed_foreground (all structures, before renumbering) takes precedence over the fixed labels
    foreground = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    foreground[..., 4:28, 4:28] = 1
    _, wide = masked(out, fixed, moving, fixed_labels=labels_f, moving_labels=labels_m, fixed_foreground=foreground)
    expected = float(losses.lncc(fixed, moving, 9, mask=losses.foreground_mask(foreground, 2)))
    assert wide["similarity"] == pytest.approx(expected, rel=1e-6) and expected != pytest.approx(terms["similarity"], rel=1e-3)
    # a pair whose fixed image has no labels counts every voxel
    assert masked(out, fixed, moving)[1]["similarity"] == pytest.approx(plain["similarity"], rel=1e-6)
    with pytest.raises(ValueError, match="needs the lncc similarity"):
        losses.CompositeLoss("mse", similarity_mask_dilation=1)
    with pytest.raises(ValueError, match="similarity_mask_dilation must be None or an integer >= 0"):
        losses.CompositeLoss("lncc", similarity_mask_dilation=1.5)


def test_global_similarities():
    fixed = smooth_image((40, 40), seed=4)
    other = smooth_image((40, 40), seed=5)
    assert float(losses.mse(fixed, other)) == pytest.approx(float(torch.mean((fixed - other) ** 2)))
    assert float(losses.gncc(fixed, fixed)) == pytest.approx(0.0, abs=1e-4)
    assert float(losses.gncc(fixed, 3 * fixed + 1)) == pytest.approx(0.0, abs=1e-4)
    r = np.corrcoef(fixed.flatten().numpy(), other.flatten().numpy())[0, 1]
    assert float(losses.gncc(fixed, other)) == pytest.approx(1 - r, abs=1e-5)
    assert math.isfinite(float(losses.gncc(torch.ones_like(fixed), fixed)))


@pytest.mark.parametrize("shape", [(40, 44), (20, 22, 24)])
def test_ssim_matches_skimage(shape):
    from skimage.metrics import structural_similarity

    a = smooth_image(shape, seed=6, dtype=torch.float64)
    b = (a + 0.2 * torch.rand_like(a)).clamp(0, 1)
    rng = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    ref = structural_similarity(
        a[0, 0].numpy(), b[0, 0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=rng
    )
    assert float(losses.ssim_index(a, b)) == pytest.approx(ref, abs=1e-10)
    assert float(losses.ssim_loss(a, a)) == pytest.approx(0.0, abs=1e-12)


def test_mutual_information_multimodal():
    fixed = smooth_image((48, 48), seed=7)
    inverted = 1.0 - fixed  # a different "modality" with a one-to-one intensity map
    other = smooth_image((48, 48), seed=8)
    mi_same = float(losses.mutual_information(fixed, fixed))
    assert float(losses.mutual_information(fixed, inverted)) == pytest.approx(mi_same, rel=1e-3)
    assert float(losses.mutual_information(fixed, other)) > mi_same + 0.5
    w = other.clone().requires_grad_(True)
    losses.mutual_information(fixed, w).backward()
    assert torch.isfinite(w.grad).all() and float(w.grad.abs().max()) > 0


# --------------------------------------------------------------------------- label losses
def test_soft_dice_label_map_equals_one_hot():
    labels_a = torch.randint(0, 4, (2, 1, 16, 16))
    labels_b = torch.randint(0, 4, (2, 1, 16, 16))
    one_a = F.one_hot(labels_a[:, 0], 4).movedim(-1, 1).float()
    one_b = F.one_hot(labels_b[:, 0], 4).movedim(-1, 1).float()
    ref = float(losses.soft_dice(one_a, one_b))
    assert float(losses.soft_dice(labels_a, labels_b, num_labels=4)) == pytest.approx(ref, abs=1e-6)
    assert float(losses.soft_dice(labels_a, one_b)) == pytest.approx(ref, abs=1e-6)
    assert float(losses.soft_dice(labels_a.float(), labels_b.float(), num_labels=4)) == pytest.approx(ref, abs=1e-6)
    # the hard Dice of the same maps, averaged over labels 1..3 and batch
    dices = [metrics.dice_per_label(labels_a[i, 0], labels_b[i, 0]) for i in range(2)]
    expected = 1 - np.mean([v for d in dices for v in d.values()])
    assert ref == pytest.approx(expected, abs=1e-5)
    assert float(losses.soft_dice(labels_a, labels_a, num_labels=4)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="fixed_labels"):
        losses.soft_dice(torch.rand(2, 1, 16, 16), labels_b)


def test_cross_entropy_logits_matches_torch():
    logits = torch.randn(2, 5, 8, 9, 7, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 8, 9, 7))
    ref = float(F.cross_entropy(logits, labels))
    assert float(losses.cross_entropy_logits(logits, labels)) == pytest.approx(ref, rel=1e-12)
    assert float(losses.cross_entropy_logits(logits, labels[:, None])) == pytest.approx(ref, rel=1e-12)
    soft = F.one_hot(labels, 5).movedim(-1, 1).double()
    assert float(losses.cross_entropy_logits(logits, soft)) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="probabilities"):
        losses.cross_entropy_logits(torch.softmax(logits, 1), labels)


def test_hausdorff_dt_grows_with_boundary_distance():
    def square(offset):
        m = torch.zeros(1, 1, 32, 32)
        m[..., 8 + offset : 20 + offset, 8:20] = 1
        return m.long()

    target = square(0)
    values = [float(losses.hausdorff_dt(square(k), target)) for k in (0, 1, 3)]
    assert values[0] == 0.0 and 0 < values[1] < values[2]
    pred = F.one_hot(square(2)[:, 0], 2).movedim(-1, 1).float() * 0.8 + 0.1
    pred.requires_grad_(True)
    loss = losses.hausdorff_dt(pred, target)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad.abs().max()) > 0


# --------------------------------------------------------------------------- validation
def test_bad_inputs_raise_value_error_naming_argument():
    a = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"fixed and warped shapes differ: \(1, 1, 16, 16\) vs \(1, 1, 16, 15\)"):
        losses.lncc(a, torch.rand(1, 1, 16, 15))
    bad = a.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="warped contains NaN"):
        losses.mse(a, bad)
    with pytest.raises(ValueError, match="disp_vox must have 2 channels"):
        losses.grad_l2(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="disp_vox"):
        losses.bending_energy(torch.rand(1, 2, 2, 16))


# --------------------------------------------------------------------------- CompositeLoss
def test_reference_schedule_values():
    assert losses.reference_schedule(0, 10) == pytest.approx(0.1)
    assert losses.reference_schedule(5, 10) == pytest.approx(0.05)
    assert losses.reference_schedule(9.5, 10) == pytest.approx(0.01)
    assert losses.reference_schedule(10, 10) == pytest.approx(0.01)
    ref = losses.CompositeLoss(regularizers={"grad_l2": 1.0})
    const = losses.CompositeLoss(regularizers={"grad_l2": 1.0}, schedule="constant")
    assert ref.schedule_value(3, 10) == pytest.approx(0.07) and const.schedule_value(3, 10) == 1.0


def _outputs(ndim, size, moving, deform_scale=1.0, affine_shift=0.0):
    shape = (size,) * ndim
    deform = (smooth_field(shape, 2.0, sigma=2.0, dtype=torch.float32) * deform_scale).requires_grad_(True)
    affine = torch.full((1, ndim, *shape), affine_shift)
    total = fields.compose(affine, deform)
    return deform, {
        "warped": fields.warp(moving, total),
        "disp_vox": total,
        "deform_disp_vox": deform,
        "affine_disp_vox": affine,
    }


@pytest.mark.parametrize("ndim,size", [(2, 32), (3, 16)])
def test_composite_loss_backward_and_terms(ndim, size):
    shape = (size,) * ndim
    fixed, moving = smooth_image(shape, seed=1), smooth_image(shape, seed=2)
    regs = {"grad_l2": 0.01, "displacement_hinge": 0.01, "local_rigidity": 0.005,
            "jacobian_penalty": 0.1, "bending_energy": 0.005}  # fmt: skip
    loss_fn = losses.CompositeLoss("lncc", regs)
    deform, out = _outputs(ndim, size, moving)
    total, terms = loss_fn(out, fixed, epoch=5, epochs=10)
    total.backward()
    assert deform.grad is not None and torch.isfinite(deform.grad).all() and float(deform.grad.abs().max()) > 0
    assert set(terms) == {"similarity", "schedule", "total", *regs}
    assert terms["schedule"] == pytest.approx(0.05)
    expected = terms["similarity"] + 0.05 * sum(w * terms[k] for k, w in regs.items())
    assert terms["total"] == pytest.approx(expected, rel=1e-5)
    assert all(isinstance(v, float) for v in terms.values())


def test_composite_loss_regularizes_deformable_part_only():
    fixed, moving = smooth_image((32, 32), seed=1), smooth_image((32, 32), seed=2)
    loss_fn = losses.CompositeLoss("mse", {"displacement_hinge": 1.0}, schedule="constant")
    _, out = _outputs(2, 32, moving, affine_shift=12.0)  # 12-voxel affine translation, small deformation
    _, terms = loss_fn(out, fixed)
    assert terms["displacement_hinge"] == 0.0
    del out["deform_disp_vox"]
    _, terms = loss_fn(out, fixed)
    assert terms["displacement_hinge"] > 1.0


def test_composite_loss_uncertainty_and_seg():
    fixed, moving = smooth_image((32, 32), seed=1), smooth_image((32, 32), seed=2)
    labels_f = (fixed > 0.5).long()
    labels_m = (moving > 0.5).long()
    loss_fn = losses.CompositeLoss("lncc", {"grad_l2": 1.0}, uncertainty=True, seg_weight=0.5, num_labels=2)
    names = {n for n, _ in loss_fn.named_parameters()}
    assert names == {"log_vars.similarity", "log_vars.grad_l2", "log_vars.seg"}
    deform, out = _outputs(2, 32, moving)
    total, terms = loss_fn(out, fixed, fixed_labels=labels_f, moving_labels=labels_m, epoch=0, epochs=4)
    # at initialisation (log-variances 0) the uncertainty weighting is the identity
    assert terms["total"] == pytest.approx(terms["similarity"] + 0.1 * terms["grad_l2"] + 0.5 * terms["seg"], rel=1e-5)
    warped_labels = fields.warp(F.one_hot(labels_m[:, 0], 2).movedim(-1, 1).float(), out["disp_vox"].detach())
    assert terms["seg"] == pytest.approx(float(losses.soft_dice(labels_f, warped_labels)), rel=1e-5)
    total.backward()
    for p in loss_fn.parameters():
        assert p.grad is not None and float(p.grad.abs()) > 0
    assert deform.grad is not None


def test_composite_loss_affine_weight_supervises_the_affine_part_alone():
    """The affine part's own similarity and Dice join the total; only the affine field gets their gradient."""
    fixed, moving = smooth_image((32, 32), seed=1), smooth_image((32, 32), seed=2)
    labels_f, labels_m = (fixed > 0.5).long(), (moving > 0.5).long()
    affine = torch.zeros(1, 2, 32, 32)
    affine[:, 0] = 1.5  # a shift: the affine stage's field
    affine.requires_grad_(True)
    deform = torch.zeros(1, 2, 32, 32, requires_grad=True)
    disp = fields.compose(affine, deform)
    out = {"disp_vox": disp, "deform_disp_vox": deform, "affine_disp_vox": affine, "warped": fields.warp(moving, disp)}
    plain = losses.CompositeLoss("lncc", seg_weight=0.5, num_labels=2)
    supervised = losses.CompositeLoss("lncc", seg_weight=0.5, num_labels=2, affine_weight=2.0)
    kw = dict(fixed_labels=labels_f, moving_labels=labels_m)
    _, base = plain(out, fixed, moving, **kw)
    total, terms = supervised(out, fixed, moving, **kw)
    alone = fields.warp(moving, affine.detach())
    assert terms["affine_similarity"] == pytest.approx(float(losses.SIMILARITIES["lncc"](fixed, alone)), rel=1e-5)
    warped_labels = fields.warp(F.one_hot(labels_m[:, 0], 2).movedim(-1, 1).float(), affine.detach())
    assert terms["affine_seg"] == pytest.approx(float(losses.soft_dice(labels_f, warped_labels)), rel=1e-5)
    expected = base["total"] + 2.0 * (terms["affine_similarity"] + 0.5 * terms["affine_seg"])
    assert terms["total"] == pytest.approx(expected, rel=1e-5)
    assert "affine_similarity" not in base
    # a model without an affine stage (no affine_disp_vox): nothing changes
    del out["affine_disp_vox"]
    assert supervised(out, fixed, moving, **kw)[1]["total"] == pytest.approx(base["total"], rel=1e-6)
    with pytest.raises(ValueError, match="affine_weight must be"):
        losses.CompositeLoss(affine_weight=-1.0)


def test_composite_loss_validation_and_from_variant():
    fixed, moving = smooth_image((32, 32), seed=1), smooth_image((32, 32), seed=2)
    loss_fn = losses.CompositeLoss()
    _, out = _outputs(2, 32, moving)
    with pytest.raises(ValueError, match=r"disp_vox.*\(1, 1, 16, 16\)"):
        loss_fn(out, torch.rand(1, 1, 16, 16))
    out["warped"] = out["warped"][..., :31]
    with pytest.raises(ValueError, match="outputs\\['warped'\\]"):
        loss_fn(out, fixed)
    with pytest.raises(ValueError, match="similarity"):
        losses.CompositeLoss("soft_dice")
    with pytest.raises(ValueError, match="grad_l3"):
        losses.CompositeLoss(regularizers={"grad_l3": 1.0})
    with pytest.raises(ValueError, match="schedule"):
        losses.CompositeLoss(schedule="cosine")
    spec = SimpleNamespace(similarity="gncc", regularizers={"bending_energy": 0.005}, schedule="constant")
    built = losses.CompositeLoss.from_variant(spec, uncertainty=True)
    assert built.similarity == "gncc" and built.regularizers == {"bending_energy": 0.005}
    assert built.schedule == "constant" and built.uncertainty
    assert set(losses.REGULARIZERS) == {
        "grad_l2", "grad_l1", "bending_energy", "displacement_hinge", "local_rigidity", "jacobian_penalty"
    }  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 2, 11, 13, 9), (2, 1, 17, 12)])
def test_separable_box_mean_equals_direct_box_mean(shape):
    """The separable window mean used by lncc equals the direct (window^ndim) border-cut mean."""
    import torch.nn.functional as F

    from DeepRegAblationLib.losses.similarity import _box_mean

    x = torch.rand(*shape, dtype=torch.float64)
    pool = F.avg_pool3d if len(shape) == 5 else F.avg_pool2d
    direct = pool(x, 5, stride=1, padding=2, count_include_pad=False)
    assert torch.allclose(_box_mean(x, 5), direct, atol=1e-12)


def test_field_distance_is_the_mean_end_point_error_and_pulls_towards_the_target():
    from DeepRegAblationLib.losses import field_distance

    target = torch.zeros(1, 3, 4, 5, 6)
    disp = torch.zeros(1, 3, 4, 5, 6)
    disp[:, 0] = 3.0
    disp[:, 2] = 4.0  # |u - t| = 5 voxels everywhere
    assert float(field_distance(disp, target)) == pytest.approx(5.0, abs=1e-5)
    assert float(field_distance(target, target)) == pytest.approx(1e-3, abs=1e-6)  # sqrt(eps): finite gradient
    disp.requires_grad_(True)
    field_distance(disp, target).backward()
    assert torch.all(disp.grad[:, 0] > 0) and torch.all(disp.grad[:, 2] > 0) and torch.all(disp.grad[:, 1] == 0)
    with pytest.raises(ValueError, match="differ in shape"):
        field_distance(disp, torch.zeros(1, 3, 4, 5, 7))


def test_composite_loss_adds_the_distillation_term_only_with_a_teacher():
    from DeepRegAblationLib.losses import field_distance

    fixed, moving = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    disp = 0.5 * torch.randn(1, 2, 16, 16)
    outputs = {"disp_vox": disp, "warped": fields.warp(moving, disp)}
    teacher = torch.randn(1, 2, 16, 16)
    plain = losses.CompositeLoss("mse", distill_weight=2.0)
    total_without, terms_without = plain(outputs, fixed)
    total_with, terms_with = plain(outputs, fixed, teacher_disp_vox=teacher)
    assert "distill" not in terms_without and terms_with["distill"] == pytest.approx(float(field_distance(disp, teacher)))
    assert float(total_with - total_without) == pytest.approx(2.0 * terms_with["distill"], rel=1e-5)
    off = losses.CompositeLoss("mse")  # weight 0: a teacher in the batch changes nothing
    assert float(off(outputs, fixed, teacher_disp_vox=teacher)[0]) == pytest.approx(float(total_without))
    with pytest.raises(ValueError, match="distill_weight"):
        losses.CompositeLoss("mse", distill_weight=-1.0)
