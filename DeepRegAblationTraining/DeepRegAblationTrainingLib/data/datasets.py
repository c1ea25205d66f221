"""Pair datasets: random training pairs, the fixed validation pairs, synthetic pairs with a known answer.

Every dataset item is a dict of tensors WITHOUT batch dimension::

    {"moving": (1, *S) float32, "fixed": (1, *S) float32,
     "moving_labels": (1, *S) int64, "fixed_labels": (1, *S) int64      (when both have labels),
     "fixed_foreground": (1, *S) uint8   (the fixed labels > 0 before any renumbering, when the fixed image has labels),
     "spacing_mm": (ndim,) float32 (tensor axis order), "pair_id": "moving_id->fixed_id",
     "disp_true_vox": (ndim, *S) float32                                (synthetic pairs only)}

Items are pure functions of ``(seed, epoch, index)``: each dataset has ``set_epoch(epoch)``
and draws its pair and augmentation from generators seeded with those numbers, so a run can
be resumed, sharded across processes and loaded by any number of workers with the same result.
:func:`collate_pairs` stacks items into a batch.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from DeepRegAblationLib import fields
from DeepRegAblationLib.imageio import ImageData

from ..augment import Augment, seed_from, seeded_generator
from .heads import synthetic_head
from .preprocess import Preprocess
from .splits import PAIR_MODES
from .subjects import Subject

__all__ = [
    "SubjectStore", "compact_label_pair", "make_pair_item", "augment_sample", "mirror_sample", "PairDataset", "FixedPairDataset", "SourceLike",
    "SyntheticPairDataset", "collate_pairs",
]


def _loaded_to_sample(loaded: Dict[str, Any]) -> Dict[str, Any]:
    return {"image": loaded["image"], "labels": loaded["labels"], "spacing_mm": loaded["spacing_mm"],
            "ijk_to_ras": loaded["ijk_to_ras"]}


class SubjectStore:
    """Loads subjects through a :class:`Preprocess`, optionally keeping them in memory.

    ``get(sid)`` returns ``{"image": (1, *S) float32, "labels": (1, *S) int64 or None, "spacing_mm", "ijk_to_ras"
    ((4, 4) of the model grid), "dataset"}``.
    """

    def __init__(self, subjects: Sequence[Subject], preprocess: Preprocess, cache: bool):
        self.subjects = {s.id: s for s in subjects}
        self.preprocess = preprocess
        self.cache = bool(cache)
        self._memory: Dict[str, Dict[str, Any]] = {}

    def get(self, sid: str) -> Dict[str, Any]:
        hit = self._memory.get(sid)
        if hit is not None:
            return hit
        subject = self.subjects.get(sid)
        if subject is None:
            raise ValueError(f"unknown subject id {sid!r}")
        sample = _loaded_to_sample(self.preprocess.load(subject))
        sample["dataset"] = subject.dataset
        if self.cache:
            self._memory[sid] = sample
        return sample


def _default_cache(preprocess: Preprocess, cache: Optional[bool]) -> bool:
    return (preprocess.ndim == 2) if cache is None else bool(cache)


def _pad_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``(C, *S)`` symmetrically (extra voxel at the end) to ``(C, *shape)``."""
    pads = []
    for n, target in zip(reversed(tensor.shape[1:]), reversed(list(shape))):
        extra = int(target) - int(n)
        pads += [extra // 2, extra - extra // 2]
    return torch.nn.functional.pad(tensor, pads) if any(pads) else tensor


def compact_label_pair(
    a: torch.Tensor, b: torch.Tensor, max_labels: Optional[int] = None, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Renumber two label maps jointly to ``0 .. L-1`` (0 stays background).

    Dice per label does not change; a one-hot of the pair then has ``L`` channels, the labels
    present, instead of ``max label + 1`` (e.g. 140 instead of 208 for the MICCAI labels).
    With ``max_labels``, only that many structures (drawn with ``generator``) keep their own
    number and the others join the background: the Dice loss of a training step then costs a
    ``max_labels + 1`` channel one-hot (the segmentation guidance's main cost), and over many
    steps every structure is drawn.
    """
    values, inverse = torch.unique(torch.cat([a.reshape(-1), b.reshape(-1)]), return_inverse=True)
    if int(values[0]) != 0:  # keep 0 as background so that label 1.. are structures
        inverse = inverse + 1
    structures = len(values) - 1 if int(values[0]) == 0 else len(values)
    if max_labels is not None and structures > int(max_labels):
        keep = torch.randperm(structures, generator=generator)[: int(max_labels)] + 1
        lookup = torch.zeros(structures + 1, dtype=inverse.dtype)
        lookup[keep] = torch.arange(1, int(max_labels) + 1, dtype=inverse.dtype)
        inverse = lookup[inverse]
    return inverse[: a.numel()].reshape(a.shape), inverse[a.numel():].reshape(b.shape)


def make_pair_item(
    moving: Dict[str, Any],
    fixed: Dict[str, Any],
    pair_id: str,
    compact_labels: bool = False,
    max_labels: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Any]:
    """Assemble a dataset item from two preprocessed samples (padded to a common shape if needed).

    Label maps are included only when both samples have one and they come from the same
    dataset (``sample["dataset"]``): a label set belongs to its dataset. ``compact_labels``
    renumbers them jointly (:func:`compact_label_pair`, with ``max_labels`` and ``generator``).
    ``"fixed_foreground"`` (uint8 ``(1, *S)``, whenever the fixed sample has labels, also in a pair
    across datasets) keeps the fixed image's labelled voxels of all its structures (``CompositeLoss``'s
    similarity mask), since a compacted map may hold only some.
    """
    shape_m, shape_f = tuple(moving["image"].shape[1:]), tuple(fixed["image"].shape[1:])
    if len(shape_m) != len(shape_f):
        raise ValueError(f"pair {pair_id}: a {len(shape_m)}D and a {len(shape_f)}D image cannot be paired")
    common = tuple(max(a, b) for a, b in zip(shape_m, shape_f))
    item = {
        "moving": _pad_to(moving["image"], common),
        "fixed": _pad_to(fixed["image"], common),
        "spacing_mm": torch.tensor(fixed["spacing_mm"], dtype=torch.float32),
        "pair_id": pair_id,
    }
    if fixed.get("labels") is not None:
        item["fixed_foreground"] = (_pad_to(fixed["labels"], common) > 0).to(torch.uint8)
    same_dataset = moving.get("dataset") == fixed.get("dataset")
    if moving.get("labels") is not None and fixed.get("labels") is not None and same_dataset:
        moving_labels, fixed_labels = _pad_to(moving["labels"], common), _pad_to(fixed["labels"], common)
        if compact_labels:
            moving_labels, fixed_labels = compact_label_pair(moving_labels, fixed_labels, max_labels, generator)
        item["moving_labels"], item["fixed_labels"] = moving_labels, fixed_labels
    return item


def augment_sample(sample: Dict[str, Any], augment: Augment, generator: torch.Generator) -> Dict[str, Any]:
    """A store sample augmented (image and labels alike); ``"disp_vox"`` is the spatial field applied
    (``augmented(x) = original(x + disp_vox(x))``)."""
    out = augment(sample["image"], sample["labels"], sample["spacing_mm"], generator)
    return {"image": out["image"], "labels": out.get("labels"), "spacing_mm": sample["spacing_mm"], "dataset": sample.get("dataset"),
            "disp_vox": out["disp_vox"]}


def mirror_sample(sample: Dict[str, Any]) -> Dict[str, Any]:
    """A (store or augmented) sample mirrored left-right: its last tensor axis reversed (R for the RAS-reoriented 3D
    volumes, ``(C, S, A, R)``), image and labels alike; a copy, the sample itself is left as it was.

    An augmentation field ``disp_vox`` ``(ndim, *S)`` is mirrored with them (reversed, its last component negated), so
    ``augmented(x) = original(x + disp_vox(x))`` still holds between the mirrored images.
    """
    out = dict(sample)
    out["image"] = torch.flip(sample["image"], dims=(-1,))
    if sample.get("labels") is not None:
        out["labels"] = torch.flip(sample["labels"], dims=(-1,))
    if sample.get("disp_vox") is not None:
        out["disp_vox"] = fields.mirror_field(sample["disp_vox"][None])[0]
    return out


class PairDataset(Dataset):
    """Random training pairs, a pure function of ``(seed, epoch, index)``.

    Args:
        subjects: training subjects.
        preprocess: :class:`Preprocess`.
        mode: ``"scan_to_scan"`` (moving and fixed two different subjects), ``"atlas_to_scan"``
            (moving = ``atlas``, fixed = a subject) or ``"scan_to_atlas"`` (moving = a subject,
            fixed = ``atlas``: the seed study's setting).
        atlas: the atlas :class:`Subject` (atlas modes).
        augment: :class:`~.augment.Augment` applied independently to moving and fixed, or ``None``.
        pairs_per_epoch: ``len(self)`` (default: the number of subjects).
        seed: base seed.
        cache: keep preprocessed subjects in memory (default: for 2D only).
        dataset_weights: scan-to-scan pairs drawn within datasets (``Subject.dataset``): item
            ``i`` picks a dataset with these relative weights, then two different subjects of it
            (label maps are compacted per pair). ``None``: the plain scheme below.
        cross_dataset: with ``dataset_weights``, the probability that the partner comes from any
            dataset instead (such pairs carry no labels: image similarity only).
        max_labels: with ``dataset_weights``, the structures kept per pair for the Dice loss
            (:func:`compact_label_pair`; ``None``: all).
        mirror: the probability that an item's two images (and labels) are both mirrored left-right
            (:func:`mirror_sample`, after the augmentation; default 0: never). Both or neither, so a pair stays
            a pair of the same hemispheres.
        heads: the probability that an item's two images, when they are not heads themselves, are each placed in the
            skull of a head (:func:`.heads.synthetic_head`, before the augmentation; default 0: never): a training
            subject of ``head_dataset`` with labels, drawn per image.
        head_dataset: the dataset (``Subject.dataset``) whose scans are heads with skull (default ``"ixi"``).

    In each epoch the subjects are visited in a seeded permutation (index ``i`` -> subject
    ``perm[i % n]``); in scan-to-scan mode the partner is another random subject.
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        preprocess: Preprocess,
        mode: str = "scan_to_scan",
        atlas: Optional[Subject] = None,
        augment: Optional[Augment] = None,
        pairs_per_epoch: Optional[int] = None,
        seed: int = 0,
        cache: Optional[bool] = None,
        dataset_weights: Optional[Mapping[str, float]] = None,
        cross_dataset: float = 0.0,
        max_labels: Optional[int] = None,
        mirror: float = 0.0,
        heads: float = 0.0,
        head_dataset: str = "ixi",
    ):
        subjects = list(subjects)
        self.max_labels = max_labels
        if not 0.0 <= float(mirror) <= 1.0:
            raise ValueError(f"mirror must be a probability in [0, 1], got {mirror!r}")
        self.mirror = float(mirror)
        if not 0.0 <= float(heads) <= 1.0:
            raise ValueError(f"heads must be a probability in [0, 1], got {heads!r}")
        self.heads, self.head_dataset = float(heads), str(head_dataset)
        self.head_ids = [s.id for s in subjects if s.dataset == self.head_dataset and s.labels is not None]
        if self.heads > 0 and not self.head_ids:
            raise ValueError(f"synthetic heads need a training subject of dataset {self.head_dataset!r} with labels "
                             f"(its skull around another brain), and there is none")
        if mode not in PAIR_MODES:
            raise ValueError(f"mode must be one of {list(PAIR_MODES)}, got {mode!r}")
        if not subjects:
            raise ValueError("PairDataset needs at least one subject (the dataset is empty)")
        if mode == "scan_to_scan" and len(subjects) < 2:
            raise ValueError(f"scan_to_scan pairs need at least 2 subjects, got {len(subjects)}")
        if mode != "scan_to_scan" and atlas is None:
            raise ValueError(f"mode {mode!r} needs an atlas subject")
        self.subjects = subjects
        self.mode = mode
        self.atlas = atlas
        self.augment = augment
        self.pairs_per_epoch = int(pairs_per_epoch) if pairs_per_epoch is not None else len(subjects)
        if self.pairs_per_epoch < 1:
            raise ValueError(f"pairs_per_epoch must be >= 1, got {pairs_per_epoch}")
        self.seed = int(seed)
        self.epoch = 0
        self.preprocess = preprocess
        store_subjects = subjects + ([atlas] if atlas is not None else [])
        self.store = SubjectStore(store_subjects, preprocess, _default_cache(preprocess, cache))
        self._perm = self._permutation(0)
        self.cross_dataset = float(cross_dataset)
        self.groups: Dict[str, List[str]] = {}
        self.group_weights: Optional[np.ndarray] = None
        if dataset_weights is not None:
            if mode != "scan_to_scan":
                raise ValueError("dataset_weights needs scan_to_scan pairs")
            for subject in subjects:
                self.groups.setdefault(str(subject.dataset), []).append(subject.id)
            unknown = sorted(set(dataset_weights) - set(self.groups))
            small = sorted(g for g in dataset_weights if g in self.groups and len(self.groups[g]) < 2)
            if unknown or small:
                raise ValueError(
                    f"dataset_weights name datasets without 2 training subjects: {unknown + small} "
                    f"(training subjects per dataset: { {g: len(v) for g, v in self.groups.items()} })"
                )
            weights = np.array([max(0.0, float(dataset_weights.get(g, 0.0))) for g in sorted(self.groups)])
            if not weights.sum() > 0:
                raise ValueError(f"dataset_weights must have a positive weight, got {dict(dataset_weights)}")
            self.group_weights = weights / weights.sum()

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(seed_from(self.seed, epoch, 1)).permutation(len(self.subjects))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairs and augmentations ``__getitem__`` returns."""
        self.epoch = int(epoch)
        self._perm = self._permutation(self.epoch)

    def __len__(self) -> int:
        return self.pairs_per_epoch

    def pair_ids(self, index: int) -> Tuple[str, str]:
        """``(moving_id, fixed_id)`` of item ``index`` in the current epoch."""
        if self.group_weights is not None:
            rng = np.random.default_rng(seed_from(self.seed, self.epoch, index, 5))
            names = sorted(self.groups)
            members = self.groups[names[int(rng.choice(len(names), p=self.group_weights))]]
            moving_id = members[int(rng.integers(len(members)))]
            if rng.random() < self.cross_dataset:
                members = [s.id for s in self.subjects]
            others = [m for m in members if m != moving_id]
            return moving_id, others[int(rng.integers(len(others)))]
        n = len(self.subjects)
        subject = self.subjects[int(self._perm[index % n])]
        if self.mode == "atlas_to_scan":
            return self.atlas.id, subject.id
        if self.mode == "scan_to_atlas":
            return subject.id, self.atlas.id
        rng = np.random.default_rng(seed_from(self.seed, self.epoch, index, 2))
        other = int(rng.integers(n - 1))
        own = int(self._perm[index % n])
        other = other + 1 if other >= own else other
        return subject.id, self.subjects[other].id

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        moving_id, fixed_id = self.pair_ids(int(index))
        moving, fixed = self.store.get(moving_id), self.store.get(fixed_id)
        if self.heads > 0:
            moving, fixed = self._in_heads(moving, fixed, int(index))
        if self.augment is not None:
            generator = seeded_generator(self.seed, self.epoch, int(index), 3)
            moving = augment_sample(moving, self.augment, generator)
            fixed = augment_sample(fixed, self.augment, generator)
        if self.mirror > 0:
            draw = torch.rand((), generator=seeded_generator(self.seed, self.epoch, int(index), 7))
            if float(draw) < self.mirror:
                moving, fixed = mirror_sample(moving), mirror_sample(fixed)
        grouped = self.group_weights is not None
        return make_pair_item(
            moving, fixed, f"{moving_id}->{fixed_id}", compact_labels=grouped,
            max_labels=self.max_labels if grouped else None, generator=seeded_generator(self.seed, self.epoch, int(index), 6),
        )

    def _in_heads(self, moving: Dict[str, Any], fixed: Dict[str, Any], index: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """With probability ``heads``, each image of the pair that is not a head placed in a training head's skull."""
        rng = np.random.default_rng(seed_from(self.seed, self.epoch, index, 8))
        if rng.random() >= self.heads:
            return moving, fixed
        placed = []
        for sample in (moving, fixed):
            head_id = self.head_ids[int(rng.integers(len(self.head_ids)))]
            placed.append(sample if sample.get("dataset") == self.head_dataset else synthetic_head(sample, self.store.get(head_id)))
        return placed[0], placed[1]


class FixedPairDataset(Dataset):
    """The saved validation pairs: item ``i`` is ``pairs[i]`` = ``(moving_id, fixed_id)``, no augmentation.

    ``subjects`` must hold every id named in ``pairs`` (include the atlas for atlas pairs).
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        pairs: Sequence[Tuple[str, str]],
        preprocess: Preprocess,
        cache: Optional[bool] = None,
    ):
        subjects = list(subjects)
        pairs = [(str(m), str(f)) for m, f in pairs]
        if not pairs:
            raise ValueError("FixedPairDataset needs at least one pair (the dataset is empty)")
        known = {s.id for s in subjects}
        unknown = sorted({i for p in pairs for i in p} - known)
        if unknown:
            raise ValueError(f"pairs name subject ids that are not in the subject list: {unknown}")
        self.subjects = subjects
        self.pairs = pairs
        self.preprocess = preprocess
        self.store = SubjectStore(subjects, preprocess, _default_cache(preprocess, cache))

    def set_epoch(self, epoch: int) -> None:  # same interface as the random datasets
        pass

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        moving_id, fixed_id = self.pairs[int(index)]
        return make_pair_item(self.store.get(moving_id), self.store.get(fixed_id), f"{moving_id}->{fixed_id}")


SourceLike = Union[Subject, ImageData, Mapping[str, Any], np.ndarray, torch.Tensor]


class SyntheticPairDataset(Dataset):
    """Pairs with a known answer: ``fixed`` = an (intensity-augmented) source, ``moving`` = its deformed copy.

    Args:
        image_subjects_or_arrays: sources, each a :class:`Subject`, an ``ImageData``, a dict
            ``{"image": ImageData | array (K, J, I), "labels": same | None, "id": str}``, or a bare
            array (1 mm voxels, identity geometry).
        preprocess: :class:`Preprocess` (applied once per source, kept in memory).
        augment: :class:`~.augment.Augment` drawing the deformation (``Augment.synthetic_pair``).
        n: ``len(self)``.
        seed: base seed; item ``i`` of epoch ``e`` uses the generator of ``(seed, e, i)``.

    Items carry ``disp_true_vox`` ``(ndim, *S)``: ``warp(moving, disp_true_vox) ~= fixed``.
    """

    def __init__(
        self,
        image_subjects_or_arrays: Sequence[SourceLike],
        preprocess: Preprocess,
        augment: Augment,
        n: int,
        seed: int = 0,
    ):
        sources = list(image_subjects_or_arrays)
        if not sources:
            raise ValueError("SyntheticPairDataset needs at least one source image (the dataset is empty)")
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if augment is None:
            raise ValueError("SyntheticPairDataset needs an Augment to draw the deformations")
        self.preprocess = preprocess
        self.augment = augment
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self.sources = [self._prepare(s, k) for k, s in enumerate(sources)]

    def _prepare(self, source: SourceLike, k: int) -> Dict[str, Any]:
        if isinstance(source, Subject):
            return dict(_loaded_to_sample(self.preprocess.load(source)), id=source.id)
        labels, sid = None, f"source{k}"
        if isinstance(source, Mapping):
            sid = str(source.get("id", sid))
            labels = source.get("labels")
            source = source["image"]
        image = source if isinstance(source, ImageData) else ImageData(np.asarray(source), np.eye(4), sid)
        if labels is not None and not isinstance(labels, ImageData):
            labels = ImageData(np.asarray(labels), image.ijk_to_ras, sid + "_labels")
        return dict(_loaded_to_sample(self.preprocess.apply(image, labels, name=f"source {sid}")), id=sid)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not 0 <= int(index) < self.n:
            raise IndexError(f"index {index} out of range for {self.n} pairs")
        generator = seeded_generator(self.seed, self.epoch, int(index), 4)
        source = self.sources[int(torch.randint(len(self.sources), (1,), generator=generator))]
        pair = self.augment.synthetic_pair(source["image"], source["labels"], source["spacing_mm"], generator)
        item = {
            "moving": pair["moving"],
            "fixed": pair["fixed"],
            "spacing_mm": torch.tensor(source["spacing_mm"], dtype=torch.float32),
            "pair_id": f"{source['id']}:synthetic{self.epoch}.{index}",
            "disp_true_vox": pair["disp_true_vox"],
        }
        if "moving_labels" in pair:
            item["moving_labels"] = pair["moving_labels"]
            item["fixed_labels"] = pair["fixed_labels"]
        return item


def collate_pairs(items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack dataset items into a batch (``pair_id`` -> list of str; keys present in every item)."""
    keys = set(items[0])
    for item in items[1:]:
        keys &= set(item)
    batch: Dict[str, Any] = {}
    for key in sorted(keys):
        values = [item[key] for item in items]
        batch[key] = values if key == "pair_id" else torch.stack(values)
    return batch
