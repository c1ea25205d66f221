"""Training logs: a progress bar, per-step CSV + JSONL files, TensorBoard and (on request) wandb.

Files in the run folder (written by rank 0 only):

- ``steps.csv`` / ``steps.jsonl``: one row per optimiser step (loss terms, gradient norm, lr,
  seconds per step, whether the step was skipped);
- ``epochs.csv`` / ``epochs.jsonl``: one row per epoch (mean training loss, validation metrics);
- ``tensorboard/``: event files when ``torch.utils.tensorboard`` imports (the ``tensorboard``
  package is installed);
- wandb only when asked for (``wandb=True``) and installed.

On resume, rows after the checkpoint's step (written by the interrupted run after its last
checkpoint) are dropped so the logs read like one uninterrupted run.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, TextIO

__all__ = ["ProgressBar", "TrainLogger"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    return value


class ProgressBar:
    """``tqdm`` when installed and ``enabled``; otherwise a plain line every ``every`` steps (and the last)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, every: int = 50, stream: TextIO = None, desc: str = "train"):
        self.total = int(total)
        self.count = int(initial)
        self.every = max(1, int(every))
        self.enabled = bool(enabled)
        self.stream = stream or sys.stderr
        self.desc = desc
        self._bar = None
        if self.enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=self.total, initial=self.count, desc=desc, file=self.stream, dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, postfix: Optional[Mapping[str, Any]] = None) -> None:
        self.count += 1
        if not self.enabled:
            return
        text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (postfix or {}).items())
        if self._bar is not None:
            self._bar.update(1)
            if text:
                self._bar.set_postfix_str(text, refresh=False)
        elif self.count % self.every == 0 or self.count == self.total:
            print(f"{self.desc} {self.count}/{self.total} {text}", file=self.stream, flush=True)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _Table:
    """One CSV + JSONL pair; columns fixed by the first row (or an existing file's header)."""

    def __init__(self, out_dir: Path, name: str, keep_until_step: Optional[int]):
        self.csv_path = out_dir / f"{name}.csv"
        self.jsonl_path = out_dir / f"{name}.jsonl"
        self.columns: Optional[List[str]] = None
        if keep_until_step is None:
            for p in (self.csv_path, self.jsonl_path):
                if p.exists():
                    p.unlink()
        else:
            self._truncate(keep_until_step)

    def _truncate(self, step: int) -> None:
        rows: List[Dict[str, Any]] = []
        if self.jsonl_path.exists():
            for line in self.jsonl_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the kill
                if isinstance(row, dict) and int(row.get("step", 0)) <= step:
                    rows.append(row)
        for p in (self.csv_path, self.jsonl_path):
            if p.exists():
                p.unlink()
        for row in rows:
            self.write(row)

    def write(self, row: Mapping[str, Any]) -> None:
        row = {k: _jsonable(v) for k, v in row.items()}
        with open(self.jsonl_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        new_file = not self.csv_path.exists()
        if self.columns is None:
            if not new_file:
                with open(self.csv_path, newline="") as fh:
                    self.columns = next(csv.reader(fh), None)
            if not self.columns:
                self.columns = list(row)
                new_file = True
        with open(self.csv_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)


class TrainLogger:
    """Per-step and per-epoch logs of one run (see the module docstring).

    Args:
        out_dir: run folder.
        enabled: ``False`` on ranks other than 0 (every method is then a no-op).
        resume_step: on resume, the checkpoint's global step (later rows are dropped);
            ``None`` starts fresh logs.
        tensorboard: write TensorBoard events when ``torch.utils.tensorboard`` is available.
        wandb: log to Weights & Biases (``wandb`` must be installed; ``wandb_config`` is the run config).
    """

    def __init__(
        self,
        out_dir: Path,
        enabled: bool = True,
        resume_step: Optional[int] = None,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_config: Optional[Mapping[str, Any]] = None,
        run_name: str = "",
    ):
        self.enabled = bool(enabled)
        self.out_dir = Path(out_dir)
        self._tb = None
        self._wandb = None
        if not self.enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.steps = _Table(self.out_dir, "steps", resume_step)
        self.epochs = _Table(self.out_dir, "epochs", resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:
                self._tb = None
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ValueError("--wandb was given but the 'wandb' package is not installed (pip install wandb)") from None
            self._wandb = wandb_module.init(
                project="deepreg-ablation", name=run_name or None, config=dict(wandb_config or {}),
                dir=str(self.out_dir), resume="allow",
            )

    def _scalars(self, prefix: str, row: Mapping[str, Any], step: int) -> None:
        numbers = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}
        if self._tb is not None:
            for key, value in numbers.items():
                if math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in numbers.items()}, step=step)

    def log_step(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.steps.write(row)
        self._scalars("train", row, int(row.get("step", 0)))

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.epochs.write(row)
        self._scalars("epoch", row, int(row.get("step", 0)))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

