"""qform vs sform (issue 24, item 3): parsed from the raw header, placed as ITK / Slicer place it, reported.

SimpleITK is the oracle: for every combination of codes and of a disagreeing qform (mirrored, rotated,
shifted) or a sheared sform, ``nifti_header.itk_choice`` names the matrix SimpleITK's own reading of the
same file uses, and ``imageio.read_image`` returns that geometry. A disagreement beyond a tenth of a voxel
is reported (a ``HeaderDisagreementWarning``; one ``warning:`` line from the command line) with the choice
made; files whose two matrices agree (everything ITK writes, every file of the shared data) are not.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from _registration_helpers import smooth_volume
from DeepRegAblationLib import nifti_header
from DeepRegAblationLib.imageio import ImageData, read_image, write_image
from DeepRegAblationTrainingLib import cli

nib = pytest.importorskip("nibabel")  # writes the crafted headers (the code under test parses raw bytes)
sitk = pytest.importorskip("SimpleITK")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BASE = np.array([[1.0, 0, 0, -5], [0, 1.2, 0, 7], [0, 0, 1.5, 9], [0, 0, 0, 1]])


def _rotation_z(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]
    return rotation


def _mirrored() -> np.ndarray:
    matrix = BASE.copy()
    matrix[0, :] *= -1  # x mirrored: the issue's case
    return matrix


def _shifted() -> np.ndarray:
    matrix = BASE.copy()
    matrix[:3, 3] += [0.0, 0.0, 5.0]
    return matrix


def _sheared() -> np.ndarray:
    matrix = BASE.copy()
    matrix[0, 1] = 0.5
    return matrix


QFORMS = {"mirrored": _mirrored(), "rotated-30": _rotation_z(30) @ BASE, "shifted-5mm": _shifted(), "same": BASE}
SFORMS = {"base": BASE, "sheared": _sheared()}


def _write(path: Path, qform: np.ndarray, qcode: int, sform: np.ndarray, scode: int, version: int = 1,
           big_endian: bool = False) -> Path:
    array = smooth_volume((10, 12, 14), 0).transpose(2, 1, 0).copy()  # nibabel: (i, j, k)
    image = (nib.Nifti1Image if version == 1 else nib.Nifti2Image)(array, None)
    image.set_sform(sform, code=scode)
    image.set_qform(qform, code=qcode)
    if big_endian:
        image = image.__class__(array, None, image.header.as_byteswapped(">"))
    nib.save(image, str(path))
    return path


def _sitk_ras(path: Path) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())[None, :]
    lps[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


CASES = [(q, s, qcode, scode) for q in QFORMS for s in SFORMS for qcode in (0, 1, 2) for scode in (0, 1, 2, 3, 4)
         if qcode or scode]


@pytest.mark.parametrize("qname, sname, qcode, scode", CASES)
def test_the_choice_is_simpleitks(tmp_path, qname, sname, qcode, scode):
    path = _write(tmp_path / "image.nii.gz", QFORMS[qname], qcode, SFORMS[sname], scode)
    header = nifti_header.read_nifti_header(path)
    choice = nifti_header.itk_choice(header)
    try:
        itk_ras = _sitk_ras(path)
    except RuntimeError:
        assert choice == "refused"
        return
    expected = {"sform": nifti_header.sform_matrix(header), "qform": nifti_header.qform_matrix(header)}[choice]
    if choice == "sform":  # ITK keeps pixdim's spacing along the sform's directions
        expected = expected.copy()
        expected[:3, :3] = expected[:3, :3] / np.linalg.norm(expected[:3, :3], axis=0) * np.asarray([1.0, 1.2, 1.5])
    np.testing.assert_allclose(itk_ras, expected, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(read_image(path).ijk_to_ras, itk_ras, atol=1e-6)  # this program = ITK = Slicer


@pytest.mark.parametrize("scode", [1, 2, 3])
def test_a_mirror_at_the_origin_is_placed_as_simpleitk_places_it(tmp_path, scode):
    """No offsets: ITK's similarity test (singular values, rotations U, offsets) passes a one-axis mirror, so it
    keeps the sform even for sform_code 2 or 3; the report names what ITK actually did."""
    mirrored = np.diag([-1.0, 1.2, 1.5, 1.0])
    path = _write(tmp_path / "image.nii.gz", mirrored, 1, np.diag([1.0, 1.2, 1.5, 1.0]), scode)
    with pytest.warns(nifti_header.HeaderDisagreementWarning) as record:
        image = read_image(path)
    itk_ras = _sitk_ras(path)
    np.testing.assert_allclose(image.ijk_to_ras, itk_ras, atol=1e-6)
    header = nifti_header.read_nifti_header(path)
    used = "sform" if np.allclose(itk_ras, nifti_header.sform_matrix(header), atol=1e-4) else "qform"
    assert f"used the {used}, as ITK" in str(record[0].message)


def test_the_issue_case_mirrored_qform_is_reported_with_the_choice(tmp_path):
    for scode, used in ((1, "used the sform"), (2, "used the qform")):
        path = _write(tmp_path / f"mirrored{scode}.nii.gz", _mirrored(), 1, BASE, scode)
        with pytest.warns(nifti_header.HeaderDisagreementWarning) as record:
            image = read_image(path, "moving image (--moving)")
        message = str(record[0].message)
        assert message.startswith(f"moving image (--moving) {path}: its NIfTI qform and sform disagree")
        assert "mirror image" in message and used in message and "\n" not in message
        np.testing.assert_allclose(image.ijk_to_ras, _sitk_ras(path), atol=1e-6)


def test_the_command_line_prints_one_warning_line(tmp_path, capsys):
    fixed = write_image(tmp_path / "fixed.nii.gz", ImageData(smooth_volume((16, 16, 16), 0), np.eye(4)))
    moving = _write(tmp_path / "moving.nii.gz", _rotation_z(10), 1, np.eye(4), 2)
    code = cli.main(["register", "--fixed", str(fixed), "--moving", str(moving), "--variant", "baseline",
                     "--device", "cpu", "--no-scene", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if "qform and sform disagree" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: moving image (--moving) {moving}: "), err
    assert "axes differ by up to 10.0 degrees" in lines[0] and "used the qform" in lines[0]


@pytest.mark.parametrize("version, big_endian", [(1, False), (1, True), (2, False), (2, True)])
def test_the_raw_parser_reads_nifti1_and_nifti2_in_both_byte_orders(tmp_path, version, big_endian):
    path = _write(tmp_path / "image.nii", _rotation_z(20) @ _shifted(), 1, _sheared(), 2, version, big_endian)
    header = nifti_header.read_nifti_header(path)
    reference = nib.load(str(path)).header
    assert header.version == version
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2)
    assert tuple(header["dim"][:4]) == (3, 14, 12, 10)  # (i, j, k)
    np.testing.assert_allclose(nifti_header.qform_matrix(header), reference.get_qform(), atol=1e-5)
    np.testing.assert_allclose(nifti_header.sform_matrix(header), reference.get_sform(), atol=1e-6)
    not_nifti = tmp_path / "not-a-header.nii"
    not_nifti.write_bytes(b"not a header" * 50)
    assert nifti_header.read_nifti_header(not_nifti) is None
    with pytest.raises(nifti_header.NiftiHeaderError, match="not a NIfTI file"):
        nifti_header.parse_nifti_header(b"not a header" * 50, "x")


def test_agreeing_headers_raise_no_alarm(tmp_path):
    written = write_image(tmp_path / "itk.nii.gz", ImageData(smooth_volume((8, 9, 10), 0), _rotation_z(25) @ BASE))
    same = _write(tmp_path / "same.nii.gz", BASE, 1, BASE, 2)
    for path in (written, same):
        with warnings.catch_warnings():
            warnings.simplefilter("error", nifti_header.HeaderDisagreementWarning)
            read_image(path)
    tiny = BASE.copy()
    tiny[:3, 3] += 0.05  # a twentieth of a voxel
    header = nifti_header.read_nifti_header(_write(tmp_path / "tiny.nii.gz", tiny, 1, BASE, 2))
    assert nifti_header.orientation_disagreement(header, "x") == ""


def test_sform_scales_other_than_pixdim_are_reported(tmp_path):
    path = _write(tmp_path / "scaled.nii.gz", BASE, 0, BASE, 1)
    raw = bytearray(Path(path).read_bytes())
    image = nib.load(str(path))
    image.header["pixdim"][1] = 2.0  # pixdim 2 mm, sform 1 mm along i
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), None, image.header), str(path))
    assert raw  # (the original bytes were a valid file)
    with pytest.warns(nifti_header.HeaderDisagreementWarning, match=r"sform has voxel sizes \[1.0, 1.2, 1.5\] mm but "
                      r"pixdim says \[2.0, 1.2, 1.5\] mm: used pixdim"):
        image = read_image(path)
    np.testing.assert_allclose(image.ijk_to_ras, _sitk_ras(path), atol=1e-6)


def test_no_file_of_the_shared_data_disagrees():
    files = sorted(p for p in SHARED.rglob("*") if p.name.endswith((".nii", ".nii.gz"))) if SHARED.is_dir() else []
    if not files:
        pytest.skip(f"no shared data at {SHARED}")
    found = []
    for path in files:
        header = nifti_header.read_nifti_header(path)
        assert header is not None, path
        found += [m for m in (nifti_header.orientation_disagreement(header, str(path)),
                              nifti_header.sform_scale_mismatch(header, str(path))) if m]
    assert found == []
