"""Benchmark the four variants: speed and peak memory beside voxelmorph's VxmPairwise, and
registration quality beside classical registration on real IXI pairs.

--train: training steps per second and peak memory (2D 160x192 and 3D 128^3 by default).
--infer: model-only and full-pipeline (read to written) time and peak memory (2D 160x192, 3D
128^3 and 3D 160x192x224). Each case runs in its own process.
--quality: Dice, HD95, folding % and runtime of the variants (shipped 3D models, or untrained
networks where none is shipped), with and without instance refinement (--refine recommended
thorough@affine_enhanced), beside no registration, classical registration (--classical: ANTs SyN
through antspyx when installed, else SimpleITK affine + diffeomorphic demons) and the optional
peers elastix and FireANTs (--peers), either on the validation pairs of each 3D dataset of a saved
split (--datasets all --split, --pairs, --jobs; a section per dataset with the ratios to SyN,
elastix and FireANTs) or on ordered pairs of one folder of IXI heads (--ixi, --pairs).

Writes one Markdown report with a section per part (--report, default docs/benchmarks.md), the
speed rows as JSON beside it (<report>.json) and the quality rows per pair (<report>.quality.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# PyTorch's OpenMP threads wait passively: on a shared, busy machine spinning threads made small tensor
# operations many times slower (set before torch is imported; an explicit setting wins)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from DeepRegAblationTrainingLib import bench  # noqa: E402

DEFAULT_REPORT = Path("docs/benchmarks.md")
_SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # beside the repository
DEFAULT_IXI = Path(os.environ.get("DEEPREG_SHARED_DATA", _SHARED_DATA)) / "ixi-t1-2mm"
DEFAULT_SPLIT = Path(__file__).resolve().parents[3] / "DeepRegAblation" / "Resources" / "Models" / "3d" / "split.json"
DATASETS = ("miccai2012", "lpba40", "ibsr18", "ixi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--train", action="store_true", help="training throughput")
    parser.add_argument("--infer", action="store_true", help="inference time (model only and full pipeline)")
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated sizes from {sorted(bench.SIZES)} (default: 2d,3d128 for --train; all for --infer)")
    parser.add_argument("--variants", default=",".join(bench.VARIANT_IDS),
                        help="comma-separated variant ids; with --quality also NAME=CHECKPOINT (a trained checkpoint "
                             "as its own row, e.g. the runs of a sweep)")
    parser.add_argument("--no-reference", action="store_true", help="skip voxelmorph's VxmPairwise")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per case (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case after one warm-up (default 3)")
    parser.add_argument("--quality", action="store_true",
                        help="registration quality on real pairs beside classical registration and the peers")
    parser.add_argument("--ixi", type=Path, default=DEFAULT_IXI,
                        help=f"folder of IXI heads with *_DLMUSE label partners (default {DEFAULT_IXI}, "
                             "or $DEEPREG_SHARED_DATA/ixi-t1-2mm)")
    parser.add_argument("--classical", default="auto", choices=("auto", "ants", "sitk", "all", "syn", "affine"),
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
    parser.add_argument("--init-align", nargs="+", default=["auto"], choices=("auto", "none", "com"),
                        help="quality: initial alignment(s) to run our variants with (register's --init-align; "
                             "default auto: what each model was trained with); com also adds a row for the centre-of-mass translation alone")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="Markdown report to write")


def _sizes(arg, default):
    sizes = default if arg is None else [s.strip() for s in arg.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in bench.SIZES]
    if unknown:
        raise ValueError(f"--sizes: unknown size(s) {unknown}; choose from {sorted(bench.SIZES)}")
    return sizes


def _peer_methods(args: argparse.Namespace) -> tuple:
    """``(peer method ids that can run, report lines for those skipped)``."""
    from DeepRegAblationTrainingLib import quality

    if args.peers is None:
        args.peers = list(quality.PEER_METHODS) if args.datasets else []
    unknown = [p for p in args.peers if p.split("@")[0] not in quality.PEER_METHODS]
    if unknown:
        raise ValueError(f"--peers: unknown peer(s) {unknown}; choose from {list(quality.PEER_METHODS)}")
    methods, notes = [], []
    for entry in args.peers:
        peer = entry.split("@")[0]
        status = quality.peer_status(peer)
        if status is None:
            methods.append(entry)
        else:
            notes.append(f"Note: {status}.")
    return methods, notes


def _versions(methods) -> str:
    import SimpleITK as sitk

    parts = [f"SimpleITK {sitk.Version_VersionString()}"]
    for method, module in (("ants", "ants"), ("elastix", "itk"), ("fireants", "fireants")):
        if any(m.startswith(method) for m in methods):
            try:
                from importlib.metadata import version

                package = {"ants": "antspyx", "itk": "itk-elastix", "fireants": "fireants"}[module]
                parts.append(f"{package} {version(package)}")
            except Exception:  # noqa: BLE001 (a version is only informative)
                parts.append(f"{module} (version unknown)")
    return ", ".join(parts)


def _load_average() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _datasets_section(args: argparse.Namespace, variants) -> tuple:
    """``bench --quality --datasets``: the validation pairs of each dataset; returns ``(markdown, rows)``."""
    from DeepRegAblationTrainingLib import quality

    names = list(DATASETS) if args.datasets.strip() == "all" else [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        raise ValueError(f"--datasets: unknown dataset(s) {unknown}; choose from {list(DATASETS)} or 'all'")
    if not args.split.is_file():
        raise FileNotFoundError(f"--split: split file not found: {args.split}")
    peers, notes = _peer_methods(args)
    methods = quality.classical_methods(args.classical) + peers
    start = time.perf_counter()
    jobs = max(1, min(int(args.jobs), len(names)))
    if jobs == 1:
        results = [_dataset_rows(args, variants, methods, name) for name in names]
    else:  # datasets in parallel processes; each dataset's methods still run one after the other
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_dataset_rows, *zip(*[(args, variants, methods, name) for name in names])))
    rows, loads = [], []
    for name, (dataset_rows, note, load) in zip(names, results):
        rows += dataset_rows
        notes += [note] if note else []
        loads.append(f"{name}: {load}")
    setup = (f"Setup: {args.threads} CPU thread(s) for torch, ITK and the peers (the refinement itself runs on one, "
             f"see `inference.REFINE_THREADS`), our models on {args.device} (initial alignment: "
             f"{' and '.join(args.init_align)}); {_versions(methods)}; {jobs} dataset(s) at a time; wall time of this "
             f"part {time.perf_counter() - start:.0f} s. The 2-core machine is shared with other work: load average "
             f"(1, 5, 15 min) before and after each dataset: {'; '.join(loads)}. Times from one dataset's run are "
             f"comparable with each other (same pairs, same load), not with other runs.")
    return quality.markdown_quality_datasets(rows, setup, notes), rows


def _dataset_rows(args: argparse.Namespace, variants, methods, name: str) -> tuple:
    """The quality rows of one dataset's validation pairs -> ``(rows, note or None, load averages text)``."""
    from DeepRegAblationTrainingLib import data, quality

    quality.set_threads(args.threads)  # before antspyx first runs
    start, before = time.perf_counter(), _load_average()
    subjects = data.find_dataset_subjects(name, args.data_root / data.DATASET_FOLDERS[name])
    val_ids = _validation_ids(args.split)
    val = [s for s in subjects if s.id in val_ids and s.labels is not None]
    if len(val) < 2:
        return [], f"Note: {name} skipped: fewer than 2 labelled validation subjects in {args.split}.", before
    pairs = quality.dataset_pairs(val, args.pairs)
    schedules = quality.refine_schedules(args.refine)
    # "fireants@ixi+lpba40": that peer on those datasets only
    methods = [m.split("@")[0] for m in methods if "@" not in m or name in m.split("@", 1)[1].split("+")]
    print(f"quality {name}: {len(pairs)} pairs x ({len(methods)} methods + {len(variants)} variants x "
          f"{len(schedules)} schedule(s) x {len(args.init_align)} alignment(s))", flush=True)
    rows = quality.quality_table(
        pairs, variants, methods, device=args.device, threads=args.threads, refine=schedules,
        initial_alignments=args.init_align, dataset=name,
        progress=lambda message: print(f"  {name}: {message} [{time.perf_counter() - start:.0f} s]", flush=True),
    )
    return rows, None, f"{before} -> {_load_average()}"


def _validation_ids(path: Path) -> set:
    """The subject ids of a split file's ``val`` list (bare ids or subject records)."""
    try:
        payload = json.loads(Path(path).read_text())
        entries = payload["val"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--split {path}: not a split file with a 'val' list ({exc})") from None
    return {str(e["id"]) if isinstance(e, dict) else str(e) for e in entries}


def _quality_section(args: argparse.Namespace, variants) -> tuple:
    """Run the quality part; returns ``(markdown, rows)``."""
    from DeepRegAblationTrainingLib import data, quality

    if args.datasets:
        return _datasets_section(args, variants)
    if not args.ixi.is_dir():
        raise FileNotFoundError(f"--ixi: folder of IXI heads not found: {args.ixi}")
    quality.set_threads(args.threads)  # before antspyx first runs
    peers, notes = _peer_methods(args)
    methods = quality.classical_methods(args.classical) + peers
    subjects = [s for s in data.find_generic_subjects(args.ixi) if s.labels is not None]
    if len(subjects) < 2:
        raise ValueError(f"--ixi: need at least 2 images with label partners in {args.ixi}, found {len(subjects)}")
    pairs = quality.dataset_pairs(subjects, args.pairs)
    per_variant = len(args.init_align) * len(quality.refine_schedules(args.refine))
    print(f"quality: {len(pairs)} pairs x {len(methods) + len(variants) * per_variant} methods", flush=True)
    start = time.perf_counter()
    rows = quality.quality_table(
        pairs, variants, methods, device=args.device, threads=args.threads, refine=args.refine,
        initial_alignments=args.init_align,
        progress=lambda message: print(f"  {message} [{time.perf_counter() - start:.0f} s]", flush=True),
    )
    ants_note = ""
    if any(m.startswith("ants") for m in methods):
        import ants

        ants_note = f", antspyx {getattr(ants, '__version__', '?')}"
    import SimpleITK as sitk

    setup = (f"Setup: {args.threads} CPU thread(s) for torch and ITK, our models on {args.device} "
             f"(initial alignment: {' and '.join({'auto': 'as each model was trained (auto)', 'none': 'none (physical space as is)', 'com': 'centres of mass'}[a] for a in args.init_align)}"
             f"{f'; refinement in the refined rows: {args.refine}' if args.refine else ''}); "
             f"SimpleITK {sitk.Version_VersionString()}{ants_note}; wall time of this part "
             f"{time.perf_counter() - start:.0f} s.")
    description = (f"{len(subjects)} real IXI T1 heads at 2 mm with DLMUSE labels in `{args.ixi}` "
                   f"({', '.join(s.id for s in subjects)})")
    text = quality.markdown_quality(rows, description, setup)
    return text + ("\n" + "\n".join(notes) + "\n" if notes else ""), rows


def run(args: argparse.Namespace) -> int:
    if not (args.train or args.infer or args.quality):
        raise ValueError("choose --train, --infer and/or --quality")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    checkpoints = [v for v in variants if "=" in v]
    if checkpoints and (args.train or args.infer):
        raise ValueError(f"--variants: NAME=CHECKPOINT entries ({', '.join(checkpoints)}) are for --quality only")
    unknown = [v for v in variants if "=" not in v and v not in bench.VARIANT_IDS]
    if unknown:
        raise ValueError(f"--variants: unknown id(s) {unknown}; choose from {list(bench.VARIANT_IDS)} "
                         f"(or NAME=CHECKPOINT with --quality)")
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
    quality_text, quality_rows = ("", [])
    if args.quality:
        quality_text, quality_rows = _quality_section(args, variants)
    command = "deepreg-ablation bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    parts = [
        "# Benchmarks", "",
        f"Produced by `{command.strip()}` on {time.strftime('%Y-%m-%d')}.", "",
        f"Machine: {bench.machine_description()}.", "",
    ]
    if cases:
        parts += [bench.__doc__.strip(), "", bench.markdown_tables(rows)]
    if args.quality:
        parts += [quality_text]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(parts) + "\n")
    if cases:
        args.report.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        print(bench.markdown_tables(rows))
    if args.quality:
        finite = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in quality_rows]
        args.report.with_suffix(".quality.json").write_text(json.dumps(finite, indent=1))
        print(quality_text)
    print(f"wrote {args.report}")
    return 1 if any("error" in r for r in rows) else 0
