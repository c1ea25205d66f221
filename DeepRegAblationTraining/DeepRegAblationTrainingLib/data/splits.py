"""Train / validation splits and the fixed validation pairs, and their JSON files.

A split file is ``{"format": SPLIT_FORMAT, "train": [...], "val": [...], ...}`` whose entries are
subject dicts (:meth:`Subject.to_dict`) or bare subject ids (a hand-written split, and the split of
the 3D brain datasets: :func:`save_dataset_split`); a pairs file ``{"format": PAIRS_FORMAT,
"pairs": [[moving_id, fixed_id], ...]}``. Every choice is deterministic in the seed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..augment import seed_from
from .subjects import PathLike, Subject

__all__ = [
    "PAIR_MODES", "SPLIT_FORMAT", "PAIRS_FORMAT", "split_by_dataset", "dataset_cycle_pairs", "split_subjects",
    "save_split", "load_split", "save_dataset_split", "load_dataset_split", "fixed_pairs", "save_pairs", "load_pairs",
]

PAIR_MODES = ("scan_to_scan", "atlas_to_scan", "scan_to_atlas")
SPLIT_FORMAT = "deepreg-ablation/split-1"
PAIRS_FORMAT = "deepreg-ablation/pairs-1"


def split_by_dataset(
    subjects: Sequence[Subject], n_val: Mapping[str, int], seed: int = 0
) -> Tuple[List[Subject], List[Subject]]:
    """Hold ``n_val[dataset]`` labelled subjects of each dataset out for validation (seeded choice).

    Only subjects with a label map are eligible for validation (their numbers are Dice). A
    dataset missing from ``n_val`` keeps every subject for training.
    """
    train: List[Subject] = []
    val: List[Subject] = []
    groups: Dict[Optional[str], List[Subject]] = {}
    for subject in subjects:
        groups.setdefault(subject.dataset, []).append(subject)
    for k, (name, members) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        want = int(n_val.get(name, 0)) if name is not None else 0
        labelled = [s for s in members if s.labels is not None]
        if want > len(labelled) or (want and want >= len(members) - 1):
            raise ValueError(
                f"dataset {name}: {want} validation subjects requested but it has {len(labelled)} labelled of "
                f"{len(members)} (at least 2 must stay for training)"
            )
        order = np.random.default_rng(seed_from(seed, 11, k)).permutation(len(labelled))
        held = {labelled[i].id for i in order[:want]}
        val += [s for s in members if s.id in held]
        train += [s for s in members if s.id not in held]
    return train, val


def dataset_cycle_pairs(subjects: Sequence[Subject]) -> List[Tuple[str, str]]:
    """Validation pairs within each dataset: ``(s[i], s[i + 1])`` and ``(s[-1], s[0])`` (one pair for two subjects)."""
    groups: Dict[Optional[str], List[str]] = {}
    for subject in subjects:
        groups.setdefault(subject.dataset, []).append(subject.id)
    pairs: List[Tuple[str, str]] = []
    for name in sorted(groups, key=str):
        ids = sorted(groups[name])
        if len(ids) == 2:
            pairs.append((ids[0], ids[1]))
        elif len(ids) > 2:
            pairs += [(ids[i], ids[(i + 1) % len(ids)]) for i in range(len(ids))]
    return pairs


def split_subjects(
    subjects: Sequence[Subject], val_fraction: float = 0.2, seed: int = 0
) -> Tuple[List[Subject], List[Subject]]:
    """Random train / validation split (deterministic in ``seed``), both non-empty.

    ``round(n * val_fraction)`` subjects (at least 1) go to validation; with ``val_fraction``
    0 the validation list is empty.
    """
    subjects = list(subjects)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not subjects:
        raise ValueError("cannot split an empty subject list")
    n_val = 0 if val_fraction == 0 else max(1, int(round(len(subjects) * float(val_fraction))))
    if n_val >= len(subjects):
        raise ValueError(
            f"a split with val_fraction {val_fraction} needs at least 2 subjects, got {len(subjects)}"
        )
    order = np.random.default_rng(seed_from(seed)).permutation(len(subjects))
    val = sorted((subjects[i] for i in order[:n_val]), key=lambda s: s.id)
    train = sorted((subjects[i] for i in order[n_val:]), key=lambda s: s.id)
    return train, val


def _write_json(path: PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _read_json(path: PathLike, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} file {path} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object, got {type(payload).__name__}")
    return payload


def save_split(path: PathLike, train: Sequence[Subject], val: Sequence[Subject], **extra: Any) -> Path:
    """Write the split as JSON: ``{"format", "train": [subject dicts], "val": [...], **extra}``."""
    payload = {
        "format": SPLIT_FORMAT,
        "train": [s.to_dict() for s in train],
        "val": [s.to_dict() for s in val],
    }
    payload.update(extra)
    return _write_json(path, payload)


def load_split(
    path: PathLike, subjects: Optional[Sequence[Subject]] = None
) -> Tuple[List[Subject], List[Subject]]:
    """Read a split written by :func:`save_split`.

    Entries may also be bare subject ids (a hand-written split); those are looked up in
    ``subjects`` (``ValueError`` naming any id not found there).
    """
    payload = _read_json(path, "split")
    by_id = {s.id: s for s in subjects} if subjects is not None else {}
    out = []
    for key in ("train", "val"):
        entries = payload.get(key)
        if not isinstance(entries, list):
            raise ValueError(f"split file {path} needs a list '{key}', got {type(entries).__name__}")
        resolved, unknown = [], []
        for e in entries:
            if isinstance(e, str):
                if e in by_id:
                    resolved.append(by_id[e])
                else:
                    unknown.append(e)
            else:
                resolved.append(Subject.from_dict(e))
        if unknown:
            raise ValueError(f"split file {path}: {key} ids not found among the subjects: {unknown}")
        out.append(resolved)
    if not out[0]:
        raise ValueError(f"split file {path} has an empty training list")
    return out[0], out[1]


def save_dataset_split(
    path: PathLike, train: Sequence[Subject], val: Sequence[Subject], seed: int, n_val: Mapping[str, int]
) -> Path:
    """The split of the 3D brain datasets: subject ids only (the files are found again from the data spec on
    any machine), with the pairing mode, the seed and the validation subjects per dataset."""
    return _write_json(path, {
        "format": SPLIT_FORMAT, "train": [s.id for s in train], "val": [s.id for s in val],
        "mode": "scan_to_scan", "seed": int(seed), "val_per_dataset": n_val,
    })


def load_dataset_split(
    path: PathLike, subjects: Sequence[Subject], kinds: Collection[str]
) -> Tuple[List[Subject], List[Subject]]:
    """A split of the 3D brain datasets restricted to the datasets ``kinds``.

    A split of several datasets also serves a run on some of them: ids of the others (the part
    before the first ``-``) are skipped. Entries are ids or subject dicts. ``ValueError`` naming
    the file for an id of ``kinds`` not among ``subjects``, or when no training subject is left.
    """
    by_id = {s.id: s for s in subjects}
    payload = _read_json(path, "split")
    chosen = []
    for key in ("train", "val"):
        entries = [e if isinstance(e, str) else (e or {}).get("id") for e in payload.get(key, [])]  # ids or subject dicts
        ids = [i for i in entries if isinstance(i, str) and i.split("-", 1)[0] in kinds]
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"split file {path}: {key} ids not found among the subjects: {unknown}")
        chosen.append([by_id[i] for i in ids])
    train_subjects, val_subjects = chosen
    if not train_subjects:
        raise ValueError(f"split file {path} has no training subject of the datasets {sorted(kinds)}")
    return train_subjects, val_subjects


def fixed_pairs(
    subjects: Sequence[Subject],
    n: int,
    seed: int = 0,
    atlas: Optional[Subject] = None,
    mode: str = "scan_to_scan",
) -> List[Tuple[str, str]]:
    """``n`` distinct ``(moving_id, fixed_id)`` pairs, deterministic in ``seed``.

    ``scan_to_scan``: ordered pairs of two different subjects; ``atlas_to_scan``: ``(atlas, s)``;
    ``scan_to_atlas``: ``(s, atlas)`` for ``n`` subjects.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"mode must be one of {list(PAIR_MODES)}, got {mode!r}")
    ids = [s.id for s in subjects]
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed_from(seed, 7))
    if mode == "scan_to_scan":
        possible = len(ids) * (len(ids) - 1)
        if n > possible:
            raise ValueError(f"{n} distinct scan-to-scan pairs requested but {len(ids)} subjects give only {possible}")
        pairs, seen = [], set()
        while len(pairs) < n:
            i, j = rng.choice(len(ids), size=2, replace=False)
            if (i, j) not in seen:
                seen.add((i, j))
                pairs.append((ids[i], ids[j]))
        return pairs
    if atlas is None:
        raise ValueError(f"mode {mode!r} needs an atlas subject")
    if n > len(ids):
        raise ValueError(f"{n} atlas pairs requested but only {len(ids)} subjects")
    chosen = [ids[i] for i in sorted(rng.choice(len(ids), size=n, replace=False))]
    return [(atlas.id, s) if mode == "atlas_to_scan" else (s, atlas.id) for s in chosen]


def save_pairs(path: PathLike, pairs: Sequence[Tuple[str, str]]) -> Path:
    """Write ``(moving_id, fixed_id)`` pairs as JSON ``{"format", "pairs": [[moving, fixed], ...]}``."""
    return _write_json(path, {"format": PAIRS_FORMAT, "pairs": [[str(m), str(f)] for m, f in pairs]})


def load_pairs(path: PathLike) -> List[Tuple[str, str]]:
    """Inverse of :func:`save_pairs`."""
    payload = _read_json(path, "pairs")
    pairs = payload.get("pairs")
    if not isinstance(pairs, list) or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in pairs):
        raise ValueError(f"pairs file {path} needs 'pairs': a list of [moving_id, fixed_id]")
    return [(str(m), str(f)) for m, f in pairs]
