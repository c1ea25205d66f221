"""Regulariser sweep: one run per (regulariser type, weight λ), accuracy versus folding.

The VoxelMorph-style setup: the baseline architecture (U-Net + spatial transformer, no affine
stage), MSE similarity, scan-to-scan pairs, Adam lr 1e-4, and ONE regulariser of the given
type and weight with a constant schedule (no annealing). Types: l2 (grad_l2, diffusion),
l1 (grad_l1, total variation), bending (bending_energy), or any regulariser name of the
losses module. --reg-types x --lambdas gives the full grid; --runs TYPE:LAMBDA,... adds single
runs (e.g. --reg-types l2 --lambdas 0.001,0.01,0.1 --runs l1:0.01,bending:0.01).

Every run uses the same data, split, validation pairs, seed and budget, and is evaluated on
the same fixed validation pairs. Writes into --out: report.md (type x λ table with mean ± std
of Dice, folding %, SDlogJ, MSE...; reference figures beside ours), summary.csv, per_pair.csv,
figures/sweep_curves.png (accuracy versus folding, folding and MSE versus λ),
figures/training_curves.png, figures/examples.png, split.json, val_pairs.json, runs.json and
command.txt. Reference figures: --reference TYPE:LAMBDA:METRIC=VALUE,... or, by default, the
published L2 sweep on neurite-OASIS 2D (λ 0.001: 4.1 % non-positive Jacobians, val MSE
0.00222; λ 0.01: 0.21 %, 0.00296; λ >= 0.1: 0 %); --reference none omits them.

Multiplier sweep (--reg-scales M1,M2,...): instead of the λ grid, one run per M of an
ablation variant with regularisers (--scale-variant, default regloss) trained exactly as the
ablation trains it (its architecture, lr, similarity and augmentation) except that its own
five regulariser weights are multiplied by M and the schedule is constant
(TrainConfig schedule="constant", reg_scale=M: the "tuned" arm of `ablation
--tuned-reg-scale M`). The report shows folding, Dice, SDlogJ... per M and states the chosen
M: the smallest whose mean validation folding (% det J <= 0) is under --folding-target
(default 0.5 %). Runs are named <variant>_x<M>.
Example: deepreg-ablation sweep --data oasis2d:../shared/data/neurite-oasis-2d
--reg-scales 0.5,1,2,5,10 --steps 1000 --out sweep-regscale

Resumable like the ablation: finished runs are not retrained, --resume continues partial ones.

Example: deepreg-ablation sweep --data oasis2d:../shared/data/neurite-oasis-2d --reg-types l2
--lambdas 0.001,0.01,0.1 --runs l1:0.01,bending:0.01 --steps 1000 --out sweep-out
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict, List, Tuple

from .ablation import (
    add_data_arguments,
    add_training_arguments,
    budget_note,
    canonical_command,
    evaluate_runs,
    prepare_experiment,
    setup_lines,
    train_variant,
    write_command_file,
)

REG_TYPES = {"l2": "grad_l2", "l1": "grad_l1", "bending": "bending_energy"}
DEFAULT_REG_TYPES = "l1,l2,bending"
DEFAULT_LAMBDAS = "0.001,0.01,0.1"
DEFAULT_SIMILARITY = "mse"
DEFAULT_LR = 1e-4
DEFAULT_FOLDING_TARGET = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--reg-types", dest="reg_types", default=None,
                        help=f"comma-separated regulariser types: l1, l2, bending or a losses.REGULARIZERS name (default {DEFAULT_REG_TYPES})")
    parser.add_argument("--lambdas", default=None, help=f"comma-separated weights λ (default {DEFAULT_LAMBDAS})")
    parser.add_argument("--runs", default=None, help="extra single runs TYPE:LAMBDA,... (e.g. l1:0.01,bending:0.01)")
    parser.add_argument("--similarity", default=None, help=f"similarity loss of the λ grid (default {DEFAULT_SIMILARITY})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam learning rate of the λ grid (default {DEFAULT_LR:g})")
    parser.add_argument("--reg-scales", dest="reg_scales", default=None, metavar="M,...",
                        help="multiplier sweep instead of the λ grid: one run of --scale-variant per M with its own "
                        "regulariser weights x M and a constant schedule (e.g. 0.5,1,2,5,10)")
    parser.add_argument("--scale-variant", dest="scale_variant", default=None,
                        help="the regularised variant of --reg-scales (default regloss)")
    parser.add_argument("--folding-target", dest="folding_target", type=float, default=None,
                        help=f"--reg-scales chooses the smallest M whose mean folding %% is below this (default {DEFAULT_FOLDING_TARGET:g})")
    parser.add_argument("--reference", default=None,
                        help="reference figures TYPE:LAMBDA:METRIC=VALUE,... ; default: the published L2 sweep; 'none': no reference")
    add_training_arguments(parser)
    parser.add_argument("--example-pair", dest="example_pair", type=int, default=0,
                        help="index of the validation pair shown in the example figure (default 0)")
    parser.add_argument("--out", required=True, help="report folder")


def _floats(text: str, name: str) -> List[float]:
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
    from DeepRegAblationLib.variants import get_variant

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
    from DeepRegAblationLib.variants import get_variant

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


def intensity_scale_note(exp) -> str:
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
    from ..reports import group_by_variant
    from ..stats import mean_std, relative_change

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


def run_scales(args: argparse.Namespace) -> int:
    """The ``--reg-scales`` sweep: one run per multiplier M, folding / Dice per M, the chosen M."""
    from DeepRegAblationLib.variants import get_variant

    from ..reports import write_sweep_report
    from ..stats import format_mean_std

    if args.reference is not None and str(args.reference).strip().lower() != "none":
        raise ValueError("--reference belongs to the λ grid; leave it out with --reg-scales")
    runs = scale_runs(args)
    variant = args.scale_variant or "regloss"
    spec = get_variant(variant)
    target = DEFAULT_FOLDING_TARGET if args.folding_target is None else float(args.folding_target)
    if not (target > 0):
        raise ValueError(f"--folding-target must be > 0, got {args.folding_target!r}")
    command = canonical_command("sweep", args)
    exp = prepare_experiment(args)
    write_command_file(exp, command, f"DeepRegAblation regulariser-multiplier sweep ({variant}, constant schedule)")
    t0 = time.perf_counter()
    for name, m in runs:
        train_variant(exp, name, variant, args, schedule="constant", reg_scale=m)
    rows, examples, identity, sweep_rows = _evaluate_and_save(exp, args, [n for n, _ in runs])
    setup = setup_lines(exp, args, "sweep")
    setup["model and loss"] = (
        f"`{variant}`: {spec.description} (lr {spec.lr:g}, similarity {spec.similarity}), trained as the ablation trains "
        f"it except for the regularisation: its regulariser weights {dict(spec.regularizers)} x M and a constant schedule "
        f"(multiplier 1 in every epoch; TrainConfig schedule='constant', reg_scale=M). For comparison, the reference "
        f"setting is M = 1 with the schedule max(0.01, 0.1 (1 - epoch / epochs)), i.e. 0.1 falling to 0.01"
    )
    setup["choice of M"] = (f"the smallest M whose mean folding (% of det J <= 0) over the validation pairs is below "
                            f"{target:g} %; it is the tuned setting of `ablation --tuned-reg-scale M`")
    if identity:
        setup["no registration (identity)"] = ", ".join(
            f"{m} {format_mean_std([r[m] for r in identity])}" for m in ("dice", "mse") if m in identity[0]
        )
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
    print(f"sweep report: {paths['report']} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0



def _evaluate_and_save(exp, args, names):
    """Evaluate the trained runs (and the identity) on the pairs; write per_pair.csv and runs.json.

    Returns ``(rows, examples, identity_rows, sweep_rows)``.
    """
    from ..evaluation import write_rows_csv

    rows, examples = evaluate_runs(exp, args, names, identity=True)
    write_rows_csv(rows, exp.out_dir / "per_pair.csv")
    (exp.out_dir / "runs.json").write_text(json.dumps(exp.runs, indent=1, default=str) + "\n")
    identity = [r for r in rows if r["variant"] == "identity"]
    return rows, examples, identity, [r for r in rows if r["variant"] != "identity"]

def run(args: argparse.Namespace) -> int:
    from ..reports import BUILTIN_SWEEP_REFERENCE, BUILTIN_SWEEP_REFERENCE_SOURCE, parse_reference, write_sweep_report

    if args.reg_scales is not None:
        return run_scales(args)
    if args.scale_variant is not None or args.folding_target is not None:
        raise ValueError("--scale-variant and --folding-target belong to --reg-scales")
    args.reg_types = DEFAULT_REG_TYPES if args.reg_types is None else args.reg_types
    args.lambdas = DEFAULT_LAMBDAS if args.lambdas is None else args.lambdas
    args.similarity = DEFAULT_SIMILARITY if args.similarity is None else args.similarity
    args.lr = DEFAULT_LR if args.lr is None else args.lr
    runs = sweep_runs(args)
    variants = {f"{t}_{lam:g}": (t, lam, run_variant(t, lam, args.similarity, args.lr)) for t, lam in runs}
    if args.reference is None:
        reference, reference_source = BUILTIN_SWEEP_REFERENCE, BUILTIN_SWEEP_REFERENCE_SOURCE
    elif str(args.reference).strip().lower() == "none":
        reference, reference_source = {}, ""
    else:
        reference, reference_source = parse_reference(args.reference), "given with --reference"
    command = canonical_command("sweep", args)
    exp = prepare_experiment(args)
    write_command_file(exp, command, "DeepRegAblation regulariser sweep")
    t0 = time.perf_counter()
    for name, (_, _, spec) in variants.items():
        train_variant(exp, name, spec, args)
    rows, examples, identity, sweep_rows = _evaluate_and_save(exp, args, list(variants))
    setup = setup_lines(exp, args, "sweep")
    setup["model and loss"] = (
        f"baseline architecture (U-Net + spatial transformer, no affine stage), similarity {args.similarity}, "
        f"lr {args.lr:g}, one regulariser per run with a constant weight λ (no schedule); "
        + ", ".join(f"{t} = {regularizer_name(t)}" for t in dict.fromkeys(t for t, _ in runs))
    )
    if identity:
        from ..stats import format_mean_std

        setup["no registration (identity)"] = ", ".join(
            f"{m} {format_mean_std([r[m] for r in identity])}" for m in ("dice", "mse") if m in identity[0]
        )
    notes = [budget_note(exp, args)]
    if reference:
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
    paths = write_sweep_report(
        exp.out_dir, sweep_rows, [{"variant": n, "reg_type": t, "lambda": lam} for n, (t, lam, _) in variants.items()],
        reference=reference, reference_source=reference_source, command=command, setup=setup,
        training_logs={n: exp.runs_dir / n for n in variants}, examples=example_subset(examples, variants), notes=notes,
        identity_rows=identity,
    )
    print(f"sweep report: {paths['report']} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0
