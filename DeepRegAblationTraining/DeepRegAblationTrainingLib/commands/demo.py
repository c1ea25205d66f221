"""The main job on the embedded default: register a synthetically deformed MNI152 template.

The fixed image is the MNI152 2009 T1 template that the nilearn wheel ships in its package data
(read by path, no download), resampled to 2 mm, with grey/white-matter labels from the tissue
maps shipped beside it. The moving image is the template deformed by a known random smooth
field with a small rotation and translation, then given other intensities (gamma and
brightness). All four variants register the pair, and so does the last one again with
instance refinement (the recommended schedule by default); the table compares them, including the error against the known
displacement (mean and 95th percentile endpoint error in mm inside the brain).

Writes into --out DIR everything `deepreg-ablation register` writes (per variant images, ITK
transforms, PNG glyph / Jacobian / checkerboard figures; metrics.csv/json; a Slicer scene),
plus DIR/inputs/ (fixed, moving, labels and the known displacement as an ITK field).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List

from DeepRegAblationLib.options import DEVICE_CHOICES

from ..experiments.demo import DEMO_SPACING_MM, run_demo
from ..output_lock import output_lock
from .arguments import refine_type


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default demo_out)")
    parser.add_argument("--refine", nargs="?", const="recommended", default="recommended", type=refine_type,
                        metavar="SCHEDULE",
                        help="instance refinement of the extra refined run: recommended (default), thorough, "
                             "N iterations per level, or off / 0 to skip it")
    parser.add_argument("--max-disp-mm", type=float, default=8.0, help="largest known non-rigid displacement (mm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic deformation")
    parser.add_argument("--model", type=Path, default=None,
                        help="directory of <variant>.pt 3D checkpoints (default: the shipped models)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--spacing-mm", type=float, default=DEMO_SPACING_MM,
                        help="grid spacing of the pair (default 2 mm, the shipped 3D models' spacing)")


def required_packages(args: argparse.Namespace) -> List[str]:
    """The MNI152 template ships inside nilearn (checked, or installed in Slicer, by ``cli.main`` before the demo)."""
    return ["nilearn"]


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    with output_lock(args.out, "deepreg-ablation demo"):  # one run per output folder
        errors = run_demo(args.out, refine=args.refine, max_disp_mm=args.max_disp_mm, seed=args.seed,
                          model=args.model, device=args.device, spacing_mm=args.spacing_mm)
    print(f"\nbefore registration (identity): mean endpoint error {errors['identity']['epe_mean_mm']:.2f} mm, "
          f"p95 {errors['identity']['epe_p95_mm']:.2f} mm")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {args.out}")
    return 0
