"""The regulariser sweeps: accuracy versus folding over a regulariser's weight, or over a variant's multiplier.

- The λ grid (:func:`run_grid_sweep`): the VoxelMorph-style setup, the baseline architecture (U-Net +
  spatial transformer, no affine stage), MSE similarity, Adam lr 1e-4 and ONE regulariser of the
  given type and weight λ with a constant schedule; ``--reg-types`` x ``--lambdas`` plus ``--runs``.
- The multiplier sweep (:func:`run_scale_sweep`): one run per M of an ablation variant with
  regularisers, trained as the ablation trains it except that its own regulariser weights are
  multiplied by M with a constant schedule (the tuned arm of ``ablation --tuned-reg-scale M``);
  the report states the chosen M (the smallest whose mean validation folding is under the target).

Every run uses the same data, split, validation pairs, seed and budget (:mod:`.runs`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from .runs import (
    Experiment,
    budget_note,
    evaluate_and_save_runs,
    prepare_experiment,
    setup_lines,
    train_variant,
    write_command_file,
)

__all__ = [
    "REG_TYPES", "DEFAULT_REG_TYPES", "DEFAULT_LAMBDAS", "DEFAULT_SIMILARITY", "DEFAULT_LR", "DEFAULT_FOLDING_TARGET",
    "regularizer_name", "scale_runs", "sweep_runs", "run_variant", "intensity_scale_note", "example_subset",
    "movement_note", "apply_grid_defaults", "run_scale_sweep", "run_grid_sweep",
]

REG_TYPES = {"l2": "grad_l2", "l1": "grad_l1", "bending": "bending_energy"}
DEFAULT_REG_TYPES = "l1,l2,bending"
DEFAULT_LAMBDAS = "0.001,0.01,0.1"
DEFAULT_SIMILARITY = "mse"
DEFAULT_LR = 1e-4
DEFAULT_FOLDING_TARGET = 0.5


def _floats(text: str, name: str) -> List[float]:
    """Comma- (or space-) separated numbers >= 0 of the option ``name``."""
    try:
        values = [float(v) for v in str(text).replace(" ", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise ValueError(f"{name} must be >= 0, got {values}")
    return values


def regularizer_name(reg_type: str) -> str:
    """``l1``/``l2``/``bending`` or a ``losses.REGULARIZERS`` key -> the ``losses.REGULARIZERS`` key."""
    from DeepRegAblationLib.losses import REGULARIZERS

    name = REG_TYPES.get(reg_type, reg_type)
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regulariser type {reg_type!r}; use one of {sorted(REG_TYPES)} or {sorted(REGULARIZERS)}")
    return name


def scale_runs(args: argparse.Namespace) -> List[Tuple[str, float]]:
    """``(run name, M)`` of a ``--reg-scales`` sweep, M ascending, without repeats (``ValueError`` on bad input)."""
    from DeepRegAblationLib.models.variants import get_variant

    for flag, value in (("--reg-types", args.reg_types), ("--lambdas", args.lambdas), ("--runs", args.runs),
                        ("--similarity", args.similarity), ("--lr", args.lr)):
        if value is not None:
            raise ValueError(f"{flag} belongs to the λ grid; --reg-scales trains the variant with its own regularisers, "
                             "similarity and lr (leave {flag} out)".replace("{flag}", flag))
    variant = args.scale_variant or "regloss"
    spec = get_variant(variant)  # ValueError naming the valid ids
    if not spec.regularized:
        raise ValueError(f"--scale-variant {variant!r} has no regularisers to scale; use regloss or affine_enhanced")
    scales = sorted(set(_floats(args.reg_scales, "--reg-scales")))
    if not scales:
        raise ValueError(f"--reg-scales must name at least one multiplier, got {args.reg_scales!r}")
    return [(f"{variant}_x{m:g}", m) for m in scales]


def sweep_runs(args: argparse.Namespace) -> List[Tuple[str, float]]:
    """``(type, λ)`` of every run: the grid ``--reg-types`` x ``--lambdas`` plus ``--runs``, without repeats."""
    runs: List[Tuple[str, float]] = []
    types = [t.strip() for t in str(args.reg_types or "").split(",") if t.strip()]
    lambdas = _floats(args.lambdas or "", "--lambdas")
    for reg_type in types:
        for lam in lambdas:
            runs.append((reg_type, lam))
    for item in [s.strip() for s in str(args.runs or "").split(",") if s.strip()]:
        reg_type, sep, lam = item.partition(":")
        if not sep:
            raise ValueError(f"--runs entries must look like TYPE:LAMBDA (e.g. l1:0.01), got {item!r}")
        runs.append((reg_type.strip(), _floats(lam, "--runs")[0]))
    unique = list(dict.fromkeys(runs))
    if not unique:
        raise ValueError("no sweep runs: give --reg-types and --lambdas, or --runs")
    for reg_type, _ in unique:
        regularizer_name(reg_type)
    return unique


def run_variant(reg_type: str, lam: float, similarity: str, lr: float) -> Dict[str, Any]:
    """The baseline variant with one constant-weight regulariser, as a ``VariantSpec`` dict."""
    from DeepRegAblationLib.losses import SIMILARITIES
    from DeepRegAblationLib.models.variants import get_variant

    if similarity not in SIMILARITIES:
        raise ValueError(f"--similarity must be one of {sorted(SIMILARITIES)}, got {similarity!r}")
    name = regularizer_name(reg_type)
    spec = get_variant(
        "baseline",
        id=f"{reg_type}_{lam:g}",
        description=f"baseline U-Net, {similarity} + {lam:g} x {name} (constant)",
        similarity=similarity,
        regularizers={name: float(lam)} if lam > 0 else {},
        schedule="constant",
        lr=float(lr),
    )
    return spec.to_dict()


def intensity_scale_note(exp: Experiment) -> str:
    """How our MSE (on [0, 1]-normalised images) relates to MSE on the raw intensities of the validation images."""
    import numpy as np

    from DeepRegAblationLib.imageio import intensity_window

    from ..data import read_volume

    subjects = getattr(exp.dataset, "subjects", None)
    preprocess = exp.info.get("preprocess")
    if not subjects or preprocess is None or not getattr(preprocess, "normalize", False):
        return ""
    val_ids = set(exp.info.get("val", []))
    widths = []
    for subject in subjects:
        if subject.id in val_ids:
            lo, hi = intensity_window(read_volume(subject.image).array, *preprocess.percentiles)
            widths.append(hi - lo)
    if not widths:
        return ""
    w = float(np.mean(widths))
    return (
        f"**Intensity scale.** Images are mapped to [0, 1] by their {preprocess.percentiles[0]:g}-{preprocess.percentiles[1]:g} "
        f"percentile window (as in training and inference). On the raw validation images that window is {w:.3g} wide "
        f"on average, so an MSE here corresponds to roughly {w * w:.3g} x that value on the raw intensity scale (exact "
        "only where no clipping occurs). Folding % needs no conversion."
    )


def example_subset(examples: Dict[str, Any], variants: Dict[str, Tuple[str, float, Any]]) -> Dict[str, Any]:
    """The example pair of the smallest and the largest λ of every type (keeps the figure small)."""
    keep: List[str] = []
    for reg_type in dict.fromkeys(t for t, _, _ in variants.values()):
        names = sorted((n for n, (t, _, _) in variants.items() if t == reg_type), key=lambda n: variants[n][1])
        keep += [names[0]] + ([names[-1]] if len(names) > 1 else [])
    return {n: examples[n] for n in keep if n in examples}


def movement_note(identity_rows, rows, threshold: float = 0.10) -> str:
    """A warning when the trained models barely moved away from the identity (short budgets)."""
    from ..evaluation.stats import mean_std, relative_change
    from ..reports.tables import group_by_variant

    if not identity_rows:
        return ""
    base = mean_std([r["mse"] for r in identity_rows])[0]
    changes, disps = [], []
    for vrows in group_by_variant(rows).values():
        changes.append(-relative_change(mean_std([r["mse"] for r in vrows])[0], base))
        disps.append(mean_std([r["mean_disp_mm"] for r in vrows])[0])
    if not changes or max(changes) >= threshold:
        return ""
    return (
        f"**The models have barely left the identity.** The best run lowers the validation MSE by only "
        f"{100 * max(changes):.1f} % against no registration (mean displacement {min(disps):.2g}-{max(disps):.2g} mm), "
        "so at this budget the sweep does not separate the regularisers; folding stays at 0 % because nothing folds yet. "
        "Train longer (more --steps, or a GPU) before reading the λ dependence off this table."
    )


def apply_grid_defaults(args: argparse.Namespace) -> None:
    """The λ grid's options left out get their defaults (``--reg-types``, ``--lambdas``, ``--similarity``, ``--lr``);
    ``ValueError`` for the options of the multiplier sweep."""
    if args.scale_variant is not None or args.folding_target is not None:
        raise ValueError("--scale-variant and --folding-target belong to --reg-scales")
    args.reg_types = DEFAULT_REG_TYPES if args.reg_types is None else args.reg_types
    args.lambdas = DEFAULT_LAMBDAS if args.lambdas is None else args.lambdas
    args.similarity = DEFAULT_SIMILARITY if args.similarity is None else args.similarity
    args.lr = DEFAULT_LR if args.lr is None else args.lr


def run_scale_sweep(args: argparse.Namespace, command: str) -> Tuple[Dict[str, Path], float]:
    """The ``--reg-scales`` sweep: one run per multiplier M, folding / Dice per M, the chosen M.

    ``command``: the command line that reproduces the report. Returns ``(report paths, seconds
    from the first training to the written report)``.
    """
    from DeepRegAblationLib.models.variants import get_variant

    from ..reports.sweep import write_sweep_report

    if args.reference is not None and str(args.reference).strip().lower() != "none":
        raise ValueError("--reference belongs to the λ grid; leave it out with --reg-scales")
    runs = scale_runs(args)
    variant = args.scale_variant or "regloss"
    spec = get_variant(variant)
    target = DEFAULT_FOLDING_TARGET if args.folding_target is None else float(args.folding_target)
    if not (target > 0):
        raise ValueError(f"--folding-target must be > 0, got {args.folding_target!r}")
    exp = prepare_experiment(args)
    write_command_file(exp, command, f"DeepRegAblation regulariser-multiplier sweep ({variant}, constant schedule)")
    t0 = time.perf_counter()
    for name, m in runs:
        train_variant(exp, name, variant, args, schedule="constant", reg_scale=m)
    identity, sweep_rows, examples = _evaluate(exp, args, [n for n, _ in runs])
    setup = setup_lines(exp, args)
    setup["model and loss"] = (
        f"`{variant}`: {spec.description} (lr {spec.lr:g}, similarity {spec.similarity}), trained as the ablation trains "
        f"it except for the regularisation: its regulariser weights {dict(spec.regularizers)} x M and a constant schedule "
        f"(multiplier 1 in every epoch; TrainConfig schedule='constant', reg_scale=M). For comparison, the reference "
        f"setting is M = 1 with the schedule max(0.01, 0.1 (1 - epoch / epochs)), i.e. 0.1 falling to 0.01"
    )
    setup["choice of M"] = (f"the smallest M whose mean folding (% of det J <= 0) over the validation pairs is below "
                            f"{target:g} %; it is the tuned setting of `ablation --tuned-reg-scale M`")
    _add_identity_line(setup, identity)
    notes = [budget_note(exp, args)]
    movement = movement_note(identity, sweep_rows)
    if movement:
        notes.append(movement)
    notes += list(args.note or [])
    paths = write_sweep_report(
        exp.out_dir, sweep_rows, [{"variant": n, "reg_type": f"{variant} (constant)", "lambda": m} for n, m in runs],
        command=command, setup=setup, training_logs={n: exp.runs_dir / n for n, _ in runs},
        examples=example_subset(examples, {n: (variant, m, None) for n, m in runs}), notes=notes, identity_rows=identity,
        title=f"DeepRegAblation regulariser-multiplier sweep ({variant})", param_label="M", folding_target=target,
    )
    return paths, time.perf_counter() - t0


def run_grid_sweep(args: argparse.Namespace, command: str) -> Tuple[Dict[str, Path], float]:
    """The λ grid (after :func:`apply_grid_defaults`): one run per (type, λ), reference figures beside ours.

    ``command``: the command line that reproduces the report. Returns ``(report paths, seconds
    from the first training to the written report)``.
    """
    from ..reports.sweep import write_sweep_report

    runs = sweep_runs(args)
    variants = {f"{t}_{lam:g}": (t, lam, run_variant(t, lam, args.similarity, args.lr)) for t, lam in runs}
    reference, reference_source = _grid_reference(args.reference)
    exp = prepare_experiment(args)
    write_command_file(exp, command, "DeepRegAblation regulariser sweep")
    t0 = time.perf_counter()
    for name, (_, _, spec) in variants.items():
        train_variant(exp, name, spec, args)
    identity, sweep_rows, examples = _evaluate(exp, args, list(variants))
    setup = setup_lines(exp, args)
    setup["model and loss"] = (
        f"baseline architecture (U-Net + spatial transformer, no affine stage), similarity {args.similarity}, "
        f"lr {args.lr:g}, one regulariser per run with a constant weight λ (no schedule); "
        + ", ".join(f"{t} = {regularizer_name(t)}" for t in dict.fromkeys(t for t, _ in runs))
    )
    _add_identity_line(setup, identity)
    notes = _grid_notes(exp, args, bool(reference), identity, sweep_rows)
    paths = write_sweep_report(
        exp.out_dir, sweep_rows, [{"variant": n, "reg_type": t, "lambda": lam} for n, (t, lam, _) in variants.items()],
        reference=reference, reference_source=reference_source, command=command, setup=setup,
        training_logs={n: exp.runs_dir / n for n in variants}, examples=example_subset(examples, variants), notes=notes,
        identity_rows=identity,
    )
    return paths, time.perf_counter() - t0


def _evaluate(exp: Experiment, args: argparse.Namespace, names: Sequence[str]):
    """Evaluate the trained runs (and the identity) on the pairs; write ``per_pair.csv`` and ``runs.json``.

    Returns ``(identity_rows, sweep_rows, examples)``.
    """
    rows, examples = evaluate_and_save_runs(exp, args, names)
    identity = [r for r in rows if r["variant"] == "identity"]
    return identity, [r for r in rows if r["variant"] != "identity"], examples


def _add_identity_line(setup: Dict[str, str], identity: Sequence[Mapping[str, Any]]) -> None:
    """The setup line of the unregistered pairs' Dice and MSE (none without identity rows)."""
    from ..evaluation.stats import format_mean_std

    if identity:
        setup["no registration (identity)"] = ", ".join(
            f"{m} {format_mean_std([r[m] for r in identity])}" for m in ("dice", "mse") if m in identity[0]
        )


def _grid_reference(text) -> Tuple[Dict[Tuple[str, float], Dict[str, float]], str]:
    """``--reference`` -> ``(reference figures, their source)``: the built-in published sweep when not given."""
    from ..reports.sweep import BUILTIN_SWEEP_REFERENCE, BUILTIN_SWEEP_REFERENCE_SOURCE, parse_reference

    if text is None:
        return BUILTIN_SWEEP_REFERENCE, BUILTIN_SWEEP_REFERENCE_SOURCE
    if str(text).strip().lower() == "none":
        return {}, ""
    return parse_reference(text), "given with --reference"


def _grid_notes(exp: Experiment, args: argparse.Namespace, with_reference: bool, identity: Sequence[Mapping[str, Any]],
                sweep_rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The λ grid report's notes: the budget, the models' movement, the reference figures, the intensity scale."""
    notes = [budget_note(exp, args)]
    if with_reference:
        notes.append(
            "**Reference figures** come from another implementation and a much longer training; they are printed "
            "for orientation, not as a like-for-like comparison."
        )
    scale = intensity_scale_note(exp)
    if scale:
        notes.append(scale)
    movement = movement_note(identity, sweep_rows)
    if movement:
        notes.insert(1, movement)
    notes += list(args.note or [])
    return notes
