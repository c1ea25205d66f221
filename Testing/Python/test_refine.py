"""registration.refine (inference.refine): coarse-to-fine instance optimisation (affine, then a stationary
velocity field)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from _registration_helpers import smooth_volume
from DeepRegAblationLib import fields, geometry, resampling
from DeepRegAblationLib.imageio import ImageData
from DeepRegAblationLib.registration.refine import (
    NETWORK_KEPT_ITERATIONS, REFINE_DIFFUSION_WEIGHT, REFINE_SCHEDULES, RefineResult, RefineSchedule,
    network_start_schedule, refine, refine_schedule,
)

SHAPE = (40, 40, 40)
SPACING_MM = 2.0


def _blob(shape=SHAPE, seed=1) -> np.ndarray:
    """A smooth textured 'head': random texture inside a ball, zero outside (normalised to [0, 1])."""
    texture = smooth_volume(shape, seed=seed, sigma=2.0, scale=1.0)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    ball = (k**2 + j**2 + i**2) < 0.75**2
    return (0.3 + 0.7 * texture) * ball.astype(np.float32)


def _known_pair():
    """Fixed image, moving image = fixed under a known mapping q(p) = A(p + u(p)), and that mapping (RAS mm)."""
    matrix = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    matrix[:3, 3] = -SPACING_MM * (np.asarray(SHAPE) - 1) / 2
    fixed = ImageData(_blob(), matrix, "fixed")
    angle = np.deg2rad(4.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) * 1.03
    affine[:3, 3] = [3.0, -2.0, 2.5]
    grid = geometry.grid_points_ras(SHAPE, matrix)  # (K, J, I, 3)
    bump = 2.5 * np.exp(-np.sum((grid - [5.0, 0.0, -4.0]) ** 2, axis=-1) / (2 * 12.0**2))
    deform = np.stack([bump, 0.5 * bump, -bump], axis=-1)  # RAS mm
    moved_points = geometry.apply_affine(grid + deform, affine)
    # the moving image is the fixed one seen through the inverse mapping: moving(q(p)) = fixed(p),
    # so it is sampled at q^-1 of its own grid points, approximated by one fixed-point iteration
    inverse = np.linalg.inv(affine)
    back = geometry.apply_affine(grid, inverse)
    for _ in range(3):
        bump_back = 2.5 * np.exp(-np.sum((back - [5.0, 0.0, -4.0]) ** 2, axis=-1) / (2 * 12.0**2))
        back = geometry.apply_affine(grid, inverse) - np.stack([bump_back, 0.5 * bump_back, -bump_back], axis=-1)
    moving_array = resampling.sample_at_ras(fixed.array, matrix, back)
    moving = ImageData(moving_array.astype(np.float32), matrix, "moving")
    _known_pair.parts = (affine, deform)
    return fixed, moving, moved_points - grid


def _total_disp(result: RefineResult, fixed: ImageData) -> np.ndarray:
    deform = resampling.resample_channels(result.deform_ras.numpy(), result.grid_ijk_to_ras, fixed.ijk_to_ras, fixed.shape,
                                        fill_value=None)
    total = geometry.affine_after_displacement(result.affine_ras, torch.from_numpy(deform), fixed.ijk_to_ras)
    return np.moveaxis(total.numpy(), 0, -1)


def _error_mm(disp: np.ndarray, true: np.ndarray, fixed: ImageData) -> float:
    inside = fixed.array > 0.05
    return float(np.linalg.norm(disp - true, axis=-1)[inside].mean())


def test_refine_recovers_a_known_affine_and_deformation_without_folding():
    fixed, moving, true = _known_pair()
    start = _error_mm(np.zeros_like(true), true, fixed)
    assert start > 4.0
    schedule = RefineSchedule("test", (8.0, 4.0), (8.0, 4.0), 60, 60, min_factor=1)
    seen = []
    result = refine(fixed, moving, np.eye(4), schedule=schedule, progress=lambda f, m: seen.append((f, m)))
    disp = _total_disp(result, fixed)
    assert _error_mm(disp, true, fixed) < 0.35 * start
    det = fields.jacobian_determinant(torch.from_numpy(geometry.ras_mm_to_disp_vox(disp, fixed.ijk_to_ras)).float()[None])
    assert float((det <= 0).float().mean()) == 0.0
    assert {h["level"] for h in result.history} == {"affine_8mm", "affine_4mm", "deform_8mm", "deform_4mm"}
    assert all(h["loss_end"] <= h["loss_start"] for h in result.history)
    assert set(result.timings) >= {"refine_affine_8mm", "refine_deform_4mm"}
    assert seen and seen[-1][0] == 1.0 and all(0.0 <= f <= 1.0 for f, _ in seen)


def test_refine_starts_from_a_given_mapping():
    """Started at the true mapping, refinement stays close to it (it does not undo a good start)."""
    fixed, moving, true = _known_pair()
    affine, deform = _known_pair.parts
    deform = torch.from_numpy(np.moveaxis(deform, -1, 0).astype(np.float32))
    result = refine(fixed, moving, affine, deform, fixed.ijk_to_ras, schedule=5)
    assert _error_mm(_total_disp(result, fixed), true, fixed) < 1.0  # half a voxel: it keeps a good start


def test_a_kept_start_keeps_its_resolution_and_a_velocity_start_is_coarsened():
    """One vanishing step per stage (no movement): the result is the start. Kept (the network start), it is resampled onto the 4 mm level
    grid and survives; as the velocity's start it lives on the level's 8 mm control grid, where a 16 mm wave is lost."""
    matrix = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    image = ImageData(_blob(), matrix, "image")
    grid = geometry.grid_points_ras(SHAPE, matrix)  # (K, J, I, 3) RAS mm
    wave = 0.8 * np.cos(2 * np.pi * grid[..., 0] / 16.0)  # mm, along R, 8 voxels per period
    start = np.stack([wave, np.zeros_like(wave), np.zeros_like(wave)], axis=-1)
    start_ras = torch.from_numpy(np.moveaxis(start, -1, 0).astype(np.float32))
    errors = {}
    for keep in (True, False):
        plan = RefineSchedule("test", (4.0,), (4.0,), 1, 1, affine_step_vox=1e-9, deform_step_vox=1e-9, min_factor=1,
                              keep_start=keep)
        result = refine(image, image, np.eye(4), start_ras, matrix, schedule=plan)
        errors[keep] = _error_mm(_total_disp(result, image), start, image)
    assert errors[True] < 0.2, errors  # linear interpolation of a 4-samples-per-period wave
    assert errors[False] > 2.5 * errors[True], errors


def test_a_kept_start_is_penalised_as_part_of_the_total():
    """Blank images give every field the same similarity, so the deformable level's starting loss is the penalties of
    the start: a kept ramp of slope 0.1 (mm per mm along R) adds the diffusion penalty of the total, 0.1^2 / 3 per level
    voxel (one of three components has a gradient); a penalty on the residual alone (zero at the start) would add
    nothing."""
    shape = (24, 24, 24)
    matrix = np.diag([2.0, 2.0, 2.0, 1.0])
    blank = ImageData(np.full(shape, 0.5, dtype=np.float32), matrix, "blank")
    grid = geometry.grid_points_ras(shape, matrix)  # (K, J, I, 3) RAS mm
    ramp = np.zeros((3,) + shape, dtype=np.float32)
    ramp[0] = 0.1 * (grid[..., 0] - grid[..., 0].mean())
    plan = RefineSchedule("test", (4.0,), (4.0,), 1, 1, affine_step_vox=1e-9, deform_step_vox=1e-9, min_factor=1,
                          keep_start=True)
    start_loss = {}
    for name, start in (("ramp", torch.from_numpy(ramp)), ("none", None)):
        result = refine(blank, blank, np.eye(4), start, matrix, schedule=plan)
        start_loss[name] = next(h["loss_start"] for h in result.history if h["level"] == "deform_4mm")
    assert start_loss["ramp"] - start_loss["none"] == pytest.approx(REFINE_DIFFUSION_WEIGHT * 0.1**2 / 3, rel=0.05)


def test_refine_composes_its_residual_with_a_kept_start():
    """A 2 mm shift along R, started from a kept 1 mm shift: the result is the whole 2 mm (start and residual
    composed), not the residual alone (1 mm) nor the start counted twice."""
    matrix = np.eye(4)
    fixed = ImageData(_blob(), matrix, "fixed")
    moving = ImageData(np.roll(fixed.array, 2, axis=2), matrix, "moving")  # +i is +R: moving(p + 2 mm) = fixed(p)
    start = torch.zeros((3,) + SHAPE)
    start[0] = 1.0
    plan = network_start_schedule(RefineSchedule("test", (4.0,), (4.0, 2.0), 30, 30, min_factor=1), 4.0, keep_start=True)
    assert plan.keep_start and plan.deform_levels_mm == (4.0, 2.0)
    result = refine(fixed, moving, np.eye(4), start, matrix, schedule=plan)
    assert result.grid_ijk_to_ras[0, 0] == pytest.approx(2.0)  # the total on the 2 mm level grid, not its control grid
    disp = _total_disp(result, fixed)
    assert abs(float(np.median(disp[10:30, 10:30, 10:30, 0])) - 2.0) < 0.4
    det = fields.jacobian_determinant(torch.from_numpy(geometry.ras_mm_to_disp_vox(disp, fixed.ijk_to_ras)).float()[None])
    assert float((det <= 0).float().mean()) == 0.0


def test_a_kept_start_refines_single_slice_images():
    """The kept start on 2D (single-slice) images: a 2 mm in-plane shift from a kept 1 mm start ends at 2 mm."""
    image = smooth_volume((1, 48, 48), seed=4, sigma=2.0, scale=1.0)
    matrix = np.eye(4)
    fixed, moving = ImageData(image, matrix), ImageData(np.roll(image, 2, axis=2), matrix)
    start = torch.zeros((3, 1, 48, 48))
    start[0] = 1.0
    plan = RefineSchedule("test", (4.0, 2.0), (4.0, 2.0), 20, 20, min_factor=1, keep_start=True)
    result = refine(fixed, moving, np.eye(4), start, matrix, schedule=plan)
    assert tuple(result.deform_ras.shape) == (3, 1, 24, 24)  # the 2 mm level grid
    assert abs(float(np.median(_total_disp(result, fixed)[0, 10:38, 10:38, 0])) - 2.0) < 0.4


def test_refine_recovers_the_last_finite_state_after_a_nan(monkeypatch):
    fixed, moving, _ = _known_pair()
    real_lncc = inference_losses_lncc = __import__("DeepRegAblationLib.losses", fromlist=["lncc"]).lncc
    calls = {"n": 0}

    def flaky(a, b, window=9):
        calls["n"] += 1
        value = real_lncc(a, b, window)
        return value * float("nan") if calls["n"] > 6 else value

    monkeypatch.setattr("DeepRegAblationLib.losses.lncc", flaky)
    with pytest.warns(RuntimeWarning, match="last finite state") as record:
        result = refine(fixed, moving, np.eye(4), schedule=10)
    assert [w.filename for w in record if "last finite state" in str(w.message)] == [__file__]  # the caller's line
    assert np.all(np.isfinite(result.affine_ras)) and bool(torch.isfinite(result.deform_ras).all())
    monkeypatch.setattr("DeepRegAblationLib.losses.lncc", lambda a, b, window=9: real_lncc(a, b, window) * float("nan"))
    with pytest.raises(ValueError, match="not finite from the start"):
        refine(fixed, moving, np.eye(4), schedule=3)
    assert inference_losses_lncc is real_lncc


def test_refine_refuses_bad_input():
    fixed, moving, _ = _known_pair()
    far = np.eye(4)
    far[:3, 3] = [500.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="do not overlap"):
        refine(fixed, moving, far, schedule=3)
    with pytest.raises(ValueError, match=">= 0"):
        refine(fixed, moving, np.eye(4), schedule=-1)
    with pytest.raises(ValueError, match="needs a schedule"):
        refine(fixed, moving, np.eye(4), schedule=0)


def test_refine_schedule_parsing():
    assert refine_schedule(0) is None and refine_schedule("off") is None and refine_schedule(None) is None
    assert refine_schedule("recommended") is REFINE_SCHEDULES["recommended"]
    assert refine_schedule(True) is REFINE_SCHEDULES["recommended"]
    assert refine_schedule("Thorough") is REFINE_SCHEDULES["thorough"]
    custom = refine_schedule(7)
    assert custom.affine_iterations == custom.deform_iterations == 7 and refine_schedule("7") == custom
    assert refine_schedule(np.int64(7)) == custom and refine_schedule(7.0) == custom and refine_schedule(" 7 ") == custom
    assert refine_schedule(custom) is custom and refine_schedule(False) is None and refine_schedule("none") is None
    thorough = REFINE_SCHEDULES["thorough"]
    assert thorough.min_factor == 1 and min(thorough.deform_levels_mm) <= 1.0
    for bad in (-1, "-3", "fast", 2.5):
        with pytest.raises(ValueError, match="refine"):
            refine_schedule(bad)
    with pytest.raises(ValueError, match="refine iterations must be >= 0, got -3"):
        refine_schedule("-3")
    with pytest.raises(ValueError, match="or an iteration count, got 2.5"):
        refine_schedule(2.5)


def test_register_cli_refine_argument():
    from DeepRegAblationTrainingLib.commands import register as register_command

    parser = argparse.ArgumentParser()
    register_command.add_arguments(parser)
    base = ["--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--out", "o"]
    assert parser.parse_args(base).refine == 0
    assert parser.parse_args(base + ["--refine"]).refine == "recommended"
    assert parser.parse_args(["--refine"] + base).refine == "recommended"
    assert parser.parse_args(base + ["--refine", "thorough"]).refine == "thorough"
    assert parser.parse_args(base + ["--refine", "25"]).refine == 25
    assert parser.parse_args(base + ["--refine", "0"]).refine == 0
    for bad in ("-2", "fast"):
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--refine", bad])


def test_refine_2d_single_slice():
    """Single-slice images (2D models) refine in-plane."""
    image = smooth_volume((1, 48, 48), seed=4, sigma=2.0, scale=1.0)
    matrix = np.diag([1.0, 1.0, 1.0, 1.0])
    fixed = ImageData(image, matrix)
    shifted = np.roll(image, 2, axis=2)
    moving = ImageData(shifted, matrix)
    result = refine(fixed, moving, np.eye(4), schedule=RefineSchedule("t", (4.0, 2.0), (4.0, 2.0), 40, 20, min_factor=1))
    disp = _total_disp(result, fixed)
    assert abs(float(np.median(disp[0, 10:38, 10:38, 0])) - 2.0) < 0.6  # +i is +R here: moving(p + 2) = fixed(p)
    assert np.all(np.isfinite(disp))


def test_network_start_schedule_skips_the_levels_the_network_resolved():
    from DeepRegAblationLib.registration.refine import network_start_schedule

    after = network_start_schedule(REFINE_SCHEDULES["recommended"], 4.0)
    assert after.name == "recommended+network" and after.flat_window > 0
    assert after.affine_levels_mm == (4.0,) and after.deform_levels_mm == (4.0, 2.0)
    # recommended: the network's field kept, at most NETWORK_KEPT_ITERATIONS steps per level; without a network as it was
    assert after.keep_start and not REFINE_SCHEDULES["recommended"].keep_start
    assert after.affine_iterations == after.deform_iterations == NETWORK_KEPT_ITERATIONS < 25
    velocity = network_start_schedule(REFINE_SCHEDULES["recommended"], 4.0, keep_start=False)  # the earlier start
    assert not velocity.keep_start and (velocity.affine_iterations, velocity.deform_iterations) == (30, 25)
    custom = network_start_schedule(refine_schedule(5), 4.0)  # an iteration count: kept, that many steps per level
    assert custom.keep_start and custom.affine_iterations == custom.deform_iterations == 5
    thorough = network_start_schedule(REFINE_SCHEDULES["thorough"], 4.0)  # the velocity start, all its iterations
    assert not thorough.keep_start and thorough.deform_iterations == 60
    assert thorough.affine_levels_mm == (4.0, 2.0) and thorough.deform_levels_mm == (4.0, 2.0, 1.0)
    coarse = network_start_schedule(REFINE_SCHEDULES["recommended"], 16.0)  # nothing is finer than the network: all levels
    assert coarse.affine_levels_mm == (8.0, 4.0) and coarse.deform_levels_mm == (8.0, 4.0, 2.0)
    fine = network_start_schedule(REFINE_SCHEDULES["recommended"], 1.0)  # a finer network: the finest level of each stage
    assert fine.affine_levels_mm == (4.0,) and fine.deform_levels_mm == (2.0,)


def test_a_level_stops_once_its_loss_has_flattened():
    """Slowly falling loss: without the flattening stop every iteration runs; with it the level ends early."""
    from DeepRegAblationLib.registration import refine as refinement

    def run(plan):
        param = torch.tensor([10.0], requires_grad=True)
        record = refinement._optimise([{"params": [param], "lr": 0.01}], lambda: (param ** 2).sum() + 1000.0, 100, plan,
                                      "test", lambda step, value: None)
        return record["iterations"]

    plain = RefineSchedule("custom", (8.0,), (8.0,), 100, 100)
    assert run(plain) == 100
    flat = RefineSchedule("custom", (8.0,), (8.0,), 100, 100, flat_window=5, flat_tolerance=1e-3)
    assert 5 <= run(flat) < 20


def test_a_rising_loss_is_not_flat():
    """A loss that rose over the window (Adam's first steps from a network's output can raise it) keeps the level going;
    only a loss that stopped moving either way ends it (the demo's refined run lost 0.37 mm when rises counted)."""
    from DeepRegAblationLib.registration import refine as refinement

    plan = RefineSchedule("custom", (8.0,), (8.0,), 100, 100, flat_window=3, flat_tolerance=1e-3)
    assert not refinement._flattened([1.0, 1.1, 1.2, 1.3], plan)  # rising by 30 %
    assert not refinement._flattened([1.3, 1.2, 1.1, 1.0], plan)  # falling by 30 %
    assert refinement._flattened([1.0, 1.0002, 0.9999, 1.0001], plan)  # within 0.1 % either way
    assert not refinement._flattened([1.0, 1.0, 1.0], plan)  # fewer values than the window needs


def test_register_refines_a_trained_network_from_its_grid_on(tmp_path):
    """register(refine="recommended") after a trained 4 mm network: no 8 mm level; a RefineSchedule runs as given."""
    from DeepRegAblationLib.models.checkpoints import save_checkpoint
    from DeepRegAblationLib.models.network import build_model
    from DeepRegAblationLib.registration.pipeline import register

    fixed, moving, _ = _known_pair()
    model = build_model("affine_basic", 3)
    path = save_checkpoint(tmp_path / "m.pt", model, preprocessing={"spacing_mm": [4.0, 4.0, 4.0], "shape": [32, 32, 32]})
    result = register(fixed, moving, path, refine="recommended", device="cpu", initial_alignment="none")
    assert "refine_affine_4mm" in result.timings and "refine_deform_4mm" in result.timings
    assert not any(key.endswith("_8mm") for key in result.timings)
    given = register(fixed, moving, path, refine=REFINE_SCHEDULES["recommended"], device="cpu", initial_alignment="none")
    assert "refine_affine_8mm" in given.timings
    untrained = register(fixed, moving, "affine_basic", refine="recommended", device="cpu", initial_alignment="none")
    assert "refine_affine_8mm" in untrained.timings  # an untrained network resolved nothing
