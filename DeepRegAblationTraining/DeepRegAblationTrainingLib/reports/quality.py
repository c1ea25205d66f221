"""The Markdown of the registration-quality benchmark (``bench --quality``): method notes, tables, ratios, goals.

:func:`markdown_quality`: one folder of IXI heads (a summary table, mean ± std over the pairs);
:func:`markdown_quality_datasets`: a section per dataset with the ratios to ANTs SyN, elastix and
FireANTs on the same pairs and the issue's goals (:func:`goal_lines`). Rows are those of
``benchmarks.quality.quality_table``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from ..benchmarks.methods import CLASSICAL_METHODS, PEER_METHODS
from ..benchmarks.quality import summarize_quality

__all__ = ["METHOD_NOTES", "markdown_quality", "goal_lines", "markdown_quality_datasets"]

METHOD_NOTES = {
    "identity": "no registration: the images' own physical alignment.",
    "com": "the translation that takes the fixed image's intensity centre of mass onto the moving image's "
           "(`registration.alignment.center_of_mass_alignment`, 1-99 percentile normalised intensities as weights): the "
           "initial alignment of the rows \"after centre-of-mass alignment\".",
    "sitk_affine": "SimpleITK affine, Mattes mutual information (32 bins, 25 % random samples, fixed seed), "
                   "regular-step gradient descent, physical-shift scales, centred (moments) initialisation, "
                   "two resolution levels (shrink 4 and 2, smoothing sigmas 2 and 1 voxels).",
    "sitk_demons": "`sitk_affine`, then SimpleITK diffeomorphic demons on the affinely resampled, "
                   "histogram-matched moving image: three resolution levels (shrink 4, 2, 1; 50, 30, 10 "
                   "iterations; Gaussian field smoothing of 1.5 voxels of each level).",
    "ants_affine": "ANTs through antspyx, `ants.registration(type_of_transform=\"Affine\")` with its defaults.",
    "ants_syn": "ANTs through antspyx, `ants.registration(type_of_transform=\"SyN\")` with its defaults "
                "(rigid + affine initialisation included); the transform is the composed displacement field "
                "that antsApplyTransforms writes on the fixed grid.",
    "ours": "`inference.register` (model grid, network, full-resolution field) with the shipped 3D model "
            "`Resources/Models/3d/<variant>.pt`, or an untrained network where none is shipped.",
    "refine": "Refined rows add `inference.refine` (instance optimisation on the pair: affine at 8 and 4 mm, then a "
              "stationary velocity field at 8, 4 and 2 mm but never the image's own resolution for `recommended`, "
              "down to 1 mm / full resolution for `thorough`; LNCC + diffusion + folding penalty, Adam, early stop).",
    "elastix": "elastix through itk-elastix with its default `affine` then `bspline` parameter maps (the engine of "
               "SlicerElastix); the total mapping is transformix's deformation field on the fixed grid.",
    "fireants": "FireANTs on the CPU: moments (centre of mass) initialisation, affine (scales 8/4/2/1, 100/50/25/20 "
                "iterations, CC window 5, Adam lr 3e-4) and greedy deformable registration (scales 4/2/1, 200/100/50 "
                "iterations, CC window 7, gradient smoothing 2, warp smoothing 0.5, Adam lr 0.5): the settings of its "
                "LPBA40 script.",
}
"""Method id (and ``"ours"`` for the variants) -> one-sentence description for reports."""


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _seen_text(entry: Dict[str, Any]) -> str:
    if entry["kind"] != "ours" or entry["model"] == "untrained":
        return "-"
    return {True: "yes", False: "no", None: "unknown", "some": "some"}[entry["seen_in_training"]]


def markdown_quality(rows: Sequence[Dict[str, Any]], data_description: str, setup: str = "") -> str:
    """The "Registration quality" Markdown section: setup, summary table (mean ± std over pairs), pairs."""
    summary = summarize_quality(rows)
    pairs = []
    for row in rows:
        pair = (row["moving"], row["fixed"])
        if pair not in pairs:
            pairs.append(pair)
    seen_values = {s["seen_in_training"] for s in summary if s["kind"] == "ours"}
    out = [
        "## Registration quality on IXI", "",
        f"Data: {data_description}. {len(pairs)} ordered pairs (moving -> fixed): "
        + ", ".join(f"{m} -> {f}" for m, f in pairs) + ".", "",
    ]
    if setup:
        out += [setup, ""]
    out += ["Methods:", ""]
    for s in summary:
        if s["kind"] != "ours":
            out.append(f"- `{s['method']}`: {METHOD_NOTES[s['method']]}")
    if any(s["kind"] == "ours" for s in summary):
        out.append(f"- our variants: {METHOD_NOTES['ours']}")
    out.append("")
    out += [
        "Every method goes through the same final steps: its transform (fixed point -> moving point) is "
        "applied by one interpolation of the original moving image and labels (nearest neighbour) on the "
        "fixed grid; Dice is the mean over the DLMUSE labels present in both maps, HD95 the mean over those "
        "labels (mm), folding the % of voxels with det J <= 0, SDlogJ the standard deviation of log det J. "
        "Runtime: the registration from images in memory to the full-resolution field and warped "
        "image/labels, metrics excluded. Values are mean ± sample standard deviation over the pairs.", "",
        "| method | weights / package | pairs seen in training | Dice | HD95 (mm) | folding (%) | SDlogJ | runtime (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        out.append(
            f"| {s['label']} | {s['model']} | {_seen_text(s)} | {_pm(s['dice_mean'], s['dice_std'], 3)} | "
            f"{_pm(s['hd95_mm_mean'], s['hd95_mm_std'], 2)} | {_pm(s['folding_pct_mean'], s['folding_pct_std'], 3)} | "
            f"{_pm(s['sdlogj_mean'], s['sdlogj_std'], 3)} | {_pm(s['runtime_s_mean'], s['runtime_s_std'], 1)} |"
        )
    out.append("")
    if any(s["kind"] == "ours" and s["model"] == "untrained" for s in summary):
        out += ["Rows labelled \"(untrained)\" ran a randomly initialised network because no 3D model is "
                "shipped for that variant: they measure the pipeline's runtime, not the method's accuracy.", ""]
    if True in seen_values or "some" in seen_values:
        out += ["Caution: the subjects of these pairs were training subjects of the shipped 3D models "
                "(their checkpoints' data split): our rows are training-set numbers, the classical rows are not "
                "trained at all.", ""]
    elif None in seen_values and any(s["kind"] == "ours" and s["model"] != "untrained" for s in summary):
        out += ["The shipped checkpoints do not record their training subjects: whether these pairs were seen "
                "in training is unknown here (see the model cards).", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- per-dataset report with ratios
def _summary_by_method(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {s["method"]: s for s in summarize_quality(rows)}


def _pick(summary: Dict[str, Dict[str, Any]], prefix: str, suffix: str) -> Optional[Dict[str, Any]]:
    """The summary entry whose method starts with ``prefix`` and ends with ``suffix`` (first found)."""
    for method, entry in summary.items():
        if method.startswith(prefix) and method.endswith(suffix):
            return entry
    return None


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return "-"
    return f"{a / b:.2f}"


def _delta(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a - b:+.3f}"


def goal_lines(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The issue's goals per dataset, met or missed, from the rows of one dataset."""
    summary = _summary_by_method(rows)
    syn, fireants = summary.get("ants_syn"), summary.get("fireants")
    recommended = _pick(summary, "affine_enhanced", "+refine-recommended")
    thorough = _pick(summary, "affine_enhanced", "+refine-thorough")
    out = []
    if recommended and syn:
        dice_ok = recommended["dice_mean"] >= syn["dice_mean"]
        fold_ok = recommended["folding_pct_mean"] < 0.1
        time_ok = recommended["runtime_s_mean"] <= syn["runtime_s_mean"] / 3.0
        out.append(
            f"- `affine_enhanced` + recommended refinement against ANTs SyN: Dice {recommended['dice_mean']:.3f} vs "
            f"{syn['dice_mean']:.3f} ({'met' if dice_ok else 'missed'}), folding {recommended['folding_pct_mean']:.3f} % "
            f"({'met' if fold_ok else 'missed'}: < 0.1 %), time {recommended['runtime_s_mean']:.1f} s = "
            f"{recommended['runtime_s_mean'] / syn['runtime_s_mean']:.2f} x SyN's {syn['runtime_s_mean']:.1f} s "
            f"({'met' if time_ok else 'missed'}: <= 0.33)."
        )
    if thorough and fireants:
        dice_ok = thorough["dice_mean"] >= fireants["dice_mean"]
        time_ok = thorough["runtime_s_mean"] <= fireants["runtime_s_mean"]
        out.append(
            f"- `affine_enhanced` + thorough refinement against FireANTs: Dice {thorough['dice_mean']:.3f} vs "
            f"{fireants['dice_mean']:.3f} ({'met' if dice_ok else 'missed'}), time {thorough['runtime_s_mean']:.1f} s vs "
            f"{fireants['runtime_s_mean']:.1f} s ({'met' if time_ok else 'missed'})."
        )
    return out


def markdown_quality_datasets(rows: Sequence[Dict[str, Any]], setup: str = "", notes: Sequence[str] = ()) -> str:
    """Per dataset: the pairs, a table (mean over pairs) with the ratios to ANTs SyN, elastix and FireANTs
    on the same pairs, and the goals. ``notes``: lines such as skipped peers."""
    datasets: List[str] = []
    for row in rows:
        if row["dataset"] not in datasets:
            datasets.append(row["dataset"])
    out = ["## Registration quality per dataset", ""]
    if setup:
        out += [setup, ""]
    out += list(notes) + ([""] if notes else [])
    methods_seen = {r["method"] for r in rows}
    out += ["Methods:", ""]
    for method in list(CLASSICAL_METHODS) + ["com"]:
        if method in methods_seen:
            out.append(f"- `{method}`: {METHOD_NOTES[method]}")
    for method in PEER_METHODS:
        if method in methods_seen:
            out.append(f"- `{method}`: {METHOD_NOTES[method]}")
    if any(r["kind"] == "ours" for r in rows):
        out.append(f"- our variants: {METHOD_NOTES['ours']} {METHOD_NOTES['refine']}")
    out += ["", "Every method ends the same way (one interpolation of the original moving image and labels on the "
            "fixed grid); Dice is the mean over the labels present in both maps, folding the % of voxels with "
            "det J <= 0. Time: the registration from images in memory to the full-resolution field and warped "
            "image/labels, metrics excluded; for our rows network (resampling, network, full-resolution field, "
            "warping) + refinement. Ratios compare the mean times on the same pairs (time / SyN < 1: faster), "
            "Dice differences the mean Dice.", ""]
    for dataset in datasets:
        drows = [r for r in rows if r["dataset"] == dataset]
        pairs = []
        for row in drows:
            if (row["moving"], row["fixed"]) not in pairs:
                pairs.append((row["moving"], row["fixed"]))
        summary = _summary_by_method(drows)
        syn, elastix, fireants = summary.get("ants_syn"), summary.get("elastix"), summary.get("fireants")
        seen = {r["seen_in_training"] for r in drows if r["kind"] == "ours" and r["model"] != "untrained"}
        seen_text = {frozenset([False]): "no pair (no subject of these pairs is a training subject of our models)",
                     frozenset([True]): "every pair", frozenset(): "not applicable (no trained model)"}.get(
            frozenset(seen), "some pairs or unknown")
        out += [f"### {dataset}", "", f"{len(pairs)} validation pair(s) (moving -> fixed): "
                + ", ".join(f"{m} -> {f}" for m, f in pairs) + f". Seen in training: {seen_text}.", ""]
        out += ["| method | Dice | HD95 (mm) | folding (%) | time (s) | network + refine (s) | Dice - SyN | time / SyN "
                "| Dice - elastix | time / elastix | time / FireANTs |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for entry in summary.values():
            split_time = (f"{entry['network_s_mean']:.1f} + {entry['refine_s_mean']:.1f}" if entry["kind"] == "ours"
                          else "-")
            out.append(
                f"| {entry['label']} | {_pm(entry['dice_mean'], entry['dice_std'], 3)} | "
                f"{_pm(entry['hd95_mm_mean'], float('nan'), 2)} | {entry['folding_pct_mean']:.3f} | "
                f"{entry['runtime_s_mean']:.1f} | {split_time} | "
                f"{_delta(entry['dice_mean'], syn and syn['dice_mean'])} | "
                f"{_ratio(entry['runtime_s_mean'], syn and syn['runtime_s_mean'])} | "
                f"{_delta(entry['dice_mean'], elastix and elastix['dice_mean'])} | "
                f"{_ratio(entry['runtime_s_mean'], elastix and elastix['runtime_s_mean'])} | "
                f"{_ratio(entry['runtime_s_mean'], fireants and fireants['runtime_s_mean'])} |"
            )
        goals = goal_lines(drows)
        out += [""] + (["Goals:", ""] + goals + [""] if goals else [])
    return "\n".join(out)
