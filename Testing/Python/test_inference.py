"""registration (inference.py's names): register() on physical images (known affine / deformable mappings),
refine(), results, devices, and the names inference.py keeps."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from _registration_helpers import label_volume, oblique_matrix, oblique_pair, smooth_volume
from DeepRegAblationLib import fields, geometry, inference, resampling
from DeepRegAblationLib.imageio import ImageData, itk_image_from_array
from DeepRegAblationLib.metrics import METRIC_KEYS
from DeepRegAblationLib.models.checkpoints import save_checkpoint
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationLib.registration import RegistrationResult, register, resolve_device
from DeepRegAblationLib.registration.devices import run_with_cpu_fallback

MODEL_SHAPE = (32, 32, 32)  # oblique_pair's fixed (20, 28, 24) padded up to multiples of 16


def set_affine(model, linear_delta_kji, translation_half_extent):
    """Affine head outputs the given parameters for any input (weights zero, bias = parameters)."""
    with torch.no_grad():
        model.affine.head.weight.zero_()
        bias = np.concatenate([np.asarray(linear_delta_kji, float).reshape(-1), translation_half_extent])
        model.affine.head.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def set_constant_flow(model, flow_vox):
    """Flow head outputs the constant displacement ``flow_vox`` (tensor axis order) everywhere."""
    with torch.no_grad():
        model.flow.conv.weight.zero_()
        model.flow.conv.bias.copy_(torch.tensor(flow_vox, dtype=torch.float32))


def test_known_translation_matches_simpleitk():
    fixed, moving = oblique_pair()
    model = build_model("affine_basic", 3, affine_kind="regression")  # the test sets the regression head
    translation_vox = np.array([1.0, -2.0, 1.5])  # (k, j, i) voxels of the model grid (fixed spacing)
    set_affine(model, np.zeros((3, 3)), translation_vox / ((np.array(MODEL_SHAPE) - 1) / 2.0))
    set_constant_flow(model, [0.0, 0.0, 0.0])
    result = register(fixed, moving, model, device="cpu", initial_alignment="none")

    expected_ras = fixed.ijk_to_ras[:3, :3] @ translation_vox[::-1]
    np.testing.assert_allclose(result.disp_ras_mm, np.broadcast_to(expected_ras, result.disp_ras_mm.shape), atol=1e-4)
    np.testing.assert_allclose(result.affine_ras[:3, :3], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(result.affine_ras[:3, 3], expected_ras, atol=1e-4)
    np.testing.assert_allclose(result.deform_disp_ras_mm, 0.0, atol=1e-6)
    np.testing.assert_allclose(result.jacobian, 1.0, atol=1e-5)
    assert result.metrics["max_disp_mm"] == pytest.approx(np.linalg.norm(expected_ras), rel=1e-4)
    # the warped image is the moving image sampled at p + t: SimpleITK with a translation (LPS)
    translation_lps = expected_ras * [-1, -1, 1]
    reference = sitk.Resample(
        itk_image_from_array(moving.array, moving.ijk_to_ras),
        itk_image_from_array(fixed.array, fixed.ijk_to_ras),
        sitk.TranslationTransform(3, [float(v) for v in translation_lps]),
        sitk.sitkLinear,
        0.0,
    )
    np.testing.assert_allclose(result.warped, sitk.GetArrayFromImage(reference), atol=1e-3)


def test_known_affine_and_field_match_the_network_output():
    """Full-resolution RAS mapping == the network's voxel mapping on the model grid, carried through IJKToRAS."""
    fixed, moving = oblique_pair()
    model = build_model("affine_basic", 3, affine_kind="regression")  # the test sets the regression head
    set_affine(model, [[0.04, 0.02, 0.0], [0.0, -0.03, 0.01], [0.02, 0.0, 0.05]], [0.08, -0.05, 0.06])
    set_constant_flow(model, [0.5, -0.25, 0.75])
    result = register(fixed, moving, model, device="cpu", initial_alignment="none")

    grid, grid_shape = geometry.model_grid_for(fixed, fixed.spacing_kji, MODEL_SHAPE)
    with torch.no_grad():
        zeros = torch.zeros((1, 1) + grid_shape)
        outputs = model(zeros, zeros)  # the affine head and the constant flow ignore the images
    # model voxel of fixed voxel (0, 0, 0), (k, j, i): the grid pads without interpolation
    start = -np.round(geometry.ras_to_voxel(grid[:3, 3], fixed.ijk_to_ras)).astype(int)[::-1]
    window = tuple(slice(s, s + n) for s, n in zip(start, fixed.shape))
    identity = fields.identity_grid(grid_shape, dtype=torch.float64).numpy()
    moving_vox = (identity + outputs["disp_vox"][0].double().numpy())[(slice(None),) + window]  # (3, K, J, I) kji
    moving_ras = geometry.voxel_to_ras(np.moveaxis(moving_vox[::-1], 0, -1), grid)
    fixed_ras = geometry.grid_points_ras(fixed.shape, fixed.ijk_to_ras)
    np.testing.assert_allclose(fixed_ras + result.disp_ras_mm, moving_ras, atol=1e-3)
    # affine part: the network's matrix in RAS; deformable part: the constant flow in RAS
    np.testing.assert_allclose(
        result.affine_ras, geometry.matrix_vox_to_ras(outputs["affine_matrix_vox"][0], grid), atol=1e-9
    )
    expected_deform = fixed.ijk_to_ras[:3, :3] @ np.array([0.5, -0.25, 0.75])[::-1]
    np.testing.assert_allclose(result.deform_disp_ras_mm, np.broadcast_to(expected_deform, fixed.shape + (3,)), atol=1e-5)
    # warped = ONE interpolation of the original moving image at the mapped points
    expected_warped = resampling.sample_at_ras(moving.array, moving.ijk_to_ras, moving_ras)
    np.testing.assert_allclose(result.warped, expected_warped, atol=1e-3)
    linear = result.affine_ras[:3, :3]
    np.testing.assert_allclose(result.jacobian, np.linalg.det(linear), rtol=1e-4)


def test_checkpoint_preprocessing_sets_the_model_grid(tmp_path):
    """A checkpoint trained at 2 mm: a constant flow of c voxels is 2c mm along the fixed axes."""
    fixed, moving = oblique_pair()
    model = build_model("baseline", 3)
    flow = np.array([0.5, 1.0, -0.75])
    set_constant_flow(model, flow)
    path = save_checkpoint(tmp_path / "baseline.pt", model, preprocessing={"spacing_mm": [2.0, 2.0, 2.0], "shape": [16, 16, 16]})
    result = register(fixed, moving, str(path), device="cpu", initial_alignment="none")
    direction = geometry.direction_from_matrix(fixed.ijk_to_ras)
    expected = direction @ (2.0 * flow[::-1])
    assert result.variant == "baseline" and result.warped.shape == fixed.shape
    np.testing.assert_allclose(result.disp_ras_mm, np.broadcast_to(expected, fixed.shape + (3,)), atol=1e-5)


def test_labels_warped_by_nearest_neighbour_and_metrics():
    fixed, _ = oblique_pair()
    moving = ImageData(smooth_volume(fixed.shape, seed=5), fixed.ijk_to_ras, "moving")
    labels = ImageData(label_volume(moving.array), fixed.ijk_to_ras)
    model = build_model("baseline", 3)
    set_constant_flow(model, [0.0, 0.0, 0.0])  # identity
    seen = []
    result = register(fixed, moving, model, fixed_labels=labels, moving_labels=labels, device="cpu",
                      progress=lambda f, m: seen.append(f))
    assert result.warped_labels.dtype == np.int32
    np.testing.assert_array_equal(result.warped_labels, labels.array)
    np.testing.assert_array_equal(result.warped, moving.array)  # u = 0 and same grid: exact
    assert result.metrics["dice"] == pytest.approx(1.0)
    assert result.metrics["folding_pct"] == 0.0
    assert set(METRIC_KEYS) | {"runtime_s"} <= set(result.metrics)
    assert {"read", "resample", "model", "upsample", "metrics"} <= set(result.timings)
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_2d_model_on_single_slice_images_and_dimension_errors():
    matrix = oblique_matrix([0.8, 1.1, 3.0], [0, 0, 20], [5.0, 2.0, -1.0])
    fixed = ImageData(smooth_volume((1, 30, 20), seed=1), matrix, "fixed")
    moving = ImageData(smooth_volume((1, 30, 20), seed=2), matrix, "moving")
    model = build_model("baseline", 2)
    set_constant_flow(model, [1.0, -0.5])  # (j, i)
    result = register(fixed, moving, model, device="cpu", initial_alignment="none")
    assert result.warped.shape == (1, 30, 20) and result.disp_ras_mm.shape == (1, 30, 20, 3)
    np.testing.assert_allclose(result.disp_ras_mm[0, 3, 4], matrix[:3, :3] @ [-0.5, 1.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(result.jacobian, 1.0, atol=1e-5)
    volume, other = oblique_pair()
    with pytest.raises(ValueError, match="fixed is a 3D image .* model is 2D"):
        register(volume, other, model)
    with pytest.raises(ValueError, match="fixed is a 2D image .* model is 3D"):
        register(fixed, moving, build_model("baseline", 3))
    with pytest.raises(ValueError, match="moving is a 2D image"):
        register(volume, moving, build_model("baseline", 3))


def test_bad_inputs_and_devices():
    fixed, moving = oblique_pair()
    nan = ImageData(moving.array.copy(), moving.ijk_to_ras)
    nan.array[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="moving contains NaN"):
        register(fixed, nan, "baseline")
    with pytest.raises(ValueError, match="fixed is constant"):
        register(ImageData(np.zeros(fixed.shape, np.float32), fixed.ijk_to_ras), moving, "baseline")
    far = ImageData(moving.array, moving.ijk_to_ras.copy())
    far.ijk_to_ras[:3, 3] += 1000.0
    with pytest.raises(ValueError, match="do not overlap"):
        register(fixed, far, "baseline", initial_alignment="none")
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        register(fixed, moving, "no_such.pt")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            register(fixed, moving, "baseline", device="cuda")
        assert resolve_device("auto").type == "cpu"


def test_result_save_load_round_trip(tmp_path):
    fixed, moving = oblique_pair()
    labels = ImageData(label_volume(moving.array), moving.ijk_to_ras)
    result = register(fixed, moving, "regloss", moving_labels=labels, fixed_labels=ImageData(label_volume(fixed.array), fixed.ijk_to_ras))
    path = result.save(tmp_path / "sub" / "result.npz")
    back = RegistrationResult.load(path)
    assert back.variant == "regloss"
    for name in ("fixed_ijk_to_ras", "warped", "warped_labels", "affine_ras", "disp_ras_mm", "deform_disp_ras_mm", "jacobian"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.metrics.keys() == result.metrics.keys()
    assert back.timings == pytest.approx(result.timings)
    no_labels = register(fixed, moving, "baseline")
    assert no_labels.warped_labels is None and np.isnan(no_labels.metrics["dice"])
    assert RegistrationResult.load(no_labels.save(tmp_path / "b.npz")).warped_labels is None


def test_register_with_refinement_improves_the_match():
    """register(refine=...) runs registration.refine.refine after the network (its own tests: test_refine.py)."""
    shape = (24, 24, 24)
    volume = smooth_volume(shape, seed=3, sigma=2.0, scale=1.0)
    matrix = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed = ImageData(volume, matrix)
    grid = fields.identity_grid(shape, dtype=torch.float32)
    true = torch.stack([1.5 * torch.sin(2 * np.pi * grid[(a + 1) % 3] / shape[0]) for a in range(3)])[None]
    moving = ImageData(fields.warp(torch.from_numpy(volume)[None, None], true)[0, 0].numpy(), matrix)
    torch.manual_seed(0)
    model = build_model("regloss", 3)
    plain = register(fixed, moving, model, device="cpu")
    refined = register(fixed, moving, model, refine=20, device="cpu")
    assert refined.metrics["ncc"] > plain.metrics["ncc"] + 0.01
    assert "refine" in refined.timings and any(k.startswith("refine_deform_") for k in refined.timings)
    assert refined.metrics["runtime_s"] < plain.metrics["runtime_s"] + refined.timings["refine"] + 5
    assert "metrics_s" in refined.metrics and "refine" not in plain.timings
    with pytest.raises(ValueError, match="refine"):
        register(fixed, moving, model, refine=-1, device="cpu")
    with pytest.raises(ValueError, match="refine"):
        register(fixed, moving, model, refine="fast", device="cpu")


RAS_PREPROCESSING = {"spacing_mm": [2.0, 2.0, 2.0], "shape": [16, 16, 16], "orientation": "RAS"}


def test_ras_checkpoint_runs_on_a_ras_grid(tmp_path):
    """A 3D model trained on RAS-reoriented volumes: flow channel (k, j, i) is (S, A, R), whatever the fixed axes."""
    fixed, moving = oblique_pair()
    model = build_model("baseline", 3)
    flow = np.array([0.5, 1.0, -0.75])  # (k, j, i) voxels of the 2 mm RAS grid
    set_constant_flow(model, flow)
    path = save_checkpoint(tmp_path / "baseline.pt", model, preprocessing=RAS_PREPROCESSING)
    result = register(fixed, moving, str(path), device="cpu", initial_alignment="none")
    expected = 2.0 * flow[::-1]  # (R, A, S) mm: no rotation by the fixed image's oblique axes
    np.testing.assert_allclose(result.disp_ras_mm, np.broadcast_to(expected, fixed.shape + (3,)), atol=1e-5)
    native = dict(RAS_PREPROCESSING, orientation="native")
    other = register(fixed, moving, str(save_checkpoint(tmp_path / "native.pt", model, preprocessing=native)), device="cpu", initial_alignment="none")
    assert np.abs(other.disp_ras_mm[0, 0, 0] - expected).max() > 0.2  # the fixed axes: another displacement
    bad = save_checkpoint(tmp_path / "bad.pt", model, preprocessing=dict(RAS_PREPROCESSING, orientation="LPI"))
    with pytest.raises(ValueError, match="orientation"):
        register(fixed, moving, str(bad), device="cpu")


def test_register_keeps_a_trained_networks_field_in_the_recommended_refinement(tmp_path, monkeypatch):
    """After a trained network (a checkpoint file), register(refine="recommended") keeps the network's field and runs at
    most refine.NETWORK_KEPT_ITERATIONS steps per level; "thorough" starts the velocity from it with all its steps."""
    from DeepRegAblationLib.registration import refine as refinement

    fixed, moving = oblique_pair()
    model = build_model("baseline", 3)
    set_constant_flow(model, np.array([0.5, 1.0, -0.75]))
    path = str(save_checkpoint(tmp_path / "baseline.pt", model, preprocessing=RAS_PREPROCESSING))
    import inspect

    plans = []
    real_refine = refinement.refine

    def recording_refine(*args, **kwargs):  # the real refinement, its schedule recorded
        plans.append(inspect.signature(real_refine).bind(*args, **kwargs).arguments["schedule"])
        return real_refine(*args, **kwargs)

    monkeypatch.setattr(refinement, "refine", recording_refine)
    for refine in ("recommended", "thorough"):
        result = register(fixed, moving, path, refine=refine, device="cpu", initial_alignment="none")
        assert np.isfinite(result.disp_ras_mm).all()
    recommended, thorough = plans
    assert recommended.name == "recommended+network" and recommended.keep_start
    assert recommended.affine_iterations == recommended.deform_iterations == refinement.NETWORK_KEPT_ITERATIONS
    assert thorough.name == "thorough+network" and not thorough.keep_start and thorough.deform_iterations == 60


def test_ras_model_input_equals_the_training_preprocessing():
    """On an LPS-ordered head the network sees exactly what training's Preprocess gives it."""
    from DeepRegAblationTrainingLib.data import Preprocess

    matrix = geometry.matrix_from_geometry([2.0, 2.0, 2.0], np.diag([-1.0, -1.0, 1.0]), [20.0, 15.0, -8.0])
    fixed = ImageData(smooth_volume((14, 12, 10), seed=2), matrix, "fixed")
    moving = ImageData(smooth_volume((14, 12, 10), seed=3), matrix, "moving")
    model = build_model("baseline", 3)
    model.preprocessing = RAS_PREPROCESSING
    seen = {}
    model.register_forward_pre_hook(lambda module, args: seen.update(moving=args[0], fixed=args[1]))
    register(fixed, moving, model, device="cpu")
    preprocess = Preprocess(spacing_mm=2.0, shape=[16, 16, 16], ndim=3)
    for name, image in (("fixed", fixed), ("moving", moving)):
        expected = preprocess.apply(image, name=name)["image"]
        torch.testing.assert_close(seen[name][0].float(), expected, atol=1e-6, rtol=0)


def test_ras_model_transform_h5_resamples_like_the_warped_image(tmp_path):
    """RAS model grid on oblique inputs: SimpleITK + the exported transform.h5 reproduces the warped image."""
    from DeepRegAblationLib.outputs import exports

    torch.manual_seed(0)
    fixed, moving = oblique_pair()
    model = build_model("affine_basic", 3, affine_kind="regression")  # the test sets the regression head
    set_affine(model, [[0.04, 0.02, 0.0], [0.0, -0.03, 0.01], [0.02, 0.0, 0.05]], [0.08, -0.05, 0.06])
    with torch.no_grad():
        model.flow.conv.weight.mul_(2e5)  # the untrained U-Net's output, scaled to a few voxels
    model.preprocessing = RAS_PREPROCESSING
    result = register(fixed, moving, model, device="cpu")
    assert 0.5 < np.abs(result.deform_disp_ras_mm).max() < 20.0
    exports.write_result_files(tmp_path, result)
    transform = sitk.ReadTransform(str(tmp_path / "transform.h5"))
    reference = sitk.ReadImage(str(tmp_path / "warped.nii.gz"))
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(itk_image_from_array(moving.array, moving.ijk_to_ras), reference, transform, sitk.sitkLinear, 0.0)
    )
    points = geometry.grid_points_ras(result.shape, result.fixed_ijk_to_ras) + result.disp_ras_mm
    ijk = geometry.ras_to_voxel(points, moving.ijk_to_ras)
    inside = np.all((ijk >= 1.0) & (ijk <= np.asarray(moving.shape[::-1]) - 2.0), axis=-1)
    assert inside.mean() > 0.1
    scale = float(np.abs(result.warped[inside]).max())
    np.testing.assert_allclose(resampled[inside], result.warped[inside], atol=1e-3 * scale)


def test_cuda_out_of_memory_falls_back_to_cpu_with_a_warning():
    calls = []

    def work(device):
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done on cpu"

    with pytest.warns(RuntimeWarning, match="CUDA ran out of memory for the test volume; falling back to the CPU"):
        result, used = run_with_cpu_fallback(work, torch.device("cuda"), "the test volume")
    assert (result, used.type, calls) == ("done on cpu", "cpu", ["cuda", "cpu"])

    def other_error(device):
        raise RuntimeError("CUDA error: device-side assert triggered")

    with pytest.raises(RuntimeError, match="device-side assert"):  # only out-of-memory falls back
        run_with_cpu_fallback(other_error, torch.device("cuda"))

    def cpu_oom(device):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):  # on the CPU there is nothing to fall back to
        run_with_cpu_fallback(cpu_oom, torch.device("cpu"))


def test_center_of_mass_initial_alignment_recovers_a_translation():
    array = np.zeros((24, 28, 20), np.float32)
    array[6:18, 8:20, 5:15] = smooth_volume((12, 12, 10), seed=4) + 50.0  # a blob on a zero background
    grid = oblique_matrix([1.5, 1.0, 2.0], [8, -5, 3], [-10.0, 4.0, 2.0])
    shift = np.array([6.0, -4.0, 3.0])
    fixed = ImageData(array, grid, "fixed")
    moving = ImageData(array, geometry.translation_matrix(shift) @ grid, "moving")  # the same head, moved
    model = build_model("baseline", 3)
    set_constant_flow(model, [0.0, 0.0, 0.0])  # identity: only the initial alignment moves the image
    aligned = register(fixed, moving, model=model, device="cpu", initial_alignment="com")
    np.testing.assert_allclose(aligned.affine_ras[:3, 3], shift, atol=1e-6)
    np.testing.assert_allclose(aligned.affine_ras[:3, :3], np.eye(3), atol=1e-9)
    plain = register(fixed, moving, model=model, device="cpu", initial_alignment="none")
    np.testing.assert_allclose(plain.affine_ras, np.eye(4), atol=1e-9)
    error = lambda r: float(np.abs(r.warped - array).mean())  # noqa: E731
    assert error(aligned) < 0.05 * error(plain)
    with pytest.raises(ValueError, match="initial_alignment must be one of"):
        register(fixed, moving, model=model, device="cpu", initial_alignment="moments")


INFERENCE_NAMES = (
    "register", "refine", "RegistrationResult", "RefineSchedule", "REFINE_SCHEDULES", "refine_schedule", "RefineResult",
    "resolve_device", "shipped_model_path", "MODELS_DIR", "load_registration_model", "center_of_mass_alignment",
    "result_from_mapping", "model_grid_spec", "model_orientation", "run_with_cpu_fallback", "RESULT_FORMAT",
    "INITIAL_ALIGNMENTS", "REFINE_LNCC_WINDOW", "REFINE_DIFFUSION_WEIGHT", "REFINE_FOLDING_WEIGHT", "REFINE_FOREGROUND",
    "REFINE_THREADS", "REFINE_MIN_OVERLAP",
)


def test_inference_keeps_the_names_it_had():
    """inference.py is a thin re-export of the names that lived there (issue 22): the same objects."""
    from DeepRegAblationLib import options, registration
    from DeepRegAblationLib.models import resolve
    from DeepRegAblationLib.registration import refine as refinement

    assert set(INFERENCE_NAMES) <= set(inference.__all__)
    for name in INFERENCE_NAMES:
        assert hasattr(inference, name), name
    assert inference.register is registration.register and inference.refine is refinement.refine
    assert inference.RegistrationResult is RegistrationResult and inference.RESULT_FORMAT == "deepreg-ablation-result/1"
    assert inference.MODELS_DIR == resolve.MODELS_DIR and inference.MODELS_DIR.name == "Models"
    assert (inference.MODELS_DIR / "3d" / "baseline.pt").is_file()  # Resources/Models beside DeepRegAblationLib
    assert inference.INITIAL_ALIGNMENTS is options.ALIGNMENT_CHOICES
    assert not hasattr(inference, "REFINE_CHOICES")  # options.REFINE_CHOICES is the panel's list
    assert (inference.REFINE_LNCC_WINDOW, inference.REFINE_FOREGROUND, inference.REFINE_THREADS) == (5, 0.05, 1)


def test_load_registration_model_keeps_its_contract(tmp_path):
    torch.manual_seed(0)
    model = build_model("regloss", 3)
    net, preprocessing, trained = inference.load_registration_model(model, 3)
    assert net is model and preprocessing is None and trained
    net, preprocessing, trained = inference.load_registration_model("affine_basic", 2)
    assert net.variant.id == "affine_basic" and net.ndim == 2 and preprocessing is None and not trained
    path = save_checkpoint(tmp_path / "m.pt", model, preprocessing=RAS_PREPROCESSING)
    net, preprocessing, trained = inference.load_registration_model(str(path), 3)
    assert trained and preprocessing == RAS_PREPROCESSING and net.preprocessing == RAS_PREPROCESSING and not net.training
    for key, value in model.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match=r"model must be a variant id \['baseline', 'regloss', 'affine_basic', "
                                                r"'affine_enhanced'\] or a checkpoint file; not found: .*nope.pt"):
        inference.load_registration_model(str(tmp_path / "nope.pt"), 3)
    with pytest.raises(ValueError, match="a checkpoint path or a RegistrationModel, got int"):
        inference.load_registration_model(3, 3)
    with pytest.raises(ValueError, match="model must be a RegistrationModel, got Linear"):
        inference.load_registration_model(torch.nn.Linear(2, 2), 3)


def test_registration_refine_is_the_module():
    """``registration.refine`` names the refinement module (its function is ``registration.refine.refine``)."""
    import types

    from DeepRegAblationLib import registration

    assert isinstance(registration.refine, types.ModuleType) and registration.refine.refine is inference.refine
