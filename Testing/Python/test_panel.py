"""The Slicer-free part of the module panel (``DeepRegAblationLib.panel``), outside Slicer.

The background run's command line (parsed by the real ``register`` parser), the child's library
paths and environment, reading a finished run's ``result.npz`` files (written by
``RegistrationResult.save``), the metrics summary, the output-line handling of a run and how it
ended, and the checkpoint checks on real checkpoint files.
"""
from __future__ import annotations

import logging
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from DeepRegAblationLib import panel, progress
from DeepRegAblationLib.models.checkpoints import save_checkpoint
from DeepRegAblationLib.registration.result import RegistrationResult
from DeepRegAblationLib.models.resolve import shipped_model_path
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationLib.options import VARIANT_IDS

REPO = Path(__file__).resolve().parents[2]
GUI_DIR = REPO / "DeepRegAblation"
TRAINING_DIR = REPO / "DeepRegAblationTraining"


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("variants, refine, labels", [
    (["baseline"], 0, False),
    (list(VARIANT_IDS), 25, True),
])
def test_background_command_is_understood_by_the_register_command(tmp_path, variants, refine, labels):
    """What the panel's background run passes is what `deepreg-ablation register` parses."""
    from DeepRegAblationTrainingLib import cli

    files = {"fixed": tmp_path / "fixed.nrrd", "moving": tmp_path / "moving.nrrd"}
    if labels:
        files.update(fixed_labels=tmp_path / "fixed_labels.nrrd", moving_labels=tmp_path / "moving_labels.nrrd")
    args = panel.register_arguments(files, tmp_path / "out", variants, str(tmp_path / "models"), "cpu", refine, "com")
    parsed = cli.build_parser(["register"]).parse_args(args)
    assert parsed.command == "register" and parsed.fixed == files["fixed"] and parsed.moving == files["moving"]
    assert parsed.fixed_labels == files.get("fixed_labels") and parsed.moving_labels == files.get("moving_labels")
    assert parsed.variant == (variants[0] if len(variants) == 1 else "all")
    assert str(parsed.model) == str(tmp_path / "models") and parsed.device == "cpu"
    assert parsed.refine == refine and parsed.init_align == "com" and parsed.out == tmp_path / "out"
    assert parsed.npz_only  # the panel builds its nodes from result.npz: nothing else is written (issue 23)
    for schedule in ("recommended", "thorough"):
        named = panel.register_arguments(files, tmp_path / "out", variants, None, "cpu", schedule, "auto")
        assert cli.build_parser(["register"]).parse_args(named).refine == schedule
    with pytest.raises(ValueError, match="one variant or all four"):
        panel.register_arguments(files, tmp_path, ["baseline", "regloss"], None, "cpu")
    with pytest.raises(ValueError, match="initial_alignment"):
        panel.register_arguments(files, tmp_path, ["baseline"], None, "cpu", 0, "always")
    auto = panel.register_arguments(files, tmp_path / "out", ["baseline"], None, "cpu", 0, "auto")
    assert cli.build_parser(["register"]).parse_args(auto).init_align == "auto"  # register decides per model


def test_the_command_line_the_panel_runs_word_for_word(tmp_path):
    files = {"fixed": Path("/w/fixed.nrrd"), "moving": Path("/w/moving.nrrd"), "moving_labels": Path("/w/ml.nrrd")}
    command = panel.register_command(files, Path("/w/results"), ["regloss"], None, "auto", "recommended", "auto")
    assert command == [
        panel.python_executable(), "-m", "DeepRegAblationTrainingLib.cli", "register",
        "--fixed", str(Path("/w/fixed.nrrd")), "--moving", str(Path("/w/moving.nrrd")),
        "--moving-labels", str(Path("/w/ml.nrrd")), "--variant", "regloss", "--device", "auto", "--refine",
        "--init-align", "auto", "--npz-only", "--out", str(Path("/w/results")),
    ]
    all_four = panel.register_command(files, Path("/w/results"), list(VARIANT_IDS), "/m", "cpu", 0, "none")
    assert all_four[all_four.index("--variant") + 1] == "all" and "--refine" not in all_four
    assert all_four[all_four.index("--model") + 1] == "/m"


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell script stands in for PythonSlicer")
def test_python_executable_is_pythonslicer_when_on_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert panel.python_executable() == sys.executable  # no PythonSlicer: this Python
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text("#!/bin/sh\nexit 0\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    assert panel.python_executable() == str(launcher)


def test_library_paths_in_the_source_tree_and_an_installed_extension(tmp_path):
    assert panel.library_paths(GUI_DIR) == [str(GUI_DIR), str(TRAINING_DIR)]
    # an installed extension: both packages next to the module files
    installed = tmp_path / "qt-scripted-modules"
    for package in panel.LIBRARY_PACKAGES:
        (installed / package).mkdir(parents=True)
        (installed / package / "__init__.py").write_text("")
    assert panel.library_paths(installed) == [str(installed)]
    # the training module elsewhere, as Slicer reports it
    alone = tmp_path / "gui"
    (alone / "DeepRegAblationLib").mkdir(parents=True)
    (alone / "DeepRegAblationLib" / "__init__.py").write_text("")
    assert panel.library_paths(alone, TRAINING_DIR) == [str(alone), str(TRAINING_DIR)]
    with pytest.raises(RuntimeError, match=r"The DeepRegAblationTrainingLib package of the DeepRegAblation extension "
                                           r"was not found next to .*gui; reinstall the extension\."):
        panel.library_paths(alone)


def test_process_environment_puts_the_libraries_first_and_unbuffers():
    env = panel.process_environment(["/a", "/b"], {"PYTHONPATH": "/old", "HOME": "/h"})
    assert env == {"PYTHONPATH": os.pathsep.join(["/a", "/b", "/old"]), "HOME": "/h", "PYTHONUNBUFFERED": "1",
                   "PYTHONUTF8": "1", "PYTHONIOENCODING": "utf-8"}  # UTF-8 output on Windows too (issue 23)
    assert panel.process_environment(["/a"], {})["PYTHONPATH"] == "/a"
    assert panel.process_environment(["/a"])["PATH"] == os.environ["PATH"]


# --------------------------------------------------------------------------- output lines and outcome
def make_job(tmp_path, **kw):
    calls = {"log": [], "progress": [], "finished": []}
    job = panel.RegistrationJob(
        fixed_volume="F", moving_volume="M", work_dir=tmp_path, out_dir=tmp_path / "results",
        variant_ids=["baseline"], reuse=True, metrics_table=None,
        on_log=calls["log"].append, on_progress=lambda f, m: calls["progress"].append((f, m)),
        on_finished=calls["finished"].append, **kw,
    )
    return job, calls


def test_output_lines_become_progress_log_and_errors(tmp_path):
    job, calls = make_job(tmp_path)
    for line in [
        progress.step_line(2, 4, "regloss: registering moving.nrrd -> fixed.nrrd"),
        progress.progress_line(0.5, "network"),
        "progress 1.000",
        "   ",
        "      wrote warped.nii.gz in /out/regloss",
        progress.error_line("--model checkpoint x.pt holds variant 'baseline', not 'regloss'"),
    ]:
        job.handle_line(line)
    assert calls["progress"] == [(0.25, "regloss: registering moving.nrrd -> fixed.nrrd"), (0.5, "network"), (1.0, "")]
    assert calls["log"] == [
        "regloss: registering moving.nrrd -> fixed.nrrd", "network",
        "      wrote warped.nii.gz in /out/regloss",
        "error: --model checkpoint x.pt holds variant 'baseline', not 'regloss'",
    ]
    assert job.error_lines == ["--model checkpoint x.pt holds variant 'baseline', not 'regloss'"]
    outcome = job.ended_outcome(2, False)
    assert outcome.status == "failed"
    assert outcome.message == ("The registration process failed (exit status 2): "
                               "--model checkpoint x.pt holds variant 'baseline', not 'regloss'")


def test_how_a_run_ended(tmp_path):
    job, calls = make_job(tmp_path)
    assert job.ended_outcome(0, False) is None  # succeeded: load the results
    assert job.ended_outcome(-9, True).status == "cancelled"
    assert job.ended_outcome(1, False).message == "The registration process failed (exit status 1): no output"
    for index in range(30):
        job.handle_line(f"Traceback line {index}")
    assert job.tail_lines == [f"Traceback line {index}" for index in range(10, 30)]
    assert job.ended_outcome(1, False).message == (
        "The registration process failed (exit status 1): " + "\n".join(f"Traceback line {i}" for i in range(25, 30)))
    outcome = panel.RegistrationOutcome(status="cancelled")
    job.finish(outcome)
    assert calls["finished"] == [outcome]
    assert calls["log"][-1].startswith("Finished (cancelled) after ") and calls["log"][-1].endswith(" s.")


def test_metrics_summary_skips_what_is_not_finite():
    metrics = {"dice": 0.81234, "hd95_mm": math.nan, "ncc": 0.9, "folding_pct": 0.0123, "sdlogj": 0.05,
               "max_disp_mm": 7.26, "runtime_s": 1.04, "mse": 0.2}
    assert panel.metrics_summary("regloss", metrics) == (
        "regloss: Dice 0.812, NCC 0.900, folding 0.012 %, SDlogJ 0.050, max displacement 7.3 mm, runtime 1.0 s")
    assert panel.metrics_summary("baseline", {"dice": math.nan}) == "baseline: no metrics"


# --------------------------------------------------------------------------- results
def _result(variant: str, value: float) -> RegistrationResult:
    shape = (3, 4, 5)
    rng = np.random.default_rng(len(variant))
    return RegistrationResult(
        variant=variant, fixed_ijk_to_ras=np.diag([1.5, 1.0, 2.0, 1.0]),
        warped=np.full(shape, value, np.float32), warped_labels=np.ones(shape, np.int32) if variant == "regloss" else None,
        affine_ras=np.eye(4), disp_ras_mm=rng.normal(size=shape + (3,)).astype(np.float32),
        deform_disp_ras_mm=np.zeros(shape + (3,), np.float32), jacobian=np.ones(shape, np.float32),
        metrics={"ncc": value, "dice": math.nan, "runtime_s": 0.5}, timings={"model": 0.1},
    )


def test_load_results_reads_the_result_files_in_variant_order(tmp_path):
    out = tmp_path / "results"
    for variant, value in (("regloss", 2.0), ("baseline", 1.0), ("zz_extra", 3.0)):
        _result(variant, value).save(out / variant / "result.npz")
    (out / "empty").mkdir()
    results = panel.load_results(out, ["baseline", "regloss"])
    assert [r.variant for r in results] == ["baseline", "regloss", "zz_extra"]
    assert float(results[1].warped[0, 0, 0]) == 2.0 and results[1].warped_labels.shape == (3, 4, 5)
    assert results[0].warped_labels is None and math.isnan(results[0].metrics["dice"])
    np.testing.assert_array_equal(results[0].disp_ras_mm, _result("baseline", 1.0).disp_ras_mm)
    outcome = panel.RegistrationOutcome.done("fixed node", results, {r.variant: {"warped": r.variant} for r in results},
                                             "table node")
    assert outcome.status == "done" and outcome.fixedVolume == "fixed node" and outcome.table == "table node"
    assert list(outcome.metrics) == ["baseline", "regloss", "zz_extra"]
    assert outcome.summaryLines() == ["baseline: NCC 1.000, runtime 0.5 s", "regloss: NCC 2.000, runtime 0.5 s",
                                      "zz_extra: NCC 3.000, runtime 0.5 s"]
    with pytest.raises(RuntimeError, match=r"The registration finished but wrote no result\.npz under .*nothing\."):
        panel.load_results(tmp_path / "nothing", ["baseline"])


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory):
    """A folder with one real (untrained, 2D) checkpoint: baseline.pt."""
    folder = tmp_path_factory.mktemp("models")
    save_checkpoint(folder / "baseline.pt", build_model("baseline", 2))
    return folder


def test_checkpoint_problem(checkpoint_folder, tmp_path):
    file = str(checkpoint_folder / "baseline.pt")
    assert panel.checkpoint_problem(file, "baseline") == ""
    assert panel.checkpoint_problem(file, "regloss") == ""  # the registration checks what the file holds
    assert panel.checkpoint_problem(file, "all") == (
        "A checkpoint file holds one variant: choose that variant, or give a folder of "
        "<variant>.pt checkpoints to compare all four.")
    assert panel.checkpoint_problem(str(checkpoint_folder), ["baseline"]) == ""
    assert panel.checkpoint_problem(str(checkpoint_folder), "all") == (
        "The checkpoint folder lacks regloss.pt, affine_basic.pt, affine_enhanced.pt.")
    for missing in ("", str(tmp_path / "nothing.pt")):
        assert panel.checkpoint_problem(missing, "baseline") == (
            "Choose an existing checkpoint file or folder (or use the shipped weights).")
    with pytest.raises(ValueError, match=r"variants must be 'all' or ids among"):
        panel.checkpoint_problem(file, "fast")


def test_models_to_run(checkpoint_folder, tmp_path):
    for ndim in (2, 3):
        assert panel.models_to_run(None, "all", ndim) == [str(shipped_model_path(v, ndim)) for v in VARIANT_IDS]
    assert panel.models_to_run(str(checkpoint_folder), "baseline", 2) == [os.path.join(str(checkpoint_folder), "baseline.pt")]
    assert panel.models_to_run(checkpoint_folder / "baseline.pt", "all", 2) == [str(checkpoint_folder / "baseline.pt")]
    with pytest.raises(ValueError, match=r"^The checkpoint folder lacks regloss\.pt\.$"):
        panel.models_to_run(str(checkpoint_folder), ["baseline", "regloss"], 2)
    with pytest.raises(ValueError, match=r"^The checkpoint file or folder does not exist: "):
        panel.models_to_run(str(tmp_path / "none.pt"), "baseline", 2)
    model = build_model("regloss", 2)
    assert panel.models_to_run(model, "all", 2) == [model]


def test_models_to_run_warns_where_no_weights_are_shipped(monkeypatch, caplog):
    from DeepRegAblationLib.models import resolve

    monkeypatch.setattr(resolve, "shipped_model_path", lambda variant, ndim: None)
    with caplog.at_level(logging.WARNING):
        assert panel.models_to_run(None, "affine_basic", 3) == ["affine_basic"]  # the untrained network
    expected = (f"DeepRegAblation: no shipped 3D weights for 'affine_basic' "
                f"({resolve.MODELS_DIR / '3d' / 'affine_basic.pt'}): using an UNTRAINED network, close to the "
                "identity. Choose a checkpoint or train one with DeepRegAblationTraining.")
    assert [r.getMessage() for r in caplog.records] == [expected]


# --------------------------------------------------------------------------- small choices
def test_initial_alignment_argument():
    logged = []
    assert panel.initial_alignment_argument("auto", logged.append) == "auto"
    assert logged == ["Initial alignment: automatic (what the model was trained with; the centres of mass for the "
                      "shipped 3D models)"]
    assert panel.initial_alignment_argument("com", logged.append) == "com"
    assert panel.initial_alignment_argument("none", logged.append) == "none"
    assert len(logged) == 1
    with pytest.raises(ValueError, match=r"alignment choice must be one of \('auto', 'com', 'none'\), got 'always'"):
        panel.initial_alignment_argument("always")


def test_version_tuple():
    assert panel.version_tuple("2.1.0+cu121") == (2, 1, 0)
    assert panel.version_tuple("2.0") == (2, 0)
    assert panel.version_tuple("1.13.1") < panel.version_tuple("2.0")
    assert panel.version_tuple("2.5.1.post3") == (2, 5, 1)


def test_display_settings_defaults_are_the_panel_defaults():
    assert panel.DisplaySettings() == panel.DisplaySettings(
        show_glyphs=True, glyph_spacing_mm=0.0, glyph_scale_percent=100.0, show_jacobian=False,
        jacobian_opacity=0.6, jacobian_min=-1.0, jacobian_max=3.0)


# --------------------------------------------------------------------------- one start at a time (issue 23)
def test_a_second_start_while_one_is_starting_is_refused():
    """A double click on Apply: the second click arrives while the first one's start processes GUI events (its
    log lines); the guard refuses it, whatever the first one then does, and frees itself after (error or not)."""
    guard = panel.StartGuard()
    starts, refused = [], []

    def start(again: bool) -> None:
        with guard.starting():
            if again:  # the events processed by a log line deliver the second click now
                try:
                    start(again=False)
                except RuntimeError as exc:
                    refused.append(str(exc))
            starts.append("started")

    assert not guard.busy
    start(again=True)
    assert starts == ["started"] and len(refused) == 1 and "already starting" in refused[0]
    assert not guard.busy
    with pytest.raises(ValueError):
        with guard.starting():
            assert guard.busy
            raise ValueError("bad input")
    assert not guard.busy
    start(again=False)
    assert starts == ["started", "started"]
