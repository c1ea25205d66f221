"""`deepreg-ablation register`: every output file, clean errors (status 2, no trace), --out safety."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from _registration_helpers import label_volume, oblique_matrix, smooth_volume
from DeepRegAblationLib.models.checkpoints import save_checkpoint
from DeepRegAblationLib.outputs.exports import METRIC_COLUMNS
from DeepRegAblationLib.imageio import ImageData, write_image
from DeepRegAblationLib.registration.result import RegistrationResult
from DeepRegAblationLib.models.resolve import shipped_model_path
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationTrainingLib import cli

VARIANTS = ("baseline", "regloss", "affine_basic", "affine_enhanced")
PER_VARIANT = ("warped.nii.gz", "warped_labels.nii.gz", "jacobian.nii.gz", "affine.tfm", "displacement.nii.gz",
               "transform.h5", "result.npz")  # fmt: skip
SNAPSHOTS = ("glyphs.png", "jacobian.png", "checkerboard.png")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny 3D fixed / moving NIfTI files (oblique, anisotropic, different grids) with labels."""
    root = tmp_path_factory.mktemp("inputs")
    fixed = ImageData(smooth_volume((16, 16, 16), 0), oblique_matrix([1.2, 1.0, 1.5], [5, -10, 8], [0, 0, 0]))
    moving = ImageData(smooth_volume((18, 18, 20), 1), oblique_matrix([1.1, 1.3, 1.2], [-3, 6, 12], [2, -1, 1]))
    paths = {
        "fixed": write_image(root / "fixed.nii.gz", fixed),
        "moving": write_image(root / "moving.nii.gz", moving),
        "fixed_labels": write_image(root / "fixed_labels.nii.gz", ImageData(label_volume(fixed.array), fixed.ijk_to_ras)),
        "moving_labels": write_image(root / "moving_labels.nii.gz", ImageData(label_volume(moving.array), moving.ijk_to_ras)),
        "slice": write_image(root / "slice.nii.gz", ImageData(smooth_volume((1, 16, 16), 2), fixed.ijk_to_ras)),
    }
    nan = fixed.array.copy()
    nan[:] = np.nan
    paths["nan"] = root / "nan.nii.gz"
    import SimpleITK as sitk  # write the NaNs as they are (write_image refuses them)

    sitk.WriteImage(sitk.GetImageFromArray(nan), str(paths["nan"]))
    far = fixed.ijk_to_ras.copy()
    far[:3, 3] += [400.0, 0.0, 0.0]
    paths["far"] = write_image(root / "far.nii.gz", ImageData(moving.array, far))
    return paths


def _run(capsys, *argv):
    code = cli.main(["register", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def all_variants(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["register", "--fixed", inputs["fixed"], "--moving", inputs["moving"],
            "--fixed-labels", inputs["fixed_labels"], "--moving-labels", inputs["moving_labels"],
            "--variant", "all", "--device", "cpu", "--save-npz", "--out", out]  # fmt: skip
    code = cli.main([str(a) for a in argv])
    return code, out


def test_register_all_writes_every_file(all_variants, capfd):
    code, out = all_variants
    assert code == 0
    for variant in VARIANTS:
        for name in PER_VARIANT:
            assert (out / variant / name).is_file(), f"{variant}/{name} missing"
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert [r["variant"] for r in rows] == list(VARIANTS)
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert [r["variant"] for r in json.loads((out / "metrics.json").read_text())] == list(VARIANTS)
    result = RegistrationResult.load(out / "baseline" / "result.npz")
    assert result.variant == "baseline" and result.warped.shape == (16, 16, 16)
    assert result.warped_labels is not None
    # PNG snapshots and the Slicer scene (when VTK / slicer-core are importable, as in the test env)
    try:
        import slicer  # noqa: F401
        import vtk  # noqa: F401
    except ImportError:
        pytest.skip("VTK / slicer-core not installed: snapshots and the scene are optional")
    for variant in VARIANTS:
        for name in SNAPSHOTS:
            assert (out / variant / name).stat().st_size > 1000
    mrml = out / "scene" / "DeepRegAblation-results.mrml"
    assert mrml.is_file() and "<MRML" in mrml.read_text()[:500]


def test_existing_output_directory(all_variants, inputs, tmp_path, capsys):
    _, out = all_variants
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    code, _, err = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["moving"], "--variant", "baseline",
                        "--out", foreign)  # fmt: skip
    assert code == 2 and "--out" in err and "not empty" in err and "Traceback" not in err
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    # a directory written by this command may be written again (and says so)
    code, stdout, err = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["moving"], "--variant", "baseline",
                             "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0 and "replacing" in stdout and "baseline" in stdout
    if shipped_model_path("baseline", 3) is None:
        assert "UNTRAINED" in err


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "fixed image (--fixed) file not found"),
        ("nan", "fixed image (--fixed)"),
        ("2d_vs_3d", "--moving is a 2D (single-slice) image"),
        ("no_overlap", "do not overlap"),
        ("model_file_for_all", "--variant all needs a directory"),
        ("missing_model", "--model not found"),
    ],
)
def test_bad_inputs_exit_2_naming_the_input(inputs, tmp_path, capsys, case, expected):
    fixed, moving, extra = inputs["fixed"], inputs["moving"], []
    if case == "missing":
        fixed = tmp_path / "nope.nii.gz"
    elif case == "nan":
        fixed = inputs["nan"]
    elif case == "2d_vs_3d":
        moving = inputs["slice"]
    elif case == "no_overlap":  # the shipped 3D models align centres of mass by themselves: ask for none
        moving, extra = inputs["far"], ["--init-align", "none"]
    elif case == "model_file_for_all":
        extra = ["--model", save_checkpoint(tmp_path / "b.pt", build_model("baseline", 3)), "--variant", "all"]
    elif case == "missing_model":
        extra = ["--model", tmp_path / "none.pt", "--variant", "baseline"]
    out = tmp_path / "out"
    code, _, err = _run(capsys, "--fixed", fixed, "--moving", moving, *extra, "--out", out)
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err
    if case == "nan":
        assert "NaN" in err
    assert not out.exists()  # nothing written for a bad input


def test_checkpoint_is_used_and_checked(inputs, tmp_path, capsys):
    model = build_model("baseline", 3)
    with torch.no_grad():
        model.flow.conv.weight.zero_()
        model.flow.conv.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))  # one voxel along k everywhere
    models = tmp_path / "models"
    save_checkpoint(models / "baseline.pt", model)
    code, stdout, err = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["moving"], "--variant", "baseline",
                             "--model", models, "--device", "cpu", "--out", tmp_path / "out")  # fmt: skip
    assert code == 0 and "UNTRAINED" not in err
    row = json.loads((tmp_path / "out" / "metrics.json").read_text())[0]
    assert row["max_disp_mm"] == pytest.approx(1.5, rel=1e-4)  # k spacing of the fixed image
    code, _, err = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["moving"], "--variant", "regloss",
                        "--model", models / "baseline.pt", "--out", tmp_path / "out2")  # fmt: skip
    assert code == 2 and "holds variant 'baseline', not 'regloss'" in err


def test_console_process_exit_status(inputs, tmp_path):
    """A real process: status 2 and one error line, no Python trace."""
    proc = subprocess.run(
        [sys.executable, "-m", "DeepRegAblationTrainingLib.cli", "register", "--fixed", str(tmp_path / "x.nii.gz"),
         "--moving", str(inputs["moving"]), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "error: fixed image (--fixed) file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_init_align_com_puts_the_centre_of_mass_shift_into_the_affine(inputs, tmp_path, capsys):
    model = build_model("baseline", 3)
    with torch.no_grad():
        model.flow.conv.weight.zero_()
        model.flow.conv.bias.zero_()  # identity network: only the initial alignment moves the image
    save_checkpoint(tmp_path / "baseline.pt", model)
    from DeepRegAblationLib.imageio import read_image
    from DeepRegAblationLib.outputs import exports
    from DeepRegAblationLib.registration.alignment import center_of_mass_alignment

    code, _, _ = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["far"], "--variant", "baseline",
                      "--model", tmp_path / "baseline.pt", "--init-align", "com", "--device", "cpu",
                      "--out", tmp_path / "out")  # fmt: skip
    assert code == 0
    import SimpleITK as sitk

    affine = exports.affine_ras_from_itk(sitk.ReadTransform(str(tmp_path / "out" / "baseline" / "affine.tfm")))
    expected = center_of_mass_alignment(read_image(inputs["fixed"]), read_image(inputs["far"]))
    np.testing.assert_allclose(affine, expected, atol=1e-4)
    assert affine[0, 3] > 350  # the moving image lies 400 mm away along R


def test_relative_out_folder(inputs, tmp_path, capsys, monkeypatch):
    """`make demo` passes a relative --out: the summary's scene path must not need both paths absolute."""
    monkeypatch.chdir(tmp_path)
    model = save_checkpoint(tmp_path / "b.pt", build_model("baseline", 3))
    code, out, err = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["moving"], "--model", model,
                          "--variant", "baseline", "--out", "relative_out")
    assert code == 0, err
    assert (tmp_path / "relative_out" / "scene" / "DeepRegAblation-results.mrml").is_file()
    assert "Slicer scene: scene/DeepRegAblation-results.mrml" in out


def test_no_scene_skips_only_the_slicer_scene(inputs, tmp_path, capsys):
    model = save_checkpoint(tmp_path / "b.pt", build_model("baseline", 3))
    code, out, err = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["moving"], "--model", model,
                          "--variant", "baseline", "--save-npz", "--no-scene", "--out", tmp_path / "out")
    assert code == 0, err
    assert not (tmp_path / "out" / "scene").exists() and "Slicer scene" not in out
    assert (tmp_path / "out" / "baseline" / "result.npz").is_file() and (tmp_path / "out" / "metrics.json").is_file()


def test_progress_and_step_lines_follow_the_protocol(inputs, tmp_path, capsys):
    """stdout holds the step line of each variant, then its ``progress`` lines (``DeepRegAblationLib.progress``),
    which the Slicer panel's background runner parses."""
    from DeepRegAblationLib.progress import parse_progress_line

    model = save_checkpoint(tmp_path / "b.pt", build_model("baseline", 3))
    code, out, err = _run(capsys, "--fixed", inputs["fixed"], "--moving", inputs["moving"], "--model", model,
                          "--variant", "baseline", "--no-scene", "--out", tmp_path / "out")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "[1/1] baseline: registering moving.nii.gz -> fixed.nii.gz"
    progress = [line for line in lines if line.startswith("progress ")]
    assert progress and progress[-1] == "progress 1.000 done"
    fractions = [parse_progress_line(line)[0] for line in progress]
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)


def test_refine_and_init_align_arguments(capsys):
    """``--refine`` reads values through ``options.parse_refine`` and keeps its messages; ``--init-align`` offers
    ``options.ALIGNMENT_CHOICES`` in the order the help has always listed them."""
    import argparse

    from DeepRegAblationLib.options import ALIGNMENT_CHOICES
    from DeepRegAblationTrainingLib.commands.arguments import INIT_ALIGN_CHOICES, refine_type

    assert refine_type("off") == 0 and refine_type("0") == 0 and refine_type(" Thorough ") == "thorough"
    assert refine_type("recommended") == "recommended" and refine_type("25") == 25
    with pytest.raises(argparse.ArgumentTypeError, match=r"^iterations must be >= 0, got -2$"):
        refine_type("-2")
    with pytest.raises(argparse.ArgumentTypeError,
                       match=r"^must be off, recommended, thorough or a number of iterations per level, got 'fast'$"):
        refine_type("fast")
    assert INIT_ALIGN_CHOICES == ("auto", "none", "com") and set(INIT_ALIGN_CHOICES) == set(ALIGNMENT_CHOICES)
    with pytest.raises(SystemExit):
        cli.main(["register", "--help"])
    help_text = capsys.readouterr().out
    assert "{auto,none,com}" in help_text and "{baseline,regloss,affine_basic,affine_enhanced,all}" in help_text
    assert "{auto,cpu,cuda}" in help_text


def test_npz_only_writes_what_the_panel_reads_back_and_renders_nothing(inputs, tmp_path):
    """``--npz-only`` (the Slicer panel's background run, issue 23): ``<variant>/result.npz`` and the metrics files,
    nothing else: no NIfTI, no ITK transforms, no PNG, no scene; and no off-screen render is even attempted (VTK
    made unimportable: no warning that the snapshots were skipped; issue 24's input warnings about these toy
    volumes aside)."""
    model = save_checkpoint(tmp_path / "b.pt", build_model("baseline", 3))
    out = tmp_path / "out"
    startup = tmp_path / "site"
    startup.mkdir()
    (startup / "sitecustomize.py").write_text("import sys\nsys.modules['vtkmodules'] = None\nsys.modules['vtk'] = None\n")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(startup)] + sys.path), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "DeepRegAblationTrainingLib.cli", "register", "--fixed", str(inputs["fixed"]),
         "--moving", str(inputs["moving"]), "--fixed-labels", str(inputs["fixed_labels"]), "--moving-labels",
         str(inputs["moving_labels"]), "--variant", "baseline", "--model", str(model), "--device", "cpu",
         "--npz-only", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    input_warning = "do not trust these numbers without a look"  # issue 24: these toy volumes are no brains
    others = [line for line in result.stderr.splitlines() if "warning" in line.lower() and input_warning not in line]
    assert others == [], result.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [".deepreg-ablation-register", "baseline/result.npz", "metrics.csv", "metrics.json"]
    loaded = RegistrationResult.load(out / "baseline" / "result.npz")
    assert loaded.variant == "baseline" and np.isfinite(loaded.metrics["dice"])
