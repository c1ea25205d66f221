"""Argument helpers shared by the training commands (``train``, ``pretrain``).

(Kept apart from ``commands/arguments.py``, which holds the other commands' helpers; the
integration step of issue 22 may merge the two.)
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

__all__ = ["add_keypoint_arguments", "keypoint_arch"]


# --------------------------------------------------------------------------- training commands (relayout-train)
def add_keypoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The keypoint affine stage's options (the same in ``pretrain`` and ``train --init-from``)."""
    parser.add_argument("--affine-keypoints", type=int, default=None, metavar="K",
                        help="keypoints per image of the affine stage (default 32)")
    parser.add_argument("--affine-keypoint-strides", type=int, default=None, metavar="N",
                        help="stride-2 layers before the keypoint heat maps: one cell = 2^N voxels (default 3)")


def keypoint_arch(args: argparse.Namespace) -> Dict[str, Any]:
    """``networks.build_model`` overrides from :func:`add_keypoint_arguments`' options (only those given)."""
    arch: Dict[str, Any] = {}
    if args.affine_keypoints is not None:
        arch["affine_keypoints"] = int(args.affine_keypoints)
    if args.affine_keypoint_strides is not None:
        arch["affine_keypoint_strides"] = int(args.affine_keypoint_strides)
    return arch
