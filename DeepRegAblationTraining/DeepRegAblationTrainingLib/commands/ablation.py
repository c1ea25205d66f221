"""Train and evaluate the ablation variants under identical conditions and write the ablation report.

Every variant (default: baseline, regloss, affine_basic, affine_enhanced) is trained with the
same data, train/validation split, seed, augmentation and step budget (the trainer's
`train`), then its final checkpoint (last.pt after the last step; no selection on the
validation pairs) is evaluated on the same fixed validation pairs, together with the
unregistered pairs ("identity") for reference.

Writes into --out: report.md (tables and figures), summary.csv (per variant mean, std,
change against --baseline, paired Wilcoxon p, Benjamini-Hochberg q for every metric),
per_pair.csv, figures/*.png (training curves, accuracy versus folding, one example pair per
variant with the deformation grid and the Jacobian determinant), split.json and
val_pairs.json (the split and pairs used), runs.json (per-variant timing) and command.txt (the
exact command that reproduces the report). Checkpoints and training logs go to --runs-dir
(default <out>/runs).

Two regularisation arms: --tuned-reg-scale M adds, after every regularised variant V
(regloss, affine_enhanced), a run V_tuned trained with every regulariser weight x M and a
constant schedule (TrainConfig schedule="constant", reg_scale=M) beside V with its reference
weights and schedule; same data, split, seed and steps, evaluated on the same pairs and
compared with --baseline like every other run. Choose M with `sweep --reg-scales`.

Resumable: a variant whose final checkpoint exists is not retrained; --resume continues a
partly trained one from its last epoch.

Example: deepreg-ablation ablation --data oasis2d:../shared/data/neurite-oasis-2d --steps 2000
--val-pairs 48 --out ablation-out
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

DEFAULT_VARIANTS = ("baseline", "regloss", "affine_basic", "affine_enhanced")
DEFAULT_VAL_PAIRS = 16
TUNED_SUFFIX = "_tuned"
TUNED_SCHEDULE = "constant"


# --------------------------------------------------------------------------- arguments (shared with sweep)
def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Data, split and validation-pair options (the dest of every option is its flag name)."""
    p.add_argument("--data", required=True,
                   help="oasis2d:/path | oasis3d:/path | seed:/paths.txt,/template | list:/file.csv or /folder | mni-synthetic")
    p.add_argument("--labels", default=None, help="OASIS label set: seg4 (default), seg24 (2D), seg35 (3D) or none")
    p.add_argument("--shape", type=int, nargs="+", default=None, metavar="N", help="model grid shape (crop/pad), divisible by 16")
    p.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM", help="target voxel size in mm")
    p.add_argument("--max-subjects", dest="max_subjects", type=int, default=None, help="use only the first N subjects (quick runs)")
    p.add_argument("--mode", default=None, help="pairing: scan_to_scan (default), atlas_to_scan, scan_to_atlas")
    p.add_argument("--atlas", default=None, help="atlas subject id for the atlas pairing modes")
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.2,
                   help="fraction of subjects held out for validation when the split is drawn (default 0.2)")
    p.add_argument("--split", default=None,
                   help="split JSON: used when it exists, else drawn with --seed and written there (default <out>/split.json)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pairs", default=None, help="validation pairs JSON (as written to val_pairs.json)")
    group.add_argument("--val-pairs", dest="val_pairs", type=int, default=None,
                       help=f"number of fixed validation pairs drawn from the validation subjects (default {DEFAULT_VAL_PAIRS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, split, pairs and augmentation (default 0)")


def add_training_arguments(p: argparse.ArgumentParser, steps_default: int = 1000) -> None:
    p.add_argument("--steps", type=int, default=steps_default, help=f"optimiser steps per variant (default {steps_default})")
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int, default=None,
                   help="steps between checkpoints / validations (default min(100, steps))")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1, help="pairs per step (default 1)")
    p.add_argument("--train-val-pairs", dest="train_val_pairs", type=int, default=8,
                   help="validation pairs the trainer scores after every epoch for the training curves (default 8; 0: none)")
    p.add_argument("--no-augment", dest="no_augment", action="store_true", help="no on-the-fly augmentation of the training pairs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue partly trained runs from their last.pt")
    p.add_argument("--runs-dir", dest="runs_dir", default=None, help="checkpoints and training logs (default <out>/runs)")
    p.add_argument("--note", action="append", default=None, help="a paragraph added to the report (repeatable)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="variant ids (default: the four)")
    parser.add_argument("--baseline", default="baseline", help="variant the others are compared with (default baseline)")
    parser.add_argument("--tuned-reg-scale", dest="tuned_reg_scale", type=float, default=None, metavar="M",
                        help="add the tuned arm: for every regularised variant V (regloss, affine_enhanced) also train "
                        f"V{TUNED_SUFFIX} with every regulariser weight x M and a constant schedule (TrainConfig "
                        "schedule='constant', reg_scale=M), beside V with its reference weights and schedule; choose M "
                        "with `sweep --reg-scales`")
    add_training_arguments(parser)
    parser.add_argument("--example-pair", dest="example_pair", type=int, default=0,
                        help="index of the validation pair shown in the example figure (default 0)")
    parser.add_argument("--out", required=True, help="report folder")


# --------------------------------------------------------------------------- plumbing (shared with sweep)
def canonical_command(command: str, args: argparse.Namespace) -> str:
    """``deepreg-ablation <command> --opt value ...`` with every option spelled out (reproduces the run)."""
    parts = ["deepreg-ablation", command]
    for dest, value in vars(args).items():
        if dest.startswith("_") or dest == "command" or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            if dest == "note":
                for item in value:
                    parts += [flag, str(item)]
            else:
                parts += [flag] + [str(v) for v in value]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def base_data_spec(args: argparse.Namespace) -> Dict[str, Any]:
    """The data spec of the command line (without split / pair / augmentation entries)."""
    from ..data import parse_data_argument

    spec = parse_data_argument(args.data)
    if args.labels is not None:
        spec["labels"] = None if str(args.labels).lower() == "none" else args.labels
    if args.shape is not None:
        spec["shape"] = [int(n) for n in args.shape]
    if args.spacing is not None:
        spec["spacing_mm"] = [float(s) for s in args.spacing]
    for key in ("max_subjects", "mode", "atlas"):
        if getattr(args, key, None) is not None:
            spec[key] = getattr(args, key)
    spec["val_fraction"] = float(args.val_fraction)
    return spec


def git_version(repo: Optional[Path] = None) -> str:
    """``<short commit>[+dirty]`` of the repository holding this file ("unknown" outside git)."""
    repo = repo or Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Experiment:
    """Everything the runs of one ablation / sweep share."""

    out_dir: Path
    runs_dir: Path
    spec: Dict[str, Any]            # base data spec + split path
    split_path: Path
    pairs_path: Path
    dataset: Any                    # the fixed validation pairs (evaluation)
    info: Dict[str, Any]            # train / val ids, pairs
    seed: int
    steps: int
    steps_per_epoch: int
    runs: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def prepare_experiment(args: argparse.Namespace) -> Experiment:
    """Create the output folders, the split file and the validation pairs (or reuse existing ones)."""
    from ..evaluation import validation_set

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out_dir / "runs"
    split_path = Path(args.split) if args.split else out_dir / "split.json"
    pairs_target = out_dir / "val_pairs.json"
    spec = base_data_spec(args)
    dataset, info = validation_set(
        spec, seed=args.seed, n_pairs=0 if args.pairs else (args.val_pairs or DEFAULT_VAL_PAIRS),
        split_path=split_path, pairs_path=args.pairs if args.pairs else pairs_target,
    )
    if args.pairs:  # keep a copy of the pairs next to the report
        from ..data import save_pairs

        save_pairs(pairs_target, [tuple(p) for p in info["pairs"]])
    if split_path.resolve() != (out_dir / "split.json").resolve() and split_path.is_file():
        (out_dir / "split.json").write_text(split_path.read_text())
    spec["split"] = str(split_path)
    steps_per_epoch = int(args.steps_per_epoch or min(100, args.steps))
    return Experiment(out_dir, runs_dir, spec, split_path, pairs_target, dataset, info, int(args.seed), int(args.steps), steps_per_epoch)


def _final_state(run_dir: Path, steps: int) -> str:
    """``"new"``, ``"partial"`` or ``"done"`` for the run folder (``ValueError`` if it went past ``steps``)."""
    from DeepRegAblationLib.checkpoints import load_checkpoint

    last = run_dir / "last.pt"
    if not last.is_file():
        return "new"
    done = int(load_checkpoint(last).get("global_step", 0))
    if done == steps:
        return "done"
    if done < steps:
        return "partial"
    raise ValueError(f"{last} holds a run of {done} steps, more than --steps {steps}; use another --runs-dir")


def _check_regularisation(saved: Mapping[str, Any], schedule: Optional[str], reg_scale: float, path: Path) -> None:
    """The saved run must have the same ``schedule`` / ``reg_scale`` (the trainer's resume check does not compare them)."""
    saved_schedule = saved.get("schedule")
    saved_scale = float(saved.get("reg_scale", 1.0) if saved.get("reg_scale") is not None else 1.0)
    if saved_schedule != schedule or not math.isclose(saved_scale, float(reg_scale), rel_tol=1e-12, abs_tol=0.0):
        raise ValueError(
            f"cannot reuse {path}: it was trained with schedule {saved_schedule!r}, reg_scale {saved_scale:g}; "
            f"this run asks for schedule {schedule!r}, reg_scale {float(reg_scale):g} (use another --runs-dir)"
        )


def train_variant(exp: Experiment, name: str, variant: Any, args: argparse.Namespace,
                  schedule: Optional[str] = None, reg_scale: float = 1.0) -> Dict[str, Any]:
    """Train ``variant`` (id or VariantSpec dict) into ``<runs_dir>/<name>`` unless its final checkpoint exists.

    ``schedule`` / ``reg_scale``: ``TrainConfig.schedule`` / ``TrainConfig.reg_scale`` (``None`` / 1:
    the variant's own; ``"constant"`` / M: the "tuned" arm). Returns ``{"name", "checkpoint",
    "run_dir", "trained_now", "wall_s", "mean_step_s", "steps", "schedule", "reg_scale"}``.
    """
    from .. import trainer
    from DeepRegAblationLib.checkpoints import load_checkpoint

    run_dir = exp.runs_dir / name
    data = dict(exp.spec)
    data["val_pairs"] = int(args.train_val_pairs)
    data["augment"] = None if args.no_augment else {}
    config = trainer.TrainConfig(
        variant=variant, out_dir=str(run_dir), data=data, steps=exp.steps, steps_per_epoch=exp.steps_per_epoch,
        batch_size=int(args.batch_size), seed=exp.seed, device=args.device, threads=args.threads, resume=bool(args.resume),
        checkpoint_every=0, val_every=1 if args.train_val_pairs > 0 else 0, log_tensorboard=False, progress_bar=False,
        schedule=schedule, reg_scale=float(reg_scale),
    )
    state = _final_state(run_dir, exp.steps)
    if state == "partial" and not args.resume:
        raise ValueError(f"{run_dir} holds a partly trained run; add --resume to continue it (or remove the folder)")
    if state in ("done", "partial"):
        saved = load_checkpoint(run_dir / "last.pt")
        _check_regularisation(saved.get("config") or {}, schedule, reg_scale, run_dir / "last.pt")
        if state == "done":
            trainer._check_resumable(saved, config, run_dir / "last.pt")
    t0 = time.perf_counter()
    trained_now = state != "done"
    if trained_now:
        print(f"[{name}] training {exp.steps} steps -> {run_dir}", file=sys.stderr, flush=True)
        trainer.train(config)
    else:
        print(f"[{name}] final checkpoint exists, not retrained: {run_dir / 'last.pt'}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0 if trained_now else _logged_training_seconds(run_dir / "epochs.csv")
    step_s = _mean_step_seconds(run_dir / "steps.csv")
    info = {"name": name, "checkpoint": str(run_dir / "last.pt"), "run_dir": str(run_dir), "trained_now": trained_now,
            "wall_s": wall, "mean_step_s": step_s, "steps": exp.steps, "schedule": schedule, "reg_scale": float(reg_scale)}
    exp.runs[name] = info
    return info


def _logged_training_seconds(epochs_csv: Path) -> float:
    """Wall time of a finished run as its trainer logged it (``seconds`` of the last epoch row)."""
    from ..reports import read_training_log

    if not epochs_csv.is_file():
        return math.nan
    seconds = read_training_log(epochs_csv).get("seconds")
    return float(seconds[-1]) if seconds is not None and len(seconds) else math.nan


def _mean_step_seconds(steps_csv: Path) -> float:
    from ..reports import read_training_log

    if not steps_csv.is_file():
        return math.nan
    cols = read_training_log(steps_csv)
    values = cols.get("step_seconds")
    if values is None or not len(values):
        return math.nan
    import numpy as np

    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def evaluate_runs(exp: Experiment, args: argparse.Namespace, names: Sequence[str], identity: bool = True):
    """Evaluate the final checkpoint of each run on the validation pairs.

    Returns ``(rows, examples)``: per-pair rows (``variant`` = run name; ``"identity"`` rows
    first when ``identity``) and ``{name: PairPrediction}`` of pair ``args.example_pair``.
    """
    from ..evaluation import evaluate_model, load_trained_model, predict_pair

    rows: List[Dict[str, Any]] = []
    examples: Dict[str, Any] = {}
    index = int(getattr(args, "example_pair", 0))
    if not 0 <= index < len(exp.dataset):
        raise ValueError(f"--example-pair must be in [0, {len(exp.dataset) - 1}], got {index}")
    if identity:
        rows += evaluate_model(None, exp.dataset, device="cpu")
    for name in names:
        ckpt = exp.runs[name]["checkpoint"]
        model = load_trained_model(ckpt, device=args.device)
        t0 = time.perf_counter()
        vrows = evaluate_model(model, exp.dataset, device=args.device, checkpoint=ckpt)
        for row in vrows:
            row["variant"] = name
        rows += vrows
        examples[name] = predict_pair(model, exp.dataset[index], device=args.device)
        print(f"[{name}] evaluated {len(vrows)} pairs in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return rows, examples


def write_command_file(exp: Experiment, command: str, what: str) -> Path:
    text = (
        f"# {what}\n"
        "# Reproduce (from the repository root, in the project's environment):\n"
        f"{command}\n"
        f"# Checkpoints and training logs (not committed): {exp.runs_dir}\n"
        f"# A run whose final checkpoint exists there is not retrained; add --resume to continue partial runs.\n"
    )
    path = exp.out_dir / "command.txt"
    path.write_text(text)
    return path


def setup_lines(exp: Experiment, args: argparse.Namespace, command_name: str) -> Dict[str, str]:
    """The "Setup" section shared by the ablation and sweep reports."""
    import torch

    info = exp.info
    spec = exp.spec
    data_desc = spec.get("kind", "")
    if spec.get("path"):
        data_desc += f" `{spec['path']}`"
    if spec.get("labels") is not None or spec.get("kind", "").startswith("oasis"):
        data_desc += f", labels {spec.get('labels', 'seg4')}"
    if spec.get("shape"):
        data_desc += f", grid {'x'.join(str(n) for n in spec['shape'])} (crop/pad)"
    if spec.get("max_subjects"):
        data_desc += f", first {spec['max_subjects']} subjects"
    first = exp.dataset[0]
    grid = "x".join(str(int(n)) for n in first["fixed"].shape[1:])
    spacing = ", ".join(f"{float(s):g}" for s in first["spacing_mm"])
    lines = {
        "data": f"{data_desc}; model grid {grid}, spacing ({spacing}) mm, intensities normalised to [0, 1]",
        "split": f"`split.json`: {len(info.get('train', []))} training / {len(info.get('val', []))} validation subjects (seed {exp.seed})",
        "validation pairs": f"`val_pairs.json`: {len(exp.dataset)} fixed (moving, fixed) pairs of validation subjects, "
        f"the same for every run",
        "training budget": f"{exp.steps} optimiser steps per run, batch {args.batch_size}, {exp.steps_per_epoch} steps per epoch "
        f"({math.ceil(exp.steps / exp.steps_per_epoch)} epochs of the regularisation schedule), seed {exp.seed}, "
        f"augmentation {'off' if args.no_augment else 'on (data.Augment defaults)'}",
        "evaluated checkpoint": "`last.pt` after the final step of every run (no model selection on the validation pairs)",
        "compute": f"{args.device} device, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "code version when the report was written": git_version(),
    }
    timing = []
    for name, run in exp.runs.items():
        step = run.get("mean_step_s", math.nan)
        wall = run.get("wall_s", math.nan)
        text = f"{name} {step:.3f} s per optimiser step" if math.isfinite(step) else f"{name} n/a"
        if math.isfinite(wall):
            text += f", {wall / 60:.1f} min wall time incl. data loading and validation"
        timing.append(text)
    if timing:
        lines["measured training time"] = "; ".join(timing)
    return lines


def budget_note(exp: Experiment, args: argparse.Namespace) -> str:
    import torch

    walls = [r["wall_s"] for r in exp.runs.values() if math.isfinite(r.get("wall_s", math.nan))]
    per = f" (about {sum(walls) / len(walls) / 60:.0f} min each on {torch.get_num_threads()} CPU thread(s))" if walls else ""
    return (
        f"**Training budget.** Every run was trained for only {exp.steps} optimiser steps{per} with batch size "
        f"{args.batch_size}. Learning-based registration models are usually trained for 10^4 - 10^5 steps, so these are "
        "short-trained models: the numbers compare the variants at an equal, small budget and are not the accuracy the "
        "architectures reach when trained to convergence."
    )


def schedule_description(exp: Experiment, specs: Sequence[Any]) -> str:
    """The regulariser multipliers the ``"reference"`` schedule applied in this run's epochs (for the report)."""
    from DeepRegAblationLib.losses import reference_schedule

    if not any(spec.regularized and spec.schedule == "reference" for spec in specs):
        return ""
    epochs = math.ceil(exp.steps / exp.steps_per_epoch)
    factors = ", ".join(f"{reference_schedule(e, epochs):.3g}" for e in range(epochs))
    return (
        f"the regularised variants multiply every regulariser weight by max(0.01, 0.1 (1 - epoch / epochs)); "
        f"over the {epochs} epochs here that is {factors}"
    )


def ablation_runs(variants: Sequence[str], tuned_reg_scale: Optional[float] = None) -> "List[Dict[str, Any]]":
    """The runs of an ablation, in report order: ``{"name", "variant", "schedule", "reg_scale", "arm"}``.

    Every variant is one run with its own (reference) regularisation, ``arm`` ``"reference"``
    for the regularised ones and ``None`` for the others. With ``tuned_reg_scale`` M every
    regularised variant V is followed by ``V_tuned``: V with every regulariser weight x M and
    a constant schedule (``arm`` ``"tuned"``).
    """
    from DeepRegAblationLib.variants import get_variant

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
    from DeepRegAblationLib.variants import get_variant

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


def run(args: argparse.Namespace) -> int:
    from DeepRegAblationLib.variants import get_variant

    from ..evaluation import write_rows_csv
    from ..reports import write_ablation_report

    variants = list(dict.fromkeys(args.variants))
    tuned = getattr(args, "tuned_reg_scale", None)
    runs = ablation_runs(variants, tuned)
    if args.baseline not in variants:
        raise ValueError(f"--baseline {args.baseline!r} must be one of --variants {variants}")
    names = [r["name"] for r in runs]
    command = canonical_command("ablation", args)
    exp = prepare_experiment(args)
    write_command_file(exp, command, "DeepRegAblation four-variant ablation"
                       + (f", reference and tuned (x{tuned:g}, constant schedule) regularisation arms" if tuned is not None else ""))
    t0 = time.perf_counter()
    for r in runs:
        train_variant(exp, r["name"], r["variant"], args, schedule=r["schedule"], reg_scale=r["reg_scale"])
    rows, examples = evaluate_runs(exp, args, names)
    write_rows_csv(rows, exp.out_dir / "per_pair.csv")
    (exp.out_dir / "runs.json").write_text(json.dumps(exp.runs, indent=1, default=str) + "\n")
    notes = [budget_note(exp, args)]
    setup = setup_lines(exp, args, "ablation")
    setup["variants"] = "; ".join(describe_run(r) for r in runs)
    schedule = schedule_description(exp, [get_variant(v) for v in variants])
    if schedule:
        setup["regularisation schedule"] = schedule
    if tuned is not None:
        ref_names = ", ".join(f"`{r['name']}`" for r in runs if r["arm"] == "reference")
        tuned_names = ", ".join(f"`{r['name']}`" for r in runs if r["arm"] == "tuned")
        setup["regularisation arms"] = (
            f"reference arm {ref_names}: the variant's reference weights and schedule (the study's setting); "
            f"tuned arm {tuned_names}: the same variant, data, split, seed, augmentation and step budget, every "
            f"regulariser weight x {tuned:g} and a constant schedule (multiplier 1 in every epoch instead of 0.1 -> 0.01); "
            f"M = {tuned:g} is given with `--tuned-reg-scale` (`deepreg-ablation sweep --reg-scales` picks it as the smallest "
            "multiplier whose validation folding stays under 0.5 %). `baseline` and `affine_basic` are unregularised in both arms "
            "and trained once"
        )
        notes.append(
            f"**Two regularisation arms in one report.** Every run, tuned or not, is compared with `{args.baseline}` on the "
            f"same validation pairs; the Benjamini–Hochberg family of a metric is all {len(runs) - 1} comparisons, so "
            "q-values of the reference-arm rows are not the same as in a report without the tuned arm (means, stds and p "
            "are). When the multiplier is chosen by a sweep on these validation pairs, the tuned arm's folding is the "
            "selection criterion, not an independent test."
        )
    notes += list(args.note or [])
    paths = write_ablation_report(
        exp.out_dir, rows, baseline=args.baseline, command=command, setup=setup,
        training_logs={n: exp.runs_dir / n for n in names}, examples=examples, notes=notes,
        title="DeepRegAblation: four-variant ablation" + (" (reference and tuned regularisation)" if tuned is not None else ""),
    )
    print(f"ablation report: {paths['report']} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0
