"""Register a moving image to a fixed image with one or all four variants and write every result.

The images may have different grids, spacings and orientations (oblique included); they must
overlap in physical space. Single-slice images use the 2D models, volumes the 3D models.

Writes into --out DIR (refused if DIR exists, is not empty and was not made by this command):

  DIR/<variant>/warped.nii.gz, warped_labels.nii.gz (with labels), jacobian.nii.gz,
      affine.tfm (ITK affine, LPS, fixed -> moving), displacement.nii.gz (ITK displacement
      field, total, LPS), transform.h5 (ITK composite: affine then deformable field),
      glyphs.png, jacobian.png, checkerboard.png, result.npz (with --save-npz)
  DIR/metrics.csv, DIR/metrics.json   one record per variant
  DIR/scene/DeepRegAblation-results.mrml   a Slicer scene with every result (and its data files; not with --no-scene)

With --npz-only (the Slicer panel's background run): DIR/<variant>/result.npz and the metrics files only.

Models: --model CKPT (one variant) or a directory of <variant>.pt files; without --model the
weights shipped in DeepRegAblation/Resources/Models/<2|3>d/<variant>.pt, or an UNTRAINED
network (with a warning) when none are shipped.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from DeepRegAblationLib.options import ALL_VARIANTS, DEVICE_CHOICES, VARIANT_IDS

from ..register_job import run_register
from .arguments import INIT_ALIGN_CHOICES, refine_type

# PyTorch's OpenMP threads wait passively (before torch is imported): on a busy machine (the Slicer
# background run shares it) spinning threads made the small operations of the refinement many times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--fixed", required=True, type=Path, help="fixed image (NIfTI / NRRD)")
    parser.add_argument("--moving", required=True, type=Path, help="moving image (NIfTI / NRRD)")
    parser.add_argument("--fixed-labels", type=Path, default=None, help="label map of the fixed image (Dice, HD95)")
    parser.add_argument("--moving-labels", type=Path, default=None, help="label map of the moving image (warped too)")
    parser.add_argument(
        "--variant", default="all", choices=VARIANT_IDS + (ALL_VARIANTS,), help="variant to run (default: all four)"
    )
    parser.add_argument(
        "--model", type=Path, default=None,
        help="checkpoint (.pt) of the variant, or a directory holding <variant>.pt files (required form for --variant all)",
    )
    parser.add_argument(
        "--refine", nargs="?", const="recommended", default=0, type=refine_type, metavar="SCHEDULE",
        help="instance optimisation on this pair after the network: --refine alone = recommended (fast: affine at "
             "8 and 4 mm, deformable at 8, 4 and 2 mm), --refine thorough (down to 1 mm / the image resolution), "
             "--refine N (N iterations per level of the recommended levels), off or 0 (default)",
    )
    parser.add_argument(
        "--init-align", default="auto", choices=INIT_ALIGN_CHOICES,
        help="initial alignment: auto (default: what the model was trained with; centres of mass for the shipped "
             "3D models), none (physical space as is) or com (translate the moving image's intensity centre of "
             "mass onto the fixed image's first, for heads of different subjects / scanners)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="default: CUDA if available")
    parser.add_argument("--save-npz", action="store_true", help="also write DIR/<variant>/result.npz (for the Slicer GUI)")
    parser.add_argument("--no-scene", action="store_true",
                        help="do not write DIR/scene/ (the Slicer panel's background run builds its nodes from result.npz)")
    parser.add_argument("--npz-only", action="store_true",
                        help="write only DIR/<variant>/result.npz and the metrics files, what the Slicer panel "
                             "reads back: no NIfTI, ITK, PNG or scene files, no off-screen rendering")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")


def run(args: argparse.Namespace) -> int:
    out = run_register(args)
    print(f"results: {out}")
    return 0
