"""The ablation: the variants trained and evaluated under identical conditions, and its report.

Every run (a variant, or a variant's tuned arm, :func:`ablation_runs`) is trained with the same data,
split, seed, augmentation and step budget; its final checkpoint is evaluated on the same fixed
validation pairs beside the unregistered pairs ("identity"), and the report compares every run with
the baseline (``reports.ablation.write_ablation_report``).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .runs import (
    Experiment,
    budget_note,
    evaluate_and_save_runs,
    prepare_experiment,
    schedule_description,
    setup_lines,
    train_variant,
    write_command_file,
)

__all__ = ["TUNED_SUFFIX", "TUNED_SCHEDULE", "ablation_runs", "describe_run", "run_ablation"]

TUNED_SUFFIX = "_tuned"
TUNED_SCHEDULE = "constant"


def ablation_runs(variants: Sequence[str], tuned_reg_scale: Optional[float] = None) -> "List[Dict[str, Any]]":
    """The runs of an ablation, in report order: ``{"name", "variant", "schedule", "reg_scale", "arm"}``.

    Every variant is one run with its own (reference) regularisation, ``arm`` ``"reference"``
    for the regularised ones and ``None`` for the others. With ``tuned_reg_scale`` M every
    regularised variant V is followed by ``V_tuned``: V with every regulariser weight x M and
    a constant schedule (``arm`` ``"tuned"``).
    """
    from DeepRegAblationLib.models.variants import get_variant

    if tuned_reg_scale is not None and not (math.isfinite(float(tuned_reg_scale)) and float(tuned_reg_scale) > 0):
        raise ValueError(f"--tuned-reg-scale must be a number > 0, got {tuned_reg_scale!r}")
    out: List[Dict[str, Any]] = []
    for v in variants:
        spec = get_variant(v)  # ValueError naming the valid ids
        out.append({"name": v, "variant": v, "schedule": None, "reg_scale": 1.0,
                    "arm": "reference" if spec.regularized else None})
        if tuned_reg_scale is not None and spec.regularized:
            name = f"{v}{TUNED_SUFFIX}"
            if name in variants:
                raise ValueError(f"--variants names {name!r}, which is the name of the tuned run of {v!r}")
            out.append({"name": name, "variant": v, "schedule": TUNED_SCHEDULE, "reg_scale": float(tuned_reg_scale), "arm": "tuned"})
    if tuned_reg_scale is not None and not any(r["arm"] == "tuned" for r in out):
        raise ValueError(f"--tuned-reg-scale needs a regularised variant among --variants {list(variants)} (regloss, affine_enhanced)")
    return out


def describe_run(run_entry: Mapping[str, Any]) -> str:
    """One "variants" entry of the report's setup: what the run trains and with which regularisation."""
    from DeepRegAblationLib.models.variants import get_variant

    spec = get_variant(run_entry["variant"])
    text = f"`{run_entry['name']}`: {spec.description} (lr {spec.lr:g}, similarity {spec.similarity}"
    if spec.regularized:
        if run_entry["arm"] == "tuned":
            m = float(run_entry["reg_scale"])
            weights = {k: float(f"{float(w) * m:.6g}") for k, w in spec.regularizers.items()}
            text += (f"; **tuned arm**: the regularisers of `{spec.id}` x {m:g} = {weights}, constant schedule "
                     f"(multiplier 1 in every epoch)")
        else:
            text += (f"; **reference arm**: regularisers {dict(spec.regularizers)} x schedule {spec.schedule}")
    return text + ")"


def run_ablation(args: argparse.Namespace, command: str) -> Tuple[Dict[str, Path], float]:
    """Train every run of ``args.variants`` (and the tuned arm of ``--tuned-reg-scale``), evaluate them and write the report.

    ``command``: the command line that reproduces the report. Returns ``(report paths, seconds
    from the first training to the written report)``.
    """
    from ..reports.ablation import write_ablation_report

    variants = list(dict.fromkeys(args.variants))
    tuned = getattr(args, "tuned_reg_scale", None)
    runs = ablation_runs(variants, tuned)
    if args.baseline not in variants:
        raise ValueError(f"--baseline {args.baseline!r} must be one of --variants {variants}")
    names = [r["name"] for r in runs]
    exp = prepare_experiment(args)
    write_command_file(exp, command, "DeepRegAblation four-variant ablation"
                       + (f", reference and tuned (x{tuned:g}, constant schedule) regularisation arms" if tuned is not None else ""))
    t0 = time.perf_counter()
    for r in runs:
        train_variant(exp, r["name"], r["variant"], args, schedule=r["schedule"], reg_scale=r["reg_scale"])
    rows, examples = evaluate_and_save_runs(exp, args, names)
    setup, notes = _report_setup(exp, args, runs, variants, tuned)
    paths = write_ablation_report(
        exp.out_dir, rows, baseline=args.baseline, command=command, setup=setup,
        training_logs={n: exp.runs_dir / n for n in names}, examples=examples, notes=notes,
        title="DeepRegAblation: four-variant ablation" + (" (reference and tuned regularisation)" if tuned is not None else ""),
    )
    return paths, time.perf_counter() - t0


def _report_setup(exp: Experiment, args: argparse.Namespace, runs: Sequence[Mapping[str, Any]], variants: Sequence[str],
                  tuned: Optional[float]) -> Tuple[Dict[str, str], List[str]]:
    """The report's "Setup" lines and notes: the shared setup, what each run trains, the schedule and the arms."""
    from DeepRegAblationLib.models.variants import get_variant

    notes = [budget_note(exp, args)]
    setup = setup_lines(exp, args)
    setup["variants"] = "; ".join(describe_run(r) for r in runs)
    schedule = schedule_description(exp, [get_variant(v) for v in variants])
    if schedule:
        setup["regularisation schedule"] = schedule
    if tuned is not None:
        setup["regularisation arms"], arms_note = _arms_text(runs, tuned, args.baseline)
        notes.append(arms_note)
    notes += list(args.note or [])
    return setup, notes


def _arms_text(runs: Sequence[Mapping[str, Any]], tuned: float, baseline: str) -> Tuple[str, str]:
    """``(setup line, note)`` on the reference and tuned regularisation arms."""
    ref_names = ", ".join(f"`{r['name']}`" for r in runs if r["arm"] == "reference")
    tuned_names = ", ".join(f"`{r['name']}`" for r in runs if r["arm"] == "tuned")
    setup = (
        f"reference arm {ref_names}: the variant's reference weights and schedule (the study's setting); "
        f"tuned arm {tuned_names}: the same variant, data, split, seed, augmentation and step budget, every "
        f"regulariser weight x {tuned:g} and a constant schedule (multiplier 1 in every epoch instead of 0.1 -> 0.01); "
        f"M = {tuned:g} is given with `--tuned-reg-scale` (`deepreg-ablation sweep --reg-scales` picks it as the smallest "
        "multiplier whose validation folding stays under 0.5 %). `baseline` and `affine_basic` are unregularised in both arms "
        "and trained once"
    )
    note = (
        f"**Two regularisation arms in one report.** Every run, tuned or not, is compared with `{baseline}` on the "
        f"same validation pairs; the Benjamini–Hochberg family of a metric is all {len(runs) - 1} comparisons, so "
        "q-values of the reference-arm rows are not the same as in a report without the tuned arm (means, stds and p "
        "are). When the multiplier is chosen by a sweep on these validation pairs, the tuned arm's folding is the "
        "selection criterion, not an independent test."
    )
    return setup, note
