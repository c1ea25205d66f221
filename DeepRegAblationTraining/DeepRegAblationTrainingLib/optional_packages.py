"""Python packages some commands need that Slicer's Python does not ship: checked before any work starts.

Slicer's Python ships numpy, scipy, SimpleITK, pillow and VTK (Slicer ``SuperBuild/External_python-*.cmake``);
PyTorch comes from the PyTorch extension. Beyond those, a command may need (:data:`OPTIONAL_PACKAGES`):

- ``matplotlib``: the report figures of ``evaluate``, ``ablation`` and ``sweep``;
- ``nilearn``: the MNI152 template it ships (``demo``, the ``mni-synthetic`` and ``mni-ixi:`` data);
- ``voxelmorph``: the reference model of ``bench --train`` / ``--infer`` (not with ``--no-reference``).

A command module lists what it needs for its arguments in ``required_packages(args) -> List[str]``;
``cli.main`` calls :func:`ensure_packages` with them after the arguments are parsed and before the command
runs, so a run that needs a missing package says so before step 1, never after hours of training.
Inside Slicer's Python (the application, or ``PythonSlicer``: :func:`slicer_python_launcher`) the launcher
``DeepRegAblationTraining.py`` gives ``cli.main`` an installer, ``slicer.util.pip_install`` (this library does
not import ``slicer``): a missing package is installed on first use, as Slicer extensions do, after one line
that says what and why; anywhere else the command stops with :class:`MissingPackageError`, one line naming
the package, what it is for and the ``pip`` command. :func:`missing_module_message` is the one line for a
package that failed to import anyway (PyTorch above all).
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

__all__ = [
    "OptionalPackage", "OPTIONAL_PACKAGES", "MissingPackageError", "data_spec_packages", "data_command_packages",
    "report_command_packages", "missing_packages",
    "slicer_python_launcher", "ensure_packages", "missing_module_message",
]


@dataclass(frozen=True)
class OptionalPackage:
    """A package a command may need: its import name, the pip requirement and what it is for (plain words)."""

    module: str
    requirement: str
    purpose: str


OPTIONAL_PACKAGES: Dict[str, OptionalPackage] = {
    "matplotlib": OptionalPackage("matplotlib", "matplotlib>=3.5", "the report figures (PNG)"),
    "nilearn": OptionalPackage("nilearn", "nilearn", "the MNI152 template that ships inside it (no download)"),
    "voxelmorph": OptionalPackage("voxelmorph", "voxelmorph==0.3.4",
                                  "the speed benchmark's reference model, VxmPairwise (or run bench with --no-reference)"),
}


class MissingPackageError(RuntimeError):
    """A package the command needs is missing and cannot be installed here (the CLI's ``error:`` line, status 2)."""


def data_spec_packages(spec: Optional[str]) -> List[str]:
    """The optional packages a ``--data`` spec needs: ``nilearn`` for ``mni-synthetic`` / ``mni-ixi:`` (also
    inside a ``+`` mix), nothing for the others."""
    parts = [part.strip() for part in str(spec or "").split("+")]
    return ["nilearn"] if any(part.startswith("mni-") for part in parts) else []


def data_command_packages(args) -> List[str]:
    """``required_packages`` of a command that reads ``--data`` (``train``, ``pretrain``, ``teacher``)."""
    return data_spec_packages(getattr(args, "data", None))


def report_command_packages(args) -> List[str]:
    """``required_packages`` of a command that writes a report with figures (``evaluate``, ``ablation``,
    ``sweep``): matplotlib, and what its ``--data`` needs."""
    return ["matplotlib"] + data_command_packages(args)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def missing_packages(names: Sequence[str]) -> List[OptionalPackage]:
    """The packages of ``names`` (keys of :data:`OPTIONAL_PACKAGES`) that do not import, in order, once each."""
    unknown = [name for name in names if name not in OPTIONAL_PACKAGES]
    if unknown:
        raise ValueError(f"unknown optional package(s) {unknown}; known: {sorted(OPTIONAL_PACKAGES)}")
    return [OPTIONAL_PACKAGES[name] for name in dict.fromkeys(names) if not _importable(OPTIONAL_PACKAGES[name].module)]


def slicer_python_launcher() -> Optional[Path]:
    """The ``PythonSlicer`` launcher when this is Slicer's Python, else ``None``.

    Slicer's bin folder holds ``PythonSlicer`` beside the interpreter (in the application ``sys.executable``
    is ``PythonSlicer`` itself, ``qSlicerCoreApplication``); ``slicer.util`` finds it the same way.
    """
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    launcher = Path(sys.executable).parent / name if sys.executable else None
    return launcher if launcher is not None and launcher.is_file() else None


def _pip_command(package: OptionalPackage) -> str:
    return f'{sys.executable or "python"} -m pip install "{package.requirement}"'


def ensure_packages(names: Sequence[str], command: str, installer: Optional[Callable[[str], None]] = None,
                    log: Optional[Callable[[str], None]] = None) -> List[str]:
    """Make the packages of ``names`` importable before ``command`` starts; returns the requirements installed.

    ``installer(requirement)`` (the launcher's ``slicer.util.pip_install`` in Slicer's Python; ``None``
    elsewhere) installs a missing package after ``log`` (default: a line on stderr) says what and why. Without
    an installer, or when the package still does not import, raises :class:`MissingPackageError` naming the
    package, its purpose and the ``pip`` command: nothing has run yet.
    """
    missing = missing_packages(names)
    if not missing:
        return []
    install = installer
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    installed = []
    for package in missing:
        if install is None:
            raise MissingPackageError(
                f"the {command} command needs the Python package '{package.module}' for {package.purpose}, which is "
                f"not installed in this Python; install it with: {_pip_command(package)} (nothing was run)"
            )
        say(f"installing {package.requirement} into Slicer's Python with slicer.util.pip_install: the {command} "
            f"command needs it for {package.purpose} (once; later runs find it installed)")
        try:
            install(package.requirement)
        except Exception as exc:  # noqa: BLE001  (pip's failure, e.g. no network: one line, nothing run)
            raise MissingPackageError(
                f"installing '{package.requirement}' for the {command} command failed ({type(exc).__name__}: {exc}); "
                f"install it with: {_pip_command(package)} (nothing was run)"
            ) from None
        importlib.invalidate_caches()
        if not _importable(package.module):
            raise MissingPackageError(
                f"'{package.requirement}' was installed but '{package.module}' still does not import; restart and run "
                f"the {command} command again (nothing was run)"
            )
        installed.append(package.requirement)
    return installed


def missing_module_message(exc: ModuleNotFoundError, command: Optional[str]) -> str:
    """One line for a package that does not import (``exc.name``): PyTorch (the PyTorch extension in Slicer),
    or any other package with its ``pip`` command."""
    module = (exc.name or str(exc)).split(".")[0]
    what = f"the {command} command" if command else "this command"
    if module == "torch":
        return (f"PyTorch is not installed in this Python ({sys.executable}): {what} needs it. In Slicer, install the "
                f"PyTorch extension (Extensions Manager) and let its 'PyTorch Utils' module install PyTorch, or run "
                f"{sys.executable} -m pip install torch; then run again")
    return (f"{what} needs the Python package '{module}', which is not installed in this Python ({sys.executable}): "
            f"{sys.executable} -m pip install {module}")
