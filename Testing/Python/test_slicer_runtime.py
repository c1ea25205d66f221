"""The extension's code paths as Slicer really runs them, reproduced outside Slicer.

Each test starts a fresh Python process whose start-up (a ``sitecustomize`` module) makes it
look like the process Slicer starts, in the one respect under test:

- PythonSlicer: ``import slicer`` gives the MRML classes but not ``slicer.util`` (Slicer's
  ``Base/Python/slicer/__init__.py`` does not import it; only the main application's start-up
  does, while the ``slicer-core`` meta-package used here imports every submodule);
- a Slicer without PyTorch yet, or on Windows (no ``resource`` module): the module is made
  unimportable with ``sys.modules[name] = None``;
- the application itself (``Slicer --no-main-window --python-script``): ``slicer.app`` is set and
  ``slicer.util.exit`` records the status it is given instead of quitting, as Slicer only quits
  once its event loop runs: a script that never calls it leaves Slicer running.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

from _registration_helpers import label_volume, oblique_matrix, smooth_volume  # noqa: E402
from DeepRegAblationLib.checkpoints import save_checkpoint  # noqa: E402
from DeepRegAblationLib.imageio import ImageData, write_image  # noqa: E402
from DeepRegAblationLib.networks import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "DeepRegAblationTraining" / "DeepRegAblationTraining.py"

PYTHONSLICER = """
    import sys
    import slicer  # slicer-core imports every submodule; Slicer's own package does not import slicer.util
    del slicer.util
    del sys.modules["slicer.util"]
"""
NO_TORCH_NO_RESOURCE = """
    import sys
    sys.modules["torch"] = None  # PyTorch not installed yet (the PyTorch extension installs it on demand)
    sys.modules["resource"] = None  # Windows
"""
IN_SLICER_APP = """
    import os, sys
    import slicer
    import slicer.util
    slicer.app = object()  # what in_slicer_application() looks for

    def _exit(status=0):  # Slicer quits later, from its event loop: record the request only
        with open(os.environ["EXIT_STATUS_FILE"], "w") as f:
            f.write(str(status))

    slicer.util.exit = _exit
"""


def run_python(tmp_path: Path, startup: str, args, **env_extra) -> subprocess.CompletedProcess:
    """``python <args>`` in a fresh process that runs ``startup`` first (as its sitecustomize)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(startup))
    paths = [str(site), str(REPO / "DeepRegAblation"), str(REPO / "DeepRegAblationTraining")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, *[str(a) for a in args]], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=300)


def test_startup_files_reproduce_slicer(tmp_path):
    """The simulations hold: no slicer.util after ``import slicer``, no torch, no resource."""
    probe = ["-c", "import slicer; print(hasattr(slicer, 'util'), hasattr(slicer, 'vtkMRMLScene'))"]
    assert run_python(tmp_path, PYTHONSLICER, probe).stdout.split() == ["False", "True"]
    blocked = run_python(tmp_path, NO_TORCH_NO_RESOURCE, ["-c", "import resource"])
    assert blocked.returncode == 1 and "ModuleNotFoundError" in blocked.stderr


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """Tiny 3D fixed / moving NIfTI files with label maps, and an untrained baseline checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    fixed = ImageData(smooth_volume((12, 14, 12), 0), oblique_matrix([1.5, 1.4, 1.6], [4, -6, 5], [0, 0, 0]))
    moving = ImageData(smooth_volume((13, 14, 13), 1), oblique_matrix([1.4, 1.5, 1.5], [-3, 5, 8], [1, -1, 1]))
    torch.manual_seed(0)
    return {
        "--fixed": write_image(root / "fixed.nii.gz", fixed),
        "--moving": write_image(root / "moving.nii.gz", moving),
        "--fixed-labels": write_image(root / "fl.nii.gz", ImageData(label_volume(fixed.array), fixed.ijk_to_ras)),
        "--moving-labels": write_image(root / "ml.nii.gz", ImageData(label_volume(moving.array), moving.ijk_to_ras)),
        "--model": save_checkpoint(root / "baseline.pt", build_model("baseline", 3)),
    }


def test_register_in_pythonslicer_writes_every_output_and_no_vtk_warning(tmp_path, tiny_inputs):
    """The Apply button's background process: ``PythonSlicer -m DeepRegAblationTrainingLib.cli register``.
    Without ``slicer.util`` pre-imported the scene step must still work (it raised AttributeError and
    the run ended with status 1), and the console shows no VTK warning (label map colour table,
    deprecated table header call)."""
    out = tmp_path / "out"
    args = [a for pair in tiny_inputs.items() for a in pair]
    result = run_python(tmp_path, PYTHONSLICER, ["-m", "DeepRegAblationTrainingLib.cli", "register", *args,
                                                 "--variant", "baseline", "--device", "cpu", "--save-npz",
                                                 "--out", out])
    assert result.returncode == 0, result.stderr
    assert (out / "baseline" / "result.npz").is_file()
    assert (out / "scene" / "DeepRegAblation-results.mrml").is_file(), result.stderr
    assert "warning: Slicer scene" not in result.stderr
    assert json.loads((out / "metrics.json").read_text())[0]["variant"] == "baseline"
    vtk_lines = [line for line in result.stderr.splitlines() if "vtk" in line.lower() or "WARN|" in line]
    assert not vtk_lines, "\n".join(vtk_lines)


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


def test_launcher_in_slicer_exits_with_1_when_the_command_raises(tmp_path):
    """``Slicer --no-main-window --python-script DeepRegAblationTraining.py -- train --help`` in a Slicer
    without PyTorch: importing the command raises. The launcher must still ask Slicer to exit (status 1,
    with the traceback), or Slicer stays alive forever after the script."""
    status_file = tmp_path / "exit-status"
    startup = NO_TORCH_NO_RESOURCE + IN_SLICER_APP
    # inside Slicer, Slicer consumes "--" and the script sees [script, <arguments after it>]
    result = run_python(tmp_path, startup, [LAUNCHER, "train", "--help"], EXIT_STATUS_FILE=str(status_file))
    assert status_file.is_file(), f"slicer.util.exit was never called:\n{result.stderr}"
    assert status_file.read_text() == "1"
    assert "Traceback" in result.stderr and "torch" in result.stderr

    status_file.unlink()
    ok = run_python(tmp_path, startup, [LAUNCHER, "register", "--help"], EXIT_STATUS_FILE=str(status_file))
    assert status_file.read_text() == "0", ok.stderr
    assert "usage: deepreg-ablation register" in ok.stdout
