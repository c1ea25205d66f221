"""`deepreg-ablation`: the one command line of the project (also run by the Slicer launchers).

Each command lives in ``DeepRegAblationTrainingLib.commands.<name>`` with
``add_arguments(parser)`` and ``run(args) -> int``. Only the command being run is imported
(``deepreg-ablation --help`` imports none), so one command's dependencies (PyTorch, a
Unix-only module) never stop another command or the help from working. Bad input ends with
``error: <message>`` on stderr and exit status 2, never a Python trace; so does a missing package
(PyTorch above all: ``optional_packages.missing_module_message``). A command module may list the
optional packages its arguments need (``required_packages(args)``): they are checked, or installed
inside Slicer, before the command starts (``optional_packages.ensure_packages``). Python warnings are
printed as one line ``warning: <message>`` (the Slicer panel shows both in its status log).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Callable, List, Optional, Sequence

from DeepRegAblationLib.progress import error_line, warning_line

from .optional_packages import ensure_packages, missing_module_message

__all__ = ["COMMANDS", "command_in", "build_parser", "main"]

COMMANDS = (
    ("train", "train one variant (resumable checkpoints, logs)"),
    ("teacher", "teacher fields for distillation: the refinement of training pairs, cached (train --distill)"),
    ("pretrain", "pretrain the affine stage on random affines of real scans (for the affine variants)"),
    ("evaluate", "evaluate checkpoints on the fixed validation pairs (per-pair CSV)"),
    ("ablation", "train and evaluate the four variants and write the ablation report"),
    ("sweep", "regulariser type / weight sweep with accuracy-versus-folding curves"),
    ("register", "register a moving image to a fixed image with one or all variants"),
    ("bench", "speed and memory benchmark against voxelmorph's VxmPairwise"),
    ("demo", "the main job: all variants on the MNI152 template with a known deformation"),
)


def command_in(argv: Sequence[str]) -> Optional[str]:
    """The command named in ``argv`` (its first argument that is not an option), or ``None``."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(commands: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``commands`` (default: every command).

    The other commands are listed (name and help) without importing their modules.
    """
    parser = argparse.ArgumentParser(
        prog="deepreg-ablation",
        description="Learning-based deformable registration of brain MRI: train, evaluate, compare "
        "and apply the four DeepRegAblation variants (baseline, regloss, affine_basic, affine_enhanced).",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for name, help_text in COMMANDS:
        if commands is not None and name not in commands:
            sub.add_parser(name, help=help_text, description=help_text)
            continue
        module = importlib.import_module(f"DeepRegAblationTrainingLib.commands.{name}")
        cmd = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run, _packages=getattr(module, "required_packages", _no_packages))
    return parser


def _no_packages(args: argparse.Namespace) -> List[str]:
    return []


def main(argv: Optional[List[str]] = None, installer: Optional[Callable[[str], None]] = None) -> int:
    """Run the command of ``argv`` (default ``sys.argv[1:]``); its exit status (2 with an ``error:`` line on bad input).

    ``installer(requirement)`` installs a missing optional package before the command starts (the Slicer
    launcher passes ``slicer.util.pip_install``); without it a missing one is an ``error:`` line.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_in(argv)
    try:
        parser = build_parser([command] if command in dict(COMMANDS) else [])
    except ModuleNotFoundError as exc:  # the command's module imports PyTorch (or another missing package)
        print(error_line(missing_module_message(exc, command)), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores the usual display afterwards
            warnings.showwarning = _show_warning
            ensure_packages(args._packages(args), args.command, installer)  # before step 1: never after hours of training
            return int(args._run(args) or 0)
    except ModuleNotFoundError as exc:
        print(error_line(missing_module_message(exc, args.command)), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one ``warning: <message>`` line on stderr (no file, line or category)."""
    print(warning_line(str(message)), file=sys.stderr if file is None else file, flush=True)


if __name__ == "__main__":
    sys.exit(main())
