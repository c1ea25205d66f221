"""The ``register`` command's job: read the inputs, load the models, register with each variant, write everything.

Progress goes to stdout in the protocol of ``DeepRegAblationLib.progress`` (the Slicer panel's
background run reads it): ``[i/n] <variant>: registering ...`` when a variant starts and
``progress <fraction> <message>`` lines during its registration.

:func:`load_models` (``--model`` -> checkpoints -> models) is also the demo's.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

from DeepRegAblationLib.options import ALL_VARIANTS, VARIANT_IDS
from DeepRegAblationLib.progress import progress_line, step_line

from .output_lock import clean_leftover_staging, output_lock
from .register_outputs import (
    prepare_out_dir, staged_output, write_marker, write_panel_outputs, write_summary, write_variant_outputs,
)

__all__ = ["load_models", "progress_printer", "run_register"]


def load_models(model: Optional[Path], variants: List[str], ndim: int) -> Dict[str, object]:
    """``{variant: model}`` from ``--model`` (a checkpoint, a folder of them, or ``None``: the shipped weights),
    each checkpoint checked to hold its variant in ``ndim`` dimensions (``models.resolve.resolve_models``). Variants
    without weights run an untrained network, with a warning on stderr."""
    from DeepRegAblationLib.models.resolve import resolve_models, untrained_warning

    def warn(names: List[str]) -> None:
        print(untrained_warning(names, ndim), file=sys.stderr)

    return {name: loaded.model for name, loaded in resolve_models(model, variants, ndim, on_untrained=warn).items()}


def _metrics_only(result) -> SimpleNamespace:
    """What the summary needs of a written result when no scene is written: its variant and metrics (its arrays
    go, so that the memory of ``--variant all`` does not grow with the number of variants)."""
    return SimpleNamespace(variant=result.variant, metrics=result.metrics, warnings=list(result.warnings))


def progress_printer(done: int, total: int) -> Callable[[float, str], None]:
    """``progress(fraction, message)`` for one of ``total`` runs (``done`` finished before it): prints
    ``progress <overall> <message>`` lines (``progress.progress_line``; the Slicer module's background runner
    parses them)."""

    def progress(fraction: float, message: str) -> None:
        print(progress_line((done + float(fraction)) / total, message), flush=True)

    return progress


def _read_inputs(args: argparse.Namespace):
    """``(fixed, moving, fixed_labels, moving_labels)`` of the command line, checked (2D / 3D alike, overlapping)."""
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


def run_register(args: argparse.Namespace) -> Path:
    """The ``register`` command's options -> every result in ``args.out`` (written all at once, see
    ``register_outputs.staged_output``). Returns ``args.out``."""
    from DeepRegAblationLib.registration.pipeline import register
    from DeepRegAblationLib.registration.devices import resolve_device

    resolve_device(args.device)  # "cuda" without CUDA fails before any work
    out: Path = args.out
    with output_lock(out, "deepreg-ablation register"):  # a second run into --out is refused at once
        clean_leftover_staging(out)  # what killed runs left beside --out
        return _register_into(args, out, register)


def _register_into(args: argparse.Namespace, out: Path, register) -> Path:
    """:func:`run_register` once it holds ``--out``'s lock."""
    rerun = prepare_out_dir(out)
    t0 = time.perf_counter()
    fixed, moving, fixed_labels, moving_labels = _read_inputs(args)
    read_s = time.perf_counter() - t0
    ndim = 2 if fixed.is_2d else 3
    variants = list(VARIANT_IDS) if args.variant == ALL_VARIANTS else [args.variant]
    models = load_models(args.model, variants, ndim)
    npz_only = getattr(args, "npz_only", False)  # the Slicer panel: only what it reads back
    scene = not (args.no_scene or npz_only)

    if rerun:
        print(f"note: replacing the earlier 'deepreg-ablation register' results in {out}")
    with staged_output(out) as staging:  # --out appears only once everything is written
        write_marker(staging, fixed=str(args.fixed), moving=str(args.moving), variants=variants)
        results = []
        for index, variant in enumerate(variants, 1):
            print(step_line(index, len(variants), f"{variant}: registering {args.moving.name} -> {args.fixed.name}"),
                  flush=True)
            result = register(
                fixed, moving, models[variant], fixed_labels=fixed_labels, moving_labels=moving_labels,
                refine=args.refine, device=args.device, progress=progress_printer(index - 1, len(variants)),
                initial_alignment=args.init_align,
            )
            result.timings["read"] = read_s
            if npz_only:
                written = write_panel_outputs(staging / variant, result)
            else:
                written = write_variant_outputs(staging / variant, fixed, moving, result, args.save_npz)
            print(f"      wrote {', '.join(p.name for p in written)} in {out / variant}", flush=True)
            results.append(result if scene else _metrics_only(result))
            result = written = None  # not held while the next variant registers
        write_summary(staging, fixed, moving, results, scene=scene)
    return out
