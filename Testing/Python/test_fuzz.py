"""The fuzzer of the one image reader (issue 24, item 6): mutated headers and bytes of real NIfTI and NRRD files
are refused naming the file or accepted with a finite result; no traceback, no crash, no hang.

The full run (the 360 seeded cases of docs/reliability.md) is marked slow; the regression cases are the
fuzzer's findings on the reader as it was (a vox_offset of inf, NaN or below zero, a spacing of 3e-23 mm).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from DeepRegAblationLib.imageio import ImageReadError, read_image
from DeepRegAblationTrainingLib.benchmarks import fuzz


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.seed_files(tmp_path_factory.mktemp("seeds"))


def test_the_seed_files_are_read(seeds):
    """Every seed is read, but NIfTI-2, which SimpleITK 2.5 (ITK 5.4) cannot read: refused naming the file."""
    for name, (path, kind) in seeds.items():
        outcome = fuzz.read_case(str(path), kind)
        assert outcome["status"] == ("refused" if "nifti2" in name else "accepted"), (name, outcome)


_FIELDS = {"vox_offset": 108, "pixdim2": 84, "pixdim3": 88}  # float32 fields of a NIfTI-1 header (byte offsets)


def _nifti_with(seeds, tmp_path: Path, name: str, **values: float) -> Path:
    """The seed ``itk.nii.gz`` uncompressed, with header fields set to ``values``."""
    data = bytearray(gzip.decompress(seeds["itk.nii.gz"][0].read_bytes()))
    for field, value in values.items():
        struct.pack_into("<f", data, _FIELDS[field], value)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("field, value, phrase", [
    ("vox_offset", float("inf"), "invalid voxel data offset"),
    ("vox_offset", float("nan"), "invalid voxel data offset"),
    ("vox_offset", -80.4, "invalid voxel data offset"),
])
def test_the_fuzzers_findings_are_refused_naming_the_file(seeds, tmp_path, field, value, phrase):
    path = _nifti_with(seeds, tmp_path, "image.nii", **{field: value})
    with pytest.raises(ImageReadError) as err:
        read_image(path, "fixed image (--fixed)")
    assert str(path) in str(err.value) and phrase in str(err.value)


def test_a_numerically_singular_spacing_is_refused_naming_the_file(seeds, tmp_path):
    path = _nifti_with(seeds, tmp_path, "tiny.nii", pixdim2=3e-23, pixdim3=3e-23)
    with pytest.raises(ImageReadError, match="tiny.nii"):
        read_image(path, "fixed image (--fixed)")


def test_a_few_dozen_cases_find_nothing(tmp_path):
    cases = fuzz.plan_cases(tmp_path, count=48, seed=7)
    rows = fuzz.run_cases(cases, tmp_path)
    counts = fuzz.summary(rows)
    assert counts["findings"] == 0, [r for r in rows if r["status"] not in fuzz.GOOD]
    assert counts["refused"] > 0 and counts["accepted"] > 0
    assert {row["mutation"] for row in rows} == set(fuzz.MUTATIONS)
    assert all(float(row["seconds"]) < fuzz.TIME_LIMIT_S for row in rows)
    text = fuzz.markdown(rows, "python -m x", 1.0)
    assert "tracebacks: 0; crashes: 0; hangs over 30 s: 0" in text and "| `itk.nii.gz` |" in text


@pytest.mark.slow
def test_the_default_fuzz_run_finds_nothing(tmp_path):
    rows = fuzz.run_cases(fuzz.plan_cases(tmp_path, fuzz.DEFAULT_CASES, 0), tmp_path)
    counts = fuzz.summary(rows)
    assert len(rows) == fuzz.DEFAULT_CASES and counts["findings"] == 0, \
        [r for r in rows if r["status"] not in fuzz.GOOD]
