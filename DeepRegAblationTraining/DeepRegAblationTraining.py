"""DeepRegAblationTraining: the headless side of DeepRegAblation (training, evaluation, ablation study).

Two roles in one file:

- a developer module in Slicer (help text only): it makes ``DeepRegAblationTrainingLib`` part of
  the extension, so the ``deepreg-ablation`` commands run with Slicer's Python and PyTorch;
- a launcher of the command line::

      PythonSlicer DeepRegAblationTraining/DeepRegAblationTraining.py -- train --variant regloss ...
      Slicer --no-main-window --python-script DeepRegAblationTraining/DeepRegAblationTraining.py -- train ...

  runs ``DeepRegAblationTrainingLib.cli.main(<arguments after "--">)`` and exits with its status.
  ``PythonSlicer`` (Slicer's Python, in Slicer's ``bin`` folder) needs no display: the way on a Linux
  server. ``Slicer --no-main-window`` still starts a Qt GUI application, which needs a display there
  (or ``QT_QPA_PLATFORM=offscreen``). Outside Slicer (plain Python) the same file runs the CLI.
  Inside Slicer's Python a package the command needs that Slicer does not ship (matplotlib for the
  report figures, nilearn for the MNI152 template) is installed with ``slicer.util.pip_install``
  before the command starts, after a line that says what and why (:func:`slicer_pip_installer`).
  Whatever happens, the launcher exits: with ``--python-script`` Slicer does not quit by itself
  after the script (``qSlicerCoreApplication`` quits on its own only in testing mode, for ``-c`` or
  a bare ``.py`` argument), so an exception that escaped would leave a ``--no-main-window`` Slicer
  running forever. A missing PyTorch is one ``error:`` line and status 2; a bug prints its
  traceback and exits with status 1.

The file imports without Slicer (only the module classes need it), so it can be checked with pytest.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Sequence

LIB_PACKAGES = ("DeepRegAblationTrainingLib", "DeepRegAblationLib")


def library_folders(module_dir: Optional[Path] = None) -> List[Path]:
    """Folders holding ``DeepRegAblationTrainingLib`` and ``DeepRegAblationLib``.

    Installed extensions put both modules in one folder; in the source tree the core library is in
    the sibling ``DeepRegAblation`` folder. Raises RuntimeError naming the missing package.
    """
    here = Path(module_dir) if module_dir is not None else Path(__file__).resolve().parent
    candidates = [here, here.parent / "DeepRegAblation"]
    folders: List[Path] = []
    for package in LIB_PACKAGES:
        folder = next((c for c in candidates if (c / package / "__init__.py").is_file()), None)
        if folder is None:
            raise RuntimeError(f"the {package} package was not found next to {here}; reinstall the extension")
        if folder not in folders:
            folders.append(folder)
    return folders


def ensure_import_paths(module_dir: Optional[Path] = None) -> None:
    """Put the library folders first on ``sys.path`` (idempotent)."""
    for folder in reversed(library_folders(module_dir)):
        path = str(folder)
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def script_arguments(argv: Sequence[str], inside_slicer: bool = False) -> List[str]:
    """The CLI arguments in a launcher's ``sys.argv``.

    Plain Python (``python DeepRegAblationTraining.py -- train ...``): everything after the first
    ``"--"``, or after the script name when there is none. Inside Slicer, ``"--"`` is Slicer's own
    ``--ignore-rest`` flag: Slicer consumes it and ``sys.argv`` is ``[script, <arguments after it>]``,
    so everything after the script name is the CLI's (a later ``"--"`` included); a leading
    ``"--"`` that reached the script anyway is dropped.
    """
    args = list(argv)[1:]
    if inside_slicer:
        return args[1:] if args[:1] == ["--"] else args
    if "--" in args:
        return args[args.index("--") + 1:]
    return args


def slicer_pip_installer() -> Optional[Callable[[str], None]]:
    """``slicer.util.pip_install`` in Slicer's Python (the application, or ``PythonSlicer``: a ``PythonSlicer``
    launcher beside ``sys.executable``, as ``slicer.util`` finds it), else ``None``.

    ``cli.main`` installs with it, before the command starts, a package the command needs that Slicer's Python
    does not ship (matplotlib for report figures, nilearn for the MNI152 template), saying what and why first.
    """
    from DeepRegAblationTrainingLib.optional_packages import slicer_python_launcher

    if not in_slicer_application() and slicer_python_launcher() is None:
        return None
    try:
        import slicer.util
    except ImportError:
        return None
    return getattr(slicer.util, "pip_install", None)


def run_cli(args: Sequence[str]) -> int:
    """``DeepRegAblationTrainingLib.cli.main(args)`` as an exit status; never raises.

    Inside Slicer, a package the command needs that Slicer lacks is installed first
    (:func:`slicer_pip_installer`). argparse exits (``--help``: 0, a usage error: 2) become their status;
    a missing package (PyTorch) is one ``error:`` line and 2; Ctrl+C is 130; any other exception (a bug)
    prints its traceback and gives 1.
    """
    try:
        ensure_import_paths()
        from DeepRegAblationTrainingLib import cli

        return int(cli.main(list(args), installer=slicer_pip_installer()) or 0)
    except SystemExit as exc:  # --help, or an argparse usage error
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001  the launcher must reach exit_application
        traceback.print_exc()
        print("error: the command failed with the Python error above", file=sys.stderr)
        return 1


def in_slicer_application() -> bool:
    """True inside the Slicer application (not just with the ``slicer`` MRML package importable)."""
    slicer_module = sys.modules.get("slicer")
    return slicer_module is not None and getattr(slicer_module, "app", None) is not None


def exit_application(status: int) -> None:
    """Leave with ``status``: ``slicer.util.exit`` inside Slicer, ``sys.exit`` otherwise."""
    sys.stdout.flush()
    sys.stderr.flush()
    if in_slicer_application():
        import slicer.util

        slicer.util.exit(status)
    else:
        sys.exit(status)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI with the script arguments of ``argv`` (default ``sys.argv``); returns the exit status."""
    return run_cli(script_arguments(sys.argv if argv is None else argv, inside_slicer=in_slicer_application()))


def launch(argv: Optional[Sequence[str]] = None) -> None:
    """Script entry point: :func:`main`, then :func:`exit_application` with its status, always."""
    try:
        status = main(argv)
    except BaseException:  # noqa: BLE001  (main does not raise; this is the last guard)
        traceback.print_exc()
        status = 1
    exit_application(status)


try:
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
except ImportError:  # plain Python (pytest, command line): only the launcher functions above are used
    ScriptedLoadableModule = None


if ScriptedLoadableModule is not None:

    class DeepRegAblationTraining(ScriptedLoadableModule):
        """Developer module: help text only; the work is done by the ``deepreg-ablation`` command line."""

        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = "DeepReg Ablation Training"
            self.parent.categories = ["Developer Tools"]
            self.parent.dependencies = []
            self.parent.contributors = ["DeepRegAblation developers (independent)"]
            self.parent.helpText = """
<p>Training, evaluation and the ablation study of the DeepRegAblation registration variants
(<code>baseline</code>, <code>regloss</code>, <code>affine_basic</code>, <code>affine_enhanced</code>).
There is no panel: run the command line with Slicer's Python (it has PyTorch from the PyTorch extension).
On a server without a display use <code>PythonSlicer</code> (in Slicer's <code>bin</code> folder), which starts
no GUI:</p>
<pre>PythonSlicer &lt;extension&gt;/DeepRegAblationTraining.py -- --help
PythonSlicer &lt;extension&gt;/DeepRegAblationTraining.py -- train --variant regloss --data oasis2d:/data ...
Slicer --no-main-window --python-script &lt;extension&gt;/DeepRegAblationTraining.py -- ablation ...</pre>
<p><code>Slicer --no-main-window</code> still starts a GUI application: without a display set
<code>QT_QPA_PLATFORM=offscreen</code>. Reading images needs only what Slicer's Python ships. The report figures
of <code>evaluate</code>, <code>ablation</code> and <code>sweep</code> need matplotlib and the MNI152 data
(<code>demo</code>, <code>mni-synthetic</code>) nilearn, and <code>bench</code> its reference voxelmorph (not with
<code>--no-reference</code>): they are installed with <code>slicer.util.pip_install</code>
before the command starts, with a line saying so. Without PyTorch (install the PyTorch extension) every
command stops with one line saying so.</p>
<p>Commands: train, evaluate, ablation, sweep, register, bench, demo (see <code>-- &lt;command&gt; --help</code>).
Checkpoints it writes can be chosen in the DeepRegAblation module (Model weights: Checkpoint file).</p>
"""
            self.parent.acknowledgementText = """
<p>The networks follow VoxelMorph (G. Balakrishnan et al., IEEE TMI 38(8):1788-1800, 2019).
See the DeepRegAblation module for the ablation design.</p>
"""

    class DeepRegAblationTrainingWidget(ScriptedLoadableModuleWidget):
        """Nothing beyond the help text (and the developer Reload/Test buttons)."""

        def setup(self):
            ScriptedLoadableModuleWidget.setup(self)
            self.layout.addStretch(1)

    class DeepRegAblationTrainingTest(ScriptedLoadableModuleTest):
        """The launcher's argument forwarding, the CLI, and the launcher run headless in its own process with
        Slicer's Python (``PythonSlicer``): its exit status, and a short training on a toy dataset (under half a
        minute on a CPU; without PyTorch, the one-line message instead)."""

        def runTest(self):
            self.test_arguments_after_double_dash()
            self.test_cli_help_and_usage_error()
            self.test_launcher_exit_status_in_its_own_process()

        def test_arguments_after_double_dash(self):
            self.assertEqual(script_arguments(["x.py", "--", "train", "--epochs", "1"]), ["train", "--epochs", "1"])
            self.assertEqual(script_arguments(["x.py", "demo"]), ["demo"])
            self.assertEqual(script_arguments(["x.py", "evaluate", "--", "y"], inside_slicer=True), ["evaluate", "--", "y"])

        def test_cli_help_and_usage_error(self):
            self.assertEqual(run_cli(["--help"]), 0)
            self.assertEqual(run_cli(["no-such-command"]), 2)

        def test_launcher_exit_status_in_its_own_process(self):
            """``PythonSlicer DeepRegAblationTraining.py -- <command>`` (the headless way on a server): 0 for
            ``--help``, 2 for a usage error, and a 2-step training on a toy dataset (Slicer's own packages only)."""
            import importlib.util
            import shutil
            import subprocess
            import tempfile

            python = shutil.which("PythonSlicer") or sys.executable  # in Slicer sys.executable is PythonSlicer

            def launch_process(*args: str) -> "subprocess.CompletedProcess":
                return subprocess.run([python, str(Path(__file__).resolve()), "--", *args], capture_output=True,
                                      text=True, timeout=300)

            self.assertEqual(launch_process("--help").returncode, 0)
            self.assertEqual(launch_process("no-such-command").returncode, 2)
            with tempfile.TemporaryDirectory() as folder:
                if importlib.util.find_spec("torch") is None:  # the PyTorch extension has not installed it yet
                    result = launch_process("train", "--data", f"oasis2d:{folder}", "--out", str(Path(folder) / "run"))
                    self.assertEqual(result.returncode, 2, result.stderr)
                    self.assertIn("PyTorch", result.stderr)
                    self.assertNotIn("Traceback", result.stderr)
                    return
                ensure_import_paths()
                from DeepRegAblationTrainingLib.data import write_toy_oasis2d

                toy = write_toy_oasis2d(Path(folder) / "toy", n_subjects=6, shape=(32, 32))
                out = Path(folder) / "run"
                tiny = ["--features-enc", "8", "8", "8", "8", "--features-dec", "8", "8", "8", "8", "8", "8", "8"]
                result = launch_process("train", "--variant", "baseline", "--data", f"oasis2d:{toy}", "--steps", "2",
                                        "--steps-per-epoch", "1", "--val-pairs", "2", "--val-fraction", "0.4",
                                        "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out), *tiny)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertTrue((out / "last.pt").is_file())
            self.delayDisplay("DeepRegAblationTraining test passed")


if __name__ == "__main__":
    launch()
