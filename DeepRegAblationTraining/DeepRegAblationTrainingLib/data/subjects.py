"""Subjects: one scan (an image and optionally its label map) and the finders of every supported layout.

Sources (each gives a list of :class:`Subject`):

- neurite-OASIS (:func:`find_oasis_subjects`): ``<root>/<id>/slice_norm.nii.gz`` with
  ``slice_seg4`` / ``slice_seg24`` (2D, 160 x 192 coronal slices) or ``aligned_norm.nii.gz`` with
  ``aligned_seg4`` / ``aligned_seg35`` (3D, 160 x 192 x 224); ids from ``subjects.txt`` when present.
- the original (seed) study's format (:func:`load_seed_study_list`): a text file listing
  ``seg4_onehot.npy`` files (one-hot ``(L, *S)`` arrays, one per line, or the folders holding
  them) and a template path. Labels are ``argmax`` over ``L``; the intensity image is rendered
  from the labels (``reading.render_label_image``), because the format stores no image.
- a generic list (:func:`find_generic_subjects`): a CSV with columns ``image`` (and optionally
  ``labels``, ``id``), or a folder of NIfTI / NRRD images with optional ``<name>_labels`` /
  ``_label`` / ``_seg`` / ``_dlmuse`` partners.
- the public 3D brain datasets in their own file layouts (:func:`find_dataset_subjects`,
  :data:`DATASET_LAYOUTS`).

(The MNI152 template and the ``mni-ixi`` heads are in ``data.mni``.)
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "PathLike", "IMAGE_EXTENSIONS", "LABEL_SUFFIXES", "OASIS_LAYOUT", "DATASET_LAYOUTS", "DATASET_FOLDERS",
    "Subject", "strip_extension", "check_unique_ids", "find_oasis_subjects", "load_seed_study_list",
    "find_generic_subjects", "find_dataset_subjects",
]

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
LABEL_SUFFIXES = ("_labels", "_label", "_seg", "_dlmuse")
OASIS_LAYOUT = {
    2: {"image": "slice_norm.nii.gz", "labels": {"seg4": "slice_seg4.nii.gz", "seg24": "slice_seg24.nii.gz"}},
    3: {"image": "aligned_norm.nii.gz", "labels": {"seg4": "aligned_seg4.nii.gz", "seg35": "aligned_seg35.nii.gz"}},
}


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


def strip_extension(name: str) -> str:
    """``name`` without its image extension (:data:`IMAGE_EXTENSIONS`, else its last suffix)."""
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _raise_missing(missing: Sequence[Path], where: str) -> None:
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ValueError(f"{len(missing)} file(s) missing in {where}: {names}")


def check_unique_ids(subjects: Sequence[Subject], where: str) -> None:
    """``ValueError`` naming ``where`` and every subject id listed more than once."""
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
    check_unique_ids(subjects, str(root))
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
    check_unique_ids(subjects, str(paths_file))
    return subjects, template


def _find_label_partner(image: Path, candidates: Dict[str, Path]) -> Optional[Path]:
    stem = strip_extension(image.name).lower()
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
        by_stem = {strip_extension(p.name).lower(): p for p in files}
        label_files = {p for stem, p in by_stem.items() if any(stem.endswith(s) for s in LABEL_SUFFIXES)}
        subjects = [
            Subject(strip_extension(p.name), p, _find_label_partner(p, by_stem)) for p in files if p not in label_files
        ]
        if not subjects:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS[:-1])}) found in folder {source}")
        check_unique_ids(subjects, str(source))
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
        subjects.append(Subject(row.get("id") or strip_extension(image.name), image, labels))
    if not subjects:
        raise ValueError(f"CSV {source} lists no images")
    _raise_missing(missing, f"CSV {source}")
    check_unique_ids(subjects, str(source))
    return subjects


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
