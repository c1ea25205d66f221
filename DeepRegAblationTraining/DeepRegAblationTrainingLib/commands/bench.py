"""Benchmark the four variants: speed and peak memory beside voxelmorph's VxmPairwise, and
registration quality beside classical registration on real IXI pairs.

--train: training steps per second and peak memory (2D 160x192 and 3D 128^3 by default).
--infer: model-only and full-pipeline (read to written) time and peak memory (2D 160x192, 3D
128^3 and 3D 160x192x224). Each case runs in its own process.
--refinement: refinement from the network's output against refinement from the centre of mass alone,
beside ANTs SyN, per dataset (network alone, both refinements, the model-grid ceiling, Dice against time).
--quality: Dice, HD95, folding % and runtime of the variants (shipped 3D models, or untrained
networks where none is shipped), with and without instance refinement (--refine recommended
thorough@affine_enhanced), beside no registration, classical registration (--classical: ANTs SyN
through antspyx when installed, else SimpleITK affine + diffeomorphic demons) and the optional
peers elastix and FireANTs (--peers), either on the validation pairs of each 3D dataset of a saved
split (--datasets all --split, --pairs, --jobs; a section per dataset with the ratios to SyN,
elastix and FireANTs) or on ordered pairs of one folder of IXI heads (--ixi, --pairs).

--memory: peak memory (RSS) per voxel of the register command at three resolutions of one brain
(--memory-sizes 1mm,0.7mm,0.5mm: 9.6 M, 28 M and 77 M voxels), one variant or all, with and without
label maps and refinement (--memory-cases), each case in its own process (the Slicer scene only with
--memory-scene); the inputs are written once into --memory-cache.

Writes one Markdown report with a section per part (--report, default docs/benchmarks.md), the
speed rows as JSON beside it (<report>.json), the quality rows per pair (<report>.quality.json) and
the memory rows (<report>.memory.json).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List

# PyTorch's OpenMP threads wait passively: on a shared, busy machine spinning threads made small tensor
# operations many times slower (set before torch is imported; an explicit setting wins)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from DeepRegAblationLib.options import VARIANT_IDS, DeviceChoice  # noqa: E402

from ..benchmarks import memory, speed  # noqa: E402
from ..benchmarks.methods import CLASSICAL_CHOICES  # noqa: E402
from ..benchmarks.suite import DEFAULT_IXI, DEFAULT_REPORT, DEFAULT_SPLIT, run_bench  # noqa: E402
from .arguments import INIT_ALIGN_CHOICES  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--train", action="store_true", help="training throughput")
    parser.add_argument("--infer", action="store_true", help="inference time (model only and full pipeline)")
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated sizes from {sorted(speed.SIZES)} (default: 2d,3d128 for --train; all for --infer)")
    parser.add_argument("--variants", default=",".join(VARIANT_IDS),
                        help="comma-separated variant ids; with --quality or --refinement also NAME=CHECKPOINT (a "
                             "trained checkpoint as its own row, e.g. the runs of a sweep; --refinement uses the "
                             "first entry)")
    parser.add_argument("--no-reference", action="store_true", help="skip voxelmorph's VxmPairwise")
    parser.add_argument("--device", default="cpu", choices=(DeviceChoice.cpu.value, DeviceChoice.cuda.value))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per case (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case after one warm-up (default 3)")
    parser.add_argument("--quality", action="store_true",
                        help="registration quality on real pairs beside classical registration and the peers")
    parser.add_argument("--ixi", type=Path, default=DEFAULT_IXI,
                        help=f"folder of IXI heads with *_DLMUSE label partners (default {DEFAULT_IXI}, "
                             "or $DEEPREG_SHARED_DATA/ixi-t1-2mm)")
    parser.add_argument("--classical", default="auto", choices=CLASSICAL_CHOICES,
                        help="classical method: ANTs (antspyx) when importable, else SimpleITK (auto); all: both; "
                             "syn: ANTs SyN alone; affine: ANTs affine alone")
    parser.add_argument("--pairs", default="cycle",
                        help="quality pairs: 'cycle' (each subject fixed once, the next moving), 'all' "
                             "(every ordered pair) or N (the first N of the cycle)")
    parser.add_argument("--refine", nargs="*", default=[], metavar="SCHEDULE",
                        help="quality: also run each variant followed by instance refinement with each schedule "
                             "(recommended, thorough, or N iterations per level); default: none")
    parser.add_argument("--datasets", default=None,
                        help="quality per dataset: comma-separated from miccai2012, lpba40, ibsr18, ixi (or 'all'), "
                             "the validation subjects of --split in each, pairs from --pairs (replaces --ixi)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_IXI.parent,
                        help=f"folder holding the datasets' folders (default {DEFAULT_IXI.parent})")
    parser.add_argument("--jobs", type=int, default=1,
                        help="quality with --datasets: datasets run in this many processes at a time (default 1)")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT,
                        help=f"split file whose validation subjects are used with --datasets (default {DEFAULT_SPLIT})")
    parser.add_argument("--peers", nargs="*", default=None, metavar="PEER",
                        help="quality: optional peers to run beside ANTs (elastix, fireants; PEER@DATASET[+DATASET] "
                             "on those datasets only; default both with --datasets, none with --ixi; each skipped "
                             "with a line in the report when its package is missing)")
    parser.add_argument("--init-align", nargs="+", default=["auto"], choices=INIT_ALIGN_CHOICES,
                        help="quality: initial alignment(s) to run our variants with (register's --init-align; "
                             "default auto: what each model was trained with); com also adds a row for the centre-of-mass translation alone")
    parser.add_argument("--refinement", action="store_true",
                        help="refinement from the network against refinement from the centre of mass alone, beside "
                             "ANTs SyN, on the validation pairs of --datasets (default all): the network alone, both "
                             "refinements, the model-grid ceiling, Dice against time (--budgets); the first of "
                             "--variants (a variant id or NAME=CHECKPOINT)")
    parser.add_argument("--budgets", default="1,2,5,10",
                        help="with --refinement: iterations per level of the Dice-against-time points (default 1,2,5,10)")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory per voxel of the register command at several resolutions")
    parser.add_argument("--memory-sizes", default="1mm,0.7mm",
                        help=f"comma-separated sizes from {list(memory.SIZES)} (default 1mm,0.7mm; 0.5mm is "
                             "400 x 480 x 400 voxels and takes minutes)")
    parser.add_argument("--memory-cases", default=",".join(memory.CASE_OPTIONS),
                        help=f"comma-separated cases from {list(memory.CASE_OPTIONS)} (default: all)")
    parser.add_argument("--memory-cache", type=Path, default=memory.DEFAULT_CACHE,
                        help=f"folder for the benchmark's input images (default {memory.DEFAULT_CACHE})")
    parser.add_argument("--memory-scene", action="store_true", help="memory cases also write the Slicer scene")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="Markdown report to write")


def required_packages(args: argparse.Namespace) -> List[str]:
    """voxelmorph for the reference rows of the speed cases (checked, or installed in Slicer, by ``cli.main``)."""
    return ["voxelmorph"] if (args.train or args.infer) and not args.no_reference else []


def run(args: argparse.Namespace) -> int:
    command = "deepreg-ablation bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    rows, quality_text = run_bench(args, command)
    if rows:
        print(speed.markdown_tables(rows))
    if args.quality or args.refinement or args.memory:
        print(quality_text)
    print(f"wrote {args.report}")
    return 1 if any("error" in r for r in rows) else 0
