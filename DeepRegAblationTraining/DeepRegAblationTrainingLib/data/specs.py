"""Data specs: the ``--data`` argument, and the datasets a spec makes (:func:`build_data`).

``parse_data_argument`` turns the command line's ``--data`` string into a spec dict (``kind``,
``path`` ...); :func:`build_data` finds the spec's subjects, splits them (or reads the split),
chooses the fixed validation pairs and makes the training / validation datasets, in a
:class:`DataBundle` that also holds the record a checkpoint stores (``split``). The 3D brain
datasets (one, a weighted mix, or ``brains3d``) have their own defaults (:func:`brain_parts`,
:func:`brain_grid_shape`, ``BRAIN_*``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from ..augment import Augment
from .datasets import FixedPairDataset, PairDataset, SyntheticPairDataset
from .mni import find_mni_ixi_subjects, load_mni_template
from .preprocess import Preprocess
from .reading import check_subject_files
from .splits import (
    dataset_cycle_pairs, fixed_pairs, load_dataset_split, load_split, save_dataset_split, save_pairs, save_split,
    split_by_dataset, split_subjects,
)
from .subjects import (
    DATASET_FOLDERS, DATASET_LAYOUTS, PathLike, Subject, check_unique_ids, find_dataset_subjects, find_generic_subjects,
    find_oasis_subjects, load_seed_study_list,
)

__all__ = [
    "BRAIN_KINDS", "DATA_KINDS", "BRAIN_SPACING_MM", "BRAIN_FIELD_OF_VIEW_MM", "BRAIN_VAL_SUBJECTS", "BRAIN_WEIGHTS",
    "BRAIN_TRANSLATION_MM", "BRAIN_MAX_LABELS", "parse_data_argument", "DataBundle", "data_ndim", "build_data",
    "brain_parts", "brain_grid_shape", "validation_dataset_from_split",
]

BRAIN_KINDS = tuple(DATASET_LAYOUTS) + ("mix", "brains3d")
DATA_KINDS = ("oasis2d", "oasis3d", "seed", "list", "mni-synthetic", "mni-ixi") + BRAIN_KINDS
# defaults of the 3D brain datasets: 4 mm grids over a 192 x 256 x 192 mm (S, A, R) field of
# view centred on each brain's centre of mass; validation subjects held out per dataset
BRAIN_SPACING_MM = 4.0
BRAIN_FIELD_OF_VIEW_MM = (192.0, 256.0, 192.0)
BRAIN_VAL_SUBJECTS = {"miccai2012": 5, "lpba40": 5, "ibsr18": 5, "ixi": 2}
BRAIN_WEIGHTS = {"miccai2012": 1.0, "lpba40": 1.0, "ibsr18": 1.0, "ixi": 0.5}
BRAIN_TRANSLATION_MM = 4.0  # largest random shift of each training image (augmentation)
BRAIN_MAX_LABELS = 16  # structures per training pair in the Dice loss (see compact_label_pair)


def _parse_dataset_part(text: str) -> Dict[str, Any]:
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    path, _, weight = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if kind not in DATASET_LAYOUTS or not path.strip():
        raise ValueError(
            f"each part of a mixed --data must be <dataset>:DIR[@WEIGHT] with dataset one of {sorted(DATASET_LAYOUTS)}, got {text!r}"
        )
    try:
        w = float(weight) if weight else 1.0
    except ValueError:
        raise ValueError(f"--data {text!r}: the weight after '@' must be a number, got {weight!r}") from None
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"--data {text!r}: the weight must be >= 0, got {w}")
    return {"kind": kind, "path": path.strip(), "weight": w}


def parse_data_argument(text: str) -> Dict[str, Any]:
    """``--data`` string -> data spec dict.

    ``oasis2d:/path`` | ``oasis3d:/path`` | ``seed:/paths.txt,/template_seg4_onehot.npy`` |
    ``list:/path.csv`` (or a folder) | ``mni-synthetic`` | ``mni-ixi:/folder`` (the MNI152 template
    plus the heads of a folder, see :func:`find_mni_ixi_subjects`) | one public 3D brain dataset
    in its own layout, ``miccai2012:DIR``, ``lpba40:DIR``, ``ibsr18:DIR``, ``ixi:DIR``
    (:func:`find_dataset_subjects`) | several of them mixed with sampling weights,
    ``miccai2012:DIR@2+lpba40:DIR@1+ibsr18:DIR`` | ``brains3d:DIR``: all four under one folder
    (``DIR/miccai2012-oasis``, ``DIR/lpba40``, ``DIR/ibsr18``, ``DIR/ixi-t1-2mm``, as in
    ``../shared/data``) with the weights :data:`BRAIN_WEIGHTS`.
    """
    text = str(text).strip()
    if "+" in text:
        return {"kind": "mix", "parts": [_parse_dataset_part(part) for part in text.split("+") if part.strip()]}
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in DATA_KINDS:
        raise ValueError(f"--data must start with one of {list(DATA_KINDS)} (e.g. oasis2d:/path), got {text!r}")
    if kind == "mni-synthetic":
        return {"kind": kind}
    if kind == "mix":
        raise ValueError("--data: a mix is written <dataset>:DIR[@W]+<dataset>:DIR[@W]..., e.g. lpba40:/a+ibsr18:/b@0.5")
    if kind in DATASET_LAYOUTS:
        return {"kind": "mix", "parts": [_parse_dataset_part(text)]}
    if not rest:
        raise ValueError(f"--data {kind}: needs a path, e.g. {kind}:/path/to/data")
    if kind == "seed":
        paths, _, template = rest.partition(",")
        if not template:
            raise ValueError(f"--data seed: needs 'seed:/paths.txt,/template_path', got {text!r}")
        return {"kind": kind, "path": paths.strip(), "template": template.strip()}
    return {"kind": kind, "path": rest.strip()}


@dataclass
class DataBundle:
    """What :func:`build_data` makes: the datasets plus everything a checkpoint records about them."""

    train: Dataset
    val: Optional[Dataset]
    preprocess: Preprocess
    ndim: int
    split: Dict[str, Any] = field(default_factory=dict)


def _subjects_for(spec: Mapping[str, Any], ndim: int) -> Tuple[List[Subject], Optional[Subject]]:
    kind = spec["kind"]
    if kind in ("oasis2d", "oasis3d"):
        labels = spec.get("labels", "seg4")
        return find_oasis_subjects(spec["path"], ndim=2 if kind == "oasis2d" else 3, labels=labels), None
    if kind == "seed":
        return load_seed_study_list(spec["path"], spec["template"])
    if kind == "list":
        return find_generic_subjects(spec["path"]), None
    if kind == "mni-ixi":
        return find_mni_ixi_subjects(spec["path"]), None
    raise ValueError(f"unknown data kind {kind!r}; valid kinds: {list(DATA_KINDS)}")


def data_ndim(spec: Mapping[str, Any], ndim: Optional[int] = None) -> int:
    """The dimension a data spec implies (``oasis2d`` -> 2, ``oasis3d``/``mni-ixi`` -> 3, else ``ndim`` or 3)."""
    implied = {"oasis2d": 2, "oasis3d": 3, "mni-ixi": 3, "mix": 3, "brains3d": 3}.get(spec.get("kind"))
    if implied is not None:
        if ndim is not None and int(ndim) != implied:
            raise ValueError(f"data kind {spec['kind']} is {implied}D but ndim {ndim} was requested")
        return implied
    return int(ndim) if ndim is not None else 3


def build_data(
    spec: Mapping[str, Any],
    ndim: Optional[int] = None,
    seed: int = 0,
    pairs_per_epoch: Optional[int] = None,
    out_dir: Optional[PathLike] = None,
    divisor: int = 16,
) -> DataBundle:
    """Datasets for training from a data spec (see :func:`parse_data_argument` for ``kind``/``path``).

    Spec keys (all optional but ``kind``): ``path``, ``template``, ``labels`` (OASIS label set),
    ``spacing_mm``, ``shape``, ``mode`` (pairing, default scan-to-scan; scan-to-atlas for the
    seed format), ``atlas`` (id of the atlas subject for atlas modes without a template),
    ``val_fraction`` (0.2), ``val_pairs`` (number of fixed validation pairs, default 8),
    ``split`` (JSON file: loaded when it exists, written otherwise), ``max_subjects``,
    ``augment`` (dict of :class:`Augment` arguments, or ``None``/``False`` to disable),
    ``synthetic`` (train on synthetic pairs of the training images), ``cache``.

    ``mni-ixi`` has no held-out subjects (six images are too few to split): every image is a
    training subject (2 mm by default, kept in memory), and the validation pairs are drawn
    among the labelled heads, which therefore were seen in training (``val_fraction`` unused).

    With ``out_dir`` the split and the validation pairs are written there (``split.json``,
    ``val_pairs.json``). The returned ``split`` dict is what checkpoints store.
    """
    spec = dict(spec)
    kind = spec.get("kind")
    if kind not in DATA_KINDS:
        raise ValueError(f"data kind must be one of {list(DATA_KINDS)}, got {kind!r}")
    if kind in BRAIN_KINDS:
        return _build_brain_data(spec, seed, pairs_per_epoch, out_dir, divisor)
    ndim = data_ndim(spec, ndim)
    preprocess = _preprocess_for(spec, ndim, divisor)
    augment = _augment_from_spec(spec.get("augment", {}))
    n_val_pairs = int(spec.get("val_pairs", 8))
    if kind == "mni-synthetic":
        return _build_mni_synthetic(ndim, preprocess, augment, seed, pairs_per_epoch, n_val_pairs)

    subjects, atlas = _checked_subjects(spec, ndim)
    mode = spec.get("mode") or ("scan_to_atlas" if kind == "seed" else "scan_to_scan")
    subjects, atlas = _atlas_for(spec, mode, subjects, atlas)
    train_subjects, val_subjects = _split_for(spec, subjects, seed)
    n_val_pairs = _possible_val_pairs(n_val_pairs, val_subjects, mode)
    pairs = fixed_pairs(val_subjects, n_val_pairs, seed, atlas=atlas, mode=mode) if n_val_pairs > 0 else []
    cache = spec.get("cache", True if kind == "mni-ixi" else None)
    if spec.get("synthetic"):
        train = SyntheticPairDataset(train_subjects, preprocess, augment or Augment(), pairs_per_epoch or len(train_subjects), seed)
    else:
        train = PairDataset(train_subjects, preprocess, mode, atlas, augment, pairs_per_epoch, seed, cache,
                            mirror=float(spec.get("mirror", 0.0)))
    val = None
    if pairs:
        val = FixedPairDataset(val_subjects + ([atlas] if atlas is not None else []), pairs, preprocess, cache)
    split = _split_record(kind, train_subjects, val_subjects, atlas, mode, pairs)
    _write_run_split(out_dir, train_subjects, val_subjects, pairs, split)
    return DataBundle(train, val, preprocess, ndim, split)


def _preprocess_for(spec: Mapping[str, Any], ndim: int, divisor: int) -> Preprocess:
    """The spec's :class:`Preprocess` (the MNI152 template, 1 mm, is taken at 2 mm in 3D unless ``spacing_mm`` says)."""
    spacing = spec.get("spacing_mm")
    if spacing is None and spec["kind"] in ("mni-synthetic", "mni-ixi") and ndim == 3:
        spacing = [2.0]  # the 1 mm template at 2 mm: a 3D volume a CPU can train on
    return Preprocess(spacing_mm=spacing, shape=spec.get("shape"), divisor=divisor, ndim=ndim)


def _build_mni_synthetic(
    ndim: int, preprocess: Preprocess, augment: Optional[Augment], seed: int, pairs_per_epoch: Optional[int], n_val_pairs: int
) -> DataBundle:
    """``mni-synthetic``: synthetic pairs of the MNI152 template (``pairs_per_epoch`` or 1 a training epoch)."""
    template = load_mni_template(ndim)
    if augment is None:
        augment = Augment()
    n_train = pairs_per_epoch or 1
    train = SyntheticPairDataset([template], preprocess, augment, n_train, seed=seed)
    val = SyntheticPairDataset([template], preprocess, augment, n_val_pairs, seed=seed + 1) if n_val_pairs else None
    split: Dict[str, Any] = {"kind": "mni-synthetic"}
    split.update(train=["MNI152"], val=["MNI152"], val_pairs=[], synthetic=True)
    return DataBundle(train, val, preprocess, ndim, split)


def _checked_subjects(spec: Mapping[str, Any], ndim: int) -> Tuple[List[Subject], Optional[Subject]]:
    """The spec's subjects (the first ``max_subjects``) and atlas, every file read and checked (:func:`check_subject_files`)."""
    subjects, atlas = _subjects_for(spec, ndim)
    max_subjects = spec.get("max_subjects")
    if max_subjects:
        subjects = subjects[: int(max_subjects)]
    check_subject_files(subjects + ([atlas] if atlas is not None else []), f"data {spec['kind']}:{spec.get('path', '')}")
    return subjects, atlas


def _atlas_for(
    spec: Mapping[str, Any], mode: str, subjects: List[Subject], atlas: Optional[Subject]
) -> Tuple[List[Subject], Optional[Subject]]:
    """``(subjects, atlas)``: an atlas pairing mode without a template takes the subject named ``spec["atlas"]``
    out of the subjects as the atlas."""
    if mode != "scan_to_scan" and atlas is None:
        atlas_id = spec.get("atlas")
        if atlas_id is None:
            raise ValueError(f"pairing mode {mode!r} needs an atlas: give the atlas subject id (--atlas)")
        matches = [s for s in subjects if s.id == atlas_id]
        if not matches:
            raise ValueError(f"atlas id {atlas_id!r} is not among the {len(subjects)} subjects")
        atlas = matches[0]
        subjects = [s for s in subjects if s.id != atlas_id]
    return subjects, atlas


def _split_for(spec: Mapping[str, Any], subjects: List[Subject], seed: int) -> Tuple[List[Subject], List[Subject]]:
    """The train / validation subjects: from the spec's ``split`` file when it exists, else drawn (and written
    there); ``mni-ixi`` trains on every subject and validates on the labelled ones."""
    split_file = spec.get("split")
    if split_file and Path(split_file).is_file():
        return load_split(split_file, subjects)
    if spec["kind"] == "mni-ixi":
        train_subjects, val_subjects = list(subjects), [s for s in subjects if s.labels is not None]
    else:
        train_subjects, val_subjects = split_subjects(subjects, float(spec.get("val_fraction", 0.2)), seed)
    if split_file:
        save_split(split_file, train_subjects, val_subjects)
    return train_subjects, val_subjects


def _possible_val_pairs(n_val_pairs: int, val_subjects: Sequence[Subject], mode: str) -> int:
    """``n_val_pairs``, or fewer with a warning when the validation subjects give fewer distinct pairs."""
    possible = len(val_subjects) * (len(val_subjects) - 1) if mode == "scan_to_scan" else len(val_subjects)
    if n_val_pairs > possible:
        warnings.warn(
            f"{n_val_pairs} validation pairs requested but {len(val_subjects)} validation subject(s) give only "
            f"{possible} ({mode}); raise val_fraction for more",
            stacklevel=3,  # the caller of build_data
        )
        n_val_pairs = possible
    return n_val_pairs


def _split_record(
    kind: str, train: Sequence[Subject], val: Sequence[Subject], atlas: Optional[Subject], mode: str,
    pairs: Sequence[Tuple[str, str]],
) -> Dict[str, Any]:
    """The ``split`` dict a checkpoint stores (``data_split``)."""
    split: Dict[str, Any] = {"kind": kind}
    split.update(
        train=[s.to_dict() for s in train],
        val=[s.to_dict() for s in val],
        atlas=None if atlas is None else atlas.to_dict(),
        mode=mode,
        val_pairs=[[m, f] for m, f in pairs],
    )
    return split


def _augment_from_spec(aug_spec: Any, **defaults: Any) -> Optional[Augment]:
    """The spec's ``augment`` entry: a dict of :class:`Augment` arguments (``defaults`` fill the missing
    ones), a true value for the defaults, or ``None``/``False`` for no augmentation."""
    if isinstance(aug_spec, Mapping):
        return Augment(**dict(defaults, **aug_spec))
    return Augment(**defaults) if aug_spec else None


def _write_run_split(out_dir: Optional[PathLike], train: Sequence[Subject], val: Sequence[Subject],
                     pairs: Sequence[Tuple[str, str]], split: Mapping[str, Any]) -> None:
    """``split.json`` and ``val_pairs.json`` of a run folder (nothing without ``out_dir``)."""
    if out_dir is not None:
        save_split(Path(out_dir) / "split.json", train, val, atlas=split.get("atlas"), mode=split.get("mode"))
        save_pairs(Path(out_dir) / "val_pairs.json", pairs)


def brain_parts(spec: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The ``{"kind", "path", "weight"}`` parts of a 3D brain data spec (``brains3d`` expanded)."""
    kind = spec.get("kind")
    if kind == "brains3d":
        root = Path(spec["path"])
        return [{"kind": k, "path": str(root / folder), "weight": BRAIN_WEIGHTS[k]} for k, folder in DATASET_FOLDERS.items()]
    if kind in DATASET_LAYOUTS:
        return [{"kind": kind, "path": spec["path"], "weight": float(spec.get("weight", 1.0))}]
    parts = spec.get("parts")
    if kind != "mix" or not parts:
        raise ValueError(f"not a 3D brain data spec (miccai2012/lpba40/ibsr18/ixi, mix or brains3d): {dict(spec)}")
    return [dict(part) for part in parts]


def brain_grid_shape(spacing_mm: float, divisor: int = 16) -> List[int]:
    """Model grid ``(D, H, W)`` covering :data:`BRAIN_FIELD_OF_VIEW_MM` at ``spacing_mm``, rounded up to ``divisor``."""
    return [int(-(-int(math.ceil(fov / spacing_mm - 1e-6)) // divisor) * divisor) for fov in BRAIN_FIELD_OF_VIEW_MM]


def _build_brain_data(
    spec: Dict[str, Any], seed: int, pairs_per_epoch: Optional[int], out_dir: Optional[PathLike], divisor: int
) -> DataBundle:
    """:func:`build_data` for the 3D brain datasets (one, a weighted mix, or ``brains3d``).

    Defaults: 4 mm grids of :func:`brain_grid_shape` centred on each brain's centre of mass
    (``Preprocess(center="com")``), subjects kept in memory, scan-to-scan pairs within a
    dataset (``PairDataset(dataset_weights=...)``), validation subjects per dataset
    (:func:`split_by_dataset`, ``val_per_dataset`` overrides :data:`BRAIN_VAL_SUBJECTS`) and
    their cycle pairs within each dataset (:func:`dataset_cycle_pairs`).
    """
    parts = brain_parts(spec)
    subjects = _brain_subjects(parts)
    spacing = spec.get("spacing_mm") or [BRAIN_SPACING_MM]
    spacing = [float(x) for x in (spacing if isinstance(spacing, (list, tuple)) else [spacing])]
    shape = spec.get("shape") or brain_grid_shape(min(spacing), divisor)
    preprocess = Preprocess(spacing_mm=spacing, shape=shape, divisor=divisor, ndim=3, center=spec.get("center", "com"))
    # shifts in mm, not voxels of the coarse grid (4 voxels would be 16 mm)
    augment = _augment_from_spec(spec.get("augment", {}), translation_vox=BRAIN_TRANSLATION_MM / min(spacing))
    train_subjects, val_subjects = _brain_split(spec, parts, subjects, seed)
    pairs = dataset_cycle_pairs(val_subjects)
    max_pairs = spec.get("val_pairs")
    if max_pairs is not None:
        pairs = pairs[: int(max_pairs)]
    cache = spec.get("cache", True)
    train = PairDataset(
        train_subjects, preprocess, "scan_to_scan", None, augment, pairs_per_epoch, seed, cache,
        dataset_weights=_brain_weights(parts, train_subjects), cross_dataset=float(spec.get("cross_dataset", 0.0)),
        max_labels=spec.get("max_labels", BRAIN_MAX_LABELS), mirror=float(spec.get("mirror", 0.0)),
        heads=float(spec.get("heads", 0.0)),
    )
    val = FixedPairDataset(val_subjects, pairs, preprocess, cache) if pairs else None
    split = _split_record(spec["kind"], train_subjects, val_subjects, None, "scan_to_scan", pairs)
    _write_run_split(out_dir, train_subjects, val_subjects, pairs, split)
    return DataBundle(train, val, preprocess, 3, split)


def _brain_subjects(parts: Sequence[Mapping[str, Any]]) -> List[Subject]:
    """The subjects of every part, ids unique, every file read and checked (:func:`check_subject_files`)."""
    subjects: List[Subject] = []
    for part in parts:
        subjects += find_dataset_subjects(part["kind"], part["path"])
    check_unique_ids(subjects, "the 3D brain data spec")
    check_subject_files(subjects, "the 3D brain data spec")
    return subjects


def _brain_split(
    spec: Mapping[str, Any], parts: Sequence[Mapping[str, Any]], subjects: List[Subject], seed: int
) -> Tuple[List[Subject], List[Subject]]:
    """The train / validation subjects: the spec's ``split`` file when it exists (:func:`load_dataset_split`),
    else held out per dataset (:func:`split_by_dataset`) and written there (ids only)."""
    split_file = spec.get("split")
    if split_file and Path(split_file).is_file():
        return load_dataset_split(split_file, subjects, {part["kind"] for part in parts})
    n_val = dict(BRAIN_VAL_SUBJECTS)
    n_val.update(spec.get("val_per_dataset") or {})
    train_subjects, val_subjects = split_by_dataset(subjects, n_val, seed)
    if split_file:
        save_dataset_split(split_file, train_subjects, val_subjects, seed, n_val)
    return train_subjects, val_subjects


def _brain_weights(parts: Sequence[Mapping[str, Any]], train_subjects: Sequence[Subject]) -> Dict[str, float]:
    """The sampling weight of each dataset with at least 2 training subjects (``PairDataset(dataset_weights=...)``)."""
    weights = {p["kind"]: float(p["weight"]) for p in parts}
    trainable = {s.dataset for s in train_subjects}
    return {k: w for k, w in weights.items() if k in trainable and sum(t.dataset == k for t in train_subjects) >= 2}


def validation_dataset_from_split(split: Mapping[str, Any], preprocess: Preprocess) -> FixedPairDataset:
    """The fixed validation pairs recorded in a checkpoint's ``data_split`` (or a run's split + pairs)."""
    pairs = split.get("val_pairs") or []
    if not pairs:
        raise ValueError("this split records no validation pairs (synthetic data or val_pairs 0)")
    subjects = [Subject.from_dict(d) for d in split.get("val", []) if isinstance(d, Mapping)]
    if split.get("atlas"):
        subjects.append(Subject.from_dict(split["atlas"]))
    return FixedPairDataset(subjects, [tuple(p) for p in pairs], preprocess)
