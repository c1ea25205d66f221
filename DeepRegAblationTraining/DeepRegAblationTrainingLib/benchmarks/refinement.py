"""Refinement from a network's output against refinement from the centre of mass alone, beside ANTs SyN.

For each validation pair of each dataset (full resolution, the same final steps for every row:
``registration.mapping.result_from_mapping``):

- ``ants_syn``: ANTs SyN with the antspyx defaults (``classical.classical_register``);
- ``network``: the network alone (``register(model, refine=0)``; the 0-iteration point of its curve);
- ``com``: the centre-of-mass translation alone (the 0-iteration point of the other curve);
- ``network+refine``: the network, then the refinement from its output (``register(refine="recommended")``:
  from the network's grid on, the network's field kept and a residual composed with it, each level stopping once
  its loss flattens or after ``refine.NETWORK_KEPT_ITERATIONS`` steps, ``refine.network_start_schedule``);
- ``com+refine``: the recommended refinement from the centre-of-mass translation alone, no network
  (``registration.pipeline.refine_without_network``);
- ``ceiling``: the ``com+refine`` total field resampled linearly onto the network's model grid (4 mm for
  the shipped 3D models) and back: the alignment a field on the network's grid can carry;
- ``network+refine@N`` / ``com+refine@N``: both refinements with ``N`` iterations per level (the
  Dice-against-time curves; from the network its field kept), for each ``N`` of ``budgets``.

Times are the registration alone, images in memory to the full-resolution field and warped image
(``metrics["runtime_s"]``); the ceiling has none.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from DeepRegAblationLib import geometry, resampling
from DeepRegAblationLib.models.resolve import LoadedModel
from DeepRegAblationLib.registration.alignment import center_of_mass_alignment
from DeepRegAblationLib.registration.model_grid import model_grid_spec, model_orientation, model_size_multiple
from DeepRegAblationLib.registration.mapping import result_from_mapping
from DeepRegAblationLib.registration.pipeline import refine_without_network, register
from DeepRegAblationLib.registration.result import RegistrationResult

from .classical import classical_register
from .quality import Images, read_pair

__all__ = ["DEFAULT_BUDGETS", "REFINEMENT_COLUMNS", "ceiling_result", "pair_rows", "refinement_table", "refinement_section"]

DEFAULT_BUDGETS = (1, 2, 5, 10)
"""Iterations per level of the Dice-against-time points (the recommended schedule itself is the last point)."""
REFINEMENT_COLUMNS = ("dataset", "fixed", "moving", "method", "start", "budget", "dice", "folding_pct", "runtime_s")


def ceiling_result(images: Images, result: RegistrationResult, loaded: LoadedModel) -> RegistrationResult:
    """``result``'s total field resampled linearly onto ``loaded``'s model grid over the fixed image and back."""
    fixed, moving, fixed_labels, moving_labels = images
    ndim = int(loaded.model.ndim)
    spacing, shape = model_grid_spec(fixed, ndim, model_size_multiple(loaded.model), loaded.preprocessing)
    centre = None
    if (loaded.preprocessing or {}).get("center") == "com":
        from DeepRegAblationLib.imageio import normalize_intensity

        centre = geometry.center_of_mass_ras(normalize_intensity(fixed.array), fixed.ijk_to_ras)
    grid, grid_shape = geometry.model_grid_for(fixed, spacing, shape, orientation=model_orientation(loaded.preprocessing, ndim),
                                               center_ras=centre)
    total = np.moveaxis(np.asarray(result.disp_ras_mm, dtype=np.float32), -1, 0)  # (3, K, J, I) RAS mm
    coarse = resampling.resample_channels(total, fixed.ijk_to_ras, grid, grid_shape, mode="linear", fill_value=None)
    back = resampling.resample_channels(coarse, grid, fixed.ijk_to_ras, fixed.shape, mode="linear", fill_value=None)
    return result_from_mapping("ceiling", fixed, moving, result.affine_ras, torch.from_numpy(back), fixed_labels,
                               moving_labels)


def _row(ids: Tuple[str, str, str], method: str, start: str, budget: Any, result: Optional[RegistrationResult]) -> Dict[str, Any]:
    metrics = result.metrics if result is not None else {}
    runtime = float(metrics.get("runtime_s", float("nan"))) if method != "ceiling" else float("nan")
    return dict(dataset=ids[0], fixed=ids[1], moving=ids[2], method=method, start=start, budget=budget,
                dice=float(metrics.get("dice", float("nan"))), folding_pct=float(metrics.get("folding_pct", float("nan"))),
                runtime_s=runtime)


def pair_rows(ids: Tuple[str, str, str], images: Images, loaded: LoadedModel, budgets: Sequence[int], threads: int,
              syn: bool = True, report: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Every row of one pair (see the module docstring); ``ids`` = ``(dataset, fixed id, moving id)``."""
    fixed, moving, fixed_labels, moving_labels = images
    rows: List[Dict[str, Any]] = []

    def add(method: str, start: str, budget: Any, result: Optional[RegistrationResult]) -> None:
        rows.append(_row(ids, method, start, budget, result))
        report(f"{ids[2]} -> {ids[1]} {method}{'' if budget in ('', None) else f'@{budget}'}: dice {rows[-1]['dice']:.3f} "
               f"({rows[-1]['runtime_s']:.1f} s)")

    if syn:
        add("ants_syn", "", "", classical_register(fixed, moving, fixed_labels, moving_labels, method="ants",
                                                   transform="deformable", threads=threads))
    add("network", "network", 0, register(fixed, moving, loaded.model, fixed_labels, moving_labels, refine=0, device="cpu"))
    t0 = time.perf_counter()
    shift = center_of_mass_alignment(fixed, moving)
    disp = np.broadcast_to(shift[:3, 3].astype(np.float32), tuple(fixed.shape) + (3,))
    add("com", "com", 0, result_from_mapping("com", fixed, moving, shift, disp, fixed_labels, moving_labels, {}, t0))
    for budget in list(budgets) + ["recommended"]:
        net = register(fixed, moving, loaded.model, fixed_labels, moving_labels, refine=budget, device="cpu")
        com = refine_without_network(fixed, moving, fixed_labels, moving_labels, refine=budget)
        suffix = "" if budget == "recommended" else f"@{budget}"
        add("network+refine" + suffix, "network", budget, net)
        add("com+refine" + suffix, "com", budget, com)
        if budget == "recommended":
            add("ceiling", "com", budget, ceiling_result(images, com, loaded))
    return rows


def refinement_table(pairs_by_dataset: Dict[str, Sequence[Tuple[Any, Any]]], loaded: LoadedModel,
                     budgets: Sequence[int] = DEFAULT_BUDGETS, threads: int = 2, syn: bool = True,
                     progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """The rows of every ``(fixed, moving)`` subject pair of every dataset (subjects with ``id``, ``image``, ``labels``)."""
    from .classical import set_threads

    set_threads(threads)
    report = progress or (lambda message: None)
    rows: List[Dict[str, Any]] = []
    for dataset, pairs in pairs_by_dataset.items():
        start = time.perf_counter()
        for fixed_subject, moving_subject in pairs:
            ids = (dataset, str(fixed_subject.id), str(moving_subject.id))
            rows += pair_rows(ids, read_pair(fixed_subject, moving_subject), loaded, budgets, threads, syn,
                              lambda message: report(f"  {dataset}: {message} [{time.perf_counter() - start:.0f} s]"))
    return rows


def refinement_section(args: Any, variants: Sequence[str]) -> Tuple[str, List[Dict[str, Any]]]:
    """``bench --refinement``: the validation pairs of each dataset of ``--datasets`` (default all) in ``--split``
    with the first of ``variants``; returns ``(markdown, rows)`` and writes the Dice-against-time figure beside
    the report."""
    from DeepRegAblationLib.models.resolve import resolve_models

    from ..reports.refinement import markdown_refinement, plot_dice_against_time
    from . import quality
    from .suite import DATASETS, labelled_validation_subjects, validation_ids

    names = list(DATASETS) if (args.datasets or "all").strip() == "all" else [d.strip() for d in args.datasets.split(",")]
    budgets = [int(b) for b in str(args.budgets).split(",") if b.strip()]
    if not budgets or any(b < 1 for b in budgets):
        raise ValueError(f"--budgets: iterations per level must be whole numbers >= 1, got {args.budgets!r}")
    loaded = next(iter(resolve_models(None, list(variants)[:1], 3).values()))
    val_ids = validation_ids(args.split)
    pairs = {}
    for name in names:
        labelled = labelled_validation_subjects(name, args.data_root, val_ids)
        if len(labelled) >= 2:
            pairs[name] = quality.dataset_pairs(labelled, args.pairs)
    start = time.perf_counter()
    rows = refinement_table(pairs, loaded, budgets, args.threads, progress=lambda message: print(message, flush=True))
    figure = Path(args.report).with_suffix(".refinement.png")
    plot_dice_against_time(rows, figure)
    setup = (f"Model: `{loaded.name}` ({loaded.source}{f', {loaded.path.name}' if loaded.path else ''}); validation pairs of "
             f"{', '.join(pairs)} in `{args.split.name}` ({args.pairs}); {args.threads} CPU thread(s) for torch and ITK "
             f"(the refinement itself runs on one, `registration.refine.REFINE_THREADS`); Dice-against-time budgets "
             f"{', '.join(map(str, budgets))} iterations per level; wall time {time.perf_counter() - start:.0f} s.")
    return markdown_refinement(rows, setup, figure.name), rows
