"""The registration-quality benchmark: our variants beside classical registration and the peers, on real pairs.

Every method registers the same ordered pairs (moving -> fixed) through the same final steps
(:mod:`.classical`: one interpolation of the original moving image and labels on the fixed grid,
the Jacobian of the total field, ``metrics.registration_metrics`` on robust-normalised intensities:
mean Dice over the labels present in both maps, mean HD95 (mm), folding % (``det J <= 0``, raw),
SDlogJ), so that the numbers differ only by the transform each method found.

Methods (row ids; ``reports.quality.METHOD_NOTES`` holds the text the report prints):

- ``identity``, ``sitk_affine``, ``sitk_demons``, ``ants_affine``, ``ants_syn`` (classical);
- ``com`` (with ``initial_alignments`` holding ``"com"``): the centre-of-mass translation alone;
- ``elastix``, ``fireants`` (optional peers, ``methods.PEER_METHODS``); skipped when not installed;
- our variants: ``inference.register`` with the shipped 3D model
  ``Resources/Models/3d/<variant>.pt`` when present, else an untrained network (flagged), with and
  without instance refinement (``refine``: schedules such as ``recommended`` / ``thorough``).

Runtime is the registration alone, from images in memory to the full-resolution field, warped
image and warped labels (metrics excluded): ``metrics["runtime_s"]``, split for our rows into the
network part (``network_s``: resampling, network, full-resolution field, warping) and ``refine_s``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from DeepRegAblationLib import geometry
from DeepRegAblationLib.imageio import ImageData, read_image
from DeepRegAblationLib.models.resolve import LoadedModel, resolve_models
from DeepRegAblationLib.registration.result import RegistrationResult
from DeepRegAblationLib.registration.alignment import center_of_mass_alignment
from DeepRegAblationLib.registration.mapping import result_from_mapping
from DeepRegAblationLib.registration.pipeline import register

from .classical import classical_register, identity_register, peer_register, set_threads
from .methods import CLASSICAL_METHODS, PEER_METHODS, PEER_PACKAGES

__all__ = [
    "COM_LABEL", "QUALITY_COLUMNS", "SUMMARY_METRICS", "Images", "dataset_pairs", "read_pair",
    "refine_schedules", "quality_table", "summarize_quality",
]

Progress = Optional[Callable[[str], None]]
Images = Tuple[ImageData, ImageData, Optional[ImageData], Optional[ImageData]]
"""``(fixed, moving, fixed_labels, moving_labels)`` of one pair."""

COM_LABEL = "centre-of-mass translation only"
"""Row label of the ``com`` reference row (``quality_table(initial_alignments=[..., "com"])``)."""
QUALITY_COLUMNS = (
    "dataset", "fixed", "moving", "method", "label", "kind", "model", "seen_in_training",
    "dice", "hd95_mm", "folding_pct", "sdlogj", "runtime_s", "network_s", "refine_s",
)  # fmt: skip
"""Keys of every row of :func:`quality_table`: ``runtime_s`` = ``network_s`` (everything but the
refinement: resampling, network, full-resolution field and warping; the whole registration for the
other methods) + ``refine_s``."""
SUMMARY_METRICS = ("dice", "hd95_mm", "folding_pct", "sdlogj", "runtime_s", "network_s", "refine_s")


def dataset_pairs(subjects: Sequence[Any], pairs: Union[str, int] = "cycle") -> List[Tuple[Any, Any]]:
    """Ordered ``(fixed, moving)`` subject pairs.

    ``"cycle"``: each subject is fixed once with the next one as moving (``n`` pairs, the last
    subject's moving is the first); ``"all"``: every ordered pair (``n (n - 1)``); an integer
    ``N``: the first ``N`` pairs of the cycle.
    """
    subjects = list(subjects)
    if len(subjects) < 2:
        raise ValueError(f"need at least 2 subjects for pairs, got {len(subjects)}")
    cycle = [(subjects[i], subjects[(i + 1) % len(subjects)]) for i in range(len(subjects))]
    if pairs == "cycle":
        return cycle
    if pairs == "all":
        return [(f, m) for f in subjects for m in subjects if f is not m]
    try:
        count = int(pairs)
    except (TypeError, ValueError):
        raise ValueError(f"pairs must be 'cycle', 'all' or a positive integer, got {pairs!r}") from None
    if count < 1:
        raise ValueError(f"pairs must be a positive integer, got {count}")
    return cycle[:count]


def _row(fixed_id: str, moving_id: str, method: str, label: str, kind: str, model: str,
         seen: Optional[bool], result: RegistrationResult, dataset: str = "") -> Dict[str, Any]:
    metrics = result.metrics
    runtime = float(metrics["runtime_s"])  # the registration, metrics excluded (``metrics_s``)
    refine_s = float(result.timings.get("refine", 0.0))
    row = {"dataset": dataset, "fixed": fixed_id, "moving": moving_id, "method": method, "label": label,
           "kind": kind, "model": model, "seen_in_training": seen}
    for key in ("dice", "hd95_mm", "folding_pct", "sdlogj"):
        row[key] = float(metrics.get(key, float("nan")))
    row["runtime_s"] = runtime
    row["network_s"] = runtime - refine_s
    row["refine_s"] = refine_s
    return row


def refine_schedules(refine: Union[int, str, Sequence[Union[int, str]], None]) -> List[Union[int, str]]:
    """The refinement schedules of :func:`quality_table`'s rows (``0`` / ``"off"`` first: the plain network)."""
    from DeepRegAblationLib.registration.refine import refine_schedule

    values = list(refine) if isinstance(refine, (list, tuple)) else [refine]
    out: List[Union[int, str]] = [0]
    for value in values:
        schedule = str(value).split("@")[0]  # "thorough@affine_enhanced": that variant only
        if refine_schedule(schedule) is not None and value not in out:  # ValueError for a bad value
            out.append(int(value) if str(value).strip().isdigit() else str(value))
    return out


def _schedule_for(schedule: Union[int, str], variant: str) -> Optional[Union[int, str]]:
    """The schedule to run for ``variant`` (``None`` when ``schedule`` is ``<name>@<other variants>``)."""
    if isinstance(schedule, str) and "@" in schedule:
        name, only = schedule.split("@", 1)
        if variant not in only.split("+"):
            return None
        return int(name) if name.strip().isdigit() else name
    return schedule


def _refine_names(schedule: Union[int, str]) -> Tuple[str, str]:
    """``(method suffix, label suffix)`` of a refinement schedule."""
    if isinstance(schedule, int):
        return f"+refine{schedule}", f" + {schedule} refinement steps"
    return f"+refine-{schedule}", f" + {schedule} refinement"



def quality_table(
    pairs: Sequence[Tuple[Any, Any]],
    variants: Sequence[str],
    methods: Sequence[str],
    device: str = "cpu",
    threads: Optional[int] = None,
    progress: Progress = None,
    untrained: bool = False,
    refine: Union[int, str, Sequence[Union[int, str]]] = 0,
    initial_alignments: Sequence[str] = ("none",),
    dataset: str = "",
) -> List[Dict[str, Any]]:
    """Register every pair with every variant and classical method; one row per (pair, method).

    Args:
        pairs: ``(fixed, moving)`` subjects, each with ``id``, ``image`` and ``labels`` (paths;
            ``data.Subject``), e.g. from :func:`dataset_pairs`.
        variants: our variant ids (shipped 3D models, or untrained networks where none is shipped),
            or ``<name>=<checkpoint file>`` (``models.resolve.resolve_models``).
        methods: classical method ids (keys of :data:`.methods.CLASSICAL_METHODS`), e.g.
            :func:`.classical.classical_methods`, and peers (keys of :data:`.methods.PEER_METHODS`:
            ``elastix``, ``fireants``; see :func:`.classical.peer_status`).
        device: device of our models (``inference.register``).
        threads: torch and ITK threads (``None``: leave the defaults).
        progress: ``progress(message)`` after each registration.
        untrained: run untrained networks even where a model is shipped (tests the pipeline only).
        refine: refinement schedule(s) (``inference.register(refine=...)``): each variant also gets a
            row ``<variant>+refine<N>`` (an iteration count) or ``<variant>+refine-<name>``
            (``recommended``, ``thorough``) per schedule; ``0`` / ``"off"``: none;
            ``"<name>@<variant>[+<variant>]"`` runs that schedule for those variants only.
        dataset: the dataset name written in every row.
        initial_alignments: ``inference.register``'s ``initial_alignment`` values to run our variants
            with (rows ``<variant>`` for ``"none"``, ``<variant>+com`` for ``"com"``); with ``"com"`` a
            reference row ``com`` gives the centre-of-mass translation alone.

    Returns:
        rows with the keys :data:`QUALITY_COLUMNS`: ``kind`` is ``"reference"`` (identity),
        ``"classical"`` or ``"ours"``; ``model`` is the weights file, ``"untrained"`` or the
        classical package; ``seen_in_training`` tells whether both subjects of the pair were
        training subjects of the shipped model (``None``: unknown or not applicable).
    """
    unknown = [m for m in methods if m not in CLASSICAL_METHODS and m not in PEER_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown id(s) {unknown}; choose from {list(CLASSICAL_METHODS) + list(PEER_METHODS)}")
    schedules = refine_schedules(refine)
    set_threads(threads)
    models = resolve_models(None, variants, 3, untrained=untrained, seed=0)
    rows: List[Dict[str, Any]] = []
    report = progress or (lambda message: None)
    for fixed_subject, moving_subject in pairs:
        images = read_pair(fixed_subject, moving_subject)
        ids = (str(fixed_subject.id), str(moving_subject.id))
        for method in methods:
            rows.append(_method_row(ids, images, method, threads, dataset))
            report(f"{ids[1]} -> {ids[0]} {method}: dice {rows[-1]['dice']:.3f} ({rows[-1]['runtime_s']:.1f} s)")
        if "com" in initial_alignments:
            rows.append(_com_row(ids, images, dataset))
        rows += _variant_rows(ids, images, models, schedules, initial_alignments, device, dataset, report)
    return rows


def read_pair(fixed_subject: Any, moving_subject: Any) -> Images:
    """Read a pair's images and label maps (when the subjects have them); each label map must cover its image."""
    fixed = read_image(fixed_subject.image, "fixed image")
    moving = read_image(moving_subject.image, "moving image")
    fixed_labels, moving_labels = (
        read_image(subject.labels, f"{role} labels", "labels") if getattr(subject, "labels", None) else None
        for subject, role in ((fixed_subject, "fixed"), (moving_subject, "moving"))
    )
    for image, labels, subject in ((fixed, fixed_labels, fixed_subject), (moving, moving_labels, moving_subject)):
        if labels is not None:  # a label map may have its own grid, but it must cover its image
            geometry.check_overlap(image, labels, f"image {subject.image}", f"labels {subject.labels}")
    return fixed, moving, fixed_labels, moving_labels


def _method_row(ids: Tuple[str, str], images: Images, method: str, threads: Optional[int], dataset: str) -> Dict[str, Any]:
    """The row of one classical method or peer on one pair."""
    if method == "identity":
        result = identity_register(*images)
        kind, model = "reference", "-"
    elif method in PEER_METHODS:
        result = peer_register(*images, method=method, threads=threads)
        kind, model = "peer", PEER_PACKAGES[method][1]
    else:
        family, stage = method.split("_", 1)
        result = classical_register(*images, method=family, transform="affine" if stage == "affine" else "deformable",
                                    threads=threads)
        kind, model = "classical", "antspyx" if family == "ants" else "SimpleITK"
    label = PEER_METHODS[method] if method in PEER_METHODS else CLASSICAL_METHODS[method]
    return _row(*ids, method, label, kind, model, None, result, dataset)


def _com_row(ids: Tuple[str, str], images: Images, dataset: str) -> Dict[str, Any]:
    """The reference row of the centre-of-mass translation alone."""
    fixed, moving, fixed_labels, moving_labels = images
    t0 = time.perf_counter()
    shift = center_of_mass_alignment(fixed, moving)
    disp = np.broadcast_to(shift[:3, 3].astype(np.float32), tuple(fixed.shape) + (3,))
    result = result_from_mapping("com", fixed, moving, shift, disp, fixed_labels, moving_labels, {}, t0)
    return _row(*ids, "com", COM_LABEL, "reference", "-", None, result, dataset)


def _variant_rows(ids: Tuple[str, str], images: Images, models: Dict[str, LoadedModel],
                  schedules: Sequence[Union[int, str]], initial_alignments: Sequence[str], device: str, dataset: str,
                  report: Callable[[str], None]) -> List[Dict[str, Any]]:
    """The rows of our variants on one pair: per variant, initial alignment and refinement schedule."""
    fixed, moving, fixed_labels, moving_labels = images
    rows: List[Dict[str, Any]] = []
    for variant, entry in models.items():
        seen = None if entry.train_ids is None else all(i in entry.train_ids for i in ids)
        model = {"shipped": Path(entry.path or "").name, "checkpoint": str(entry.path)}.get(entry.source, "untrained")
        for alignment in initial_alignments:
            for schedule in schedules:
                schedule = _schedule_for(schedule, variant)
                if schedule is None:
                    continue
                result = register(fixed, moving, model=entry.model, fixed_labels=fixed_labels,
                                  moving_labels=moving_labels, device=device, refine=schedule,
                                  initial_alignment=alignment)
                method_suffix, label_suffix = _refine_names(schedule) if schedule else ("", "")
                method = variant + ("+com" if alignment == "com" else "") + method_suffix
                label = (f"{variant} ({entry.source})"
                         + (" after centre-of-mass alignment" if alignment == "com" else "") + label_suffix)
                rows.append(_row(*ids, method, label, "ours", model, seen, result, dataset))
                report(f"{ids[1]} -> {ids[0]} {method}: dice {rows[-1]['dice']:.3f} ({rows[-1]['runtime_s']:.1f} s)")
    return rows


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std


def summarize_quality(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per method (in the order of first appearance): ``n_pairs`` and ``<metric>_mean`` / ``<metric>_std``
    (sample standard deviation over pairs, NaN for one pair) of :data:`SUMMARY_METRICS`."""
    order: List[str] = []
    for row in rows:
        if row["method"] not in order:
            order.append(row["method"])
    summary = []
    for method in order:
        mrows = [r for r in rows if r["method"] == method]
        entry = {"method": method, "label": mrows[0]["label"], "kind": mrows[0]["kind"], "model": mrows[0]["model"],
                 "n_pairs": len(mrows)}
        seen = {r["seen_in_training"] for r in mrows}
        entry["seen_in_training"] = seen.pop() if len(seen) == 1 else "some"
        for key in SUMMARY_METRICS:
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([float(r[key]) for r in mrows])
        summary.append(entry)
    return summary
