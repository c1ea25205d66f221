"""The extension's code paths as Slicer really runs them, reproduced outside Slicer.

Each test starts a fresh Python process whose start-up (a ``sitecustomize`` module) makes it
look like the process Slicer starts, in the one respect under test (``_slicer_environment``):
PythonSlicer (``import slicer`` without ``slicer.util``), only the packages Slicer's Python ships, a
Slicer without PyTorch yet or on Windows, the application itself (``slicer.util.exit`` recorded).

The panel's background run is reproduced whole, Qt aside: its inputs written from a real MRML scene
(``scene.write_input_files``), its command line and environment (``panel``), run and polled by
``jobs.BackgroundJob`` as the panel's timer does, its output read by ``panel.RegistrationJob`` and its
results added to the scene; only the interpreter differs (this Python, not the PythonSlicer launcher).
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

from _registration_helpers import label_volume, oblique_matrix, smooth_volume  # noqa: E402
from _slicer_environment import (  # noqa: E402
    IN_SLICER_APP, LAUNCHER, NO_TORCH_NO_RESOURCE, PYTHONSLICER, REPO, SLICER_PACKAGES_ONLY, run_python,
)
from DeepRegAblationLib import jobs, panel  # noqa: E402
from DeepRegAblationLib.models.checkpoints import save_checkpoint  # noqa: E402
from DeepRegAblationLib.imageio import ImageData, write_image  # noqa: E402
from DeepRegAblationLib.models.network import build_model  # noqa: E402


def test_startup_files_reproduce_slicer(tmp_path):
    """The simulations hold: no slicer.util after ``import slicer``, no torch, no resource."""
    probe = ["-c", "import slicer; print(hasattr(slicer, 'util'), hasattr(slicer, 'vtkMRMLScene'))"]
    assert run_python(tmp_path, PYTHONSLICER, probe).stdout.split() == ["False", "True"]
    blocked = run_python(tmp_path, NO_TORCH_NO_RESOURCE, ["-c", "import resource"])
    assert blocked.returncode == 1 and "ModuleNotFoundError" in blocked.stderr


@pytest.fixture(scope="module")
def tiny_images():
    """Tiny 3D fixed / moving images on oblique grids with their label maps."""
    fixed = ImageData(smooth_volume((12, 14, 12), 0), oblique_matrix([1.5, 1.4, 1.6], [4, -6, 5], [0, 0, 0]), "fixed")
    moving = ImageData(smooth_volume((13, 14, 13), 1), oblique_matrix([1.4, 1.5, 1.5], [-3, 5, 8], [1, -1, 1]), "moving")
    return {"fixed": fixed, "moving": moving,
            "fixed_labels": ImageData(label_volume(fixed.array), fixed.ijk_to_ras, "fixed labels"),
            "moving_labels": ImageData(label_volume(moving.array), moving.ijk_to_ras, "moving labels")}


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory, tiny_images):
    """The tiny images as NIfTI files, and an untrained baseline checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    return {
        "--fixed": write_image(root / "fixed.nii.gz", tiny_images["fixed"]),
        "--moving": write_image(root / "moving.nii.gz", tiny_images["moving"]),
        "--fixed-labels": write_image(root / "fl.nii.gz", tiny_images["fixed_labels"]),
        "--moving-labels": write_image(root / "ml.nii.gz", tiny_images["moving_labels"]),
        "--model": save_checkpoint(root / "baseline.pt", build_model("baseline", 3)),
    }


def test_register_in_pythonslicer_writes_every_output_and_no_vtk_warning(tmp_path, tiny_inputs):
    """The Apply button's background process: ``PythonSlicer -m DeepRegAblationTrainingLib.cli register``, with
    only the packages Slicer's Python ships (NIfTI inputs read without nibabel, issue 23).
    Without ``slicer.util`` pre-imported the scene step must still work (it raised AttributeError and
    the run ended with status 1), and the console shows no VTK warning (label map colour table,
    deprecated table header call)."""
    out = tmp_path / "out"
    args = [a for pair in tiny_inputs.items() for a in pair]
    result = run_python(tmp_path, PYTHONSLICER + SLICER_PACKAGES_ONLY, ["-m", "DeepRegAblationTrainingLib.cli", "register", *args,
                                                 "--variant", "baseline", "--device", "cpu", "--save-npz",
                                                 "--out", out])
    assert result.returncode == 0, result.stderr
    assert (out / "baseline" / "result.npz").is_file()
    assert (out / "scene" / "DeepRegAblation-results.mrml").is_file(), result.stderr
    assert "warning: Slicer scene" not in result.stderr
    assert json.loads((out / "metrics.json").read_text())[0]["variant"] == "baseline"
    vtk_lines = [line for line in result.stderr.splitlines() if "vtk" in line.lower() or "WARN|" in line]
    assert not vtk_lines, "\n".join(vtk_lines)


def run_as_the_panel(tmp_path: Path, files, model, variants=("baseline",)):
    """The Apply button's background run without Qt: the panel's command line (Python instead of the
    PythonSlicer launcher that is not here) and environment, in a process where ``import slicer`` does not
    bring ``slicer.util``, run by ``jobs.BackgroundJob`` and polled as the panel's QTimer does; the output
    lines go to a ``panel.RegistrationJob``. Returns (job, exit status, cancelled, log lines, progress)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(PYTHONSLICER + SLICER_PACKAGES_ONLY))
    out = tmp_path / "work" / "results"
    command = panel.register_command(files, out, list(variants), model, "cpu", 0, "auto")
    assert command[1:3] == ["-m", "DeepRegAblationTrainingLib.cli"]
    command[0] = sys.executable
    env = panel.process_environment(panel.library_paths(REPO / "DeepRegAblation"),
                                    dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1"))
    log, fractions, exits = [], [], []
    job = panel.RegistrationJob(
        fixed_volume=None, moving_volume=None, work_dir=tmp_path / "work", out_dir=out, variant_ids=list(variants),
        reuse=True, metrics_table=None, on_log=log.append, on_progress=lambda f, m: fractions.append(f),
        on_finished=lambda outcome: None)
    process = jobs.BackgroundJob(command, env, on_line=job.handle_line,
                                 on_exit=lambda code, cancelled: exits.append((code, cancelled)))
    deadline = time.time() + 300
    while process.is_running() and time.time() < deadline:
        process.poll()
        time.sleep(0.05)
    assert len(exits) == 1, "the background registration did not end in time:\n" + "\n".join(log)
    return job, exits[0][0], exits[0][1], log, fractions


def test_the_panels_background_run_end_to_end(tmp_path, tiny_images, tiny_inputs):
    """Inputs written from a real MRML scene (a segmentation among them), the command the panel starts, its
    progress and log lines, then the results read back from result.npz and added to the scene."""
    from DeepRegAblationLib import scene

    mrml = slicer.vtkMRMLScene()
    scene.add_default_label_colors(mrml)
    fixed_node = scene.add_volume_node(mrml, tiny_images["fixed"])
    moving_node = scene.add_volume_node(mrml, tiny_images["moving"])
    fixed_labels = scene.add_volume_node(mrml, tiny_images["fixed_labels"], label=True)
    source = scene.add_volume_node(mrml, tiny_images["moving_labels"], "source", label=True)
    moving_segmentation = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", "moving segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, moving_segmentation)
    (tmp_path / "work").mkdir()
    files = scene.write_input_files(mrml, tmp_path / "work", fixed_node, moving_node, fixed_labels, moving_segmentation)

    job, status, cancelled, log, fractions = run_as_the_panel(tmp_path, files, str(tiny_inputs["--model"]))
    assert (status, cancelled) == (0, False), "\n".join(log)
    assert job.ended_outcome(status, cancelled) is None and job.error_lines == []
    assert log[0] == "baseline: registering moving.nrrd -> fixed.nrrd"  # the step line, as the panel logs it
    assert fractions[0] == 0.0 and fractions == sorted(fractions) and fractions[-1] > 0.9
    assert not any(line.startswith("progress ") for line in log)

    written = sorted(p.relative_to(job.out_dir).as_posix() for p in job.out_dir.rglob("*") if p.is_file())
    assert written == [".deepreg-ablation-register", "baseline/result.npz", "metrics.csv", "metrics.json"]  # issue 23
    results = panel.load_results(job.out_dir, job.variant_ids)
    nodes, table = scene.add_results_to_scene(mrml, results, fixed_node, moving_node)
    outcome = panel.RegistrationOutcome.done(fixed_node, results, nodes, table)
    assert list(outcome.nodes) == ["baseline"] and outcome.table.GetNumberOfRows() == 1
    assert outcome.summaryLines()[0].startswith("baseline: Dice ")  # labels reached the command
    warped = slicer.util.arrayFromVolume(outcome.nodes["baseline"]["warped"])
    assert warped.shape == tiny_images["fixed"].array.shape
    assert outcome.nodes["baseline"]["warped_labels"].IsA("vtkMRMLLabelMapVolumeNode")


def test_a_failed_background_run_reports_the_commands_error(tmp_path, tiny_inputs):
    """A checkpoint of another variant: the command's ``error:`` line becomes the panel's message."""
    files = {"fixed": tiny_inputs["--fixed"], "moving": tiny_inputs["--moving"]}
    job, status, cancelled, log, _ = run_as_the_panel(tmp_path, files, str(tiny_inputs["--model"]), ["regloss"])
    assert (status, cancelled) == (2, False)
    outcome = job.ended_outcome(status, cancelled)
    assert outcome.status == "failed"
    assert outcome.message == (f"The registration process failed (exit status 2): --model checkpoint "
                               f"{tiny_inputs['--model']} holds variant 'baseline', not 'regloss'")


@pytest.mark.parametrize("entry", ["module", "launcher"])
def test_help_needs_neither_torch_nor_resource(tmp_path, entry):
    """``--help`` and ``register --help`` work in a Slicer without PyTorch yet and on Windows
    (every command module was imported to build the parser; bench.py imported ``resource``)."""
    prefix = ["-m", "DeepRegAblationTrainingLib.cli"] if entry == "module" else [LAUNCHER, "--"]
    top = run_python(tmp_path, NO_TORCH_NO_RESOURCE, [*prefix, "--help"])
    assert top.returncode == 0, top.stderr
    for command in ("train", "evaluate", "ablation", "sweep", "register", "bench", "demo"):
        assert command in top.stdout
    register = run_python(tmp_path, NO_TORCH_NO_RESOURCE, [*prefix, "register", "--help"])
    assert register.returncode == 0, register.stderr
    assert "--fixed" in register.stdout and "--refine" in register.stdout
    bench = run_python(tmp_path, NO_TORCH_NO_RESOURCE, [*prefix, "bench", "--help"])  # bench.py imported resource
    assert bench.returncode == 0, bench.stderr
    assert "usage: deepreg-ablation bench" in bench.stdout
    bad = run_python(tmp_path, NO_TORCH_NO_RESOURCE, [*prefix, "no-such-command"])
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


BROKEN_CLI = """
    import DeepRegAblationTrainingLib.cli as cli

    def _broken(*args, **kwargs):  # a bug anywhere in a command
        raise ZeroDivisionError("a bug")

    cli.build_parser = _broken
"""


def test_launcher_in_slicer_always_asks_slicer_to_exit(tmp_path):
    """``Slicer --no-main-window --python-script DeepRegAblationTraining.py -- <command>``: whatever happens the
    launcher asks Slicer to exit, or Slicer stays alive forever after the script. A bug: status 1 with its
    traceback; a Slicer without PyTorch: status 2 with one line (issue 23); ``--help``: 0."""
    status_file = tmp_path / "exit-status"
    # inside Slicer, Slicer consumes "--" and the script sees [script, <arguments after it>]
    result = run_python(tmp_path, IN_SLICER_APP + BROKEN_CLI, [LAUNCHER, "train", "--help"],
                        EXIT_STATUS_FILE=str(status_file))
    assert status_file.is_file(), f"slicer.util.exit was never called:\n{result.stderr}"
    assert status_file.read_text() == "1"
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug" in result.stderr

    status_file.unlink()
    no_torch = run_python(tmp_path, NO_TORCH_NO_RESOURCE + IN_SLICER_APP, [LAUNCHER, "train", "--help"],
                          EXIT_STATUS_FILE=str(status_file))
    assert status_file.read_text() == "2", no_torch.stderr
    assert "Traceback" not in no_torch.stderr and no_torch.stderr.startswith("error: PyTorch is not installed")

    status_file.unlink()
    ok = run_python(tmp_path, NO_TORCH_NO_RESOURCE + IN_SLICER_APP, [LAUNCHER, "register", "--help"],
                    EXIT_STATUS_FILE=str(status_file))
    assert status_file.read_text() == "0", ok.stderr
    assert "usage: deepreg-ablation register" in ok.stdout
