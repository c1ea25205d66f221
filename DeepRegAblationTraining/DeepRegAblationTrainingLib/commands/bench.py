"""Benchmark speed and peak memory of the four variants beside voxelmorph's VxmPairwise.

--train: training steps per second and peak memory (2D 160x192 and 3D 128^3 by default).
--infer: model-only and full-pipeline (read to written) time and peak memory (2D 160x192, 3D
128^3 and 3D 160x192x224). Each case runs in its own process. Writes a Markdown report
(--report, default docs/benchmarks.md) and the raw rows as JSON beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from DeepRegAblationTrainingLib import bench

DEFAULT_REPORT = Path("docs/benchmarks.md")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--train", action="store_true", help="training throughput")
    parser.add_argument("--infer", action="store_true", help="inference time (model only and full pipeline)")
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated sizes from {sorted(bench.SIZES)} (default: 2d,3d128 for --train; all for --infer)")
    parser.add_argument("--variants", default=",".join(bench.VARIANT_IDS), help="comma-separated variant ids")
    parser.add_argument("--no-reference", action="store_true", help="skip voxelmorph's VxmPairwise")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per case (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case after one warm-up (default 3)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="Markdown report to write")


def _sizes(arg, default):
    sizes = default if arg is None else [s.strip() for s in arg.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in bench.SIZES]
    if unknown:
        raise ValueError(f"--sizes: unknown size(s) {unknown}; choose from {sorted(bench.SIZES)}")
    return sizes


def run(args: argparse.Namespace) -> int:
    if not (args.train or args.infer):
        raise ValueError("choose --train and/or --infer")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in bench.VARIANT_IDS]
    if unknown:
        raise ValueError(f"--variants: unknown id(s) {unknown}; choose from {list(bench.VARIANT_IDS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine")
    cases = []
    if args.train:
        cases += bench.plan_cases(["train"], _sizes(args.sizes, ["2d", "3d128"]), variants, args.device,
                                  args.threads, args.repeats, not args.no_reference)
    if args.infer:
        sizes = _sizes(args.sizes, ["2d", "3d128", "3d160"])
        cases += bench.plan_cases(["model"], sizes, variants, args.device, args.threads, args.repeats,
                                  not args.no_reference)
        cases += bench.plan_cases(["pipeline"], sizes, variants, args.device, args.threads, args.repeats)
    rows = []
    for i, case in enumerate(cases, 1):
        start = time.perf_counter()
        row = bench.measure(case)
        rows.append(row)
        status = row.get("error") or f"{row.get('steps_per_s') or row.get('seconds'):.3f}"
        print(f"[{i}/{len(cases)}] {case['kind']:8s} {case['size']:6s} {case['model']:16s} {status} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    command = "deepreg-ablation bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    text = "\n".join([
        "# Benchmarks", "",
        f"Produced by `{command.strip()}` on {time.strftime('%Y-%m-%d')}.", "",
        f"Machine: {bench.machine_description()}.", "",
        bench.__doc__.strip(), "",
        bench.markdown_tables(rows),
    ])
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text + "\n")
    args.report.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(bench.markdown_tables(rows))
    print(f"wrote {args.report}")
    return 1 if any("error" in r for r in rows) else 0
