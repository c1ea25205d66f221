"""The headless commands as Slicer runs them: with the packages Slicer's Python ships, nothing more (issue 23).

Slicer's Python ships numpy, scipy, SimpleITK, pillow and VTK, not nibabel, matplotlib or nilearn (Slicer
``SuperBuild/External_python-*.cmake``, v5.8.0); PyTorch comes from the PyTorch extension. Every command
runs here in a fresh process where those packages are unimportable (``_slicer_environment``):

- what needs only the bundled packages works: reading NIfTI (the header parsed without nibabel, checked
  against nibabel here), ``train`` through the launcher under PythonSlicer, ``register`` on NIfTI files;
- what needs a package Slicer lacks says so before step 1, in one line, outside Slicer, and inside Slicer
  installs it on first use with ``slicer.util.pip_install``, telling the user what and why first;
- a missing PyTorch is one line, not a traceback.
"""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

from _registration_helpers import label_volume, oblique_matrix, smooth_volume  # noqa: E402
from _slicer_environment import (  # noqa: E402
    IN_SLICER_APP, LAUNCHER, NO_TORCH_NO_RESOURCE, PYTHONSLICER, SLICER_PACKAGES_ONLY, run_python,
)
from DeepRegAblationLib.imageio import ImageData, read_image, write_image  # noqa: E402
from DeepRegAblationTrainingLib import cli  # noqa: E402
from DeepRegAblationTrainingLib.data import write_toy_oasis2d  # noqa: E402

TINY_ARCH = ["--features-enc", "8", "8", "8", "8", "--features-dec", "8", "8", "8", "8", "8", "8", "8"]
SLICER_PYTHON = PYTHONSLICER + SLICER_PACKAGES_ONLY

INSTALL_ON_FIRST_USE = """
    import os, sys
    import slicer.util
    # Slicer's bin folder holds the PythonSlicer launcher next to the interpreter (how slicer.util finds it)
    sys.executable = os.path.join(os.environ["FAKE_SLICER_BIN"], "python-real")

    def _pip_install(requirements):  # records the request; "installs" by making the package importable again
        with open(os.environ["PIP_LOG"], "a") as f:
            f.write(requirements + "\\n")
        for name in list(sys.modules):
            if sys.modules[name] is None and requirements.startswith(name):
                del sys.modules[name]

    slicer.util.pip_install = _pip_install
"""


def error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny neurite-OASIS-layout dataset (6 subjects, 32 x 32 NIfTI slices)."""
    return write_toy_oasis2d(tmp_path_factory.mktemp("toy"), n_subjects=6, shape=(32, 32), seed=3)


@pytest.fixture(scope="module")
def tiny_checkpoint(toy, tmp_path_factory):
    """A 2-step baseline checkpoint on the toy data (tiny network)."""
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--variant", "baseline", "--data", f"oasis2d:{toy}", "--steps", "2", "--steps-per-epoch", "1",
            "--val-pairs", "2", "--val-fraction", "0.4", "--threads", "1", "--device", "cpu", "--no-progress",
            "--out", str(out), *TINY_ARCH]
    assert cli.main(argv) == 0
    return out / "last.pt"


def test_the_simulated_slicer_python_lacks_what_slicer_lacks(tmp_path):
    probe = run_python(tmp_path, SLICER_PYTHON, ["-c", "import nibabel"])
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr
    probe = run_python(tmp_path, SLICER_PYTHON, ["-c", "import matplotlib"])
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr
    probe = run_python(tmp_path, SLICER_PYTHON, ["-c", "import numpy, scipy, SimpleITK, PIL, vtk, torch"])
    assert probe.returncode == 0, probe.stderr


# --------------------------------------------------------------------------- NIfTI without nibabel
def _nibabel_files(folder: Path):
    """NIfTI files of every header kind: SimpleITK's, nibabel's NIfTI-1 and NIfTI-2, big-endian, qform != sform."""
    image = ImageData(smooth_volume((5, 6, 7), 4), oblique_matrix([1.2, 0.9, 2.0], [10, -5, 20], [3, -4, 5]), "x")
    files = {"sitk.nii.gz": write_image(folder / "sitk.nii.gz", image), "sitk.nii": write_image(folder / "sitk.nii", image)}
    data = np.asarray(image.array).T
    nifti1 = nibabel.Nifti1Image(data, image.ijk_to_ras)
    nibabel.save(nifti1, str(folder / "nib1.nii.gz"))
    nibabel.save(nibabel.Nifti2Image(data.astype(np.int16), image.ijk_to_ras), str(folder / "nib2.nii"))
    big = nibabel.Nifti1Image(data.astype(">f8"), image.ijk_to_ras)
    big.header.set_data_dtype(">f8")
    nibabel.save(big, str(folder / "big.nii"))
    mirrored = nibabel.Nifti1Image(data, image.ijk_to_ras)
    mirrored.set_qform(np.diag([-1.0, 1.0, 1.0, 1.0]) @ image.ijk_to_ras, code=1)
    nibabel.save(mirrored, str(folder / "qform-mirrored.nii"))
    files.update({name: folder / name for name in ("nib1.nii.gz", "nib2.nii", "big.nii", "qform-mirrored.nii")})
    return files


def test_nifti_headers_are_read_as_nibabel_reads_them(tmp_path):
    """``nifti_header`` (numpy only) against nibabel, the oracle: every field the reader uses, the voxel dtype
    and byte order, the data offset, and the qform and sform matrices."""
    from DeepRegAblationLib.nifti_header import parse_nifti_header

    for name, path in _nibabel_files(tmp_path).items():
        raw = gzip.open(path, "rb").read(600) if name.endswith(".gz") else path.read_bytes()[:600]
        header_class = nibabel.Nifti2Header if nibabel.load(str(path)).header.sizeof_hdr == 540 else nibabel.Nifti1Header
        ours, theirs = parse_nifti_header(raw, name), header_class.from_fileobj(io.BytesIO(raw))  # as in the file
        assert ours.version == (2 if isinstance(theirs, nibabel.Nifti2Header) else 1), name
        for field in ("dim", "pixdim", "datatype", "bitpix", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z",
                      "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "magic"):
            assert np.array_equal(np.asarray(ours[field]), np.asarray(theirs[field])), (name, field)
        assert ours.get_data_dtype() == theirs.get_data_dtype(), name
        assert ours.get_data_offset() == theirs.get_data_offset(), name
        np.testing.assert_allclose(ours.get_qform(), theirs.get_qform(), atol=1e-5, err_msg=name)
        np.testing.assert_allclose(ours.get_sform(), theirs.get_sform(), atol=1e-6, err_msg=name)
        assert ours.get_qform(coded=True)[1] == theirs.get_qform(coded=True)[1]
    with pytest.raises(ValueError, match="not a NIfTI file"):
        parse_nifti_header(b"\x00" * 400, "junk.nii")
    with pytest.raises(ValueError, match="not a NIfTI file"):
        parse_nifti_header((348).to_bytes(4, "little") + b"\x00" * 100, "short.nii")


def test_nifti_files_are_read_without_nibabel(tmp_path):
    """``imageio.read_image`` with nibabel unimportable: the same arrays and grids as SimpleITK reads, and the
    header checks still refuse a truncated file by name."""
    files = {name: path for name, path in _nibabel_files(tmp_path).items() if name != "nib2.nii"}  # ITK: NIfTI-1 only
    (tmp_path / "cut.nii").write_bytes(files["sitk.nii"].read_bytes()[:500])
    script = (
        "import sys, json, numpy as np\n"
        "from DeepRegAblationLib.imageio import read_image\n"
        "out = {}\n"
        f"for name in {sorted(files)!r}:\n"
        "    image = read_image(name, name)\n"
        "    np.save(name + '.npy', image.array); np.save(name + '.m.npy', image.ijk_to_ras)\n"
        "try:\n"
        "    read_image('cut.nii', 'cut file')\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = run_python(tmp_path, SLICER_PYTHON, ["-c", script])
    assert result.returncode == 0, result.stderr
    assert "refused: cut file cut.nii is truncated" in result.stdout
    for name, path in files.items():
        expected = read_image(path, name)
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), expected.array)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.m.npy"), expected.ijk_to_ras, atol=1e-6)
        itk = sitk.ReadImage(str(path))
        assert expected.array.shape == sitk.GetArrayFromImage(itk).shape


# --------------------------------------------------------------------------- the headless commands
def test_train_through_the_launcher_in_pythonslicer_with_slicers_packages(tmp_path, toy):
    """``PythonSlicer DeepRegAblationTraining.py -- train ...`` (the headless way on a server without a display)
    with nibabel, matplotlib, nilearn and tqdm unimportable: it read no image before (nibabel)."""
    out = tmp_path / "run"
    args = [LAUNCHER, "--", "train", "--variant", "baseline", "--data", f"oasis2d:{toy}", "--steps", "2",
            "--steps-per-epoch", "1", "--val-pairs", "2", "--val-fraction", "0.4", "--threads", "1", "--device", "cpu",
            "--out", out, *TINY_ARCH]
    result = run_python(tmp_path, SLICER_PYTHON, args)
    assert result.returncode == 0, result.stderr
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


def test_register_reads_nifti_and_writes_everything_with_slicers_packages(tmp_path):
    """``register`` on ``.nii.gz`` files in PythonSlicer with only Slicer's packages: every output, no warning (but
    the input warnings of issue 24: the toy volumes are far smaller than a brain)."""
    from DeepRegAblationLib.models.checkpoints import save_checkpoint
    from DeepRegAblationLib.models.network import build_model

    fixed = ImageData(smooth_volume((12, 14, 12), 0), oblique_matrix([1.5, 1.4, 1.6], [4, -6, 5], [0, 0, 0]), "f")
    moving = ImageData(smooth_volume((13, 14, 13), 1), oblique_matrix([1.4, 1.5, 1.5], [-3, 5, 8], [1, -1, 1]), "m")
    files = [write_image(tmp_path / "fixed.nii.gz", fixed), write_image(tmp_path / "moving.nii.gz", moving),
             write_image(tmp_path / "fl.nii.gz", ImageData(label_volume(fixed.array), fixed.ijk_to_ras)),
             write_image(tmp_path / "ml.nii.gz", ImageData(label_volume(moving.array), moving.ijk_to_ras))]
    model = save_checkpoint(tmp_path / "baseline.pt", build_model("baseline", 3))
    out = tmp_path / "out"
    result = run_python(tmp_path, SLICER_PYTHON, [
        "-m", "DeepRegAblationTrainingLib.cli", "register", "--fixed", files[0], "--moving", files[1],
        "--fixed-labels", files[2], "--moving-labels", files[3], "--variant", "baseline", "--model", model, "--device", "cpu", "--out", out])
    assert result.returncode == 0, result.stderr
    input_warning = "do not trust these numbers without a look"  # issue 24: these 20-mm toy volumes are no brains
    others = [line for line in result.stderr.splitlines() if "warning" in line.lower() and input_warning not in line]
    assert others == [], result.stderr
    for name in ("warped.nii.gz", "transform.h5", "glyphs.png", "jacobian.png"):
        assert (out / "baseline" / name).is_file(), name
    assert (out / "scene" / "DeepRegAblation-results.mrml").is_file()


@pytest.mark.parametrize("command", ["ablation", "sweep", "evaluate"])
def test_report_commands_without_matplotlib_stop_before_step_1(tmp_path, toy, command):
    """Outside Slicer, a report command whose figures need matplotlib says so in one line before any training or
    evaluation (it trained for hours, then failed at report time), naming the package, why and the pip command."""
    out = tmp_path / "out"
    args = {"ablation": ["--steps", "2", "--val-pairs", "2"], "sweep": ["--steps", "2", "--val-pairs", "2"],
            "evaluate": ["--checkpoint", tmp_path / "later.pt", "--val-pairs", "2"]}[command]
    result = run_python(tmp_path, SLICER_PACKAGES_ONLY, ["-m", "DeepRegAblationTrainingLib.cli", command, "--data",
                                                         f"oasis2d:{toy}", "--device", "cpu", *args, "--out", out])
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "matplotlib" in lines[0] and "figures" in lines[0] and "pip install" in lines[0]
    assert not out.exists()


def test_demo_without_nilearn_stops_before_step_1(tmp_path):
    out = tmp_path / "demo"
    result = run_python(tmp_path, SLICER_PACKAGES_ONLY, ["-m", "DeepRegAblationTrainingLib.cli", "demo", "--out", out])
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "nilearn" in lines[0] and "MNI152" in lines[0], result.stderr
    assert not out.exists()


def test_inside_slicer_a_missing_package_is_installed_on_first_use(tmp_path, toy, tiny_checkpoint):
    """In Slicer (``--python-script``) the launcher installs matplotlib with ``slicer.util.pip_install`` before
    the evaluation starts, after saying what and why; then the evaluation runs and writes its figures."""
    fake_bin = tmp_path / "Slicer" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")).write_text("# launcher\n")
    pip_log, status_file, out = tmp_path / "pip.log", tmp_path / "exit-status", tmp_path / "eval"
    startup = IN_SLICER_APP + SLICER_PACKAGES_ONLY + INSTALL_ON_FIRST_USE
    result = run_python(tmp_path, startup, [
        LAUNCHER, "evaluate", "--checkpoint", tiny_checkpoint, "--data", f"oasis2d:{toy}", "--val-pairs", "2",
        "--val-fraction", "0.4", "--out", out],
        FAKE_SLICER_BIN=str(fake_bin), PIP_LOG=str(pip_log), EXIT_STATUS_FILE=str(status_file))
    assert status_file.read_text() == "0", result.stderr
    assert pip_log.read_text().splitlines() == ["matplotlib>=3.5"]
    told = [line for line in result.stderr.splitlines() if "slicer.util.pip_install" in line]
    assert told and "matplotlib" in told[0] and "figures" in told[0], result.stderr
    assert (out / "figures" / "examples.png").is_file()


def test_a_missing_pytorch_is_one_line(tmp_path, toy):
    """PythonSlicer on a server, the PyTorch extension not installed: one line that says what to do."""
    result = run_python(tmp_path, PYTHONSLICER + NO_TORCH_NO_RESOURCE,
                        [LAUNCHER, "--", "train", "--data", f"oasis2d:{toy}", "--out", tmp_path / "x"])
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and "PyTorch" in lines[0] and "extension" in lines[0]


# --------------------------------------------------------------------------- bench inside Slicer (issue 23, item 6)
SLICER_MODULE_PATHS = """
    import os, sys
    # Slicer puts the scripted modules' folders on sys.path, not on PYTHONPATH: the next process does not inherit them
    _folders = os.environ.pop("SLICER_MODULE_PATHS", "")
    sys.path[:0] = [folder for folder in _folders.split(os.pathsep) if folder]
    # nor is the project pip-installed in Slicer's Python (here an editable install may be: its finder goes)
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
"""


def test_bench_cases_find_the_libraries_when_they_are_only_on_sys_path(tmp_path):
    """``deepreg-ablation bench`` inside Slicer: every speed case runs in a new ``sys.executable -m
    DeepRegAblationTrainingLib.benchmarks.speed`` process; Slicer puts the libraries on ``sys.path`` only, so each
    case failed to import (``No module named DeepRegAblationTrainingLib``). A tiny model case must run."""
    import subprocess
    import sys
    import textwrap

    from _slicer_environment import REPO

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SLICER_MODULE_PATHS))
    script = ("import json\nfrom DeepRegAblationTrainingLib.benchmarks import speed\n"
              "case = dict(kind='model', size='tiny', shape=[16, 16, 16], model='baseline', device='cpu', threads=1, "
              "repeats=1)\nprint(json.dumps(speed.measure(case, timeout_s=240)))\n")
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1",
               SLICER_MODULE_PATHS=os.pathsep.join([str(REPO / "DeepRegAblation"), str(REPO / "DeepRegAblationTraining")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                            timeout=300)
    assert result.returncode == 0, result.stderr
    import json

    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert "error" not in row, row["error"]
    assert row["seconds"] > 0


def test_bench_without_its_reference_package_stops_before_step_1(tmp_path):
    """``bench --infer`` measures voxelmorph's VxmPairwise beside the variants; Slicer's Python has no voxelmorph, and
    every reference case failed after the others had run. It says so first, with the way around it."""
    report = tmp_path / "bench.md"
    result = run_python(tmp_path, SLICER_PACKAGES_ONLY, ["-m", "DeepRegAblationTrainingLib.cli", "bench", "--infer",
                                                         "--sizes", "2d", "--repeats", "1", "--report", report])
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "voxelmorph" in lines[0] and "--no-reference" in lines[0], result.stderr
    assert not report.exists()
