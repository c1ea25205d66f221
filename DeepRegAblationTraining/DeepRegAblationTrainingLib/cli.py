"""`deepreg-ablation`: the one command line of the project (also run by the Slicer launchers).

Each command lives in ``DeepRegAblationTrainingLib.commands.<name>`` with
``add_arguments(parser)`` and ``run(args) -> int``. Bad input ends with ``error: <message>``
on stderr and exit status 2, never a Python trace.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMANDS = (
    ("train", "train one variant (resumable checkpoints, logs)"),
    ("evaluate", "evaluate checkpoints on the fixed validation pairs (per-pair CSV)"),
    ("ablation", "train and evaluate the four variants and write the ablation report"),
    ("sweep", "regulariser type / weight sweep with accuracy-versus-folding curves"),
    ("register", "register a moving image to a fixed image with one or all variants"),
    ("bench", "speed and memory benchmark against voxelmorph's VxmPairwise"),
    ("demo", "the main job: all variants on the MNI152 template with a known deformation"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepreg-ablation",
        description="Learning-based deformable registration of brain MRI: train, evaluate, compare "
        "and apply the four DeepRegAblation variants (baseline, regloss, affine_basic, affine_enhanced).",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    for name, help_text in COMMANDS:
        module = importlib.import_module(f"DeepRegAblationTrainingLib.commands.{name}")
        cmd = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
