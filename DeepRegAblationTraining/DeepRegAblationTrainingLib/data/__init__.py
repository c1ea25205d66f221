"""Training data: subject lists, splits, preprocessing and pair datasets.

The package's modules, one concept each (every public name is re-exported here, so
``from DeepRegAblationTrainingLib.data import X`` works for all of them):

- ``subjects``: :class:`Subject` and the finders of each source layout (neurite-OASIS, the seed
  study's one-hot lists, a generic CSV / folder, the public 3D brain datasets);
- ``mni``: the MNI152 2009c template that ships inside the ``nilearn`` wheel (synthetic pairs on
  a fresh machine) and ``mni-ixi`` (that template plus a folder of real heads);
- ``reading``: every file format as a checked ``ImageData`` (:func:`read_volume`,
  :func:`check_subject_files`);
- ``preprocess``: :class:`Preprocess`, the same model-grid input as ``DeepRegAblationLib.inference``
  (RAS, robust intensity window, model grid);
- ``splits``: train / validation splits and the fixed validation pairs, and their JSON files;
- ``datasets``: the pair datasets (items are pure functions of ``(seed, epoch, index)``), and
  :func:`collate_pairs`;
- ``specs``: the ``--data`` argument and :func:`build_data`, which makes a run's datasets;
- ``toy``: a tiny synthetic neurite-OASIS 2D dataset for smoke tests and demos.

Every dataset item is a dict of tensors WITHOUT batch dimension::

    {"moving": (1, *S) float32, "fixed": (1, *S) float32,
     "moving_labels": (1, *S) int64, "fixed_labels": (1, *S) int64      (when both have labels),
     "fixed_foreground": (1, *S) uint8   (the fixed labels > 0 before any renumbering, when the fixed image has labels),
     "spacing_mm": (ndim,) float32 (tensor axis order), "pair_id": "moving_id->fixed_id",
     "disp_true_vox": (ndim, *S) float32                                (synthetic pairs only)}
"""
from __future__ import annotations

from .datasets import (
    FixedPairDataset, PairDataset, SourceLike, SubjectStore, SyntheticPairDataset, augment_sample, collate_pairs,
    compact_label_pair, make_pair_item, mirror_sample,
)
from .mni import MNI_GM, MNI_TEMPLATE, MNI_WM, find_mni_ixi_subjects, load_mni_template, nilearn_data_dir
from .preprocess import GRID_CENTERS, Preprocess, reorient_to_ras
from .reading import SEG4_T1_INTENSITY, check_subject_files, one_hot_to_labels, read_volume, render_label_image
from .specs import (
    BRAIN_FIELD_OF_VIEW_MM, BRAIN_KINDS, BRAIN_MAX_LABELS, BRAIN_SPACING_MM, BRAIN_TRANSLATION_MM, BRAIN_VAL_SUBJECTS,
    BRAIN_WEIGHTS, DATA_KINDS, DataBundle, brain_grid_shape, brain_parts, build_data, data_ndim, parse_data_argument,
    validation_dataset_from_split,
)
from .splits import (
    PAIR_MODES, PAIRS_FORMAT, SPLIT_FORMAT, dataset_cycle_pairs, fixed_pairs, load_dataset_split, load_pairs, load_split,
    save_dataset_split, save_pairs, save_split, split_by_dataset, split_subjects,
)
from .subjects import (
    DATASET_FOLDERS, DATASET_LAYOUTS, IMAGE_EXTENSIONS, LABEL_SUFFIXES, OASIS_LAYOUT, PathLike, Subject,
    check_unique_ids, find_dataset_subjects, find_generic_subjects, find_oasis_subjects, load_seed_study_list,
    strip_extension,
)
from .toy import write_toy_oasis2d

__all__ = [
    # subjects
    "PathLike", "IMAGE_EXTENSIONS", "LABEL_SUFFIXES", "OASIS_LAYOUT", "DATASET_LAYOUTS", "DATASET_FOLDERS", "Subject",
    "strip_extension", "check_unique_ids", "find_oasis_subjects", "load_seed_study_list", "find_generic_subjects",
    "find_dataset_subjects",
    # mni
    "MNI_TEMPLATE", "MNI_GM", "MNI_WM", "nilearn_data_dir", "load_mni_template", "find_mni_ixi_subjects",
    # reading
    "SEG4_T1_INTENSITY", "one_hot_to_labels", "render_label_image", "read_volume", "check_subject_files",
    # preprocess
    "GRID_CENTERS", "reorient_to_ras", "Preprocess",
    # splits
    "PAIR_MODES", "SPLIT_FORMAT", "PAIRS_FORMAT", "split_by_dataset", "dataset_cycle_pairs", "split_subjects",
    "save_split", "load_split", "save_dataset_split", "load_dataset_split", "fixed_pairs", "save_pairs", "load_pairs",
    # datasets
    "SubjectStore", "compact_label_pair", "make_pair_item", "augment_sample", "mirror_sample", "PairDataset", "FixedPairDataset", "SourceLike",
    "SyntheticPairDataset", "collate_pairs",
    # specs
    "BRAIN_KINDS", "DATA_KINDS", "BRAIN_SPACING_MM", "BRAIN_FIELD_OF_VIEW_MM", "BRAIN_VAL_SUBJECTS", "BRAIN_WEIGHTS",
    "BRAIN_TRANSLATION_MM", "BRAIN_MAX_LABELS", "parse_data_argument", "DataBundle", "data_ndim", "build_data",
    "brain_parts", "brain_grid_shape", "validation_dataset_from_split",
    # toy
    "write_toy_oasis2d",
]
