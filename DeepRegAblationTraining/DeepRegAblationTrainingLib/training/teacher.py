"""Teacher fields for distillation: the project's own instance optimisation, run once per training pair.

A *teacher field* is what :func:`DeepRegAblationLib.registration.refine.refine` finds for a training pair
at full resolution, started from the centre-of-mass translation (as ``register`` starts the shipped
3D models), brought onto the pair's model grids: ``disp_vox`` ``(3, D, H, W)`` float32, fixed
model-grid voxel ``x`` -> moving model-grid voxel ``x + disp_vox(x)`` (tensor axis order, the
same direction and units as the network's ``disp_vox``). Training adds a term pulling the
network's field towards it (``losses.CompositeLoss(distill_weight=...)``).

Cache: one ``<moving>__<fixed>.npz`` per ordered pair in a folder, written atomically, with a
``meta_json`` entry recording what the field depends on (:func:`teacher_fingerprint`): the SHA-1
of both image files, the preprocessing (grid spacing, shape, centring), the two model grids and the
refinement schedule with its loss constants. :func:`load_teacher` refuses, by name, a file whose
record differs from the pair it is asked for (another subject, another grid, a changed schedule);
:func:`build_teacher_cache` recomputes such files.

Training: :class:`DistillationPairs` mixes the teacher pairs of a folder into a run's training pairs,
each augmented like any training pair, its teacher field carried through both augmentations
(:func:`augmented_target`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from DeepRegAblationLib import fields, geometry, resampling
from DeepRegAblationLib.registration import refine as refinement
from DeepRegAblationLib.registration.alignment import center_of_mass_alignment
from DeepRegAblationLib.imageio import ImageData, normalize_intensity

from ..augment import invert_field, seed_from

__all__ = [
    "TEACHER_FORMAT", "TeacherMismatch", "file_sha1", "schedule_record", "teacher_fingerprint", "fingerprint_difference",
    "teacher_path", "save_teacher", "load_teacher", "teacher_pairs", "mapping_on_model_grids", "augmented_target",
    "TeacherSource", "build_teacher_cache", "teacher_files", "DistillationPairs",
    "build_training_teachers",
]

PathLike = Union[str, os.PathLike]
TEACHER_FORMAT = "deepreg-ablation-teacher/1"
GRID_TOLERANCE_MM = 1e-4
"""Two model grids are the same when their ``ijk_to_ras`` agree to this (mm)."""


class TeacherMismatch(ValueError):
    """A cached teacher field that was computed for another pair, grid or schedule."""


def file_sha1(path: PathLike) -> str:
    """SHA-1 of a file's bytes (hex)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def schedule_record(schedule: Union[str, "refinement.RefineSchedule"]) -> Dict[str, Any]:
    """The refinement schedule and the loss constants it runs with, as JSON-safe data."""
    plan = refinement.refine_schedule(schedule)
    if plan is None:
        raise ValueError(f"a teacher needs a refinement schedule, got {schedule!r}")
    record = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(plan).items()}
    if not record.get("flat_window"):  # the flattening stop is off: its settings change nothing
        record.pop("flat_window", None)
        record.pop("flat_tolerance", None)
    record.update(lncc_window=refinement.REFINE_LNCC_WINDOW, diffusion_weight=refinement.REFINE_DIFFUSION_WEIGHT,
                  folding_weight=refinement.REFINE_FOLDING_WEIGHT, foreground=refinement.REFINE_FOREGROUND, start="com")
    return record


def teacher_fingerprint(
    moving_sha1: str, fixed_sha1: str, preprocess: Mapping[str, Any], moving_grid: np.ndarray, fixed_grid: np.ndarray,
    shape: Sequence[int], schedule: Mapping[str, Any],
) -> Dict[str, Any]:
    """What a teacher field depends on (stored in its file, compared on load)."""
    return {
        "format": TEACHER_FORMAT,
        "moving_sha1": moving_sha1,
        "fixed_sha1": fixed_sha1,
        "preprocess": dict(preprocess),
        "moving_grid": np.asarray(moving_grid, dtype=np.float64).round(6).tolist(),
        "fixed_grid": np.asarray(fixed_grid, dtype=np.float64).round(6).tolist(),
        "shape": [int(n) for n in shape],
        "schedule": dict(schedule),
    }


def fingerprint_difference(found: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """``""`` when two fingerprints describe the same field, else what differs, in words."""
    problems = []
    for key, words in (("format", "file format"), ("moving_sha1", "moving image file"), ("fixed_sha1", "fixed image file"),
                       ("preprocess", "preprocessing"), ("shape", "model grid shape"), ("schedule", "refinement schedule")):
        if found.get(key) != expected.get(key):
            problems.append(f"{words} ({found.get(key)!r} vs {expected.get(key)!r})"
                            if key in ("format", "shape") else words)
    for key, words in (("moving_grid", "moving model grid"), ("fixed_grid", "fixed model grid")):
        a, b = np.asarray(found.get(key, np.nan), dtype=float), np.asarray(expected.get(key), dtype=float)
        if a.shape != b.shape or not np.allclose(a, b, atol=GRID_TOLERANCE_MM, rtol=0):
            problems.append(words)
    return ", ".join(problems)


def teacher_path(folder: PathLike, moving_id: str, fixed_id: str) -> Path:
    return Path(folder) / f"{moving_id}__{fixed_id}.npz"


def save_teacher(path: PathLike, disp_vox: np.ndarray, fingerprint: Mapping[str, Any], info: Mapping[str, Any]) -> Path:
    """Write one teacher field atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, disp_vox=np.asarray(disp_vox, dtype=np.float32),
                                meta_json=np.array(json.dumps(dict(fingerprint))), info_json=np.array(json.dumps(dict(info))))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_teacher(path: PathLike, expected: Mapping[str, Any]) -> np.ndarray:
    """The ``(3, *S)`` teacher field of ``path`` when its record matches ``expected``.

    Raises:
        FileNotFoundError: no such file.
        TeacherMismatch: the file is unreadable, or was computed for another pair, grid or schedule
            (the message names the file and what differs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher field not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            found = json.loads(str(data["meta_json"]))
            disp = np.asarray(data["disp_vox"], dtype=np.float32)
    except Exception as exc:  # BadZipFile, EOFError, KeyError, ValueError...: damaged or not ours
        raise TeacherMismatch(f"teacher field {path} cannot be read ({type(exc).__name__}: {exc})") from None
    difference = fingerprint_difference(found, expected)
    if difference:
        raise TeacherMismatch(f"teacher field {path} was computed for another {difference}; recompute it")
    if tuple(disp.shape) != (3,) + tuple(expected["shape"]) or not np.all(np.isfinite(disp)):
        raise TeacherMismatch(f"teacher field {path} has shape {disp.shape} or non-finite values; recompute it")
    return disp


def teacher_pairs(subjects: Sequence[Any], per_dataset: int, seed: int = 0) -> List[Tuple[str, str]]:
    """Up to ``per_dataset`` ordered ``(moving_id, fixed_id)`` pairs within each dataset of ``subjects``.

    A seeded permutation of all ordered pairs of each dataset; a larger ``per_dataset`` extends the
    same list (the first pairs stay the same), so a cache can grow across sessions.
    """
    groups: Dict[str, List[str]] = {}
    for subject in subjects:
        groups.setdefault(str(subject.dataset), []).append(subject.id)
    pairs: List[Tuple[str, str]] = []
    for index, name in enumerate(sorted(groups)):
        ids = sorted(groups[name])
        ordered = [(m, f) for m in ids for f in ids if m != f]
        order = np.random.default_rng(seed_from(seed, index, 11)).permutation(len(ordered))
        pairs += [ordered[i] for i in order[: int(per_dataset)]]
    return pairs


def mapping_on_model_grids(
    affine_ras: np.ndarray, deform_ras: torch.Tensor, deform_grid: np.ndarray,
    fixed_grid: np.ndarray, moving_grid: np.ndarray, shape: Sequence[int],
) -> np.ndarray:
    """A mapping ``q(p) = A (p + u(p))`` as ``disp_vox`` ``(3, *shape)`` between two model grids.

    ``u`` (``(3, K, J, I)`` RAS mm on ``deform_grid``) is interpolated linearly onto the fixed model
    grid (border values outside); the result is moving-grid voxel (tensor axis order) of ``q`` minus
    the fixed-grid voxel, so ``warp(moving_on_moving_grid, disp_vox)`` is the moving image mapped
    onto the fixed model grid.
    """
    shape = tuple(int(n) for n in shape)
    u = resampling.resample_channels(np.asarray(deform_ras, dtype=np.float32), deform_grid, fixed_grid, shape,
                                   mode="linear", fill_value=None)
    disp_ras = geometry.affine_after_displacement(np.asarray(affine_ras, dtype=np.float64), torch.from_numpy(u), fixed_grid)
    ras_to_kji = np.linalg.inv(moving_grid)[[2, 1, 0]]
    coords = geometry.affine_on_grid(ras_to_kji @ fixed_grid, shape, linear=ras_to_kji[:, :3], field=disp_ras)
    identity = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    return (coords - identity).numpy().astype(np.float32)


def augmented_target(teacher_vox: torch.Tensor, fixed_aug_vox: torch.Tensor, moving_aug_vox: torch.Tensor) -> torch.Tensor:
    """The teacher field of a pair after each image was augmented by its own spatial field.

    ``fixed_aug(x) = fixed(x + a_f(x))`` and ``moving_aug(y) = moving(y + a_m(y))`` (``Augment``'s
    ``disp_vox``); the teacher maps fixed voxel ``z`` to moving voxel ``z + t(z)``. The target maps
    ``x`` to the ``y`` with ``y + a_m(y) = x + a_f(x) + t(x + a_f(x))``:
    ``compose(inverse(a_m), compose(t, a_f))``. All ``(B, ndim, *S)`` voxels, tensor axis order.
    """
    through_fixed = fields.compose(teacher_vox, fixed_aug_vox)
    return fields.compose(invert_field(moving_aug_vox), through_fixed)


class TeacherSource:
    """Computes teacher fields for pairs of ``subjects`` (full-resolution images kept in memory)."""

    def __init__(self, subjects: Sequence[Any], preprocess: Any, schedule: Union[str, "refinement.RefineSchedule"] = "recommended"):
        self.subjects = {s.id: s for s in subjects}
        self.preprocess = preprocess
        self.schedule = schedule
        self.schedule_record = schedule_record(schedule)
        self._images: Dict[str, Tuple[ImageData, str, np.ndarray]] = {}

    def image(self, sid: str) -> Tuple[ImageData, str, np.ndarray]:
        """``(normalised full-resolution image, file SHA-1, (4, 4) model grid)`` of one subject."""
        if sid not in self._images:
            from ..data import read_volume

            subject = self.subjects[sid]
            image = read_volume(subject.image, "image")
            grid = self.preprocess.apply(image, None, name=f"subject {sid}")["ijk_to_ras"]
            normalised = ImageData(normalize_intensity(image.array.astype(np.float32)), image.ijk_to_ras, sid)
            self._images[sid] = (normalised, file_sha1(subject.image), np.asarray(grid, dtype=np.float64))
        return self._images[sid]

    def fingerprint(self, moving_id: str, fixed_id: str) -> Dict[str, Any]:
        _, moving_sha1, moving_grid = self.image(moving_id)
        _, fixed_sha1, fixed_grid = self.image(fixed_id)
        return teacher_fingerprint(moving_sha1, fixed_sha1, self.preprocess.to_dict(), moving_grid, fixed_grid,
                                   self.preprocess.shape, self.schedule_record)

    def compute(self, moving_id: str, fixed_id: str) -> Tuple[np.ndarray, Dict[str, Any]]:
        """``(disp_vox (3, *S), info)``: the refinement of one pair from its centre-of-mass start."""
        moving, _, moving_grid = self.image(moving_id)
        fixed, _, fixed_grid = self.image(fixed_id)
        t0 = time.perf_counter()
        start = center_of_mass_alignment(fixed, moving, fixed.array, moving.array)
        result = refinement.refine(fixed, moving, start, schedule=self.schedule, device="cpu")
        disp = mapping_on_model_grids(result.affine_ras, result.deform_ras, result.grid_ijk_to_ras,
                                      fixed_grid, moving_grid, self.preprocess.shape)
        info = {"moving": moving_id, "fixed": fixed_id, "seconds": time.perf_counter() - t0,
                "levels": result.history}
        return disp, info


def build_teacher_cache(
    source: TeacherSource, pairs: Sequence[Tuple[str, str]], folder: PathLike,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> Dict[str, int]:
    """Make ``folder`` hold a valid teacher field for every pair: reuse valid files, (re)compute the others.

    Resumable: a killed run keeps every file written so far (each is atomic). Returns counts
    ``{"reused", "computed", "recomputed"}``.
    """
    counts = {"reused": 0, "computed": 0, "recomputed": 0}
    report = progress or (lambda done, total, message: None)
    for index, (moving_id, fixed_id) in enumerate(pairs):
        path = teacher_path(folder, moving_id, fixed_id)
        expected = source.fingerprint(moving_id, fixed_id)
        state = "computed"
        if path.is_file():
            try:
                load_teacher(path, expected)
                counts["reused"] += 1
                report(index + 1, len(pairs), f"{path.name}: valid, reused")
                continue
            except TeacherMismatch as exc:
                state = "recomputed"
                report(index, len(pairs), f"{exc}")
        disp, info = source.compute(moving_id, fixed_id)
        save_teacher(path, disp, expected, info)
        counts[state] += 1
        report(index + 1, len(pairs), f"{path.name}: {state} in {info['seconds']:.1f} s")
    return counts


def teacher_files(folder: PathLike) -> List[Tuple[str, str, Path]]:
    """``(moving_id, fixed_id, path)`` of every ``<moving>__<fixed>.npz`` in ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher folder not found: {folder}")
    found = []
    for path in sorted(folder.glob("*.npz")):
        moving_id, sep, fixed_id = path.stem.partition("__")
        if sep and moving_id and fixed_id:
            found.append((moving_id, fixed_id, path))
    if not found:
        raise FileNotFoundError(f"teacher folder {folder} holds no <moving>__<fixed>.npz teacher fields")
    return found


class DistillationPairs(torch.utils.data.Dataset):
    """A training :class:`~DeepRegAblationTrainingLib.data.PairDataset` whose items are, with probability
    ``fraction``, one of the teacher pairs of ``folder`` (with ``"teacher_disp_vox"``), else its own. With
    the base dataset's dataset weights (the 3D brain data) a teacher item first draws its dataset with
    those weights, then one of that dataset's teacher pairs (the base dataset's own pair where it has none).

    A teacher item is augmented as the base dataset augments its pairs (same seeds), and its target is
    the teacher field carried through both augmentations (:func:`augmented_target`). Items are a pure
    function of ``(seed, epoch, index)``, as the base dataset's.

    Raises (at construction, before any step):
        ValueError: a teacher pair with a subject that is not a training subject (validation subjects'
            fields must never reach training).
        TeacherMismatch: a file computed for another image, grid, preprocessing or schedule, or damaged
            (the message names it: recompute with ``deepreg-ablation teacher``).
    """

    def __init__(self, base: Any, folder: PathLike, fraction: float = 1.0,
                 schedule: Union[str, "refinement.RefineSchedule"] = "recommended"):
        self.base = base
        self.fraction = float(fraction)
        self.schedule_record = schedule_record(schedule)
        self._sha1: Dict[str, str] = {}
        files = teacher_files(folder)
        known = {s.id for s in base.subjects}
        foreign = sorted({i for m, f, _ in files for i in (m, f) if i not in known})
        if foreign:
            raise ValueError(
                f"teacher folder {folder}: fields of subjects that are not training subjects of this run: {foreign[:8]}"
                f"{' ...' if len(foreign) > 8 else ''} (validation subjects must not reach training)"
            )
        self.pairs = [(m, f) for m, f, _ in files]
        self.paths = {(m, f): p for m, f, p in files}
        datasets = {s.id: str(s.dataset) for s in base.subjects}
        self.by_dataset: Dict[str, List[Tuple[str, str]]] = {}
        for moving_id, fixed_id in self.pairs:
            self.by_dataset.setdefault(datasets[fixed_id], []).append((moving_id, fixed_id))
        for pair in self.pairs:  # every file checked before the first step
            load_teacher(self.paths[pair], self.expected(*pair))

    @property
    def subjects(self):
        return self.base.subjects

    @property
    def store(self):
        return self.base.store

    def expected(self, moving_id: str, fixed_id: str) -> Dict[str, Any]:
        """The fingerprint a valid teacher field of this pair has (model grids from the base dataset's store)."""
        for sid in (moving_id, fixed_id):
            if sid not in self._sha1:
                self._sha1[sid] = file_sha1(self.base.store.subjects[sid].image)
        preprocess = self.base.preprocess
        return teacher_fingerprint(
            self._sha1[moving_id], self._sha1[fixed_id], preprocess.to_dict(),
            self.base.store.get(moving_id)["ijk_to_ras"], self.base.store.get(fixed_id)["ijk_to_ras"],
            preprocess.shape, self.schedule_record,
        )

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        rng = np.random.default_rng(seed_from(self.base.seed, self.base.epoch, int(index), 21))
        if rng.random() >= self.fraction:
            return self.base[index]
        candidates = self.pairs
        weights = getattr(self.base, "group_weights", None)
        if weights is not None:  # the datasets keep the base dataset's weights; their teacher pairs are drawn evenly
            names = sorted(self.base.groups)
            dataset = names[int(rng.choice(len(names), p=weights))]
            candidates = self.by_dataset.get(dataset) or self.pairs
        moving_id, fixed_id = candidates[int(rng.integers(len(candidates)))]
        return self.teacher_item(int(index), moving_id, fixed_id)

    def teacher_item(self, index: int, moving_id: str, fixed_id: str) -> Dict[str, Any]:
        """The pair ``moving_id -> fixed_id`` augmented as item ``index`` of the epoch, with its teacher field."""
        from ..augment import seeded_generator
        from ..data import augment_sample, make_pair_item

        base, epoch = self.base, self.base.epoch
        teacher = torch.from_numpy(load_teacher(self.paths[(moving_id, fixed_id)], self.expected(moving_id, fixed_id)))
        moving, fixed = base.store.get(moving_id), base.store.get(fixed_id)
        if base.augment is not None:
            generator = seeded_generator(base.seed, epoch, index, 3)
            moving = augment_sample(moving, base.augment, generator)
            fixed = augment_sample(fixed, base.augment, generator)
            teacher = augmented_target(teacher[None], fixed["disp_vox"][None], moving["disp_vox"][None])[0]
        item = make_pair_item(moving, fixed, f"{moving_id}->{fixed_id}", compact_labels=True,
                              max_labels=base.max_labels, generator=seeded_generator(base.seed, epoch, index, 6))
        if tuple(item["fixed"].shape[1:]) != tuple(teacher.shape[1:]):
            raise ValueError(f"teacher field of {moving_id}->{fixed_id} has shape {tuple(teacher.shape)}, "
                             f"the pair {tuple(item['fixed'].shape)}")
        item["teacher_disp_vox"] = teacher.to(torch.float32)
        return item


def build_training_teachers(
    data_spec: Mapping[str, Any], out: PathLike, per_dataset: int, schedule: str = "recommended", seed: int = 0,
    threads: Optional[int] = None, progress: Optional[Callable[[int, int, str], None]] = None,
) -> Dict[str, int]:
    """The ``teacher`` command: teacher fields of up to ``per_dataset`` training pairs of each dataset in ``out``.

    The training subjects and the model grids are those a training run on ``data_spec`` uses (its split
    included); validation subjects are never paired. Returns the counts of :func:`build_teacher_cache`.
    """
    from ..data import build_data

    if threads is not None:
        torch.set_num_threads(int(threads))
    bundle = build_data(dict(data_spec, augment=False), seed=seed)
    subjects = list(bundle.train.subjects)
    pairs = teacher_pairs(subjects, per_dataset, seed)
    return build_teacher_cache(TeacherSource(subjects, bundle.preprocess, schedule), pairs, out, progress)
