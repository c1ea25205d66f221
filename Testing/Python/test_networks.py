"""Registration networks: shapes, gradients, identity start, shared architecture, input checks."""
from __future__ import annotations

import json

import pytest
import torch

from DeepRegAblationLib import fields
from DeepRegAblationLib.models import affine, unet
from DeepRegAblationLib.models.network import DEFAULT_ARCH, build_model, model_from_config
from DeepRegAblationLib.models.variants import VARIANTS

IDS = ("baseline", "regloss", "affine_basic", "affine_enhanced")
SHAPES = {3: (32, 32, 32), 2: (64, 64)}


def _pair(batch: int, shape, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *shape, generator=g), torch.rand(batch, 1, *shape, generator=g)


def _build(variant, ndim, seed=0, **arch):
    torch.manual_seed(seed)
    return build_model(variant, ndim, **arch)


def _scale_flow_head(model, moving, fixed, max_vox: float) -> None:
    """Rescale the (near-zero) flow head so that its output peaks at ``max_vox`` voxels."""
    with torch.no_grad():
        model.flow.conv.weight.normal_(0.0, 1.0)
        out = model(moving, fixed)
        peak = out["velocity_vox" if "velocity_vox" in out else "deform_disp_vox"].abs().max()
        model.flow.conv.weight.mul_(max_vox / peak)


@pytest.mark.parametrize("variant", IDS)
@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_forward_backward_shapes_finite_and_gradients(variant, ndim, batch):
    shape = SHAPES[ndim]
    model = _build(variant, ndim)
    moving, fixed = _pair(batch, shape)
    out = model(moving, fixed)
    expected = {
        "warped": (batch, 1, *shape),
        "disp_vox": (batch, ndim, *shape),
        "affine_matrix_vox": (batch, ndim + 1, ndim + 1),
        "affine_disp_vox": (batch, ndim, *shape),
        "deform_disp_vox": (batch, ndim, *shape),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    # one interpolation of the original moving image by the total field
    assert torch.equal(out["warped"], fields.warp(moving, out["disp_vox"]))
    assert torch.equal(out["disp_vox"], fields.compose(out["affine_disp_vox"], out["deform_disp_vox"]))

    loss = ((out["warped"] - fixed) ** 2).mean()
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    for name, param in list(model.unet.named_parameters()) + list(model.flow.named_parameters()):
        assert bool((param.grad != 0).any()), f"no gradient reaches {name}"
    if VARIANTS[variant].affine:
        # the keypoint heat maps and the first convolution of the affine stage get a gradient at once
        assert bool((model.affine.heatmaps.weight.grad != 0).any())
        assert bool((model.affine.features[0].conv.weight.grad != 0).any())


@pytest.mark.parametrize("kind", ["keypoints", "regression"])
def test_one_optimizer_step_moves_the_affine_stage(kind):
    model = _build("affine_basic", 2, affine_kind=kind)
    moving, fixed = _pair(1, (64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        out = model(moving, fixed)
        ((out["warped"] - fixed) ** 2).mean().backward()
        opt.step()
    before = model(moving, fixed)["affine_matrix_vox"].detach()
    opt.zero_grad()
    out = model(moving, fixed)
    ((out["warped"] - fixed) ** 2).mean().backward()
    opt.step()
    assert not torch.equal(model(moving, fixed)["affine_matrix_vox"], before)
    assert bool((model.affine.features[0].conv.weight.grad != 0).any())


@pytest.mark.parametrize("ndim", [3, 2])
def test_deterministic_under_a_fixed_seed(ndim):
    moving, fixed = _pair(2, SHAPES[ndim])
    a = _build("affine_enhanced", ndim, seed=123)
    b = _build("affine_enhanced", ndim, seed=123)
    c = _build("affine_enhanced", ndim, seed=124)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    out_a, out_b, out_c = a(moving, fixed), b(moving, fixed), c(moving, fixed)
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key
    assert not torch.equal(out_a["deform_disp_vox"], out_c["deform_disp_vox"])


@pytest.mark.parametrize("variant", ["affine_basic", "affine_enhanced"])
@pytest.mark.parametrize("ndim", [3, 2])
def test_regression_affine_variants_start_as_exact_identity(variant, ndim):
    shape = SHAPES[ndim]
    moving, fixed = _pair(2, shape)
    model = _build(variant, ndim, affine_kind="regression")
    out = model(moving, fixed)
    eye = torch.eye(ndim + 1).expand(2, ndim + 1, ndim + 1)
    assert torch.equal(out["affine_matrix_vox"], eye)
    assert torch.equal(out["affine_disp_vox"], torch.zeros(2, ndim, *shape))
    assert torch.equal(fields.warp(moving, out["affine_disp_vox"]), moving)
    # hence, with the same U-Net weights, the affine variant equals the baseline exactly
    baseline = _build("baseline", ndim, seed=5)
    model.unet.load_state_dict(baseline.unet.state_dict())
    model.flow.load_state_dict(baseline.flow.state_dict())
    out = model(moving, fixed)
    ref = baseline(moving, fixed)
    for key in ("warped", "disp_vox", "deform_disp_vox", "affine_disp_vox", "affine_matrix_vox"):
        assert torch.equal(out[key], ref[key]), key


@pytest.mark.parametrize("ndim", [3, 2])
def test_non_affine_variants_report_identity_and_zero_affine(ndim):
    moving, fixed = _pair(1, SHAPES[ndim])
    out = _build("regloss", ndim)(moving, fixed)
    assert torch.equal(out["affine_matrix_vox"], torch.eye(ndim + 1)[None])
    assert torch.equal(out["affine_disp_vox"], torch.zeros_like(out["disp_vox"]))
    assert torch.equal(out["disp_vox"], out["deform_disp_vox"])


@pytest.mark.parametrize("ndim", [3, 2])
def test_all_variants_share_the_unet_architecture(ndim):
    models = {v: _build(v, ndim) for v in IDS}
    counts = {v: m.parameter_counts() for v, m in models.items()}
    assert len({c["deformable"] for c in counts.values()}) == 1
    shapes = {
        v: [(k, tuple(p.shape)) for k, p in m.state_dict().items() if not k.startswith("affine.")]
        for v, m in models.items()
    }
    assert all(s == shapes["baseline"] for s in shapes.values())
    assert all(m.arch == models["baseline"].arch for m in models.values())
    for v, m in models.items():
        has_affine = any(k.startswith("affine.") for k in m.state_dict())
        assert has_affine == VARIANTS[v].affine
        assert (counts[v]["affine"] > 0) == VARIANTS[v].affine
        assert counts[v]["deformable"] + counts[v]["affine"] == sum(p.numel() for p in m.parameters())


def test_deformable_parameter_count_matches_the_voxelmorph_topology():
    """3D default: stride-2 encoder 2->16->32->32->32, decoder 32, 64->32, 64->32, 48->32
    (skip concatenations), full-resolution 34->32->16->16, flow head 16->3; all 3x3x3."""
    conv = lambda cin, cout: cin * cout * 27 + cout  # noqa: E731
    encoder = conv(2, 16) + conv(16, 32) + conv(32, 32) + conv(32, 32)
    decoder = conv(32, 32) + conv(64, 32) + conv(64, 32) + conv(48, 32)
    full_res = conv(34, 32) + conv(32, 16) + conv(16, 16) + conv(16, 3)
    assert _build("baseline", 3).parameter_counts()["deformable"] == encoder + decoder + full_res


def test_decoder_resolutions_follow_the_unet_layout():
    model = _build("baseline", 2)
    sizes = []
    hooks = [conv.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1])) for conv in model.unet.decoder]
    model(*_pair(1, (64, 64)))
    for h in hooks:
        h.remove()
    assert sizes == [4, 8, 16, 32, 64, 64, 64]
    assert [int(c.conv.stride[0]) for c in model.unet.encoder] == [2, 2, 2, 2]


def test_flow_head_is_near_zero_and_uncapped():
    model = _build("baseline", 2)
    weight, bias = model.flow.conv.weight, model.flow.conv.bias
    assert torch.equal(bias, torch.zeros_like(bias))
    assert 2e-6 < float(weight.detach().std()) < 5e-5
    # large displacements pass through unchanged: no tanh, no scaling, no cap
    with torch.no_grad():
        weight.zero_()
        bias.copy_(torch.tensor([25.0, -40.0]))
    moving, fixed = _pair(1, (64, 64))
    out = model(moving, fixed)
    assert torch.equal(out["disp_vox"][0, 0], torch.full((64, 64), 25.0))
    assert torch.equal(out["disp_vox"][0, 1], torch.full((64, 64), -40.0))


def test_affine_parameters_map_to_a_centred_voxel_matrix():
    model = _build("affine_basic", 2, affine_kind="regression")
    linear = torch.tensor([[1.1, 0.2], [-0.1, 0.9]])
    translation = torch.tensor([0.25, -0.5])  # in half-extents
    with torch.no_grad():
        model.affine.head.bias.copy_(torch.cat([(linear - torch.eye(2)).flatten(), translation]))
        model.flow.conv.weight.zero_()
    moving, fixed = _pair(1, (32, 64))
    out = model(moving, fixed)
    expected = fields.centered_affine_matrix(linear[None], (translation * torch.tensor([15.5, 31.5]))[None], (32, 64))
    assert torch.allclose(out["affine_matrix_vox"], expected, atol=1e-6)
    # centre maps to centre + translation: (15.5, 31.5) -> (15.5 + 3.875, 31.5 - 15.75)
    centre = torch.tensor([15.5, 31.5, 1.0])
    assert torch.allclose(out["affine_matrix_vox"][0] @ centre, torch.tensor([19.375, 15.75, 1.0]), atol=1e-5)
    # zero deformable field: total field is the affine field and warped is one interpolation
    assert torch.equal(out["deform_disp_vox"], torch.zeros_like(out["deform_disp_vox"]))
    assert torch.allclose(out["disp_vox"], fields.affine_to_disp(out["affine_matrix_vox"], (32, 64)), atol=1e-5)
    assert torch.equal(out["warped"], fields.warp(moving, out["disp_vox"]))


def test_affine_then_deformable_composition():
    model = _build("affine_enhanced", 2, affine_kind="regression")
    with torch.no_grad():
        model.affine.head.bias.copy_(torch.tensor([0.05, 0.1, -0.08, 0.02, 0.1, -0.05]))
    _, fixed = _pair(1, (64, 64))
    grid = fields.identity_grid((64, 64))
    moving = (torch.sin(grid[0] / 5.0) * torch.cos(grid[1] / 7.0))[None, None]  # smooth: interpolation ~ exact
    _scale_flow_head(model, moving, fixed, 2.0)
    out = model(moving, fixed)
    assert float(out["deform_disp_vox"].detach().abs().max()) > 1.0
    # the U-Net saw the affinely warped moving image
    unet_in = torch.cat([fields.warp(moving, out["affine_disp_vox"]), fixed], dim=1)
    assert torch.allclose(model.flow(model.unet(unet_in)), out["deform_disp_vox"], atol=1e-6)
    assert torch.allclose(out["disp_vox"], fields.compose(out["affine_disp_vox"], out["deform_disp_vox"]), atol=1e-6)
    two_step = fields.warp(fields.warp(moving, out["affine_disp_vox"]), out["deform_disp_vox"])
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from border padding
    assert torch.allclose(out["warped"][inner], two_step[inner], atol=0.03)
    assert not torch.allclose(out["warped"][inner], fields.warp(moving, out["affine_disp_vox"])[inner], atol=0.03)


@pytest.mark.parametrize("ndim", [3, 2])
def test_diffeomorphic_mode_integrates_the_velocity(ndim):
    model = _build("affine_enhanced", ndim, diffeomorphic=True, int_steps=5)
    moving, fixed = _pair(1, SHAPES[ndim])
    _scale_flow_head(model, moving, fixed, 3.0)
    out = model(moving, fixed)
    vel = out["velocity_vox"]
    assert vel.shape == out["deform_disp_vox"].shape
    assert float(vel.detach().abs().max()) > 2.0
    assert torch.allclose(out["deform_disp_vox"], fields.integrate_velocity(vel, 5), atol=1e-6)
    assert not torch.allclose(out["deform_disp_vox"], vel, atol=1e-3)
    out["warped"].mean().backward()
    assert model.flow.conv.weight.grad is not None
    assert "velocity_vox" not in _build("baseline", ndim)(moving, fixed)


def test_other_feature_lists_and_size_multiple():
    model = _build("regloss", 2, enc_features=(8, 16), dec_features=(16, 16, 8))
    assert model.size_multiple == 4
    out = model(*_pair(1, (12, 20)))
    assert out["warped"].shape == (1, 1, 12, 20)
    with pytest.raises(ValueError, match="dec_features"):
        build_model("baseline", 2, enc_features=(8, 16, 16), dec_features=(16, 16))
    with pytest.raises(ValueError, match="unknown architecture option"):
        build_model("baseline", 2, tanh_scale=0.3)
    with pytest.raises(ValueError, match="ndim"):
        build_model("baseline", 4)
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("affine_plus", 2)


def test_config_is_json_safe_and_rebuilds_the_same_architecture():
    model = _build("affine_enhanced", 2, diffeomorphic=True, enc_features=(8, 16), dec_features=(16, 16, 8))
    cfg = model.config()
    cfg2 = json.loads(json.dumps(cfg))
    assert cfg2 == cfg
    rebuilt = model_from_config(cfg2)
    assert rebuilt.variant == model.variant and rebuilt.ndim == 2 and rebuilt.arch == model.arch
    rebuilt.load_state_dict(model.state_dict())  # strict: identical parameter names and shapes
    moving, fixed = _pair(1, (32, 32))
    assert torch.equal(rebuilt(moving, fixed)["disp_vox"], model(moving, fixed)["disp_vox"])
    assert set(cfg["arch"]) == set(DEFAULT_ARCH)
    with pytest.raises(ValueError, match="arch"):
        model_from_config({"variant": cfg["variant"], "ndim": 2})


def test_bad_input_raises_value_error_naming_argument_and_shapes():
    model3 = _build("affine_basic", 3)
    model2 = _build("baseline", 2)
    a3 = torch.rand(1, 1, 32, 32, 32)
    with pytest.raises(ValueError, match=r"moving and fixed shapes differ.*\(1, 1, 32, 32, 32\).*\(1, 1, 32, 32, 16\)"):
        model3(a3, torch.rand(1, 1, 32, 32, 16))
    with pytest.raises(ValueError, match=r"\(32, 40\) must be divisible by 16"):
        model2(torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 40))
    with pytest.raises(ValueError, match=r"moving .*3D model.*\(1, 1, 64, 64\)"):
        model3(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"fixed must have 1 channel.*\(1, 2, 64, 64\)"):
        model2(torch.rand(1, 1, 64, 64), torch.rand(1, 2, 64, 64))
    bad = torch.rand(1, 1, 64, 64)
    bad[0, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="fixed contains NaN"):
        model2(torch.rand(1, 1, 64, 64), bad)
    with pytest.raises(ValueError, match="floating point"):
        model2(torch.ones(1, 1, 64, 64, dtype=torch.int64), torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="torch.Tensor"):
        model2(torch.rand(1, 1, 64, 64).numpy(), torch.rand(1, 1, 64, 64))


def test_module_constants_match_the_contract():
    assert DEFAULT_ARCH == dict(
        enc_features=(16, 32, 32, 32),
        dec_features=(32, 32, 32, 32, 32, 16, 16),
        diffeomorphic=False,
        int_steps=7,
        affine_features=(16, 32, 64, 64),
        affine_kind="keypoints",
        affine_keypoints=32,
        affine_keypoint_strides=3,
        affine_passes=1,
        deform_passes=1,
    )
    assert unet.LEAKY_SLOPE == 0.2


@pytest.mark.parametrize("ndim", [3, 2])
def test_cpu_channels_last_path_matches_the_plain_path(ndim, monkeypatch):
    """The CPU speed path (channels-last convolutions) computes the same values and gradients.

    (With the regression affine stage: the untrained keypoint stage fits keypoints that all sit
    within a voxel of the centre, so float rounding of the layouts is amplified in its answer;
    its layouts are compared on keypoints in the next test.)
    """
    moving, fixed = _pair(2, SHAPES[ndim])
    results = {}
    for flag in (True, False):
        monkeypatch.setattr(unet, "CPU_CHANNELS_LAST", flag)
        model = _build("affine_enhanced", ndim, seed=9, affine_kind="regression")
        _scale_flow_head(model, moving, fixed, 2.0)
        out = model(moving, fixed)
        assert out["disp_vox"].is_contiguous() and out["deform_disp_vox"].is_contiguous()
        ((out["warped"] - fixed) ** 2).mean().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        results[flag] = ({k: v.detach() for k, v in out.items()}, grads)
    (out_cl, grad_cl), (out_plain, grad_plain) = results[True], results[False]
    for key in out_cl:
        assert torch.allclose(out_cl[key], out_plain[key], rtol=1e-4, atol=1e-5), key
    for key in grad_cl:
        scale = float(grad_plain[key].abs().max()) + 1e-30
        assert float((grad_cl[key] - grad_plain[key]).abs().max()) <= 1e-3 * scale, key


@pytest.mark.parametrize("ndim", [3, 2])
def test_cpu_channels_last_keypoints_match_the_plain_path(ndim, monkeypatch):
    image, _ = _pair(2, SHAPES[ndim])
    keypoints = {}
    for flag in (True, False):
        monkeypatch.setattr(unet, "CPU_CHANNELS_LAST", flag)
        keypoints[flag] = _build("affine_basic", ndim, seed=9).affine.keypoints_vox(image).detach()
    assert torch.allclose(keypoints[True], keypoints[False], atol=1e-4)


# --------------------------------------------------------------------------- keypoint affine stage
@pytest.mark.parametrize("ndim", [3, 2])
def test_affine_from_keypoints_recovers_a_known_affine(ndim):
    g = torch.Generator().manual_seed(3)
    shape = (40, 48, 36)[:ndim]
    matrix = torch.eye(ndim + 1, dtype=torch.float64)
    matrix[:ndim, :ndim] += 0.15 * torch.randn(ndim, ndim, generator=g, dtype=torch.float64)
    matrix[:ndim, ndim] = torch.tensor([6.0, -4.0, 2.5][:ndim], dtype=torch.float64)
    fixed_kp = torch.rand(2, 12, ndim, generator=g, dtype=torch.float64) * torch.tensor(shape, dtype=torch.float64)
    moving_kp = (matrix[:ndim, :ndim] @ fixed_kp[..., None])[..., 0] + matrix[:ndim, ndim]
    est = affine.affine_from_keypoints(moving_kp, fixed_kp, shape)
    assert torch.allclose(est, matrix.expand(2, -1, -1), atol=1e-9)
    # the ridge pulls towards the identity (and keeps degenerate keypoints solvable)
    same = torch.full((1, 12, ndim), 10.0, dtype=torch.float64)
    assert torch.allclose(affine.affine_from_keypoints(same, same, shape, ridge=0.01), torch.eye(ndim + 1, dtype=torch.float64)[None])
    shifted = affine.affine_from_keypoints(fixed_kp + 3.0, fixed_kp, shape, ridge=1e-3)
    assert torch.allclose(shifted[:, :ndim, ndim], torch.full((2, ndim), 3.0, dtype=torch.float64), atol=0.05)


@pytest.mark.parametrize("ndim", [3, 2])
def test_keypoint_stage_is_the_identity_for_identical_images_and_follows_its_keypoints(ndim):
    model = _build("affine_basic", ndim)
    assert isinstance(model.affine, affine.KeypointAffineStage)
    image, _ = _pair(1, SHAPES[ndim])
    out = model(image, image)
    assert torch.allclose(out["affine_matrix_vox"], torch.eye(ndim + 1)[None], atol=1e-3)
    # the answer is the keypoints' least-squares fit
    other, _ = _pair(1, SHAPES[ndim], seed=7)
    stage = model.affine
    moving_kp, fixed_kp = stage.keypoints_vox(torch.cat([other, image])).chunk(2)
    expected = affine.affine_from_keypoints(moving_kp, fixed_kp, SHAPES[ndim], affine.KEYPOINT_RIDGE * stage.keypoints)
    assert torch.allclose(model(other, image)["affine_matrix_vox"], expected, atol=1e-6)


def test_keypoints_follow_a_shifted_image():
    """Sharp heat maps on a bright blob: its keypoints move with it by whole strides."""
    model = _build("affine_basic", 3)
    stage = model.affine
    with torch.no_grad():  # make every heat map respond to intensity only, strongly
        for layer in stage.features:
            layer.conv.weight.zero_()
            layer.conv.bias.zero_()
            centre = tuple(k // 2 for k in layer.conv.weight.shape[2:])
            layer.conv.weight[(slice(None), slice(None)) + centre] = 1.0
        stage.heatmaps.weight.fill_(1.0)
        stage.heatmaps.bias.zero_()
    image = torch.zeros(1, 1, 32, 32, 32)
    image[..., 8:12, 8:12, 8:12] = 1.0
    shifted = torch.roll(image, shifts=(8, 0, 8), dims=(2, 3, 4))
    moved = stage.keypoints_vox(shifted) - stage.keypoints_vox(image)
    assert torch.allclose(moved, torch.tensor([8.0, 0.0, 8.0]).expand_as(moved), atol=0.05)


def test_keypoint_strides_set_the_heat_map_cell_and_are_part_of_the_architecture():
    """Fewer stride-2 layers: finer heat maps (same weight shapes); a checkpoint made before the
    option (no ``affine_keypoint_strides`` in its config) is the default, 3."""
    from DeepRegAblationLib.models.checkpoints import architecture

    coarse = _build("affine_basic", 3)
    fine = _build("affine_basic", 3, affine_keypoint_strides=2)
    assert (coarse.affine.stride, fine.affine.stride) == (8, 4)
    image = torch.rand(1, 1, 32, 32, 32)
    cells = {name: m.affine.heatmaps(m.affine.features(image)).shape[2:] for name, m in (("coarse", coarse), ("fine", fine))}
    assert cells == {"coarse": (4, 4, 4), "fine": (8, 8, 8)}
    assert {k: v.shape for k, v in coarse.state_dict().items()} == {k: v.shape for k, v in fine.state_dict().items()}
    old = coarse.config()
    del old["arch"]["affine_keypoint_strides"]
    assert model_from_config(old).affine.stride == 8
    assert architecture(old) == architecture(coarse.config()) != architecture(fine.config())
    for bad in (-1, 5, 2.0, True):
        with pytest.raises(ValueError, match="affine_keypoint_strides"):
            build_model("affine_basic", 3, affine_keypoint_strides=bad)


def test_old_checkpoint_configs_rebuild_the_regression_stage():
    model = _build("affine_basic", 2, affine_kind="regression")
    config = model.config()
    del config["arch"]["affine_kind"], config["arch"]["affine_keypoints"]
    rebuilt = model_from_config(config)
    assert isinstance(rebuilt.affine, affine.AffineStage)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="affine_kind"):
        build_model("affine_basic", 2, affine_kind="moments")


def test_affine_passes_compose_the_stage_on_what_the_last_pass_left():
    one = _build("affine_basic", 3, seed=4)
    two = _build("affine_basic", 3, seed=4, affine_passes=2)
    two.load_state_dict(one.state_dict())  # same weights: the passes share them
    moving, fixed = _pair(1, SHAPES[3])
    first = one.affine(torch.cat([moving, fixed], dim=1))
    seen = fields.warp(moving, fields.affine_to_disp(first, SHAPES[3]))
    expected = first @ one.affine(torch.cat([seen, fixed], dim=1))
    assert torch.allclose(two(moving, fixed)["affine_matrix_vox"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="affine_passes"):
        build_model("affine_basic", 3, affine_passes=0)


@pytest.mark.parametrize("variant", ["baseline", "affine_basic"])
def test_a_cascade_runs_the_unet_again_on_what_the_last_pass_left(variant):
    """deform_passes=2: the second pass sees the moving image warped by the first total field, and its field is
    composed after the first; the weights are those of one pass (a 1-pass checkpoint loads into a cascade)."""
    from DeepRegAblationLib.models.checkpoints import architecture

    torch.manual_seed(0)
    one = build_model(variant, 2)
    two = build_model(variant, 2, deform_passes=2)
    with torch.no_grad():
        for p in one.parameters():
            p.add_(0.05 * torch.randn_like(p))
    two.load_state_dict(one.state_dict())  # same weights
    assert architecture(one.config()) == architecture(two.config()) and two.config()["arch"]["deform_passes"] == 2
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        first = one(moving, fixed)
        second = one(first["warped"], fixed)  # no affine stage runs on a pre-warped pair in a cascade: compare the U-Net
        cascade = two(moving, fixed)
        deform2 = two.flow(two.unet(torch.cat([fields.warp(moving, first["disp_vox"]), fixed], dim=1)))
    expected_deform = fields.compose(first["deform_disp_vox"], deform2)
    torch.testing.assert_close(cascade["deform_disp_vox"], expected_deform)
    expected_total = fields.compose(first["affine_disp_vox"], expected_deform) if variant == "affine_basic" else expected_deform
    torch.testing.assert_close(cascade["disp_vox"], expected_total)
    torch.testing.assert_close(cascade["warped"], fields.warp(moving, expected_total))
    assert not torch.allclose(cascade["disp_vox"], first["disp_vox"])
    assert second["disp_vox"].shape == cascade["disp_vox"].shape
    with pytest.raises(ValueError, match="deform_passes must be an int >= 1"):
        build_model(variant, 2, deform_passes=0)
