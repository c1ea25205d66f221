"""Corrupt inputs never pass silently: every kind of bad file x every entry point that reads images.

The table (cases, entry points, how each is run) is ``DeepRegAblationTrainingLib.benchmarks.reliability``,
the same one that writes ``docs/reliability.md``. Each bad file must be refused with a message
naming it (the command: exit status 2, one ``error:`` line, nothing at ``--out``); each valid
control must be accepted. Also: a training data set lists every bad file at once, a full disk
during ``register`` leaves no half-written ``--out``, a real process prints one line and no
trace, and the real data's files (4D singleton headers) still read.
"""
from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

from conftest import SHARED_DATA
from DeepRegAblationLib import imageio, nifti_writer
from DeepRegAblationLib.imageio import ImageReadError, read_image
from DeepRegAblationTrainingLib import cli, data
from DeepRegAblationTrainingLib.benchmarks import reliability
from DeepRegAblationTrainingLib.benchmarks.reliability import CASES, ENTRY_POINTS

CASES_BY_ID = {case.id: case for case in CASES}
PAIRS = [
    pytest.param(case, entry, id=f"{case.id}-{entry.id}")
    for case in CASES
    for entry in ENTRY_POINTS
    if case.role in entry.roles
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return reliability.make_inputs(tmp_path_factory.mktemp("inputs"))


def test_the_table_covers_the_issue():
    bad = [case for case in CASES if case.bad]
    assert len(bad) >= 15 and len({case.id for case in CASES}) == len(CASES)
    assert {"image", "labels"} <= {case.role for case in bad}
    assert len(ENTRY_POINTS) >= 6 and any(not case.bad for case in CASES)


@pytest.mark.parametrize("case, entry", PAIRS)
def test_every_bad_file_is_refused_naming_it_and_every_control_accepted(case, entry, inputs, tmp_path):
    outcome = reliability.run_one(case, entry, inputs, tmp_path)
    where = f"{case.id} x {entry.id}: {outcome.status} {outcome.detail} {outcome.message!r}"
    if not case.bad:
        assert outcome.status == "accepted", where
        return
    assert outcome.status == "refused", where
    assert outcome.names_file, where
    assert "Traceback" not in outcome.message, where
    if entry.id == "register-command":
        assert outcome.detail == "exit 2" and outcome.error_lines == 1, where
        assert outcome.out_clean, f"{where}: something was written at or beside --out"
    else:
        assert outcome.detail in ("ImageReadError", "ImageFileNotFoundError", "ValueError"), where


def test_register_control_writes_complete_results_and_no_leftovers(inputs, tmp_path):
    outcome = reliability.run_one(CASES_BY_ID["valid-image"], ENTRY_POINTS[0], inputs, tmp_path)
    assert outcome.status == "accepted" and outcome.detail == "exit 0"
    work = next(tmp_path.iterdir())
    out = work / "out"
    assert json.loads((out / "metrics.json").read_text())[0]["variant"] == "baseline"
    assert (out / "baseline" / "transform.h5").is_file() and (out / ".deepreg-ablation-register").is_file()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".out.")]  # no temporary folder left


def test_training_data_lists_every_bad_file_at_once(inputs, tmp_path):
    truncated, negative = tmp_path / "truncated.nii.gz", tmp_path / "negative.nii.gz"
    CASES_BY_ID["gzip-cut-50"].write(truncated)
    CASES_BY_ID["negative-labels"].write(negative)
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text(
        "id,image,labels\n"
        f"a,{inputs.fixed},{inputs.fixed_labels}\nb,{inputs.moving},{inputs.moving_labels}\n"
        f"c,{truncated},{inputs.fixed_labels}\nd,{inputs.moving},{negative}\n"
    )
    with pytest.raises(ImageReadError) as info:
        data.build_data({"kind": "list", "path": str(csv_path), "val_fraction": 0.5}, ndim=3)
    message = str(info.value)
    assert "2 problem(s)" in message and str(truncated) in message and str(negative) in message
    assert "truncated" in message and "negative label values" in message


def test_brain_dataset_lists_every_bad_file_at_once(inputs, tmp_path):
    """The 3D brain data path (a dataset folder in its own layout, here ibsr18's) checks every file too."""
    import shutil

    for stem in ("S1", "S2", "S3", "S4"):
        shutil.copyfile(inputs.fixed, tmp_path / f"{stem}.nii.gz")
        shutil.copyfile(inputs.fixed_labels, tmp_path / f"{stem}_seg.nii.gz")
    CASES_BY_ID["short-data-gz"].write(tmp_path / "S2.nii.gz")
    CASES_BY_ID["float-labels"].write(tmp_path / "S4_seg.nii.gz")
    with pytest.raises(ImageReadError) as info:
        data.build_data({"kind": "ibsr18", "path": str(tmp_path)}, ndim=3)
    message = str(info.value)
    assert "2 problem(s)" in message and str(tmp_path / "S2.nii.gz") in message
    assert str(tmp_path / "S4_seg.nii.gz") in message and "integer labels" in message


def _run_register(capsys, inputs, out, fixed=None):
    code = cli.main([str(a) for a in (
        "register", "--fixed", fixed or inputs.fixed, "--moving", inputs.moving, "--variant", "baseline",
        "--model", inputs.model, "--device", "cpu", "--init-align", "none", "--out", out)])  # fmt: skip
    return code, capsys.readouterr().err


def test_full_disk_while_writing_leaves_no_half_written_out(inputs, tmp_path, capsys, monkeypatch):
    """A write raising OSError(ENOSPC) after some files were written: exit 2, one error line, --out
    absent (first run) or holding the earlier complete results (re-run), no temporary folder left."""
    real_write = nifti_writer.write_gzip_members  # every .nii.gz result is written through it
    calls = []

    def write_until_full(path, chunks, *args, **kwargs):
        calls.append(path)
        if len(calls) > 1:  # the first file is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, chunks, *args, **kwargs)

    def use_writer(writer):
        monkeypatch.setattr(nifti_writer, "write_gzip_members", writer)

    out = tmp_path / "out"
    use_writer(write_until_full)
    code, err = _run_register(capsys, inputs, out)
    assert code == 2 and len(calls) >= 2, err
    assert err.count("error: ") == 1 and "No space left on device" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither --out nor a temporary folder

    use_writer(real_write)
    code, err = _run_register(capsys, inputs, out)
    assert code == 0, err
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls.clear()
    use_writer(write_until_full)
    code, err = _run_register(capsys, inputs, out)
    assert code == 2 and "No space left on device" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    use_writer(real_write)  # a complete re-run replaces them
    (out / "baseline" / "warped.nii.gz").unlink()
    assert _run_register(capsys, inputs, out)[0] == 0
    assert (out / "baseline" / "warped.nii.gz").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bad_input_in_a_real_process_prints_one_line(inputs, tmp_path):
    """What the Slicer module's background process shows: exit status 2 and one ``error:`` line naming the file."""
    for case_id in ("gzip-cut-50", "zero-spacing"):
        bad = tmp_path / f"{case_id}.nii.gz"
        CASES_BY_ID[case_id].write(bad)
        out = tmp_path / f"out-{case_id}"
        proc = subprocess.run(
            [sys.executable, "-m", "DeepRegAblationTrainingLib.cli", "register", "--fixed", str(bad),
             "--moving", str(inputs.moving), "--model", str(inputs.model), "--variant", "baseline",
             "--out", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error: fixed image (--fixed) ") and str(bad) in lines[0], lines
        assert not out.exists()


def test_missing_file_is_both_error_types(tmp_path):
    with pytest.raises(FileNotFoundError, match="fixed file not found"):
        read_image(tmp_path / "none.nii.gz", "fixed")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "none.nii.gz", "fixed")


def test_voxel_count_is_checked_against_the_available_memory(tmp_path, monkeypatch):
    path = tmp_path / "image.nii.gz"
    CASES_BY_ID["valid-image"].write(path)
    assert read_image(path).shape == (16, 16, 16)
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: 16 ** 3 * imageio.WORKING_BYTES_PER_VOXEL - 1)
    with pytest.raises(ImageReadError, match=r"declares 4.1e\+03 voxels .* GB are available"):
        read_image(path)
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: None)
    monkeypatch.setattr(imageio, "MAX_VOXELS_UNKNOWN_MEMORY", 1000)
    with pytest.raises(ImageReadError, match="more than 1e\\+03"):
        read_image(path)


# --------------------------------------------------------------------------- real data
IBSR = SHARED_DATA / "ibsr18" / "IBSR_01.nii.gz"
IXI = SHARED_DATA / "ixi-t1-2mm" / "IXI012-HH-1211-T1_ds.nii.gz"


@pytest.mark.parametrize("path", [IBSR, IXI], ids=["ibsr18", "ixi"])
def test_real_files_read_and_their_truncated_copies_are_refused(path, tmp_path):
    """The issue's reports: the first 300 kB of these files were zero-filled (IBSR, exit 0) or a bare EOFError (IXI)."""
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    image = read_image(path, "fixed image (--fixed)")
    assert image.array.ndim == 3 and min(image.shape) > 1  # ibsr18's (X, Y, Z, 1) headers are 3D images
    cut = tmp_path / path.name
    cut.write_bytes(path.read_bytes()[:300_000])
    with pytest.raises(ImageReadError, match=r"fixed image \(--fixed\) .* is truncated or corrupt: its gzip stream ends early"):
        read_image(cut, "fixed image (--fixed)")
