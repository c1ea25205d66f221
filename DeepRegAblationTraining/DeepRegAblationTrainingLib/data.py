"""Training data: subject lists, splits, preprocessing and pair datasets.

Sources (each gives a list of :class:`Subject`):

- neurite-OASIS (:func:`find_oasis_subjects`): ``<root>/<id>/slice_norm.nii.gz`` with
  ``slice_seg4`` / ``slice_seg24`` (2D, 160 x 192 coronal slices) or ``aligned_norm.nii.gz`` with
  ``aligned_seg4`` / ``aligned_seg35`` (3D, 160 x 192 x 224); ids from ``subjects.txt`` when present.
- the original (seed) study's format (:func:`load_seed_study_list`): a text file listing
  ``seg4_onehot.npy`` files (one-hot ``(L, *S)`` arrays, one per line, or the folders holding
  them) and a template path. Labels are ``argmax`` over ``L``; the intensity image is rendered
  from the labels (:func:`render_label_image`), because the format stores no image.
- a generic list (:func:`find_generic_subjects`): a CSV with columns ``image`` (and optionally
  ``labels``, ``id``), or a folder of NIfTI / NRRD images with optional ``<name>_labels`` /
  ``_label`` / ``_seg`` / ``_dlmuse`` partners.
- the MNI152 2009c template that ships inside the ``nilearn`` wheel (:func:`load_mni_template`),
  for synthetic pairs on a fresh machine.
- that template plus a folder of real heads with optional label maps (:func:`find_mni_ixi_subjects`,
  ``mni-ixi:/folder``; made for the IXI T1 heads at 2 mm with their DLMUSE labels): scan-to-scan
  pairs among all of them for training, the labelled heads' pairs for validation.

Preprocessing (:class:`Preprocess`) mirrors ``DeepRegAblationLib.inference`` so that a model
sees the same kind of input in training and in use: 3D volumes are reoriented to RAS (an exact
permutation / flip of the voxels), intensities mapped to [0, 1] by robust percentiles, then the
image is resampled onto the *model grid* (``geometry.model_grid_for``: the target spacing and a
shape divisible by the network's size multiple, centred on the image). 2D images are
single-slice volumes ``(1, J, I)`` and keep their in-plane axes (the inference convention).

Every dataset item is a dict of tensors WITHOUT batch dimension::

    {"moving": (1, *S) float32, "fixed": (1, *S) float32,
     "moving_labels": (1, *S) int64, "fixed_labels": (1, *S) int64      (when both have labels),
     "spacing_mm": (ndim,) float32 (tensor axis order), "pair_id": "moving_id->fixed_id",
     "disp_true_vox": (ndim, *S) float32                                (synthetic pairs only)}

Items are pure functions of ``(seed, epoch, index)``: each dataset has ``set_epoch(epoch)``
and draws its pair and augmentation from generators seeded with those numbers, so a run can
be resumed, sharded across processes and loaded by any number of workers with the same result.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from DeepRegAblationLib import geometry
from DeepRegAblationLib.imageio import (
    ImageData, ImageFileNotFoundError, ImageReadError, intensity_window, normalize_intensity, read_image, validate_image,
)

from .augment import Augment, seed_from, seeded_generator

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
LABEL_SUFFIXES = ("_labels", "_label", "_seg", "_dlmuse")
OASIS_LAYOUT = {
    2: {"image": "slice_norm.nii.gz", "labels": {"seg4": "slice_seg4.nii.gz", "seg24": "slice_seg24.nii.gz"}},
    3: {"image": "aligned_norm.nii.gz", "labels": {"seg4": "aligned_seg4.nii.gz", "seg35": "aligned_seg35.nii.gz"}},
}
PAIR_MODES = ("scan_to_scan", "atlas_to_scan", "scan_to_atlas")
GRID_CENTERS = ("image", "com")
SPLIT_FORMAT = "deepreg-ablation/split-1"
PAIRS_FORMAT = "deepreg-ablation/pairs-1"
MNI_TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
# T1-like intensity of the seg4 classes (0 background, 1 cortex, 2 subcortical GM, 3 WM, 4 CSF)
SEG4_T1_INTENSITY = (0.0, 0.55, 0.65, 1.0, 0.25)


# --------------------------------------------------------------------------- subjects
@dataclass
class Subject:
    """One scan: an intensity image and optionally its label map (same grid).

    ``dataset`` names the collection the scan comes from (``"lpba40"`` ...): a label set belongs
    to its dataset, so label losses and metrics only compare scans of the same dataset.
    """

    id: str
    image: Path
    labels: Optional[Path] = None
    dataset: Optional[str] = None

    def __post_init__(self) -> None:
        self.id = str(self.id)
        self.image = Path(self.image)
        self.labels = None if self.labels in (None, "") else Path(self.labels)
        self.dataset = None if self.dataset in (None, "") else str(self.dataset)

    def to_dict(self) -> Dict[str, Optional[str]]:
        d = {"id": self.id, "image": str(self.image), "labels": None if self.labels is None else str(self.labels)}
        if self.dataset is not None:
            d["dataset"] = self.dataset
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Subject":
        if not isinstance(d, Mapping) or "id" not in d or "image" not in d:
            raise ValueError(f"a subject entry needs 'id' and 'image', got {d!r}")
        return cls(d["id"], d["image"], d.get("labels"), d.get("dataset"))


def _strip_extension(name: str) -> str:
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _raise_missing(missing: Sequence[Path], where: str) -> None:
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ValueError(f"{len(missing)} file(s) missing in {where}: {names}")


def _check_unique(subjects: Sequence[Subject], where: str) -> None:
    seen, duplicates = set(), []
    for s in subjects:
        if s.id in seen:
            duplicates.append(s.id)
        seen.add(s.id)
    if duplicates:
        raise ValueError(f"duplicate subject ids in {where}: {sorted(set(duplicates))}")


def find_oasis_subjects(root: PathLike, ndim: int = 2, labels: Optional[str] = "seg4") -> List[Subject]:
    """Subjects of a neurite-OASIS folder (the dataset's own layout).

    Args:
        root: folder holding ``OASIS_OAS1_xxxx_MR1/`` subject folders (and ``subjects.txt``).
        ndim: 2 (``slice_norm`` + ``slice_seg4|24``) or 3 (``aligned_norm`` + ``aligned_seg4|35``).
        labels: ``"seg4"``, ``"seg24"`` (2D), ``"seg35"`` (3D) or ``None`` (images only).

    Raises:
        FileNotFoundError: ``root`` is not a folder. ValueError: no subject, or files missing
        (all missing files are listed by name).
    """
    root = Path(root)
    if ndim not in OASIS_LAYOUT:
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    layout = OASIS_LAYOUT[ndim]
    if labels is not None and labels not in layout["labels"]:
        raise ValueError(f"labels must be one of {sorted(layout['labels'])} or None for {ndim}D OASIS, got {labels!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"OASIS folder not found: {root}")
    listing = root / "subjects.txt"
    if listing.is_file():
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip() and not line.startswith("#")]
    else:
        ids = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("OASIS_"))
        if not ids:
            ids = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / layout["image"]).exists())
    if not ids:
        raise ValueError(f"no neurite-OASIS subject folders (OASIS_*/{layout['image']}) found in {root}")
    subjects, missing = [], []
    for sid in ids:
        image = root / sid / layout["image"]
        label_path = root / sid / layout["labels"][labels] if labels is not None else None
        for p in (image, label_path):
            if p is not None and not p.is_file():
                missing.append(p)
        subjects.append(Subject(sid, image, label_path))
    _raise_missing(missing, f"neurite-OASIS folder {root}")
    _check_unique(subjects, str(root))
    return subjects


def _seed_entry(path: Path) -> Subject:
    if path.is_dir():
        path = path / "seg4_onehot.npy"
    name = path.name
    stem = name[: -len(".npy")] if name.lower().endswith(".npy") else name
    for suffix in ("_seg4_onehot", "_onehot"):
        if stem.endswith(suffix) and len(stem) > len(suffix) and not stem.startswith("seg"):
            return Subject(stem[: -len(suffix)], path, path)  # OASIS_OAS1_0406_MR1_seg4_onehot.npy
    return Subject(path.parent.name, path, path)  # <subject>/seg4_onehot.npy


def load_seed_study_list(paths_file: PathLike, template_path: PathLike) -> Tuple[List[Subject], Subject]:
    """Subjects and template of the original study's format.

    Args:
        paths_file: text file, one ``seg4_onehot.npy`` path per line (or the folder holding it;
            relative paths are relative to the file's folder; ``#`` comments and blank lines skipped).
        template_path: the template's ``seg4_onehot.npy`` (or its folder).

    Returns:
        ``(subjects, template)``; the template is removed from ``subjects`` if listed there.
        Each subject's ``image`` and ``labels`` are the same one-hot file (see module docstring).
    """
    paths_file = Path(paths_file)
    if not paths_file.is_file():
        raise FileNotFoundError(f"paths file not found: {paths_file}")
    base = paths_file.parent
    entries = [line.strip() for line in paths_file.read_text().splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise ValueError(f"paths file {paths_file} lists no files")
    subjects = [_seed_entry(Path(e) if Path(e).is_absolute() else base / e) for e in entries]
    template = _seed_entry(Path(template_path))
    missing = [s.image for s in subjects + [template] if not s.image.is_file()]
    _raise_missing(missing, f"paths file {paths_file} / template")
    subjects = [s for s in subjects if s.image.resolve() != template.image.resolve()]
    if not subjects:
        raise ValueError(f"paths file {paths_file} lists only the template")
    _check_unique(subjects, str(paths_file))
    return subjects, template


def _find_label_partner(image: Path, candidates: Dict[str, Path]) -> Optional[Path]:
    stem = _strip_extension(image.name).lower()
    for suffix in LABEL_SUFFIXES:
        hit = candidates.get(stem + suffix)
        if hit is not None:
            return hit
    return None


def find_generic_subjects(csv_or_folder: PathLike) -> List[Subject]:
    """Subjects from a CSV (columns ``image`` [, ``labels``] [, ``id``]) or a folder of images.

    CSV paths may be relative to the CSV's folder; an empty ``labels`` cell means no labels.
    In a folder, every NIfTI / NRRD / MHA file is an image unless its name (without extension)
    ends with one of ``_labels``, ``_label``, ``_seg``, ``_dlmuse`` (case-insensitive), in which
    case it is the label map of the image with the rest of the name.
    """
    source = Path(csv_or_folder)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS[:-1]))
        by_stem = {_strip_extension(p.name).lower(): p for p in files}
        label_files = {p for stem, p in by_stem.items() if any(stem.endswith(s) for s in LABEL_SUFFIXES)}
        subjects = [
            Subject(_strip_extension(p.name), p, _find_label_partner(p, by_stem)) for p in files if p not in label_files
        ]
        if not subjects:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS[:-1])}) found in folder {source}")
        _check_unique(subjects, str(source))
        return subjects
    if not source.is_file():
        raise FileNotFoundError(f"subject list not found (neither a CSV file nor a folder): {source}")
    with open(source, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "image" not in columns:
            raise ValueError(f"CSV {source} needs a header with an 'image' column (and optionally 'labels', 'id'); got {columns}")
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    subjects, missing = [], []
    for n, row in enumerate(rows, start=2):
        if not row.get("image"):
            continue
        image = Path(row["image"])
        image = image if image.is_absolute() else source.parent / image
        label_cell = row.get("labels") or row.get("label") or row.get("seg") or ""
        labels = None
        if label_cell:
            labels = Path(label_cell)
            labels = labels if labels.is_absolute() else source.parent / labels
        for p in (image, labels):
            if p is not None and not p.is_file():
                missing.append(p)
        subjects.append(Subject(row.get("id") or _strip_extension(image.name), image, labels))
    if not subjects:
        raise ValueError(f"CSV {source} lists no images")
    _raise_missing(missing, f"CSV {source}")
    _check_unique(subjects, str(source))
    return subjects


# --------------------------------------------------------------------------- public 3D brain datasets
# kind -> (image file suffix, label file suffix): ``<stem><image suffix>`` with ``<stem><label suffix>``
DATASET_LAYOUTS: Dict[str, Tuple[str, str]] = {
    "miccai2012": ("_SS.nii.gz", "_glm.nii.gz"),  # MICCAI 2012 multi-atlas (OASIS brains, ~139 labels)
    "lpba40": (".delineation.skullstripped.nii.gz", ".delineation.structure.label.nii.gz"),  # 56 labels
    "ibsr18": (".nii.gz", "_seg.nii.gz"),  # heads with skull, tissue labels for 15 of 18
    "ixi": ("_ds.nii.gz", "_ds_DLMUSE.nii.gz"),  # IXI heads at 2 mm with DLMUSE labels
}
# sub-folder names of each dataset in ``../shared/data`` (for ``brains3d:DIR``)
DATASET_FOLDERS = {"miccai2012": "miccai2012-oasis", "lpba40": "lpba40", "ibsr18": "ibsr18", "ixi": "ixi-t1-2mm"}


def find_dataset_subjects(kind: str, folder: PathLike) -> List[Subject]:
    """The scans of one public 3D brain dataset in its own file layout (:data:`DATASET_LAYOUTS`).

    Ids are ``<kind>-<stem>`` (e.g. ``lpba40-S01``) and every subject carries ``dataset=kind``.
    A subject without a label map is kept (image similarity only). ``ValueError`` naming the
    folder when it holds no scan of that layout.
    """
    if kind not in DATASET_LAYOUTS:
        raise ValueError(f"dataset kind must be one of {sorted(DATASET_LAYOUTS)}, got {kind!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{kind} folder not found: {folder}")
    image_suffix, label_suffix = DATASET_LAYOUTS[kind]
    subjects = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if not path.is_file() or not name.endswith(image_suffix) or name.endswith(label_suffix):
            continue
        stem = name[: -len(image_suffix)]
        labels = folder / (stem + label_suffix)
        subjects.append(Subject(f"{kind}-{stem}", path, labels if labels.is_file() else None, kind))
    if not subjects:
        raise ValueError(f"no {kind} scans (*{image_suffix}) found in {folder}")
    return subjects


# --------------------------------------------------------------------------- splits and pairs
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


# --------------------------------------------------------------------------- reading
def _is_one_hot_file(path: Path) -> bool:
    return path.name.lower().endswith("onehot.npy")


def _read_npy(path: Path, name: str) -> np.ndarray:
    try:
        return np.load(str(path), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read {name} {path}: {exc}") from None


def one_hot_to_labels(one_hot: np.ndarray, name: str = "one-hot labels") -> np.ndarray:
    """``(L, *S)`` one-hot (or probability) array -> ``(*S)`` int64 label map (argmax over ``L``)."""
    one_hot = np.asarray(one_hot)
    if one_hot.ndim not in (3, 4) or one_hot.shape[0] < 2:
        raise ValueError(f"{name} must be (L, H, W) or (L, D, H, W) with L >= 2 channels, got shape {one_hot.shape}")
    return np.argmax(one_hot, axis=0).astype(np.int64)


def render_label_image(labels: np.ndarray, num_labels: Optional[int] = None) -> np.ndarray:
    """Intensity image drawn from a label map (for formats that store labels only), float32.

    Five classes (the seed study's seg4: background, cortex, subcortical GM, WM, CSF) get a
    T1-like contrast :data:`SEG4_T1_INTENSITY`; other label sets ``label / (L - 1)``.
    """
    labels = np.asarray(labels)
    num = int(num_labels if num_labels is not None else labels.max() + 1)
    if num == len(SEG4_T1_INTENSITY):
        return np.asarray(SEG4_T1_INTENSITY, dtype=np.float32)[labels]
    return (labels / max(num - 1, 1)).astype(np.float32)


def read_volume(path: PathLike, role: str = "image") -> ImageData:
    """Read one file as an :class:`ImageData` (``(K, J, I)``, RAS), checked completely.

    NIfTI / NRRD / MHA through ``imageio.read_image``; ``.npy`` arrays are taken in tensor axis
    order with 1 mm voxels and an identity IJK->RAS; ``*onehot.npy`` files give the label map
    (``role="labels"``) or :func:`render_label_image` (``role="image"``). ``role`` names the
    file in messages; ``"labels"`` must hold integers >= 0, any other role an image with some
    contrast. Every problem raises ``imageio.ImageReadError`` (a ``ValueError``) naming the file.
    """
    path = Path(path)
    kind = "labels" if role == "labels" else "image"
    if not path.name.lower().endswith(".npy"):
        try:
            return read_image(path, name=role, kind=kind)
        except ValueError:
            raise
        except Exception as exc:  # anything else a corrupt file makes SimpleITK / numpy raise
            raise ImageReadError(f"cannot read {role} {path}: {type(exc).__name__}: {exc}") from None
    if not path.is_file():
        raise ImageFileNotFoundError(f"{role} file not found: {path}")
    try:
        array = _read_npy(path, role)
        if _is_one_hot_file(path):
            labels = one_hot_to_labels(array, f"{role} {path}")
            array = labels if role == "labels" else render_label_image(labels, int(np.asarray(array).shape[0]))
    except ValueError as exc:
        raise ImageReadError(str(exc)) from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.size == 0 or array.dtype.kind not in "biuf":
        raise ImageReadError(f"{role} {path} must hold a real 2D or 3D array, got shape {array.shape} dtype {array.dtype}")
    return validate_image(ImageData(np.ascontiguousarray(array), np.eye(4), _strip_extension(path.name)), f"{role} {path}", kind)


def check_subject_files(subjects: Sequence[Subject], where: str, threads: Optional[int] = None) -> None:
    """Read every image and label file of ``subjects`` and list EVERY one that cannot be used.

    Each file goes through :func:`read_volume` (the whole file is read and checked); a label map
    must also have its image's shape. Raises ONE ``imageio.ImageReadError`` naming ``where`` and
    every bad file with its problem, so that training or evaluation stops before its first step
    with the whole list instead of at the first bad file hours later. Reads on ``threads``
    threads (default: up to 8).
    """
    from concurrent.futures import ThreadPoolExecutor

    def problems(subject: Subject) -> List[str]:
        found, read = [], {}
        for role, path in (("image", subject.image), ("labels", subject.labels)):
            if path is None:
                continue
            try:
                read[role] = read_volume(path, role)
            except ValueError as exc:  # ImageReadError
                found.append(str(exc))
        if len(read) == 2 and read["labels"].shape != read["image"].shape:
            found.append(
                f"labels {subject.labels} have shape {read['labels'].shape} but their image {subject.image} has "
                f"{read['image'].shape} (subject {subject.id})"
            )
        return found

    subjects = list(subjects)
    with ThreadPoolExecutor(max_workers=max(1, int(threads or min(8, os.cpu_count() or 1)))) as pool:
        found = [problem for listed in pool.map(problems, subjects) for problem in listed]
    if found:
        raise ImageReadError(
            f"{where}: {len(found)} problem(s) in the files of its {len(subjects)} subject(s), checked before the "
            f"first step: " + "; ".join(found)
        )


def reorient_to_ras(image: ImageData) -> ImageData:
    """The same voxels permuted / flipped so that i, j, k point (closest) to R, A, S. Exact (no interpolation).

    The grid is ``geometry.closest_ras_view`` (what ``inference.register`` uses for RAS-trained
    models); the voxels are copied onto it (``geometry.resample_to_grid`` copies when the grids
    share their voxel lattice, as here), keeping the dtype.
    """
    view, view_shape = geometry.closest_ras_view(image.ijk_to_ras, image.shape)
    if np.allclose(view, image.ijk_to_ras, atol=1e-12) and tuple(view_shape) == tuple(image.shape):
        return image
    array = geometry.resample_to_grid(image.array, image.ijk_to_ras, view, view_shape, mode="nearest")
    return ImageData(array, view, image.name)


# --------------------------------------------------------------------------- preprocessing
class Preprocess:
    """Image -> model-grid tensors: reorient, robust normalisation, resample + crop/pad.

    Args:
        spacing_mm: target voxel size in tensor axis order (``ndim`` numbers, or one number for
            all axes); ``None`` keeps each image's spacing.
        shape: model grid shape in tensor axis order; ``None``: the image's extent at the target
            spacing, rounded up to a multiple of ``divisor``. Must be divisible by ``divisor``.
        divisor: the network's size multiple (``2 ** len(enc_features)``, 16 by default).
        normalize: map the ``percentiles`` window of every image to [0, 1] (clipped), as the
            inference pipeline does.
        ndim: 2 or 3; ``None`` decides per image (a single-slice ``(1, J, I)`` image is 2D).
        reorient: reorient 3D volumes to RAS first (2D single-slice images keep their axes).
        percentiles: ``(low, high)`` of the normalisation window.
        center: ``"image"``: the grid is centred on the image's field of view; ``"com"`` (3D):
            on its intensity centre of mass, so that any two training images are aligned by
            their centres of mass, as ``inference.register`` aligns them (``initial_alignment``
            ``"com"``, grid centred on the fixed image's centre of mass) for such a model.

    The grid is ``geometry.model_grid_for`` (centred on the image, its axes), the resampling
    ``geometry.resample_to_grid`` (linear for images, nearest for labels, 0 outside): when the
    spacing is unchanged the voxels are copied, not interpolated.
    """

    def __init__(
        self,
        spacing_mm: Optional[Union[float, Sequence[float]]] = None,
        shape: Optional[Sequence[int]] = None,
        divisor: int = 16,
        normalize: bool = True,
        ndim: Optional[int] = None,
        reorient: bool = True,
        percentiles: Tuple[float, float] = (1.0, 99.0),
        center: str = "image",
    ):
        if center not in GRID_CENTERS:
            raise ValueError(f"center must be one of {list(GRID_CENTERS)}, got {center!r}")
        self.center = center
        if ndim not in (None, 2, 3):
            raise ValueError(f"ndim must be 2, 3 or None, got {ndim!r}")
        if int(divisor) < 1:
            raise ValueError(f"divisor must be >= 1, got {divisor}")
        self.divisor = int(divisor)
        if spacing_mm is not None:
            spacing = [float(spacing_mm)] if isinstance(spacing_mm, (int, float)) else [float(s) for s in spacing_mm]
            if any(not math.isfinite(s) or s <= 0 for s in spacing) or len(spacing) not in (1, 2, 3):
                raise ValueError(f"spacing_mm must be 1 to 3 positive numbers, got {spacing_mm!r}")
            spacing_mm = spacing
        if shape is not None:
            shape = [int(n) for n in shape]
            if len(shape) not in (2, 3) or any(n < 1 for n in shape):
                raise ValueError(f"shape must be 2 or 3 positive sizes, got {shape}")
            bad = [n for n in shape if n % self.divisor]
            if bad:
                raise ValueError(f"shape {shape} must be divisible by {self.divisor} along every axis (the network's down-sampling)")
            if ndim is None:
                ndim = len(shape)
            elif len(shape) != ndim:
                raise ValueError(f"shape {shape} has {len(shape)} entries but ndim is {ndim}")
        if spacing_mm is not None and len(spacing_mm) > 1:
            if ndim is None:
                ndim = len(spacing_mm)
            elif len(spacing_mm) != ndim:
                raise ValueError(f"spacing_mm {spacing_mm} has {len(spacing_mm)} entries but ndim is {ndim}")
        self.spacing_mm = spacing_mm
        self.shape = shape
        self.normalize = bool(normalize)
        self.ndim = ndim
        self.reorient = bool(reorient)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def __repr__(self) -> str:
        return (
            f"Preprocess(spacing_mm={self.spacing_mm}, shape={self.shape}, divisor={self.divisor}, "
            f"normalize={self.normalize}, ndim={self.ndim}, reorient={self.reorient}, center={self.center!r})"
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "spacing_mm": self.spacing_mm,
            "shape": self.shape,
            "divisor": self.divisor,
            "normalize": self.normalize,
            "ndim": self.ndim,
            "reorient": self.reorient,
            "percentiles": list(self.percentiles),
            "center": self.center,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocess":
        d = dict(d)
        if "percentiles" in d:
            d["percentiles"] = tuple(d["percentiles"])
        return cls(**d)

    def describe(self, spacing_mm: Sequence[float], shape: Sequence[int]) -> Dict[str, Any]:
        """The checkpoint's ``preprocessing`` entry for a model trained on grids of ``spacing_mm``/``shape``."""
        return {
            "spacing_mm": [float(s) for s in spacing_mm],
            "shape": [int(n) for n in shape],
            "normalization": (
                {"method": "percentile", "low_pct": self.percentiles[0], "high_pct": self.percentiles[1], "range": [0.0, 1.0]}
                if self.normalize
                else {"method": "none"}
            ),
            "orientation": "RAS" if self.reorient else "native",
            "divisor": self.divisor,
            "center": self.center,
            "initial_alignment": "com" if self.center == "com" else "none",
        }

    def _image_ndim(self, image: ImageData, where: str) -> int:
        single_slice = image.array.shape[0] == 1
        if self.ndim is None:
            return 2 if single_slice else 3
        if self.ndim == 2 and not single_slice:
            raise ValueError(f"{where} has shape {image.array.shape}: a 2D model needs single-slice images (1, J, I)")
        if self.ndim == 3 and min(image.array.shape) < 2:
            raise ValueError(f"{where} has shape {image.array.shape}: a 3D model needs at least 2 voxels along every axis")
        return self.ndim

    def apply(
        self, image: ImageData, labels: Optional[ImageData] = None, name: str = "image"
    ) -> Dict[str, Any]:
        """Preprocess one image (and its label map).

        Returns:
            ``{"image": (1, *S) float32, "labels": (1, *S) int64 or None, "spacing_mm": tuple (ndim,),
            "ijk_to_ras": (4, 4) model grid}``.
        """
        from DeepRegAblationLib.inference import model_grid_spec

        if labels is not None and tuple(labels.array.shape) != tuple(image.array.shape):
            raise ValueError(
                f"labels of {name} have shape {tuple(labels.array.shape)} but the image has {tuple(image.array.shape)} "
                f"(labels {labels.name!r}, image {image.name!r})"
            )
        if labels is not None:
            values = labels.array
            if values.dtype.kind == "f":
                if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
                    raise ValueError(f"labels of {name} ({labels.name!r}) hold non-integer values")
        ndim = self._image_ndim(image, name)
        if self.reorient and ndim == 3:
            image = reorient_to_ras(image)
            labels = reorient_to_ras(labels) if labels is not None else None
        array = image.array.astype(np.float32, copy=False)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} ({image.name!r}) contains NaN or inf values")
        if self.normalize:
            lo, hi = self.percentiles
            array = normalize_intensity(array, window=intensity_window(array, lo, hi))
        spacing = self.spacing_mm
        if spacing is not None and len(spacing) == 1:
            spacing = spacing * ndim
        spec = {"spacing_mm": spacing, "shape": self.shape}
        spacing, shape = model_grid_spec(image, ndim, self.divisor, spec)
        centre = None
        if self.center == "com" and ndim == 3:
            centre = geometry.center_of_mass_ras(array if self.normalize else normalize_intensity(array), image.ijk_to_ras)
        grid, grid_shape = geometry.model_grid_for(image, spacing, shape, center_ras=centre)
        out_image = geometry.resample_to_grid(array, image.ijk_to_ras, grid, grid_shape, mode="linear")
        out_labels = None
        if labels is not None:
            out_labels = geometry.resample_to_grid(
                np.round(labels.array).astype(np.int64), labels.ijk_to_ras, grid, grid_shape, mode="nearest"
            )
        if ndim == 2:
            out_image = out_image[0]
            out_labels = out_labels[0] if out_labels is not None else None
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out_image, dtype=np.float32))[None],
            "labels": None if out_labels is None else torch.from_numpy(np.ascontiguousarray(out_labels, dtype=np.int64))[None],
            "spacing_mm": tuple(float(s) for s in spacing),
            "ijk_to_ras": grid,
        }

    def load(self, subject: Subject) -> Dict[str, Any]:
        """Read and preprocess one subject (see :meth:`apply`); errors name the subject's files."""
        image = read_volume(subject.image, "image")
        labels = read_volume(subject.labels, "labels") if subject.labels is not None else None
        if labels is not None and tuple(labels.array.shape) != tuple(image.array.shape):
            raise ValueError(
                f"label map {subject.labels} has shape {tuple(labels.array.shape)} but image {subject.image} "
                f"has shape {tuple(image.array.shape)} (subject {subject.id})"
            )
        return self.apply(image, labels, name=f"subject {subject.id} ({subject.image})")


# --------------------------------------------------------------------------- datasets
def _loaded_to_sample(loaded: Dict[str, Any]) -> Dict[str, Any]:
    return {"image": loaded["image"], "labels": loaded["labels"], "spacing_mm": loaded["spacing_mm"]}


class _SubjectStore:
    """Loads subjects through a :class:`Preprocess`, optionally keeping them in memory."""

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
    same_dataset = moving.get("dataset") == fixed.get("dataset")
    if moving.get("labels") is not None and fixed.get("labels") is not None and same_dataset:
        moving_labels, fixed_labels = _pad_to(moving["labels"], common), _pad_to(fixed["labels"], common)
        if compact_labels:
            moving_labels, fixed_labels = compact_label_pair(moving_labels, fixed_labels, max_labels, generator)
        item["moving_labels"], item["fixed_labels"] = moving_labels, fixed_labels
    return item


def _augment_sample(sample: Dict[str, Any], augment: Augment, generator: torch.Generator) -> Dict[str, Any]:
    out = augment(sample["image"], sample["labels"], sample["spacing_mm"], generator)
    return {"image": out["image"], "labels": out.get("labels"), "spacing_mm": sample["spacing_mm"], "dataset": sample.get("dataset")}


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
    ):
        subjects = list(subjects)
        self.max_labels = max_labels
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
        self.store = _SubjectStore(store_subjects, preprocess, _default_cache(preprocess, cache))
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
        if self.augment is not None:
            generator = seeded_generator(self.seed, self.epoch, int(index), 3)
            moving = _augment_sample(moving, self.augment, generator)
            fixed = _augment_sample(fixed, self.augment, generator)
        grouped = self.group_weights is not None
        return make_pair_item(
            moving, fixed, f"{moving_id}->{fixed_id}", compact_labels=grouped,
            max_labels=self.max_labels if grouped else None, generator=seeded_generator(self.seed, self.epoch, int(index), 6),
        )


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
        self.store = _SubjectStore(subjects, preprocess, _default_cache(preprocess, cache))

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


# --------------------------------------------------------------------------- MNI template
def nilearn_data_dir() -> Path:
    """The folder of data files inside the installed ``nilearn`` package (no download)."""
    try:
        import nilearn
    except ImportError:
        raise ValueError("the MNI152 template ships inside the 'nilearn' package, which is not installed") from None
    return Path(nilearn.__file__).resolve().parent / "datasets" / "data"


def load_mni_template(ndim: int = 3, with_labels: bool = True) -> Dict[str, Any]:
    """The MNI152 2009c T1 template (1 mm, RAS) from the nilearn wheel, with a tissue label map.

    Labels: 0 background, 1 grey matter, 2 white matter (the larger of the GM / WM
    probabilities where their sum exceeds one half). ``ndim=2`` gives the coronal slice through
    the centre of the volume as a single-slice image ``(1, S, R)`` (superior-inferior x left-right).

    Returns ``{"id": "MNI152", "image": ImageData, "labels": ImageData | None}``.
    """
    folder = nilearn_data_dir()
    path = folder / MNI_TEMPLATE
    image = reorient_to_ras(read_volume(path, "MNI152 template"))
    labels = None
    if with_labels:
        gm = reorient_to_ras(read_volume(folder / MNI_GM, "MNI152 grey matter map")).array.astype(np.float32)
        wm = reorient_to_ras(read_volume(folder / MNI_WM, "MNI152 white matter map")).array.astype(np.float32)
        scale = max(float(gm.max()), float(wm.max()), 1e-6)
        gm, wm = gm / scale, wm / scale
        label_array = np.where(gm + wm > 0.5, np.where(wm > gm, 2, 1), 0).astype(np.int16)
        labels = ImageData(label_array, image.ijk_to_ras.copy(), "MNI152_tissue")
    if ndim == 2:
        j0 = image.array.shape[1] // 2  # RAS (K, J, I) = (S, A, R): fix the A index

        def coronal(img: ImageData) -> ImageData:
            array = np.ascontiguousarray(img.array[:, j0, :])[None]  # (1, S, R)
            m = img.ijk_to_ras
            # new (i, j, k) = old (i, k, j0): columns i, k, j
            new = np.eye(4)
            new[:3, 0], new[:3, 1], new[:3, 2] = m[:3, 0], m[:3, 2], m[:3, 1]
            new[:3, 3] = m[:3, 3] + j0 * m[:3, 1]
            return ImageData(array, new, img.name)

        image = coronal(image)
        labels = coronal(labels) if labels is not None else None
    elif ndim != 3:
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return {"id": "MNI152", "image": image, "labels": labels}


def find_mni_ixi_subjects(heads: PathLike) -> List[Subject]:
    """The MNI152 T1 template (nilearn wheel, 1 mm, no labels) followed by the heads of ``heads``.

    ``heads`` is read as a generic folder (:func:`find_generic_subjects`: ``*_DLMUSE`` /
    ``*_labels`` ... partners are label maps), e.g. the IXI T1 heads at 2 mm. The template keeps
    its file path; :class:`Preprocess` resamples it to the model spacing like any image.
    """
    template = nilearn_data_dir() / MNI_TEMPLATE
    if not template.is_file():
        raise FileNotFoundError(f"MNI152 template not found inside the nilearn package: {template}")
    heads_list = find_generic_subjects(heads)
    subjects = [Subject("MNI152", template, None)] + heads_list
    _check_unique(subjects, f"MNI152 + {heads}")
    return subjects


# --------------------------------------------------------------------------- data specs
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
    spacing = spec.get("spacing_mm")
    if spacing is None and kind in ("mni-synthetic", "mni-ixi") and ndim == 3:
        spacing = [2.0]  # the 1 mm template at 2 mm: a 3D volume a CPU can train on
    preprocess = Preprocess(spacing_mm=spacing, shape=spec.get("shape"), divisor=divisor, ndim=ndim)
    augment = _augment_from_spec(spec.get("augment", {}))
    n_val_pairs = int(spec.get("val_pairs", 8))
    split: Dict[str, Any] = {"kind": kind}

    if kind == "mni-synthetic":
        template = load_mni_template(ndim)
        if augment is None:
            augment = Augment()
        n_train = pairs_per_epoch or 1
        train = SyntheticPairDataset([template], preprocess, augment, n_train, seed=seed)
        val = SyntheticPairDataset([template], preprocess, augment, n_val_pairs, seed=seed + 1) if n_val_pairs else None
        split.update(train=["MNI152"], val=["MNI152"], val_pairs=[], synthetic=True)
        return DataBundle(train, val, preprocess, ndim, split)

    subjects, atlas = _subjects_for(spec, ndim)
    max_subjects = spec.get("max_subjects")
    if max_subjects:
        subjects = subjects[: int(max_subjects)]
    check_subject_files(subjects + ([atlas] if atlas is not None else []), f"data {kind}:{spec.get('path', '')}")
    mode = spec.get("mode") or ("scan_to_atlas" if kind == "seed" else "scan_to_scan")
    if mode != "scan_to_scan" and atlas is None:
        atlas_id = spec.get("atlas")
        if atlas_id is None:
            raise ValueError(f"pairing mode {mode!r} needs an atlas: give the atlas subject id (--atlas)")
        matches = [s for s in subjects if s.id == atlas_id]
        if not matches:
            raise ValueError(f"atlas id {atlas_id!r} is not among the {len(subjects)} subjects")
        atlas = matches[0]
        subjects = [s for s in subjects if s.id != atlas_id]
    split_file = spec.get("split")
    if split_file and Path(split_file).is_file():
        train_subjects, val_subjects = load_split(split_file, subjects)
    elif kind == "mni-ixi":
        train_subjects, val_subjects = list(subjects), [s for s in subjects if s.labels is not None]
        if split_file:
            save_split(split_file, train_subjects, val_subjects)
    else:
        train_subjects, val_subjects = split_subjects(subjects, float(spec.get("val_fraction", 0.2)), seed)
        if split_file:
            save_split(split_file, train_subjects, val_subjects)
    possible = len(val_subjects) * (len(val_subjects) - 1) if mode == "scan_to_scan" else len(val_subjects)
    if n_val_pairs > possible:
        warnings.warn(
            f"{n_val_pairs} validation pairs requested but {len(val_subjects)} validation subject(s) give only "
            f"{possible} ({mode}); raise val_fraction for more",
            stacklevel=2,
        )
        n_val_pairs = possible
    pairs = fixed_pairs(val_subjects, n_val_pairs, seed, atlas=atlas, mode=mode) if n_val_pairs > 0 else []
    cache = spec.get("cache", True if kind == "mni-ixi" else None)
    if spec.get("synthetic"):
        train = SyntheticPairDataset(train_subjects, preprocess, augment or Augment(), pairs_per_epoch or len(train_subjects), seed)
    else:
        train = PairDataset(train_subjects, preprocess, mode, atlas, augment, pairs_per_epoch, seed, cache)
    val = None
    if pairs:
        val = FixedPairDataset(val_subjects + ([atlas] if atlas is not None else []), pairs, preprocess, cache)
    split.update(
        train=[s.to_dict() for s in train_subjects],
        val=[s.to_dict() for s in val_subjects],
        atlas=None if atlas is None else atlas.to_dict(),
        mode=mode,
        val_pairs=[[m, f] for m, f in pairs],
    )
    _write_run_split(out_dir, train_subjects, val_subjects, pairs, split)
    return DataBundle(train, val, preprocess, ndim, split)


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
    subjects: List[Subject] = []
    for part in parts:
        subjects += find_dataset_subjects(part["kind"], part["path"])
    _check_unique(subjects, "the 3D brain data spec")
    check_subject_files(subjects, "the 3D brain data spec")
    spacing = spec.get("spacing_mm") or [BRAIN_SPACING_MM]
    spacing = [float(x) for x in (spacing if isinstance(spacing, (list, tuple)) else [spacing])]
    shape = spec.get("shape") or brain_grid_shape(min(spacing), divisor)
    preprocess = Preprocess(spacing_mm=spacing, shape=shape, divisor=divisor, ndim=3, center=spec.get("center", "com"))
    # shifts in mm, not voxels of the coarse grid (4 voxels would be 16 mm)
    augment = _augment_from_spec(spec.get("augment", {}), translation_vox=BRAIN_TRANSLATION_MM / min(spacing))
    split_file = spec.get("split")
    if split_file and Path(split_file).is_file():
        # a split of several datasets also serves a run on some of them: ids of the others are skipped
        kinds = {part["kind"] for part in parts}
        by_id = {s.id: s for s in subjects}
        payload = _read_json(split_file, "split")
        chosen = []
        for key in ("train", "val"):
            entries = [e if isinstance(e, str) else (e or {}).get("id") for e in payload.get(key, [])]  # ids or subject dicts
            ids = [i for i in entries if isinstance(i, str) and i.split("-", 1)[0] in kinds]
            unknown = [i for i in ids if i not in by_id]
            if unknown:
                raise ValueError(f"split file {split_file}: {key} ids not found among the subjects: {unknown}")
            chosen.append([by_id[i] for i in ids])
        train_subjects, val_subjects = chosen
        if not train_subjects:
            raise ValueError(f"split file {split_file} has no training subject of the datasets {sorted(kinds)}")
    else:
        n_val = dict(BRAIN_VAL_SUBJECTS)
        n_val.update(spec.get("val_per_dataset") or {})
        train_subjects, val_subjects = split_by_dataset(subjects, n_val, seed)
        if split_file:  # ids only: the files are found again from the data spec on any machine
            _write_json(split_file, {
                "format": SPLIT_FORMAT, "train": [s.id for s in train_subjects], "val": [s.id for s in val_subjects],
                "mode": "scan_to_scan", "seed": int(seed), "val_per_dataset": n_val,
            })
    pairs = dataset_cycle_pairs(val_subjects)
    max_pairs = spec.get("val_pairs")
    if max_pairs is not None:
        pairs = pairs[: int(max_pairs)]
    weights = {p["kind"]: float(p["weight"]) for p in parts}
    trainable = {s.dataset for s in train_subjects}
    weights = {k: w for k, w in weights.items() if k in trainable and sum(t.dataset == k for t in train_subjects) >= 2}
    cache = spec.get("cache", True)
    train = PairDataset(
        train_subjects, preprocess, "scan_to_scan", None, augment, pairs_per_epoch, seed, cache,
        dataset_weights=weights, cross_dataset=float(spec.get("cross_dataset", 0.0)),
        max_labels=spec.get("max_labels", BRAIN_MAX_LABELS),
    )
    val = FixedPairDataset(val_subjects, pairs, preprocess, cache) if pairs else None
    split: Dict[str, Any] = {
        "kind": spec["kind"],
        "train": [s.to_dict() for s in train_subjects],
        "val": [s.to_dict() for s in val_subjects],
        "atlas": None,
        "mode": "scan_to_scan",
        "val_pairs": [[m, f] for m, f in pairs],
    }
    _write_run_split(out_dir, train_subjects, val_subjects, pairs, split)
    return DataBundle(train, val, preprocess, 3, split)


def validation_dataset_from_split(split: Mapping[str, Any], preprocess: Preprocess) -> FixedPairDataset:
    """The fixed validation pairs recorded in a checkpoint's ``data_split`` (or a run's split + pairs)."""
    pairs = split.get("val_pairs") or []
    if not pairs:
        raise ValueError("this split records no validation pairs (synthetic data or val_pairs 0)")
    subjects = [Subject.from_dict(d) for d in split.get("val", []) if isinstance(d, Mapping)]
    if split.get("atlas"):
        subjects.append(Subject.from_dict(split["atlas"]))
    return FixedPairDataset(subjects, [tuple(p) for p in pairs], preprocess)


# --------------------------------------------------------------------------- toy data
def write_toy_oasis2d(folder: PathLike, n_subjects: int = 6, shape: Tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """Write a tiny synthetic dataset in the neurite-OASIS 2D layout (for smoke tests and demos).

    Each subject ``OASIS_TOY_xxxx`` gets ``slice_norm.nii.gz`` (float32 in [0, 1]) and
    ``slice_seg4.nii.gz`` (uint8: nested ellipses 0 background, 1 cortex, 3 white matter, 2 deep
    grey, 4 ventricle) with random sizes, offsets and smooth intensity noise; nibabel shape
    ``(shape[1], shape[0], 1)`` with the real data's orientation (so arrays are ``(1, *shape)``).
    """
    import nibabel as nib
    from scipy import ndimage

    folder = Path(folder)
    rng = np.random.default_rng(seed_from(seed, 11))
    h, w = (int(n) for n in shape)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    affine = np.array([[-1.0, 0, 0, w / 2], [0, 0, 1, -0.5], [0, -1.0, 0, h / 2], [0, 0, 0, 1]])
    ids = []
    for n in range(int(n_subjects)):
        cy, cx = (h - 1) / 2 + rng.uniform(-2, 2), (w - 1) / 2 + rng.uniform(-2, 2)
        ry, rx = h * rng.uniform(0.32, 0.42), w * rng.uniform(0.3, 0.4)
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        labels = np.zeros((h, w), dtype=np.uint8)
        labels[r < 1.0] = 1
        labels[r < rng.uniform(0.65, 0.8)] = 3
        labels[r < rng.uniform(0.35, 0.45)] = 2
        labels[r < rng.uniform(0.12, 0.2)] = 4
        image = np.asarray(SEG4_T1_INTENSITY, dtype=np.float64)[labels]
        image = image + 0.05 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.5)
        image = np.clip(ndimage.gaussian_filter(image, 0.6), 0, 1).astype(np.float32)
        sid = f"OASIS_TOY_{n:04d}"
        ids.append(sid)
        sub = folder / sid
        sub.mkdir(parents=True, exist_ok=True)
        # (K, J, I) = (1, h, w)  ->  nibabel (I, J, K) = (w, h, 1)
        nib.save(nib.Nifti1Image(image.T[:, :, None], affine), str(sub / "slice_norm.nii.gz"))
        nib.save(nib.Nifti1Image(labels.T[:, :, None], affine), str(sub / "slice_seg4.nii.gz"))
    (folder / "subjects.txt").write_text("\n".join(ids) + "\n")
    return folder
