"""What the runs of one experiment (an ablation, a sweep) share: the setup, training, evaluation, report text.

:func:`prepare_experiment` creates the output folders, the split and the fixed validation pairs
(an :class:`Experiment`); :func:`train_variant` trains one run (or reuses its final checkpoint);
:func:`evaluate_runs` / :func:`evaluate_and_save_runs` evaluate the final checkpoints on the
validation pairs; :func:`write_command_file`, :func:`setup_lines`, :func:`budget_note` and
:func:`schedule_description` give the report's reproduction and setup text.

The functions take the command line's ``argparse.Namespace`` (the options of
``commands.arguments.add_data_arguments`` / ``add_training_arguments``). Nothing heavy is imported
at module level (``--help`` works without torch).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "DEFAULT_VAL_PAIRS", "base_data_spec", "git_version", "Experiment", "prepare_experiment", "train_variant",
    "evaluate_runs", "evaluate_and_save_runs", "write_command_file", "setup_lines", "budget_note", "schedule_description",
]

DEFAULT_VAL_PAIRS = 16
"""Fixed validation pairs drawn when neither ``--pairs`` nor ``--val-pairs`` is given."""


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
    from DeepRegAblationLib.models.checkpoints import load_checkpoint

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
    from DeepRegAblationLib.models.checkpoints import load_checkpoint

    from ..training import TrainConfig, train
    from ..training.state import check_resumable

    run_dir = exp.runs_dir / name
    data = dict(exp.spec)
    data["val_pairs"] = int(args.train_val_pairs)
    data["augment"] = None if args.no_augment else {}
    config = TrainConfig(
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
            check_resumable(saved, config, run_dir / "last.pt")
    t0 = time.perf_counter()
    trained_now = state != "done"
    if trained_now:
        print(f"[{name}] training {exp.steps} steps -> {run_dir}", file=sys.stderr, flush=True)
        train(config)
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
    from ..reports.training_logs import read_training_log

    if not epochs_csv.is_file():
        return math.nan
    seconds = read_training_log(epochs_csv).get("seconds")
    return float(seconds[-1]) if seconds is not None and len(seconds) else math.nan


def _mean_step_seconds(steps_csv: Path) -> float:
    """Mean of the finite ``step_seconds`` of a run's per-step log (NaN without any)."""
    from ..reports.training_logs import read_training_log

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


def evaluate_and_save_runs(exp: Experiment, args: argparse.Namespace,
                           names: Sequence[str]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """:func:`evaluate_runs` (with the identity rows), then ``per_pair.csv`` and ``runs.json`` in the report folder."""
    from ..evaluation import write_rows_csv

    rows, examples = evaluate_runs(exp, args, names, identity=True)
    write_rows_csv(rows, exp.out_dir / "per_pair.csv")
    (exp.out_dir / "runs.json").write_text(json.dumps(exp.runs, indent=1, default=str) + "\n")
    return rows, examples


def write_command_file(exp: Experiment, command: str, what: str) -> Path:
    """``command.txt`` in the report folder: what the report is, the command that reproduces it, where the runs are."""
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


def setup_lines(exp: Experiment, args: argparse.Namespace) -> Dict[str, str]:
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
    """The report's paragraph on the (short) training budget of the runs."""
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
