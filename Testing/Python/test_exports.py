"""exports.py: the ITK files mean what the result means (SimpleITK is the oracle), metrics table."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from _registration_helpers import label_volume, oblique_pair
from DeepRegAblationLib import geometry
from DeepRegAblationLib.outputs import exports
from DeepRegAblationLib.imageio import ImageData, itk_image_from_array, read_image
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationLib.registration import RegistrationResult, register


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """affine_basic with a hand-set affine and a spatially varying deformable field (a few mm),
    on anisotropic oblique fixed and moving grids that differ; files written by exports."""
    torch.manual_seed(0)
    fixed, moving = oblique_pair()
    model = build_model("affine_basic", 3, affine_kind="regression")  # the test sets the regression head
    with torch.no_grad():
        model.affine.head.weight.zero_()
        model.affine.head.bias.copy_(torch.tensor([0.05, 0.02, 0, 0, -0.03, 0.01, 0.02, 0, 0.04, 0.1, -0.05, 0.08]))
        model.flow.conv.weight.mul_(2e5)  # the untrained U-Net's output, scaled to a few voxels
    labels = ImageData(label_volume(moving.array), moving.ijk_to_ras)
    fixed_labels = ImageData(label_volume(fixed.array), fixed.ijk_to_ras)
    result = register(fixed, moving, model, fixed_labels=fixed_labels, moving_labels=labels, device="cpu")
    out = tmp_path_factory.mktemp("export")
    written = exports.write_result_files(out, result)
    return fixed, moving, result, out, written


def _itk(image: ImageData):
    return itk_image_from_array(image.array, image.ijk_to_ras)


def _interior(result, moving, margin_vox=1.0):
    """Fixed voxels whose mapped point lies at least ``margin_vox`` inside the moving image."""
    points = geometry.grid_points_ras(result.shape, result.fixed_ijk_to_ras) + result.disp_ras_mm
    ijk = geometry.ras_to_voxel(points, moving.ijk_to_ras)
    size = np.asarray(moving.shape[::-1])
    return np.all((ijk >= margin_vox) & (ijk <= size - 1 - margin_vox), axis=-1)


def _resample(moving, reference, transform):
    return sitk.GetArrayFromImage(sitk.Resample(_itk(moving), reference, transform, sitk.sitkLinear, 0.0))


def test_files_written(registered):
    _, _, result, out, written = registered
    assert set(written) == set(exports.RESULT_FILES)
    warped = read_image(out / "warped.nii.gz")
    np.testing.assert_array_equal(warped.array, result.warped)
    np.testing.assert_allclose(warped.ijk_to_ras, result.fixed_ijk_to_ras, atol=1e-5)
    np.testing.assert_array_equal(read_image(out / "warped_labels.nii.gz").array, result.warped_labels)
    np.testing.assert_allclose(read_image(out / "jacobian.nii.gz").array, result.jacobian)
    assert 1.0 < np.abs(result.deform_disp_ras_mm).max() < 10.0  # a real deformable part, not ~0


def test_transform_h5_resamples_like_the_warped_image(registered):
    """THE check: SimpleITK + transform.h5 on the moving image == warped.nii.gz."""
    _, moving, result, out, _ = registered
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    reference = sitk.ReadImage(str(out / "warped.nii.gz"))
    resampled = _resample(moving, reference, transform)
    inside = _interior(result, moving)
    assert inside.mean() > 0.1  # ~2000 voxels: the grids overlap partly
    scale = float(np.abs(result.warped[inside]).max())
    np.testing.assert_allclose(resampled[inside], result.warped[inside], atol=1e-3 * scale)
    # the point mapping itself, at fixed voxels: T(p) = p + u(p) in LPS
    points = geometry.grid_points_ras(result.shape, result.fixed_ijk_to_ras)
    for index in [(0, 0, 0), (5, 10, 7), (19, 27, 23), (12, 3, 20)]:
        p_lps = geometry.vectors_ras_to_lps(points[index])
        q_lps = np.asarray(transform.TransformPoint([float(v) for v in p_lps]))
        expected = geometry.vectors_ras_to_lps(points[index] + result.disp_ras_mm[index])
        np.testing.assert_allclose(q_lps, expected, atol=1e-4)


def test_composite_order_matters(registered):
    """Adding the field first and the affine second (the wrong order) gives another image."""
    _, moving, result, out, _ = registered
    wrong = sitk.CompositeTransform(
        [exports.displacement_transform(result.deform_disp_ras_mm, result.fixed_ijk_to_ras),
         exports.affine_transform_lps(result.affine_ras)]
    )
    resampled = _resample(moving, sitk.ReadImage(str(out / "warped.nii.gz")), wrong)
    inside = _interior(result, moving)
    assert np.abs(resampled[inside] - result.warped[inside]).max() > 0.05 * np.abs(result.warped).max()


def test_displacement_nifti_is_the_total_field(registered):
    _, moving, result, out, _ = registered
    field_image = sitk.ReadImage(str(out / "displacement.nii.gz"))
    assert field_image.GetNumberOfComponentsPerPixel() == 3
    stored_lps = sitk.GetArrayFromImage(field_image)
    np.testing.assert_allclose(stored_lps, geometry.vectors_ras_to_lps(result.disp_ras_mm), atol=1e-5)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64))
    resampled = _resample(moving, sitk.ReadImage(str(out / "warped.nii.gz")), transform)
    inside = _interior(result, moving)
    scale = float(np.abs(result.warped[inside]).max())
    np.testing.assert_allclose(resampled[inside], result.warped[inside], atol=1e-3 * scale)


def test_affine_tfm_is_affine_ras_in_lps(registered):
    _, _, result, out, _ = registered
    transform = sitk.ReadTransform(str(out / "affine.tfm"))
    assert not np.allclose(result.affine_ras, np.eye(4), atol=1e-3)
    np.testing.assert_allclose(exports.affine_ras_from_itk(transform), result.affine_ras, atol=1e-6)
    rng = np.random.default_rng(0)
    for p_ras in rng.uniform(-30, 30, size=(5, 3)):
        q_ras = result.affine_ras[:3, :3] @ p_ras + result.affine_ras[:3, 3]
        q_lps = transform.TransformPoint([float(v) for v in p_ras * [-1, -1, 1]])
        np.testing.assert_allclose(q_lps, q_ras * [-1, -1, 1], atol=1e-5)


def test_metrics_table_columns_and_nan(tmp_path, registered):
    _, _, result, _, _ = registered
    second = RegistrationResult(**{**result.__dict__, "variant": "regloss", "metrics": {**result.metrics, "dice": 0.75}})
    csv_path, json_path = exports.write_metrics(tmp_path, [result, second])
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["variant", "dice", "hd95_mm", "folding_pct", "sdlogj", "mse", "ncc", "ssim", "max_disp_mm", "runtime_s", "metrics_s"]
    assert [r[0] for r in rows[1:]] == ["affine_basic", "regloss"]
    records = json.loads(json_path.read_text())
    assert [list(r) for r in records] == [list(exports.METRIC_COLUMNS) + ["warnings"]] * 2  # warnings: JSON only
    assert records[0]["warnings"] == result.warnings
    assert records[0]["dice"] == pytest.approx(result.metrics["dice"]) and records[1]["dice"] == 0.75
    assert records[0]["variant"] == "affine_basic"
    nan_result = RegistrationResult(**{**result.__dict__, "metrics": {**result.metrics, "hd95_mm": float("nan")}})
    csv_path, json_path = exports.write_metrics(tmp_path, [nan_result, second])
    assert json.loads(json_path.read_text())[0]["hd95_mm"] is None  # NaN -> null (valid JSON)
    back = exports.read_metrics_csv(csv_path)
    assert math.isnan(back[0]["hd95_mm"]) and back[1]["dice"] == 0.75
    assert back[0]["max_disp_mm"] == pytest.approx(result.metrics["max_disp_mm"])
