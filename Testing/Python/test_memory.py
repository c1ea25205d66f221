"""Memory that scales (issue 24, item 5): the full-resolution work in slabs gives the same result as on the
whole grid at once; the files written slab by slab are the files SimpleITK writes; a run that cannot fit is
refused before it starts; the benchmark's memory part measures real processes.

The measurement itself (peak RSS per voxel at 9.6 M, 28 M and 77 M voxels) is ``deepreg-ablation bench
--memory`` (docs/reliability.md); these tests use tiny volumes.
"""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from _registration_helpers import label_volume, oblique_matrix, oblique_pair, smooth_volume
from DeepRegAblationLib import geometry, imageio, resampling
from DeepRegAblationLib.imageio import ImageData, write_image, write_itk_image
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationLib.outputs import exports, hdf_transforms
from DeepRegAblationLib.registration import memory, register
from DeepRegAblationLib.registration.mapping import result_from_mapping
from DeepRegAblationTrainingLib import cli

ARRAYS = ("warped", "warped_labels", "disp_ras_mm", "deform_disp_ras_mm", "jacobian")


def _model():
    """An affine + deformable model with a non-trivial output: random weights, a constant flow bias."""
    torch.manual_seed(5)
    model = build_model("affine_basic", 3, affine_kind="regression")
    with torch.no_grad():
        model.flow.conv.weight.mul_(50.0)
        model.flow.conv.bias.copy_(torch.tensor([0.6, -0.4, 0.9]))
        model.affine.head.bias.add_(0.03)
    return model.eval()


def _labelled_pair():
    fixed, moving = oblique_pair(3)
    fixed_labels = ImageData(label_volume(fixed.array), fixed.ijk_to_ras, "fixed_labels")
    moving_labels = ImageData(label_volume(moving.array), moving.ijk_to_ras, "moving_labels")
    return fixed, moving, fixed_labels, moving_labels


def _assert_same_result(whole, slabs):
    for name in ARRAYS:
        a, b = getattr(whole, name), getattr(slabs, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name  # bit for bit
    for key in ("folding_pct", "max_disp_mm", "max_disp_vox", "dice"):
        assert slabs.metrics[key] == whole.metrics[key], key  # counts and extrema: exact
    for key in ("sdlogj", "mse", "ncc", "ssim", "mean_disp_mm", "mean_disp_vox", "hd95_mm", "tre_mm"):
        assert slabs.metrics[key] == pytest.approx(whole.metrics[key], rel=2e-5, abs=1e-7), key


@pytest.mark.parametrize("slab_voxels", [600, 2000])
def test_register_in_slabs_equals_the_whole_grid(monkeypatch, slab_voxels):
    fixed, moving, fixed_labels, moving_labels = _labelled_pair()
    model = _model()
    whole = register(fixed, moving, model, fixed_labels, moving_labels, device="cpu", initial_alignment="none")
    assert len(resampling.slabs(fixed.shape)) == 1
    monkeypatch.setattr(resampling, "CHUNK_VOXELS", slab_voxels)  # slabs of 1 and 3 slices
    assert len(resampling.slabs(fixed.shape)) > 5
    slabs = register(fixed, moving, model, fixed_labels, moving_labels, device="cpu", initial_alignment="none")
    _assert_same_result(whole, slabs)
    assert np.any(whole.jacobian != whole.jacobian.flat[0])  # a field worth the comparison


def test_result_from_mapping_in_slabs_equals_the_whole_grid_for_a_tensor_field(monkeypatch):
    """The classical methods' entry: a (3, K, J, I) tensor field, no windows given."""
    fixed, moving, fixed_labels, moving_labels = _labelled_pair()
    rng = np.random.default_rng(0)
    field = torch.from_numpy(rng.normal(scale=1.5, size=(3,) + fixed.shape).astype(np.float32))
    affine = np.eye(4)
    affine[:3, 3] = [1.0, -2.0, 0.5]
    whole = result_from_mapping("x", fixed, moving, affine, field, fixed_labels, moving_labels)
    monkeypatch.setattr(resampling, "CHUNK_VOXELS", 700)
    slabs = result_from_mapping("x", fixed, moving, affine, field, fixed_labels, moving_labels)
    _assert_same_result(whole, slabs)
    assert whole.metrics["folding_pct"] > 0  # a rough field: folds counted in both


@pytest.mark.parametrize("same_lattice", [False, True])
def test_resample_channels_by_slabs_and_ranges(monkeypatch, same_lattice):
    src = oblique_matrix([1.1, 0.9, 1.3], [5, -10, 20], [3.0, -2.0, 1.0])
    dst = src.copy() if same_lattice else oblique_matrix([1.0, 1.2, 0.8], [0, 15, -5], [2.0, 0.0, -1.0])
    if same_lattice:
        dst[:3, 3] += src[:3, :3] @ np.array([2.0, -1.0, 3.0])  # whole voxels: copied, not interpolated
    volume = np.stack([smooth_volume((12, 14, 10), seed) for seed in range(3)])
    whole = resampling.resample_channels(volume, src, dst, (11, 13, 9), fill_value=None)
    monkeypatch.setattr(resampling, "CHUNK_VOXELS", 100)
    assert np.array_equal(resampling.resample_channels(volume, src, dst, (11, 13, 9), fill_value=None), whole)
    part = resampling.resample_channels(volume, src, dst, (11, 13, 9), fill_value=None, k_range=(4, 9))
    assert np.array_equal(part, whole[:, 4:9])
    with pytest.raises(ValueError, match="k_range"):
        resampling.resample_channels(volume, src, dst, (11, 13, 9), k_range=(5, 20))


def test_streamed_nifti_files_are_the_files_simpleitk_writes(tmp_path, monkeypatch):
    from DeepRegAblationLib import nifti_writer

    monkeypatch.setattr(nifti_writer, "GZIP_CHUNK_BYTES", 3000)  # many gzip members, cut inside slabs
    grid = oblique_matrix([1.2, 0.8, 1.5], [10, 20, -30], [4.0, -6.0, 2.0])
    rng = np.random.default_rng(1)
    warped = rng.normal(size=(7, 9, 11)).astype(np.float32)
    labels = rng.integers(0, 40, size=(7, 9, 11)).astype(np.int32)
    disp = rng.normal(size=(7, 9, 11, 3)).astype(np.float32)
    disp[0, 0, 0] = 0.0  # -0.0 once negated, as SimpleITK's copy gives
    for name, array in (("warped", warped), ("labels", labels)):
        ours = exports.write_volume(tmp_path / f"{name}.nii.gz", array, grid, name)
        theirs = write_image(tmp_path / f"{name}-sitk.nii.gz", ImageData(array, grid, name))
        assert ours.read_bytes() == theirs.read_bytes(), name
    ours = exports.write_displacement_field(tmp_path / "disp.nii.gz", disp, grid)
    theirs = write_itk_image(exports.displacement_image_lps(disp, grid, np.float32), tmp_path / "disp-sitk.nii.gz")
    assert ours.read_bytes() == theirs.read_bytes()
    assert gzip.decompress(ours.read_bytes())[:4] == (348).to_bytes(4, "little")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["warped.nii.gz", "warped-sitk.nii.gz", "labels.nii.gz", "labels-sitk.nii.gz", "disp.nii.gz", "disp-sitk.nii.gz"])


def test_composite_h5_written_by_slabs_is_the_transform_simpleitk_writes(tmp_path, monkeypatch):
    if not hdf_transforms.available():
        pytest.skip("h5py is not installed")
    monkeypatch.setattr(resampling, "CHUNK_VOXELS", 150)
    fixed, moving = oblique_pair(4)
    rng = np.random.default_rng(2)
    deform = rng.normal(size=fixed.shape + (3,)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] += rng.normal(scale=0.05, size=(3, 3))
    affine[:3, 3] = [2.0, -1.0, 3.0]
    ours = hdf_transforms.write_composite(tmp_path / "ours.h5", exports.affine_transform_lps(affine), deform, fixed.ijk_to_ras)
    result = type("R", (), dict(affine_ras=affine, deform_disp_ras_mm=deform, fixed_ijk_to_ras=fixed.ijk_to_ras))
    sitk.WriteTransform(exports.composite_transform(result), str(tmp_path / "sitk.h5"))
    a = sitk.CompositeTransform(sitk.ReadTransform(str(ours)))
    b = sitk.CompositeTransform(sitk.ReadTransform(str(tmp_path / "sitk.h5")))
    assert a.GetNumberOfTransforms() == b.GetNumberOfTransforms() == 2
    for index in range(2):
        x, y = a.GetNthTransform(index), b.GetNthTransform(index)
        assert x.GetName() == y.GetName()
        assert x.GetParameters() == y.GetParameters() and x.GetFixedParameters() == y.GetFixedParameters()
    points = geometry.grid_points_ras((3, 3, 3), fixed.ijk_to_ras).reshape(-1, 3) * np.array([-1, -1, 1])
    assert all(a.TransformPoint(p.tolist()) == b.TransformPoint(p.tolist()) for p in points)


def test_memory_need_is_linear_in_the_voxel_counts():
    def pair(n):
        return (ImageData(np.ones((n, 100, 100), np.float32), np.eye(4)), ImageData(np.ones((n, 100, 100), np.float32), np.eye(4)))

    needs = [memory.registration_memory_bytes(*pair(n)) for n in (10, 20, 40)]
    assert needs[2] - needs[1] == 2 * (needs[1] - needs[0])
    per_voxel = (needs[1] - needs[0]) / 100_000
    assert per_voxel == memory.BYTES_PER_FIXED_VOXEL + memory.BYTES_PER_MOVING_VOXEL
    labelled = memory.registration_memory_bytes(*pair(20), labels=True)
    assert labelled - needs[1] == 200_000 * memory.BYTES_PER_FIXED_LABEL_VOXEL
    from DeepRegAblationLib.registration.refine import refine_schedule

    fixed, moving = pair(20)
    fixed.ijk_to_ras[:3, :3] *= 0.5  # 0.5 mm: thorough refinement stops at 1 mm
    assert memory._finest_refine_voxels(fixed, (8.0, 1.0), 1) == 10 * 50 * 50
    assert memory.registration_memory_bytes(fixed, moving, refine=refine_schedule("thorough")) > needs[1]


def test_a_run_that_cannot_fit_is_refused_before_it_starts(tmp_path, capsys, monkeypatch):
    fixed, moving = oblique_pair()
    with pytest.raises(memory.InsufficientMemoryError, match=r"needs about .* GB of memory; 0.5 GB are available"):
        memory.check_memory(fixed, moving, available=500_000_000)
    assert memory.check_memory(fixed, moving, available=10**12) > memory.BASE_BYTES
    paths = [write_image(tmp_path / f"{image.name}.nii.gz", image) for image in (fixed, moving)]
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: 600_000_000)  # a small machine
    code = cli.main(["register", "--fixed", str(paths[0]), "--moving", str(paths[1]), "--variant", "baseline",
                     "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: registering the fixed image (24x28x20 voxels"), err
    assert "0.6 GB are available (nothing was computed)" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_scene_is_skipped_with_a_warning_when_it_cannot_fit(tmp_path, capsys, monkeypatch):
    fixed, moving = oblique_pair()
    paths = [write_image(tmp_path / f"{image.name}.nii.gz", image) for image in (fixed, moving)]
    monkeypatch.setattr(memory, "BYTES_PER_SCENE_VOXEL", 10**9)  # a scene that fits nowhere
    code = cli.main(["register", "--fixed", str(paths[0]), "--moving", str(paths[1]), "--variant", "baseline",
                     "--device", "cpu", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: Slicer scene failed and were skipped: InsufficientMemoryError: the Slicer scene" in captured.err
    assert (tmp_path / "out" / "metrics.json").is_file() and not (tmp_path / "out" / "scene").exists()


def test_the_memory_benchmark_measures_a_real_process(tmp_path, monkeypatch):
    from DeepRegAblationTrainingLib.benchmarks import memory as bench_memory

    monkeypatch.setitem(bench_memory.SIZES, "8mm", 8.0)  # 25 x 30 x 25 voxels: seconds
    row = bench_memory.measure_case(bench_memory.plan_cases(["8mm"], ["one+labels"])[0], tmp_path, threads=1,
                                    no_scene=True)
    assert row["status"] == 0, row
    assert row["voxels"] == 25 * 30 * 25 and 1e8 < row["peak_rss_bytes"] < 4e9
    assert row["bytes_per_voxel"] == row["peak_rss_bytes"] / row["voxels"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("deepreg-memory-")]  # outputs removed
    rows = [dict(row), dict(row, size="8mm", voxels=2 * row["voxels"], peak_rss_bytes=row["peak_rss_bytes"] + 100 * row["voxels"])]
    table = bench_memory.markdown_table(rows)
    assert "| 8mm" in table and "- `one+labels`: 100" in table


def test_intensity_window_is_np_percentile_with_half_the_memory():
    """float32 and 16-bit images: a float32 partition (4 bytes per voxel, in place for a temporary) gives exactly
    np.percentile of the float64 values."""
    rng = np.random.default_rng(3)
    for trial in range(400):
        n = int(rng.integers(1, 2000))
        array = [rng.normal(size=n).astype(np.float32), rng.integers(0, 4, size=n).astype(np.int16),
                 np.where(rng.random(n) < 0.6, 0.0, rng.random(n)).astype(np.float32),
                 rng.integers(0, 65535, size=n).astype(np.uint16)][trial % 4]
        for low, high in ((1.0, 99.0), (0.0, 100.0), (2.5, 97.5)):
            expected = tuple(float(v) for v in np.percentile(array.astype(np.float64), [low, high]))
            assert imageio.intensity_window(array, low, high) == expected
        if array.dtype == np.float32:
            scratch = array.copy()
            assert imageio.intensity_window(scratch, overwrite_input=True) == imageio.intensity_window(array)
    image = rng.normal(size=(5, 6, 7)).astype(np.float32)
    before = image.copy()
    imageio.intensity_window(image)
    assert np.array_equal(image, before)  # not reordered unless asked

