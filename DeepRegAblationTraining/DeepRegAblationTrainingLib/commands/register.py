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

Models: --model CKPT (one variant) or a directory of <variant>.pt files; without --model the
weights shipped in DeepRegAblation/Resources/Models/<2|3>d/<variant>.pt, or an UNTRAINED
network (with a warning) when none are shipped.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# PyTorch's OpenMP threads wait passively (before torch is imported): on a busy machine (the Slicer
# background run shares it) spinning threads made the small operations of the refinement many times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VARIANT_IDS = ("baseline", "regloss", "affine_basic", "affine_enhanced")
MARKER = ".deepreg-ablation-register"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--fixed", required=True, type=Path, help="fixed image (NIfTI / NRRD)")
    parser.add_argument("--moving", required=True, type=Path, help="moving image (NIfTI / NRRD)")
    parser.add_argument("--fixed-labels", type=Path, default=None, help="label map of the fixed image (Dice, HD95)")
    parser.add_argument("--moving-labels", type=Path, default=None, help="label map of the moving image (warped too)")
    parser.add_argument(
        "--variant", default="all", choices=VARIANT_IDS + ("all",), help="variant to run (default: all four)"
    )
    parser.add_argument(
        "--model", type=Path, default=None,
        help="checkpoint (.pt) of the variant, or a directory holding <variant>.pt files (required form for --variant all)",
    )
    parser.add_argument(
        "--refine", nargs="?", const="recommended", default=0, type=refine_argument, metavar="SCHEDULE",
        help="instance optimisation on this pair after the network: --refine alone = recommended (fast: affine at "
             "8 and 4 mm, deformable at 8, 4 and 2 mm), --refine thorough (down to 1 mm / the image resolution), "
             "--refine N (N iterations per level of the recommended levels), off or 0 (default)",
    )
    parser.add_argument(
        "--init-align", default="auto", choices=("auto", "none", "com"),
        help="initial alignment: auto (default: what the model was trained with; centres of mass for the shipped "
             "3D models), none (physical space as is) or com (translate the moving image's intensity centre of "
             "mass onto the fixed image's first, for heads of different subjects / scanners)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA if available")
    parser.add_argument("--save-npz", action="store_true", help="also write DIR/<variant>/result.npz (for the Slicer GUI)")
    parser.add_argument("--no-scene", action="store_true",
                        help="do not write DIR/scene/ (the Slicer panel's background run builds its nodes from result.npz)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")


# --------------------------------------------------------------------------- checks
def refine_argument(text: str):
    """``--refine`` value: ``"off"`` / ``"recommended"`` / ``"thorough"`` or an iteration count (``int``).

    Raises ``argparse.ArgumentTypeError`` (reported as ``error: ...``) for anything else or a negative count.
    """
    value = str(text).strip().lower()
    if value in ("off", "recommended", "thorough"):
        return value
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be off, recommended, thorough or a number of iterations per level, got {text!r}"
        ) from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"iterations must be >= 0, got {count}")
    return count


def prepare_out_dir(out: Path) -> bool:
    """Refuse a non-empty DIR not made by this command. Returns True when DIR holds earlier results."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(
                f"--out {out} exists, is not empty and was not written by 'deepreg-ablation register' "
                f"(no {MARKER} file); choose a new or empty directory (nothing was written)"
            )
        return True
    return False


def _model_sources(model_arg: Optional[Path], variants: List[str], ndim: int) -> Dict[str, Optional[Path]]:
    """``{variant: checkpoint path or None (untrained)}`` from --model / the shipped weights."""
    from DeepRegAblationLib.inference import shipped_model_path

    if model_arg is None:
        return {v: shipped_model_path(v, ndim) for v in variants}
    if not model_arg.exists():
        raise FileNotFoundError(f"--model not found: {model_arg}")
    if model_arg.is_dir():
        sources = {v: model_arg / f"{v}.pt" for v in variants}
        missing = [str(p) for p in sources.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"--model directory {model_arg} lacks the checkpoint(s) {missing}")
        return sources
    if len(variants) != 1:
        raise ValueError(
            f"--model {model_arg} is one file, but --variant all needs a directory holding "
            f"{', '.join(v + '.pt' for v in VARIANT_IDS)}"
        )
    return {variants[0]: model_arg}


def _load_models(sources: Dict[str, Optional[Path]], ndim: int) -> Dict[str, object]:
    """Load every checkpoint (or name the untrained variant) and check variant and dimension."""
    from DeepRegAblationLib.inference import load_registration_model

    models: Dict[str, object] = {}
    untrained = [variant for variant, path in sources.items() if path is None]
    if untrained:
        print(
            f"warning: no trained {ndim}D weights for {', '.join(untrained)} (none given with --model, none "
            f"shipped): those results are from an UNTRAINED network (close to the identity), not a trained model",
            file=sys.stderr,
        )
    for variant, path in sources.items():
        if path is None:
            models[variant] = variant
            continue
        net, _, _ = load_registration_model(path, ndim)
        loaded_id = getattr(getattr(net, "variant", None), "id", None)
        if loaded_id != variant:
            raise ValueError(f"--model checkpoint {path} holds variant {loaded_id!r}, not {variant!r}")
        if int(net.ndim) != ndim:
            kind = "single-slice (2D)" if ndim == 2 else "3D"
            raise ValueError(
                f"--model checkpoint {path} is a {net.ndim}D model but --fixed is a {kind} image; "
                f"use a {ndim}D checkpoint"
            )
        models[variant] = net
    return models


def _read_inputs(args: argparse.Namespace):
    from DeepRegAblationLib import geometry
    from DeepRegAblationLib.imageio import read_image

    fixed = read_image(args.fixed, name="fixed image (--fixed)")
    moving = read_image(args.moving, name="moving image (--moving)")
    fixed_labels = read_image(args.fixed_labels, "fixed labels (--fixed-labels)", "labels") if args.fixed_labels else None
    moving_labels = read_image(args.moving_labels, "moving labels (--moving-labels)", "labels") if args.moving_labels else None
    if fixed.is_2d != moving.is_2d:
        two, three = ("--fixed", "--moving") if fixed.is_2d else ("--moving", "--fixed")
        raise ValueError(
            f"{two} is a 2D (single-slice) image but {three} is a 3D volume (--fixed {args.fixed} shape "
            f"{fixed.shape}, --moving {args.moving} shape {moving.shape}); both must be 2D or both 3D"
        )
    if args.init_align == "none":  # otherwise register() checks it after the translation
        geometry.check_overlap(fixed, moving, f"--fixed {args.fixed}", f"--moving {args.moving}")
    if fixed_labels is not None:
        geometry.check_overlap(fixed, fixed_labels, f"--fixed {args.fixed}", f"--fixed-labels {args.fixed_labels}")
    if moving_labels is not None:
        geometry.check_overlap(moving, moving_labels, f"--moving {args.moving}", f"--moving-labels {args.moving_labels}")
    return fixed, moving, fixed_labels, moving_labels


# --------------------------------------------------------------------------- output
def _format(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}"


def format_table(records: List[dict], extra: Sequence[str] = ()) -> str:
    """Plain-text table of metrics records (``exports.METRIC_COLUMNS`` plus ``extra`` columns)."""
    from DeepRegAblationLib.exports import METRIC_COLUMNS

    columns = list(METRIC_COLUMNS) + list(extra)
    rows = [columns] + [[_format(r.get(c)) for c in columns] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _optional_outputs(what: str, func, *args) -> List[Path]:
    """Run the snapshot / scene writers: missing VTK / Slicer packages (or no off-screen
    rendering on this machine) only cost a warning; the registration files are already written."""
    try:
        written = func(*args)
    except ImportError as exc:
        print(f"warning: {what} skipped: {exc} (install vtk / slicer-core to get them)", file=sys.stderr)
        return []
    except Exception as exc:  # noqa: BLE001  optional outputs never fail the run (issue 13)
        print(f"warning: {what} failed and were skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []
    if written is None:
        return []
    return list(written) if isinstance(written, (list, tuple)) else [written]


def _write_snapshots(out_dir: Path, fixed, moving, result) -> List[Path]:
    from DeepRegAblationLib import snapshots

    return snapshots.write_snapshots(out_dir, fixed, moving, result)


def _write_scene(out_dir: Path, fixed, moving, results) -> Path:
    from DeepRegAblationLib import scene

    return scene.write_results_scene(out_dir, fixed, moving, results)


def write_variant_outputs(variant_dir: Path, fixed, moving, result, save_npz: bool = False) -> List[Path]:
    """Everything written per variant: NIfTI images, ITK transforms, PNG snapshots (and result.npz)."""
    from DeepRegAblationLib import exports

    written = list(exports.write_result_files(variant_dir, result).values())
    if save_npz:
        written.append(result.save(variant_dir / "result.npz"))
    written += _optional_outputs("PNG snapshots", _write_snapshots, variant_dir, fixed, moving, result)
    return written


def write_summary(out: Path, fixed, moving, results, extra_columns: Optional[Dict[str, Dict[str, float]]] = None,
                  scene: bool = True) -> None:
    """metrics.csv / metrics.json, the Slicer scene (unless ``scene`` is false), and the table printed to stdout.

    ``extra_columns``: optional ``{variant: {column: value}}`` printed beside the table (the demo's
    error against the known displacement); the files keep the standard columns.
    """
    from DeepRegAblationLib import exports

    csv_path, json_path = exports.write_metrics(out, results)
    scene_files = _optional_outputs("Slicer scene", _write_scene, out / "scene", fixed, moving, results) if scene else []
    records = [exports.metrics_record(r) for r in results]
    for record in records:
        record.update((extra_columns or {}).get(str(record["variant"]), {}))
    print()
    print(format_table(records, extra=sorted({k for cols in (extra_columns or {}).values() for k in cols})))
    print()
    print(f"metrics: {csv_path.name} {json_path.name}")
    if scene_files:
        print(f"Slicer scene: {os.path.relpath(scene_files[0], out)}")  # one path may be absolute, the other relative


@contextlib.contextmanager
def staged_output(out: Path):
    """Write into a new folder beside ``out`` and rename it to ``out`` only when everything is written.

    Yields the temporary folder (``.<name>.partial-*`` in ``out``'s parent, on the same file
    system). When the block ends normally, earlier results in ``out`` are replaced by renames; on
    any failure (bad input, a write error such as a full disk, Ctrl-C) the temporary folder is
    removed and ``out`` is left as it was. A killed process leaves only the hidden temporary
    folder, never a half-written ``out``. A write error is raised as ``RuntimeError`` (the
    command line's ``error:`` line).
    """
    out = Path(out).resolve()  # "." or a symbolic link: the folder itself is replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:12]}")
    staging.mkdir()  # the usual permissions, as --out itself would get
    try:
        try:
            yield staging
        except OSError as exc:
            if isinstance(exc, ValueError):  # imageio.ImageFileNotFoundError: a bad input, not a write error
                raise
            raise RuntimeError(f"writing the results for {out} failed ({exc}); nothing was written to {out}") from None
        previous = out.with_name(f".{out.name}.previous-{uuid.uuid4().hex[:12]}") if out.exists() else None
        if previous is not None:
            out.replace(previous)
        try:
            staging.replace(out)
        except OSError:
            if previous is not None:
                previous.replace(out)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_marker(out: Path, **info) -> None:
    """Mark DIR as written by this command (so a re-run may replace it)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(dict(command="deepreg-ablation register", **info), indent=2) + "\n")


def _progress_printer(done: int, total: int):
    """``progress(fraction, message)`` for one of ``total`` runs: prints ``progress <overall> <message>``
    lines (the Slicer module's background runner parses them)."""

    def progress(fraction: float, message: str) -> None:
        print(f"progress {(done + float(fraction)) / total:.3f} {message}", flush=True)

    return progress


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from DeepRegAblationLib.inference import register, resolve_device

    resolve_device(args.device)  # "cuda" without CUDA fails before any work
    out: Path = args.out
    rerun = prepare_out_dir(out)
    t0 = time.perf_counter()
    fixed, moving, fixed_labels, moving_labels = _read_inputs(args)
    read_s = time.perf_counter() - t0
    ndim = 2 if fixed.is_2d else 3
    variants = list(VARIANT_IDS) if args.variant == "all" else [args.variant]
    models = _load_models(_model_sources(args.model, variants, ndim), ndim)

    if rerun:
        print(f"note: replacing the earlier 'deepreg-ablation register' results in {out}")
    with staged_output(out) as staging:  # --out appears only once everything is written
        write_marker(staging, fixed=str(args.fixed), moving=str(args.moving), variants=variants)
        results = []
        for index, variant in enumerate(variants, 1):
            print(f"[{index}/{len(variants)}] {variant}: registering {args.moving.name} -> {args.fixed.name}", flush=True)
            result = register(
                fixed, moving, models[variant], fixed_labels=fixed_labels, moving_labels=moving_labels,
                refine=args.refine, device=args.device, progress=_progress_printer(index - 1, len(variants)),
                initial_alignment=args.init_align,
            )
            result.timings["read"] = read_s
            written = write_variant_outputs(staging / variant, fixed, moving, result, args.save_npz)
            print(f"      wrote {', '.join(p.name for p in written)} in {out / variant}", flush=True)
            results.append(result)
        write_summary(staging, fixed, moving, results, scene=not args.no_scene)
    print(f"results: {out}")
    return 0
