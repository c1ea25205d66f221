"""The trainer's CSV logs (``steps.csv`` per optimiser step, ``epochs.csv`` per epoch), read as columns."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from .tables import PathLike

__all__ = ["read_training_log", "run_logs"]


def read_training_log(path: PathLike) -> Dict[str, np.ndarray]:
    """A trainer CSV log as ``column -> float array`` (non-numeric cells become NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: Dict[str, np.ndarray] = {}
    if not rows:
        return columns
    for key in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(key, "")))
            except (TypeError, ValueError):
                vals.append(math.nan)
        columns[key] = np.asarray(vals)
    return columns



def run_logs(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """``(per-step columns, per-epoch columns)`` of a trainer run folder (``steps.csv``, ``epochs.csv``) or one CSV."""
    path = Path(path)
    if path.is_dir():
        steps = read_training_log(path / "steps.csv") if (path / "steps.csv").is_file() else {}
        epochs = read_training_log(path / "epochs.csv") if (path / "epochs.csv").is_file() else {}
        return steps, epochs
    table = read_training_log(path)
    return table, table

