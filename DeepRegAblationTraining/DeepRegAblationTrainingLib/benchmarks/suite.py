"""The parts of the ``bench`` command: the speed cases, the quality sections, and the report that holds them.

- speed (``--train`` / ``--infer``): :mod:`.speed`'s cases, each in its own process (:func:`plan_speed_cases`,
  :func:`measure_cases`);
- quality (``--quality``): :mod:`.quality`'s table on one folder of IXI heads, or on the validation pairs
  of each 3D dataset of a saved split, with a Markdown section from ``reports.quality``
  (:func:`quality_section`);
- :func:`write_report`: one Markdown report (a section per part), the speed rows as JSON beside it
  (``<report>.json``) and the quality rows per pair (``<report>.quality.json``).

Nothing heavy is imported at module level (``bench --help`` works without PyTorch).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from DeepRegAblationLib.options import VARIANT_IDS

from . import speed

__all__ = [
    "DEFAULT_REPORT", "DEFAULT_IXI", "DEFAULT_SPLIT", "DATASETS", "parse_variants", "plan_speed_cases", "measure_cases",
    "validation_ids", "quality_section", "write_report", "run_bench",
]

DEFAULT_REPORT = Path("docs/benchmarks.md")
_SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # beside the repository
DEFAULT_IXI = Path(os.environ.get("DEEPREG_SHARED_DATA", _SHARED_DATA)) / "ixi-t1-2mm"
DEFAULT_SPLIT = Path(__file__).resolve().parents[3] / "DeepRegAblation" / "Resources" / "Models" / "3d" / "split.json"
DATASETS = ("miccai2012", "lpba40", "ibsr18", "ixi")


def parse_variants(args: argparse.Namespace) -> List[str]:
    """``--variants`` -> its entries (variant ids; ``NAME=CHECKPOINT`` with ``--quality`` or ``--refinement`` only),
    checked with the other options (a part chosen, CUDA present for ``--device cuda``)."""
    if not (args.train or args.infer or args.quality or getattr(args, "refinement", False)
            or getattr(args, "memory", False)):
        raise ValueError("choose --train, --infer, --quality, --refinement and/or --memory")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    checkpoints = [v for v in variants if "=" in v]
    if checkpoints and (args.train or args.infer):
        raise ValueError(f"--variants: NAME=CHECKPOINT entries ({', '.join(checkpoints)}) are for --quality and "
                         f"--refinement only")
    unknown = [v for v in variants if "=" not in v and v not in VARIANT_IDS]
    if unknown:
        raise ValueError(f"--variants: unknown id(s) {unknown}; choose from {list(VARIANT_IDS)} "
                         f"(or NAME=CHECKPOINT with --quality or --refinement)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine")
    return variants


def _sizes(arg: Optional[str], default: Sequence[str]) -> List[str]:
    """``--sizes`` (comma-separated keys of ``speed.SIZES``) or ``default``."""
    sizes = default if arg is None else [s.strip() for s in arg.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in speed.SIZES]
    if unknown:
        raise ValueError(f"--sizes: unknown size(s) {unknown}; choose from {sorted(speed.SIZES)}")
    return sizes


def plan_speed_cases(args: argparse.Namespace, variants: Sequence[str]) -> List[dict]:
    """The speed cases of ``--train`` (2D and 3D 128^3 by default) and ``--infer`` (model only and full pipeline)."""
    cases = []
    if args.train:
        cases += speed.plan_cases(["train"], _sizes(args.sizes, ["2d", "3d128"]), variants, args.device,
                                  args.threads, args.repeats, not args.no_reference)
    if args.infer:
        sizes = _sizes(args.sizes, ["2d", "3d128", "3d160"])
        cases += speed.plan_cases(["model"], sizes, variants, args.device, args.threads, args.repeats,
                                  not args.no_reference)
        cases += speed.plan_cases(["pipeline"], sizes, variants, args.device, args.threads, args.repeats)
    return cases


def measure_cases(cases: Sequence[dict]) -> List[dict]:
    """Measure every case (each in its own process), printing one line per case; one row per case."""
    rows = []
    for i, case in enumerate(cases, 1):
        start = time.perf_counter()
        row = speed.measure(case)
        rows.append(row)
        status = row.get("error") or f"{row.get('steps_per_s') or row.get('seconds'):.3f}"
        print(f"[{i}/{len(cases)}] {case['kind']:8s} {case['size']:6s} {case['model']:16s} {status} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def _peer_methods(args: argparse.Namespace) -> tuple:
    """``(peer method ids that can run, report lines for those skipped)``."""
    from . import classical
    from .methods import PEER_METHODS

    if args.peers is None:
        args.peers = list(PEER_METHODS) if args.datasets else []
    unknown = [p for p in args.peers if p.split("@")[0] not in PEER_METHODS]
    if unknown:
        raise ValueError(f"--peers: unknown peer(s) {unknown}; choose from {list(PEER_METHODS)}")
    methods, notes = [], []
    for entry in args.peers:
        peer = entry.split("@")[0]
        status = classical.peer_status(peer)
        if status is None:
            methods.append(entry)
        else:
            notes.append(f"Note: {status}.")
    return methods, notes


def _versions(methods) -> str:
    """The versions of SimpleITK and of the packages of ``methods`` (antspyx, itk-elastix, fireants)."""
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
    """The 1, 5 and 15 minute load averages (``"unknown"`` where the system has none)."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _datasets_section(args: argparse.Namespace, variants) -> tuple:
    """``bench --quality --datasets``: the validation pairs of each dataset; returns ``(markdown, rows)``."""
    from . import classical
    from ..reports.quality import markdown_quality_datasets

    names = list(DATASETS) if args.datasets.strip() == "all" else [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown:
        raise ValueError(f"--datasets: unknown dataset(s) {unknown}; choose from {list(DATASETS)} or 'all'")
    if not args.split.is_file():
        raise FileNotFoundError(f"--split: split file not found: {args.split}")
    peers, notes = _peer_methods(args)
    methods = classical.classical_methods(args.classical) + peers
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
             f"see `registration.refine.REFINE_THREADS`), our models on {args.device} (initial alignment: "
             f"{' and '.join(args.init_align)}); {_versions(methods)}; {jobs} dataset(s) at a time; wall time of this "
             f"part {time.perf_counter() - start:.0f} s. The 2-core machine is shared with other work: load average "
             f"(1, 5, 15 min) before and after each dataset: {'; '.join(loads)}. Times from one dataset's run are "
             f"comparable with each other (same pairs, same load), not with other runs.")
    return markdown_quality_datasets(rows, setup, notes), rows


def _dataset_rows(args: argparse.Namespace, variants, methods, name: str) -> tuple:
    """The quality rows of one dataset's validation pairs -> ``(rows, note or None, load averages text)``."""
    from . import classical, quality

    classical.set_threads(args.threads)  # before antspyx first runs
    start, before = time.perf_counter(), _load_average()
    val = labelled_validation_subjects(name, args.data_root, validation_ids(args.split))
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


def labelled_validation_subjects(dataset: str, data_root: Path, val_ids: set) -> list:
    """The subjects of ``dataset`` (in its folder under ``data_root``) whose id is in ``val_ids`` and that have labels,
    in the dataset's own order (the order ``quality.dataset_pairs`` cycles through)."""
    from .. import data

    subjects = data.find_dataset_subjects(dataset, Path(data_root) / data.DATASET_FOLDERS[dataset])
    return [s for s in subjects if s.id in val_ids and s.labels is not None]


def validation_ids(path: Path) -> set:
    """The subject ids of a split file's ``val`` list (bare ids or subject records)."""
    try:
        payload = json.loads(Path(path).read_text())
        entries = payload["val"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--split {path}: not a split file with a 'val' list ({exc})") from None
    return {str(e["id"]) if isinstance(e, dict) else str(e) for e in entries}


def quality_section(args: argparse.Namespace, variants) -> tuple:
    """Run the quality part (the datasets of ``--datasets``, else the IXI folder ``--ixi``); returns ``(markdown, rows)``."""
    if args.datasets:
        return _datasets_section(args, variants)
    return _ixi_section(args, variants)


def _ixi_section(args: argparse.Namespace, variants) -> tuple:
    """``bench --quality --ixi``: ordered pairs of one folder of IXI heads; returns ``(markdown, rows)``."""
    from .. import data
    from ..reports.quality import markdown_quality
    from . import classical, quality

    if not args.ixi.is_dir():
        raise FileNotFoundError(f"--ixi: folder of IXI heads not found: {args.ixi}")
    classical.set_threads(args.threads)  # before antspyx first runs
    peers, notes = _peer_methods(args)
    methods = classical.classical_methods(args.classical) + peers
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
    text = markdown_quality(rows, description, setup)
    return text + ("\n" + "\n".join(notes) + "\n" if notes else ""), rows


def write_report(report: Path, command: str, rows: Sequence[dict], quality_text: str, quality_rows: Sequence[dict],
                 with_quality: bool, memory_text: str = "", memory_rows: Sequence[dict] = ()) -> None:
    """The Markdown report (a section per part), ``<report>.json`` (speed rows), ``<report>.quality.json`` and
    ``<report>.memory.json`` (with the command, for the reliability report's memory table)."""
    parts = [
        "# Benchmarks", "",
        f"Produced by `{command.strip()}` on {time.strftime('%Y-%m-%d')}.", "",
        f"Machine: {speed.machine_description()}.", "",
    ]
    if rows:
        parts += [speed.__doc__.strip(), "", speed.markdown_tables(rows)]
    if with_quality:
        parts += [quality_text]
    if memory_rows:
        parts += [memory_text]
    report.parent.mkdir(parents=True, exist_ok=True)
    if memory_rows:
        report.with_suffix(".memory.json").write_text(json.dumps({"command": command.strip(), "rows": list(memory_rows)},
                                                                 indent=1))
    report.write_text("\n".join(parts) + "\n")
    if rows:
        report.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    if with_quality:
        finite = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in quality_rows]
        report.with_suffix(".quality.json").write_text(json.dumps(finite, indent=1))


def run_bench(args: argparse.Namespace, command: str) -> Tuple[List[dict], str]:
    """The parts the options ask for, and the report (``command``: the command line, for the report).

    Returns ``(speed rows, quality section)`` (``[]`` / ``""`` for a part not run).
    """
    variants = parse_variants(args)
    cases = plan_speed_cases(args, variants)
    rows = measure_cases(cases)
    quality_text, quality_rows = quality_section(args, variants) if args.quality else ("", [])
    if getattr(args, "refinement", False):
        from .refinement import refinement_section

        text, refinement_rows = refinement_section(args, variants)
        quality_text, quality_rows = "\n".join(t for t in (quality_text, text) if t), quality_rows + refinement_rows
    with_rows = args.quality or getattr(args, "refinement", False)
    memory_text, memory_rows = "", []
    if getattr(args, "memory", False):
        from . import memory

        memory_text, memory_rows = memory.memory_section(args.memory_sizes, args.memory_cases, args.memory_cache,
                                                         args.threads, args.memory_scene)
    write_report(args.report, command, rows, quality_text, quality_rows, with_rows, memory_text, memory_rows)
    return rows, "\n".join(t for t in (quality_text, memory_text) if t)
