"""imageio.py: ImageData, NIfTI / NRRD round trips (LPS <-> RAS), validation, normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from _registration_helpers import label_volume, oblique_pair
from DeepRegAblationLib import geometry
from DeepRegAblationLib.imageio import (
    ImageData,
    normalize_intensity,
    read_image,
    validate_image,
    write_image,
)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_round_trip_keeps_array_and_oblique_matrix(tmp_path, suffix):
    fixed, _ = oblique_pair()
    path = write_image(tmp_path / f"image{suffix}", fixed)
    back = read_image(path)
    assert back.name == "image"
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, fixed.array)
    np.testing.assert_allclose(back.ijk_to_ras, fixed.ijk_to_ras, atol=1e-5)
    labels = ImageData(label_volume(fixed.array), fixed.ijk_to_ras)
    back_labels = read_image(write_image(tmp_path / f"labels{suffix}", labels))
    assert back_labels.array.dtype == np.int16
    np.testing.assert_array_equal(back_labels.array, labels.array)


def test_files_are_lps(tmp_path):
    """What SimpleITK reports (LPS) is the RAS matrix with x and y negated."""
    fixed, _ = oblique_pair()
    path = write_image(tmp_path / "image.nii.gz", fixed)
    itk_image = sitk.ReadImage(str(path))
    corner_lps = np.asarray(itk_image.TransformIndexToPhysicalPoint((3, 5, 7)))
    corner_ras = geometry.voxel_to_ras(np.array([3.0, 5.0, 7.0]), fixed.ijk_to_ras)
    np.testing.assert_allclose(corner_lps, corner_ras * [-1, -1, 1], atol=1e-4)


def test_2d_images_are_single_slice_volumes(tmp_path):
    array = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    itk_2d = sitk.GetImageFromArray(array)
    itk_2d.SetSpacing((0.7, 1.3))
    itk_2d.SetOrigin((4.0, -2.0))
    sitk.WriteImage(itk_2d, str(tmp_path / "slice.nii.gz"))
    image = read_image(tmp_path / "slice.nii.gz")
    assert image.shape == (1, 20, 30) and image.is_2d
    np.testing.assert_array_equal(image.array[0], array)
    np.testing.assert_allclose(geometry.spacing_from_matrix(image.ijk_to_ras)[:2], [0.7, 1.3], atol=1e-6)
    np.testing.assert_allclose(image.ijk_to_ras[:2, 3], [-4.0, 2.0], atol=1e-6)  # LPS origin -> RAS
    back = read_image(write_image(tmp_path / "again.nii.gz", image))
    assert back.shape == (1, 20, 30)
    np.testing.assert_allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-5)
    assert ImageData(array, np.eye(4)).shape == (1, 20, 30)


def test_bad_inputs_raise_value_error_naming_the_input(tmp_path):
    fixed, _ = oblique_pair()
    nan = fixed.array.copy()
    nan[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="moving contains NaN"):
        validate_image(ImageData(nan, fixed.ijk_to_ras), "moving")
    with pytest.raises(ValueError, match="fixed is empty"):
        validate_image(ImageData(np.zeros((0, 4, 4), np.float32), np.eye(4)), "fixed")
    with pytest.raises(ValueError, match="fixed must be a scalar image"):
        validate_image(ImageData(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), "fixed")
    with pytest.raises(ValueError, match="labels.*matrix"):
        validate_image(ImageData(np.zeros((4, 4, 4)), np.diag([1.0, 1.0, 0.0, 1.0])), "labels")
    # files: NaN, vector, 4D, missing, not an image
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(ValueError, match=r"fixed .*nan\.nii\.gz contains NaN"):
        read_image(tmp_path / "nan.nii.gz", name="fixed")
    vector = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "vector.nii.gz"))
    with pytest.raises(ValueError, match="moving .*vector image"):
        read_image(tmp_path / "vector.nii.gz", name="moving")
    volumes = [sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(ValueError, match="moving .*4D image"):
        read_image(tmp_path / "4d.nii.gz", name="moving")
    with pytest.raises(FileNotFoundError, match="fixed file not found"):
        read_image(tmp_path / "missing.nii.gz", name="fixed")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read fixed"):
        read_image(tmp_path / "junk.nii.gz", name="fixed")


def test_normalize_intensity_robust_range():
    rng = np.random.default_rng(0)
    array = rng.uniform(10.0, 20.0, size=(10, 10, 10))
    array[0, 0, 0] = 1e6  # one outlier does not set the scale
    out = normalize_intensity(array)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    low, high = np.percentile(array, [1, 99])
    np.testing.assert_allclose(out[5, 5, 5], np.clip((array[5, 5, 5] - low) / (high - low), 0, 1), rtol=1e-6)
    assert np.mean((out > 0) & (out < 1)) > 0.95
    np.testing.assert_array_equal(normalize_intensity(np.full((3, 3, 3), 7.0)), 0.0)


def test_nii_gz_is_written_as_parallel_gzip_members_that_readers_accept(tmp_path, monkeypatch):
    import gzip

    import nibabel as nib

    from DeepRegAblationLib import imageio, nifti_writer

    monkeypatch.setattr(nifti_writer, "GZIP_CHUNK_BYTES", 1000)  # many members even for a small image
    rng = np.random.default_rng(0)
    array = rng.normal(size=(9, 11, 13)).astype(np.float32)
    matrix = np.diag([1.5, 0.8, 2.0, 1.0])
    matrix[:3, 3] = [4.0, -3.0, 7.0]
    path = imageio.write_image(tmp_path / "image.nii.gz", imageio.ImageData(array, matrix, "image"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz"]  # no temporary left behind
    assert path.read_bytes().count(b"\x1f\x8b\x08") > 3  # several gzip members
    back = imageio.read_image(path)  # ITK
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.ijk_to_ras, matrix, atol=1e-6)
    nib_image = nib.load(str(path))  # nibabel: the same voxels (i, j, k order) and the same RAS affine
    np.testing.assert_array_equal(np.asarray(nib_image.dataobj).transpose(2, 1, 0), array)
    np.testing.assert_allclose(nib_image.affine, matrix, atol=1e-5)
    plain = imageio.write_image(tmp_path / "plain.nii", imageio.ImageData(array, matrix, "plain"))
    assert gzip.decompress(path.read_bytes()) == plain.read_bytes()  # the same file, compressed
