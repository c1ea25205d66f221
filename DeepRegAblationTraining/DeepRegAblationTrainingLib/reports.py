"""Ablation and sweep reports: summary tables (Markdown + CSV), paired statistics and figures.

Inputs are the per-pair rows of :mod:`evaluation` (one dict per variant and validation pair,
with ``variant`` and ``pair_id``). Every variant is evaluated on the same pairs, so
comparisons against the baseline are *paired* by ``pair_id``:

- per variant and metric: mean ± sample std, relative change of the mean against the
  baseline's mean (``(v - b) / |b|``), two-sided paired Wilcoxon signed-rank p-value against
  the baseline, and Benjamini–Hochberg q-values; the BH family is one metric (the comparisons
  of every non-baseline variant with the baseline on that metric).
- rows whose variant is in ``reference_variants`` (default ``"identity"``: no registration)
  are summarised but never tested.

Figures are PNG files written with matplotlib's Agg canvas (no display, no pyplot state):
training curves (from the trainer's CSV logs), accuracy versus folding, and one example pair
per variant (images, the fixed grid mapped into the moving image, the Jacobian determinant).
"""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import stats
from .evaluation import HIGHER_IS_BETTER, METRIC_COLUMNS, PairPrediction

PathLike = Union[str, os.PathLike]

METRIC_LABELS: Dict[str, str] = {
    "dice": "Dice",
    "hd95_mm": "HD95 (mm)",
    "folding_pct": "folding (% det<=0)",
    "sdlogj": "SDlogJ",
    "mse": "MSE",
    "ncc": "NCC",
    "ssim": "SSIM",
    "max_disp_vox": "max |u| (vox)",
    "mean_disp_vox": "mean |u| (vox)",
    "max_disp_mm": "max |u| (mm)",
    "mean_disp_mm": "mean |u| (mm)",
    "tre_mm": "centroid TRE (mm)",
    "tre_true_mm": "end-point error vs truth (mm)",
    "runtime_s": "runtime (s)",
}
# metric groups of the Markdown tables (every metric goes to the CSV)
REPORT_GROUPS = (
    ("Accuracy", ("dice", "hd95_mm", "tre_mm", "tre_true_mm", "mse", "ncc", "ssim")),
    ("Deformation quality and cost", ("folding_pct", "sdlogj", "mean_disp_mm", "max_disp_mm", "runtime_s")),
)


# --------------------------------------------------------------------------- helpers
def _md_label(metric: str) -> str:
    """Metric label for a Markdown table cell (``|`` escaped)."""
    return METRIC_LABELS.get(metric, metric).replace("|", "\\|")


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or not isinstance(value, (int, float, np.floating)) or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}g}"


def _fmt_pct(fraction: float) -> str:
    if fraction is None or not math.isfinite(fraction):
        return "n/a"
    return f"{100.0 * fraction:+.1f} %"


def _finite(values: Sequence[float]) -> bool:
    return any(isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)) for v in values)


def group_by_variant(rows: Sequence[Mapping[str, Any]]) -> "OrderedDict[str, List[Mapping[str, Any]]]":
    """Rows grouped by ``row["variant"]``, variants in first-seen order."""
    groups: "OrderedDict[str, List[Mapping[str, Any]]]" = OrderedDict()
    for row in rows:
        if "variant" not in row:
            raise ValueError(f"every row needs a 'variant' key, got keys {sorted(row)}")
        groups.setdefault(str(row["variant"]), []).append(row)
    return groups


def _values(rows: Sequence[Mapping[str, Any]], metric: str) -> np.ndarray:
    out = []
    for row in rows:
        try:
            out.append(float(row.get(metric, math.nan)))
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=np.float64)


def paired_values(
    rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]], metric: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Values of ``metric`` for the pairs both row lists share, aligned by ``pair_id``."""
    by_id_b = {str(r["pair_id"]): r for r in rows_b}
    a, b = [], []
    for row in rows_a:
        other = by_id_b.get(str(row["pair_id"]))
        if other is not None:
            a.append(row)
            b.append(other)
    return _values(a, metric), _values(b, metric)


def available_metrics(rows: Sequence[Mapping[str, Any]], candidates: Sequence[str] = METRIC_COLUMNS) -> List[str]:
    """The ``candidates`` that have at least one finite value in ``rows``."""
    return [m for m in candidates if _finite(_values(rows, m).tolist())]


# --------------------------------------------------------------------------- ablation summary
def summarize_ablation(
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "baseline",
    metrics: Optional[Sequence[str]] = None,
    reference_variants: Sequence[str] = ("identity",),
) -> List[Dict[str, Any]]:
    """One summary row per variant (first-seen order).

    Keys: ``variant``, ``n_pairs``, and for each metric ``m``: ``m_mean``, ``m_std``,
    ``m_rel_change`` (fraction vs the baseline mean), ``m_p`` (paired Wilcoxon vs baseline),
    ``m_q`` (BH over the non-baseline variants for that metric), ``m_n`` (pairs tested).
    The baseline and reference variants get NaN p/q. ``ValueError`` if ``baseline`` is absent.
    """
    groups = group_by_variant(rows)
    if baseline not in groups:
        raise ValueError(f"baseline variant {baseline!r} not among the evaluated variants {list(groups)}")
    metrics = list(metrics) if metrics is not None else available_metrics(rows)
    base_rows = groups[baseline]
    summary: List[Dict[str, Any]] = []
    for variant, vrows in groups.items():
        entry: Dict[str, Any] = {"variant": variant, "n_pairs": len(vrows)}
        for metric in metrics:
            mean, std = stats.mean_std(_values(vrows, metric))
            base_mean, _ = stats.mean_std(_values(base_rows, metric))
            entry[f"{metric}_mean"] = mean
            entry[f"{metric}_std"] = std
            entry[f"{metric}_rel_change"] = stats.relative_change(mean, base_mean)
            entry[f"{metric}_p"] = math.nan
            entry[f"{metric}_q"] = math.nan
            entry[f"{metric}_n"] = 0
            if variant != baseline and variant not in reference_variants:
                a, b = paired_values(vrows, base_rows, metric)
                test = stats.paired_wilcoxon(a, b)
                entry[f"{metric}_p"] = test["p_value"]
                entry[f"{metric}_n"] = int(test["n"])
        summary.append(entry)
    for metric in metrics:
        tested = [e for e in summary if e["variant"] != baseline and e["variant"] not in reference_variants]
        q = stats.benjamini_hochberg([e[f"{metric}_p"] for e in tested])
        for e, qv in zip(tested, q):
            e[f"{metric}_q"] = float(qv)
    return summary


def write_summary_csv(summary: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Write summary rows (dicts with the same keys) as CSV."""
    if not summary:
        raise ValueError("summary is empty: nothing to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: List[str] = []
    for row in summary:
        for key in row:
            if key not in columns:
                columns.append(key)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in summary:
            writer.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    return path


def ablation_markdown_tables(
    summary: Sequence[Mapping[str, Any]], baseline: str, metrics: Sequence[str], reference_variants: Sequence[str] = ("identity",)
) -> str:
    """Two Markdown tables for ``metrics``: ``mean ± std (change vs baseline)`` and ``p / q`` per variant."""
    lines = ["| variant | n | " + " | ".join(_md_label(m) for m in metrics) + " |"]
    lines.append("|---|---|" + "---|" * len(metrics))
    for e in summary:
        cells = []
        for m in metrics:
            cell = f"{_fmt(e[f'{m}_mean'])} ± {_fmt(e[f'{m}_std'], 3)}"
            compared = e["variant"] != baseline and e["variant"] not in reference_variants
            if compared and math.isfinite(e[f"{m}_rel_change"]):
                cell += f" ({_fmt_pct(e[f'{m}_rel_change'])})"
            cells.append(cell)
        name = f"{e['variant']} (no registration)" if e["variant"] in reference_variants else e["variant"]
        lines.append(f"| {name} | {e['n_pairs']} | " + " | ".join(cells) + " |")
    tested = [e for e in summary if any(math.isfinite(e[f"{m}_p"]) for m in metrics)]
    if tested:
        lines.append("")
        lines.append("| p / q vs " + baseline + " | " + " | ".join(_md_label(m) for m in metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for e in tested:
            cells = []
            for m in metrics:
                p, q, rel = e[f"{m}_p"], e[f"{m}_q"], e[f"{m}_rel_change"]
                if not math.isfinite(p):
                    cells.append("n/a")
                    continue
                arrow = "" if not math.isfinite(rel) or rel == 0 else ("↑ " if rel > 0 else "↓ ")
                better = HIGHER_IS_BETTER.get(m)
                good = better is not None and math.isfinite(rel) and q < 0.05 and rel != 0 and ((rel > 0) == better)
                cells.append(f"{arrow}{p:.3g} / {q:.3g}{' ✓' if good else ''}")
            lines.append(f"| {e['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- per dataset
PER_DATASET_METRICS = ("dice", "hd95_mm", "folding_pct", "sdlogj")
PER_DATASET_MIN_TEST_PAIRS = 5
MIXED_DATASETS = "mixed"


def _known_datasets() -> Tuple[str, ...]:
    from .data import DATASET_LAYOUTS

    return tuple(DATASET_LAYOUTS)


def pair_dataset(pair_id: Any, datasets: Optional[Sequence[str]] = None) -> Optional[str]:
    """The dataset of a pair id ``<dataset>-<subject>-><dataset>-<subject>`` (e.g. ``lpba40-S05->lpba40-S18``).

    ``datasets``: the known dataset names (default the keys of ``data.DATASET_LAYOUTS``:
    miccai2012, lpba40, ibsr18, ixi). Returns the dataset when both subjects belong to the same
    known one, :data:`MIXED_DATASETS` when they belong to two different known ones, ``None``
    when the id does not look like that (e.g. OASIS ids, synthetic pairs).
    """
    names = tuple(datasets) if datasets is not None else _known_datasets()
    moving, sep, fixed = str(pair_id).partition("->")
    if not sep:
        return None
    found = []
    for subject in (moving.strip(), fixed.strip()):
        kind, dash, stem = subject.partition("-")
        if not dash or not stem or kind not in names:
            return None
        found.append(kind)
    return found[0] if found[0] == found[1] else MIXED_DATASETS


def rows_by_dataset(rows: Sequence[Mapping[str, Any]], datasets: Optional[Sequence[str]] = None
                    ) -> "OrderedDict[str, List[Mapping[str, Any]]]":
    """Rows grouped by :func:`pair_dataset` of their ``pair_id`` when they come from at least two datasets, else empty.

    Groups follow the order of ``datasets`` (default ``data.DATASET_LAYOUTS``), then
    ``"mixed"`` (pairs across two datasets) and ``"other"`` (ids of no known dataset).
    """
    names = tuple(datasets) if datasets is not None else _known_datasets()
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for row in rows:
        key = pair_dataset(row.get("pair_id", ""), names) or "other"
        groups.setdefault(key, []).append(row)
    if sum(1 for k in groups if k in names) < 2:
        return OrderedDict()
    order = list(names) + [MIXED_DATASETS, "other"]
    return OrderedDict((k, groups[k]) for k in order if k in groups)


def summarize_per_dataset(
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "baseline",
    metrics: Sequence[str] = PER_DATASET_METRICS,
    min_test_pairs: int = PER_DATASET_MIN_TEST_PAIRS,
    reference_variants: Sequence[str] = ("identity",),
    datasets: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """:func:`summarize_ablation` within each dataset (see :func:`rows_by_dataset`), with a ``dataset`` key first.

    Paired tests (p, and BH q over the variants of one dataset and metric) only where the
    dataset has at least ``min_test_pairs`` pairs; below that p/q are NaN and ``m_n`` is 0.
    Empty when the rows do not come from several datasets.
    """
    out: List[Dict[str, Any]] = []
    for dataset, drows in rows_by_dataset(rows, datasets).items():
        shown = [m for m in metrics if _finite(_values(drows, m).tolist())]
        if not shown or baseline not in group_by_variant(drows):
            continue
        summary = summarize_ablation(drows, baseline=baseline, metrics=shown, reference_variants=reference_variants)
        n_pairs = max((e["n_pairs"] for e in summary), default=0)
        for e in summary:
            if n_pairs < int(min_test_pairs):
                for m in shown:
                    e[f"{m}_p"], e[f"{m}_q"], e[f"{m}_n"] = math.nan, math.nan, 0
            out.append(OrderedDict([("dataset", dataset)] + list(e.items())))
    return out


def per_dataset_markdown(
    summary: Sequence[Mapping[str, Any]], baseline: str, min_test_pairs: int = PER_DATASET_MIN_TEST_PAIRS,
    reference_variants: Sequence[str] = ("identity",),
) -> str:
    """The "Per dataset" section body: one mean ± std table (and a p / q table where tested) per dataset."""
    lines: List[str] = []
    datasets = list(dict.fromkeys(e["dataset"] for e in summary))
    for dataset in datasets:
        entries = [e for e in summary if e["dataset"] == dataset]
        metrics = [k[: -len("_mean")] for k in entries[0] if k.endswith("_mean")]
        n_pairs = max(e["n_pairs"] for e in entries)
        title = {MIXED_DATASETS: "pairs across two datasets", "other": "pairs of no known dataset"}.get(dataset, dataset)
        lines += [f"### {title}: {n_pairs} pairs", ""]
        lines.append(ablation_markdown_tables(entries, baseline, metrics, reference_variants))
        if n_pairs < int(min_test_pairs):
            lines += ["", f"No paired tests: fewer than {int(min_test_pairs)} pairs."]
        lines.append("")
    return "\n".join(lines)


STATS_EXPLANATION = (
    "Statistics: two-sided paired Wilcoxon signed-rank test of each variant against `{baseline}` on the same "
    "validation pairs (p), Benjamini–Hochberg adjusted over the variants compared on one metric (q). "
    "↑/↓: direction of the change of the mean; ✓: a change in the better direction with q < 0.05."
)


# --------------------------------------------------------------------------- figures
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike, dpi: Optional[float] = None, palette: Optional[np.ndarray] = None) -> Path:
    """Write ``fig`` as a PNG; with ``palette`` (``(N <= 256, 3)`` uint8 RGB) as a palette image (small files)."""
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    if palette is None:
        fig.savefig(str(path), format="png", dpi=dpi)
        return path
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    entries = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(entries)] = entries
    flat[len(entries):] = entries[-1]
    lookup = Image.new("P", (1, 1))
    lookup.putpalette(flat.reshape(-1).tolist())
    image.quantize(palette=lookup, dither=Image.Dither.NONE).save(str(path), format="PNG", optimize=True)
    return path


def _image_palette(cmap: str = "RdBu_r", line: str = "yellow", n_gray: int = 160, n_cmap: int = 48, n_blend: int = 15) -> np.ndarray:
    """Palette for image panels (256 colours): grey levels, colours of ``cmap``, and the ``line`` colour blended
    into greys (antialiased lines over grey images)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    grays = np.linspace(0, 1, n_gray)[:, None].repeat(3, axis=1)
    colors = np.asarray(colormaps[cmap](np.linspace(0, 1, n_cmap)))[:, :3]
    line_rgb = np.asarray(to_rgb(line))
    blends = [a * line_rgb + (1 - a) * g for a in (0.33, 0.67, 1.0) for g in np.linspace(0, 1, n_blend)]
    return np.round(255 * np.concatenate([grays, colors, np.asarray(blends)])).astype(np.uint8)


REFERENCE_COLOR = "0.45"


def variant_colors(names: Sequence[str], reference_variants: Sequence[str] = ("identity",)) -> Dict[str, Any]:
    """The same colour for a variant in every figure: grey for references, then the tab10 cycle in order."""
    from matplotlib import colormaps

    cycle = colormaps["tab10"].colors
    colors: Dict[str, Any] = {}
    k = 0
    for name in names:
        if name in colors:
            continue
        if name in reference_variants:
            colors[name] = REFERENCE_COLOR
        else:
            colors[name] = cycle[k % len(cycle)]
            k += 1
    return colors


def read_training_log(path: PathLike) -> Dict[str, np.ndarray]:
    """A trainer CSV log as ``column -> float array`` (non-numeric cells become NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: Dict[str, np.ndarray] = {}
    if not rows:
        return columns
    for key in rows[0]:
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(key, "")))
            except (TypeError, ValueError):
                vals.append(math.nan)
        columns[key] = np.asarray(vals)
    return columns


_STEP_KEYS = ("step", "global_step", "iteration", "epoch")
_LOSS_KEYS = ("loss", "total", "train_loss", "loss_total")
_SKIP_CURVE = {"time", "time_s", "elapsed_s", "lr", "epoch", "step", "global_step", "iteration", "seconds", "wall_s"}


def _run_logs(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """``(per-step columns, per-epoch columns)`` of a trainer run folder (``steps.csv``, ``epochs.csv``) or one CSV."""
    path = Path(path)
    if path.is_dir():
        steps = read_training_log(path / "steps.csv") if (path / "steps.csv").is_file() else {}
        epochs = read_training_log(path / "epochs.csv") if (path / "epochs.csv").is_file() else {}
        return steps, epochs
    table = read_training_log(path)
    return table, table


def plot_training_curves(logs: Mapping[str, PathLike], out_path: PathLike, smooth: int = 0) -> Path:
    """Training curves of several runs: ``logs`` maps a run name to its trainer run folder or CSV log.

    Left panel: the total training loss per step (``steps.csv``); right panel: the validation
    columns (``val_*``, from ``epochs.csv``) when present, else the similarity term.
    ``smooth`` > 1 overlays a running mean of that many steps.
    """
    if not logs:
        raise ValueError("logs is empty: no training log to plot")
    fig = _new_figure(11, 4)
    ax_loss = fig.add_subplot(1, 2, 1)
    ax_val = fig.add_subplot(1, 2, 2)
    any_val = False
    palette = variant_colors(list(logs))
    for name, path in logs.items():
        steps, epochs = _run_logs(path)
        loss_key = next((k for k in _LOSS_KEYS if k in steps), None)
        color = palette[name]
        if loss_key is not None:
            step_key = next((k for k in _STEP_KEYS if k in steps), None)
            x = steps[step_key] if step_key else np.arange(len(steps[loss_key]))
            y = steps[loss_key]
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.any():
                ax_loss.plot(x[keep], y[keep], lw=0.8, alpha=0.3 if smooth > 1 else 1.0, color=color, label=name)
                if smooth > 1 and keep.sum() >= smooth:
                    kernel = np.ones(smooth) / smooth
                    ax_loss.plot(x[keep][smooth - 1 :], np.convolve(y[keep], kernel, mode="valid"), lw=1.6, color=color)
        val_keys = [k for k in epochs if k.startswith("val_") and np.isfinite(epochs[k]).any()]
        source = epochs
        if not val_keys:
            source = steps
            val_keys = [k for k in steps if k in ("similarity", "sim", "loss_sim", "loss_similarity") and np.isfinite(steps[k]).any()]
        step_key = next((k for k in _STEP_KEYS if k in source), None)
        preferred = [k for k in ("val_dice", "val_similarity", "val_epe_vox") if k in val_keys] or val_keys
        for key in preferred[:1]:
            xv = source[step_key] if step_key else np.arange(len(source[key]))
            keep = np.isfinite(xv) & np.isfinite(source[key])
            ax_val.plot(xv[keep], source[key][keep], marker="o", ms=3, lw=1, color=color, label=f"{name}: {key}")
            any_val = True
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (total)")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(fontsize=7)
    ax_val.set_xlabel("step")
    ax_val.set_title("validation during training (trainer's pairs)")
    ax_val.grid(alpha=0.3)
    if any_val:
        ax_val.legend(fontsize=7)
    else:
        ax_val.text(0.5, 0.5, "no validation columns in the logs", ha="center", va="center", transform=ax_val.transAxes)
    return _save(fig, out_path)


def plot_accuracy_vs_folding(
    rows: Sequence[Mapping[str, Any]], out_path: PathLike, accuracy: str = "dice", folding: str = "folding_pct"
) -> Path:
    """Scatter of ``accuracy`` against ``folding`` per pair (small dots) and per variant mean ± std (large)."""
    groups = group_by_variant(rows)
    palette = variant_colors([v for v in groups if v == "identity"] + [v for v in groups if v != "identity"])
    fig = _new_figure(6.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for variant, vrows in groups.items():
        x, y = _values(vrows, folding), _values(vrows, accuracy)
        keep = np.isfinite(x) & np.isfinite(y)
        if not keep.any():
            continue
        (pts,) = ax.plot(x[keep], y[keep], "o", ms=3, alpha=0.35, color=palette[variant])
        mx, sx = stats.mean_std(x[keep])
        my, sy = stats.mean_std(y[keep])
        ax.errorbar(
            [mx], [my], xerr=[0 if not math.isfinite(sx) else sx], yerr=[0 if not math.isfinite(sy) else sy],
            fmt="s", ms=8, color=pts.get_color(), capsize=3, label=variant,
        )
    ax.set_xlabel(METRIC_LABELS.get(folding, folding))
    ax.set_ylabel(METRIC_LABELS.get(accuracy, accuracy))
    ax.set_title(f"{METRIC_LABELS.get(accuracy, accuracy)} versus folding (per pair; mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


def _display_slices(pred: PairPrediction):
    """2D images for display: the middle slice along axis 0 of a 3D pair (in-plane displacement)."""
    if pred.disp_vox.shape[0] == 2:
        return pred.moving, pred.fixed, pred.warped, pred.disp_vox, pred.jacobian
    k = pred.fixed.shape[0] // 2
    return pred.moving[k], pred.fixed[k], pred.warped[k], pred.disp_vox[1:, k], pred.jacobian[k]


def draw_deformation_grid(ax, disp_vox: np.ndarray, step: int = 8, color: str = "yellow", lw: float = 0.6) -> None:
    """Lines of the fixed grid, every ``step`` voxels, mapped to ``x + u(x)`` (moving image coordinates).

    ``disp_vox``: ``(2, H, W)``, channel 0 along rows, channel 1 along columns (voxels).
    """
    disp_vox = np.asarray(disp_vox)
    if disp_vox.ndim != 3 or disp_vox.shape[0] != 2:
        raise ValueError(f"disp_vox must be (2, H, W), got shape {disp_vox.shape}")
    height, width = disp_vox.shape[1:]
    rows, cols = np.arange(height), np.arange(width)
    for r in list(range(0, height, step)) + [height - 1]:
        ax.plot(cols + disp_vox[1, r, :], r + disp_vox[0, r, :], color=color, lw=lw)
    for c in list(range(0, width, step)) + [width - 1]:
        ax.plot(c + disp_vox[1, :, c], rows + disp_vox[0, :, c], color=color, lw=lw)


def plot_deformation_examples(
    examples: Mapping[str, PairPrediction], out_path: PathLike, grid_step: Optional[int] = None, dpi: float = 72
) -> Path:
    """One row per variant: moving, fixed, warped, the fixed grid mapped into the moving image, det J.

    The Jacobian map uses a diverging colour scale centred at 1 (blue: contraction, red:
    expansion); voxels with ``det <= 0`` (folding) are outlined in black.
    """
    if not examples:
        raise ValueError("examples is empty: no registered pair to show")
    from matplotlib.colors import TwoSlopeNorm

    n = len(examples)
    fig = _new_figure(15, 3.1 * n)
    for i, (variant, pred) in enumerate(examples.items()):
        moving, fixed, warped, disp, jac = _display_slices(pred)
        vmax = float(np.percentile(np.concatenate([moving.ravel(), fixed.ravel()]), 99.5)) or 1.0
        panels = [("moving", moving), ("fixed", fixed), ("warped moving", warped)]
        for j, (title, img) in enumerate(panels):
            ax = fig.add_subplot(n, 5, 5 * i + j + 1)
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{variant}: {title}" if j == 0 else title, fontsize=8)
            ax.axis("off")
        ax = fig.add_subplot(n, 5, 5 * i + 4)
        ax.imshow(moving, cmap="gray", vmin=0, vmax=vmax)
        draw_deformation_grid(ax, disp, step=grid_step or max(4, min(moving.shape) // 16))
        ax.set_xlim(-0.5, moving.shape[1] - 0.5)
        ax.set_ylim(moving.shape[0] - 0.5, -0.5)
        mag = np.sqrt((disp**2).sum(axis=0))
        ax.set_title(f"grid x+u(x) on moving (max |u| {mag.max():.2g} vox)", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(n, 5, 5 * i + 5)
        jmin, jmax = float(np.nanmin(jac)), float(np.nanmax(jac))
        norm = TwoSlopeNorm(vmin=min(0.0, jmin), vcenter=1.0, vmax=max(2.0, jmax))
        im = ax.imshow(jac, cmap="RdBu_r", norm=norm)
        folded = jac <= 0
        if folded.any():
            ax.contour(folded.astype(float), levels=[0.5], colors="black", linewidths=0.6)
        ax.set_title(f"det J [{jmin:.2g}, {jmax:.2g}], folding {100.0 * folded.mean():.2f} %", fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return _save(fig, out_path, dpi=dpi, palette=_image_palette())


# --------------------------------------------------------------------------- ablation report
def write_ablation_report(
    out_dir: PathLike,
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "baseline",
    command: str = "",
    setup: Optional[Mapping[str, Any]] = None,
    training_logs: Optional[Mapping[str, PathLike]] = None,
    examples: Optional[Mapping[str, PairPrediction]] = None,
    notes: Sequence[str] = (),
    title: str = "DeepRegAblation ablation report",
) -> Dict[str, Path]:
    """Write ``report.md``, ``summary.csv`` and ``figures/*.png`` into ``out_dir``.

    Args:
        rows: per-pair rows of every variant (and optionally ``"identity"``), same pairs.
        baseline: the variant the others are compared with.
        command: the exact command line that reproduces the report.
        setup: ``name -> value`` lines for the "Setup" section (data, split, steps, timing...).
        training_logs: ``variant -> trainer CSV log`` for the training-curve figure.
        examples: ``variant -> PairPrediction`` of one validation pair for the example figure.
        notes: extra paragraphs (e.g. the honest statement of the training budget).

    When the pair ids name subjects of several datasets (``lpba40-S05->lpba40-S18``, see
    :func:`pair_dataset`), a "Per dataset" section adds Dice, HD95, folding % and SDlogJ per
    dataset and variant (paired tests where a dataset has at least 5 pairs) and
    ``summary_per_dataset.csv``.

    Returns:
        ``{"report": ..., "summary": ..., "<figure name>": ...}`` paths.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    metrics = available_metrics(rows, METRIC_COLUMNS)
    summary = summarize_ablation(rows, baseline=baseline, metrics=metrics)
    paths: Dict[str, Path] = {"summary": write_summary_csv(summary, out_dir / "summary.csv")}
    accuracy = "dice" if "dice" in metrics else ("ncc" if "ncc" in metrics else None)
    if accuracy and "folding_pct" in metrics:
        paths["accuracy_vs_folding"] = plot_accuracy_vs_folding(rows, fig_dir / "accuracy_vs_folding.png", accuracy=accuracy)
    logs = {k: v for k, v in (training_logs or {}).items() if v is not None and Path(v).exists()}
    if logs:
        paths["training_curves"] = plot_training_curves(logs, fig_dir / "training_curves.png", smooth=25)
    if examples:
        paths["examples"] = plot_deformation_examples(examples, fig_dir / "examples.png")

    md: List[str] = [f"# {title}", ""]
    if command:
        md += ["Reproduce with:", "", "```", command, "```", ""]
    if setup:
        md += ["## Setup", ""]
        md += [f"- **{k}**: {v}" for k, v in setup.items()]
        md.append("")
    for note in notes:
        md += [note, ""]
    md += ["## Results", "", "Mean ± sample std over the validation pairs; in brackets the relative change of the mean against "
           f"`{baseline}`.", "", STATS_EXPLANATION.format(baseline=baseline), ""]
    for heading, group in REPORT_GROUPS:
        shown = [m for m in group if m in metrics]
        if shown:
            md += [f"### {heading}", "", ablation_markdown_tables(summary, baseline, shown), ""]
    per_dataset = summarize_per_dataset(rows, baseline=baseline)
    if per_dataset:
        paths["summary_per_dataset"] = write_summary_csv(per_dataset, out_dir / "summary_per_dataset.csv")
        md += ["## Per dataset", "",
               "The validation pairs come from several datasets (each pair within one dataset, labels of that dataset). "
               f"Mean ± sample std over the pairs of each dataset; in brackets the change of the mean against `{baseline}` "
               f"on the same pairs. Paired Wilcoxon tests against `{baseline}` where a dataset has at least "
               f"{PER_DATASET_MIN_TEST_PAIRS} pairs, Benjamini–Hochberg adjusted over the variants within one dataset "
               "and metric.", "", per_dataset_markdown(per_dataset, baseline)]
    md += ["Per-pair values: `per_pair.csv`; all summary numbers (means, stds, changes, p, q, pairs tested): `summary.csv`"
           + ("; per dataset: `summary_per_dataset.csv`." if per_dataset else "."), ""]
    md += ["## Figures", ""]
    captions = {
        "training_curves": "Left: training loss per step (thin) and its running mean over 25 steps (thick). Right: the trainer's "
        "own validation score after every epoch (Dice, or the similarity loss without labels) on its first validation pairs.",
        "accuracy_vs_folding": "Accuracy versus folding: one small dot per validation pair, squares = mean ± std per variant.",
        "examples": "One validation pair per variant: moving, fixed, warped; the lines of the fixed grid mapped to x + u(x) "
        "over the moving image; Jacobian determinant (blue < 1 < red, folds outlined in black).",
    }
    for key in ("training_curves", "accuracy_vs_folding", "examples"):
        if key in paths:
            md += [f"![{key}](figures/{paths[key].name})", "", captions[key], ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    paths["report"] = report
    return paths


# --------------------------------------------------------------------------- sweep
# published VoxelMorph-style L2 sweep on neurite-OASIS 2D (MSE similarity, scan-to-scan):
# lambda -> {metric: value}; folding in % of non-positive Jacobian determinants
BUILTIN_SWEEP_REFERENCE: Dict[Tuple[str, float], Dict[str, float]] = {
    ("l2", 0.001): {"folding_pct": 4.1, "mse": 0.00222},
    ("l2", 0.01): {"folding_pct": 0.21, "mse": 0.00296},
    ("l2", 0.1): {"folding_pct": 0.0},
    ("l2", 0.5): {"folding_pct": 0.0},
}
BUILTIN_SWEEP_REFERENCE_SOURCE = (
    "published figures for the VoxelMorph-style L2 sweep on neurite-OASIS 2D as supplied with the project brief "
    "(MSE similarity, scan-to-scan): λ 0.001 -> 4.1 % non-positive Jacobians, val MSE 0.00222; "
    "λ 0.01 -> 0.21 %, 0.00296; λ >= 0.1 -> 0 %"
)


def parse_reference(text: str) -> Dict[Tuple[str, float], Dict[str, float]]:
    """Parse ``"l2:0.001:folding_pct=4.1,l2:0.001:mse=0.00222,..."`` (``type:lambda:metric=value``)."""
    table: Dict[Tuple[str, float], Dict[str, float]] = {}
    for item in [s.strip() for s in str(text).split(",") if s.strip()]:
        key, sep, value = item.partition("=")
        parts = key.split(":")
        if not sep or len(parts) != 3:
            raise ValueError(f"--reference entries must look like TYPE:LAMBDA:METRIC=VALUE (e.g. l2:0.01:mse=0.003), got {item!r}")
        reg_type, lam, metric = parts[0].strip(), parts[1].strip(), parts[2].strip()
        try:
            table.setdefault((reg_type, float(lam)), {})[metric] = float(value)
        except ValueError:
            raise ValueError(f"--reference entry {item!r}: LAMBDA and VALUE must be numbers") from None
    return table


def _lookup_reference(reference: Mapping[Tuple[str, float], Mapping[str, float]], reg_type: str, lam: float) -> Mapping[str, float]:
    for (rtype, rlam), values in reference.items():
        if rtype == reg_type and math.isclose(rlam, lam, rel_tol=1e-9, abs_tol=1e-12):
            return values
    return {}


SWEEP_METRICS = ("dice", "folding_pct", "sdlogj", "mse", "ncc", "ssim", "hd95_mm", "mean_disp_mm")


def summarize_sweep(
    rows: Sequence[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    reference: Optional[Mapping[Tuple[str, float], Mapping[str, float]]] = None,
    metrics: Sequence[str] = SWEEP_METRICS,
    identity_rows: Optional[Sequence[Mapping[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    """One row per sweep run: ``reg_type``, ``lambda``, ``variant``, ``n_pairs``, ``m_mean``/``m_std``, ``ref_m``.

    ``runs``: dicts with ``variant`` (the id in ``rows``), ``reg_type`` and ``lambda``, in
    table order. With ``identity_rows`` (the unregistered pairs) every row also gets
    ``mse_vs_identity``: the relative change of the mean MSE against no registration.
    """
    groups = group_by_variant(rows)
    metrics = [m for m in metrics if _finite(_values(rows, m).tolist())]
    identity_mse = stats.mean_std(_values(identity_rows, "mse"))[0] if identity_rows else math.nan
    out: List[Dict[str, Any]] = []
    for run in runs:
        vrows = groups.get(str(run["variant"]), [])
        entry: Dict[str, Any] = {
            "reg_type": run["reg_type"],
            "lambda": float(run["lambda"]),
            "variant": run["variant"],
            "n_pairs": len(vrows),
        }
        for m in metrics:
            mean, std = stats.mean_std(_values(vrows, m)) if vrows else (math.nan, math.nan)
            entry[f"{m}_mean"] = mean
            entry[f"{m}_std"] = std
        if identity_rows:
            entry["mse_vs_identity"] = stats.relative_change(entry.get("mse_mean", math.nan), identity_mse)
        ref = _lookup_reference(reference or {}, str(run["reg_type"]), float(run["lambda"]))
        for m, value in ref.items():
            entry[f"ref_{m}"] = float(value)
        out.append(entry)
    return out


def plot_sweep_curves(summary: Sequence[Mapping[str, Any]], out_path: PathLike, param_label: str = "λ",
                      folding_target: Optional[float] = None) -> Path:
    """Three panels: accuracy (Dice, else NCC) vs folding %, folding % vs λ, MSE vs λ; one line per type.

    Reference figures (``ref_*``) are drawn as black crosses. ``param_label`` names the swept
    parameter (``"λ"``: a regulariser weight; ``"M"``: a multiplier of a variant's weights);
    ``folding_target`` draws the folding limit as a dashed line.
    """
    fig = _new_figure(15, 4.3)
    acc = "dice" if any(math.isfinite(e.get("dice_mean", math.nan)) for e in summary) else "ncc"
    ax_acc, ax_fold, ax_mse = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    types: List[str] = []
    for e in summary:
        if e["reg_type"] not in types:
            types.append(e["reg_type"])
    for reg_type in types:
        entries = sorted((e for e in summary if e["reg_type"] == reg_type), key=lambda e: e["lambda"])
        lam = np.array([e["lambda"] for e in entries])
        fold = np.array([e.get("folding_pct_mean", math.nan) for e in entries])
        accv = np.array([e.get(f"{acc}_mean", math.nan) for e in entries])
        msev = np.array([e.get("mse_mean", math.nan) for e in entries])
        marker = "o-" if len(entries) > 1 else "s"
        (line,) = ax_acc.plot(fold, accv, marker, label=reg_type)
        for e, x, y in zip(entries, fold, accv):
            if math.isfinite(x) and math.isfinite(y):
                ax_acc.annotate(f"{param_label}={e['lambda']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax_fold.plot(lam, fold, marker, color=line.get_color(), label=reg_type)
        ax_mse.plot(lam, msev, marker, color=line.get_color(), label=reg_type)
    refs = [e for e in summary if any(k.startswith("ref_") for k in e)]
    if refs:
        rf = [(e["lambda"], e["ref_folding_pct"]) for e in refs if "ref_folding_pct" in e]
        rm = [(e["lambda"], e["ref_mse"]) for e in refs if "ref_mse" in e]
        if rf:
            ax_fold.plot(*zip(*rf), "kx", ms=8, label="reference (published)")
        if rm:
            ax_mse.plot(*zip(*rm), "kx", ms=8, label="reference (published)")
    ax_acc.set_xlabel(METRIC_LABELS["folding_pct"])
    ax_acc.set_ylabel(METRIC_LABELS.get(acc, acc))
    ax_acc.set_title("accuracy versus folding")
    if folding_target is not None:
        ax_fold.axhline(float(folding_target), color="k", ls="--", lw=0.8, label=f"target {float(folding_target):g} %")
        ax_acc.axvline(float(folding_target), color="k", ls="--", lw=0.8, label=f"target {float(folding_target):g} %")
    xlabel = "regularisation weight λ" if param_label == "λ" else f"regulariser multiplier {param_label}"
    for ax, name in ((ax_fold, "folding_pct"), (ax_mse, "mse")):
        if all(e["lambda"] > 0 for e in summary):
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRIC_LABELS[name])
        ax.set_title(f"{METRIC_LABELS[name]} versus {param_label}")
    for ax in (ax_acc, ax_fold, ax_mse):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out_path)


def choose_smallest_below(summary: Sequence[Mapping[str, Any]], target_pct: float,
                          metric: str = "folding_pct_mean") -> Optional[Mapping[str, Any]]:
    """The entry with the smallest ``lambda`` whose ``metric`` (mean folding %) is finite and ``< target_pct``; else ``None``."""
    ok = [e for e in summary if math.isfinite(float(e.get(metric, math.nan))) and float(e[metric]) < float(target_pct)]
    return min(ok, key=lambda e: float(e["lambda"])) if ok else None


def write_sweep_report(
    out_dir: PathLike,
    rows: Sequence[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    reference: Optional[Mapping[Tuple[str, float], Mapping[str, float]]] = None,
    reference_source: str = "",
    command: str = "",
    setup: Optional[Mapping[str, Any]] = None,
    training_logs: Optional[Mapping[str, PathLike]] = None,
    examples: Optional[Mapping[str, PairPrediction]] = None,
    notes: Sequence[str] = (),
    title: str = "DeepRegAblation regulariser sweep",
    identity_rows: Optional[Sequence[Mapping[str, Any]]] = None,
    param_label: str = "λ",
    folding_target: Optional[float] = None,
) -> Dict[str, Path]:
    """Write the sweep's ``report.md``, ``summary.csv`` and ``figures/*.png`` (type × λ table, curves).

    ``identity_rows`` (the unregistered pairs) add a column "MSE vs no registration".
    ``param_label`` names the swept value in the table and figures (``"λ"`` or ``"M"``).
    With ``folding_target`` (%), the report states the chosen value: the smallest whose mean
    folding % is below the target (:func:`choose_smallest_below`), and ``summary.csv`` gets a
    ``chosen`` column.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_sweep(rows, runs, reference, identity_rows=identity_rows)
    if not summary:
        raise ValueError("runs is empty: nothing to report")
    chosen = None
    if folding_target is not None:
        if not (math.isfinite(float(folding_target)) and float(folding_target) > 0):
            raise ValueError(f"folding_target must be a positive percentage, got {folding_target!r}")
        chosen = choose_smallest_below(summary, float(folding_target))
        for e in summary:
            e["chosen"] = e is chosen
    paths: Dict[str, Path] = {"summary": write_summary_csv(summary, out_dir / "summary.csv")}
    paths["sweep_curves"] = plot_sweep_curves(summary, fig_dir / "sweep_curves.png", param_label=param_label,
                                              folding_target=folding_target)
    logs = {k: v for k, v in (training_logs or {}).items() if v is not None and Path(v).exists()}
    if logs:
        paths["training_curves"] = plot_training_curves(logs, fig_dir / "training_curves.png", smooth=25)
    if examples:
        paths["examples"] = plot_deformation_examples(examples, fig_dir / "examples.png")

    metrics = [m for m in SWEEP_METRICS if f"{m}_mean" in summary[0]]
    ref_metrics: List[str] = []
    for e in summary:
        for k in e:
            if k.startswith("ref_") and k[4:] not in ref_metrics:
                ref_metrics.append(k[4:])
    md: List[str] = [f"# {title}", ""]
    if command:
        md += ["Reproduce with:", "", "```", command, "```", ""]
    if setup:
        md += ["## Setup", ""] + [f"- **{k}**: {v}" for k, v in setup.items()] + [""]
    for note in notes:
        md += [note, ""]
    md += ["## Results", "", "Mean ± sample std over the validation pairs."]
    if ref_metrics:
        md += [f"Columns *ref.*: reference figures ({reference_source or 'user supplied'}), printed beside ours."]
    md.append("")
    vs_identity = "mse_vs_identity" in summary[0]
    header = (["type", param_label, "n"] + [_md_label(m) for m in metrics] + (["MSE vs no registration"] if vs_identity else [])
              + [f"ref. {_md_label(m)}" for m in ref_metrics])
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    for e in summary:
        label = f"**{e['lambda']:g}** (chosen)" if chosen is not None and e is chosen else f"{e['lambda']:g}"
        cells = [str(e["reg_type"]), label, str(e["n_pairs"])]
        cells += [f"{_fmt(e[f'{m}_mean'])} ± {_fmt(e[f'{m}_std'], 3)}" for m in metrics]
        if vs_identity:
            cells.append(_fmt_pct(e["mse_vs_identity"]))
        cells += [_fmt(e.get(f"ref_{m}", math.nan)) if f"ref_{m}" in e else "" for m in ref_metrics]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "Per-pair values: `per_pair.csv`; summary numbers: `summary.csv`.", ""]
    if folding_target is not None:
        md += [f"## Chosen {param_label}", ""]
        if chosen is not None:
            fold_max = float(np.nanmax(_values(group_by_variant(rows).get(str(chosen["variant"]), []), "folding_pct")))
            line = (f"**{param_label} = {chosen['lambda']:g}**: the smallest {param_label} of this sweep whose mean folding over "
                    f"the validation pairs is below {float(folding_target):g} % ({_fmt(chosen['folding_pct_mean'])} % mean, "
                    f"{_fmt(fold_max)} % on the worst pair")
            if "dice_mean" in chosen:
                line += f"; Dice {_fmt(chosen['dice_mean'])} ± {_fmt(chosen['dice_std'], 3)}"
            md += [line + ")."]
            smaller = [e for e in summary if float(e["lambda"]) < float(chosen["lambda"])]
            if not smaller:
                md += ["", f"It is the smallest {param_label} tried: a smaller value below the target may exist; "
                       "extend the sweep downwards to be sure."]
        else:
            md += [f"No {param_label} of this sweep keeps the mean folding below {float(folding_target):g} %; "
                   f"extend the sweep to larger values."]
        md.append("")
    md += ["## Figures", ""]
    md += ["![sweep_curves](figures/sweep_curves.png)", "",
           f"Left: accuracy versus folding, one point per {param_label}; middle and right: folding % and MSE versus "
           f"{param_label}" + (" (black crosses: reference figures)." if ref_metrics else
                               (" (dashed: the folding target)." if folding_target is not None else ".")), ""]
    if "training_curves" in paths:
        md += ["![training_curves](figures/training_curves.png)", "", "Left: training loss per step (thin) and its running mean "
               "over 25 steps (thick). Right: the trainer's validation Dice after every epoch on its first validation pairs.", ""]
    if "examples" in paths:
        md += ["![examples](figures/examples.png)", "", "One validation pair for some of the runs: moving, fixed, warped; the lines of "
               "the fixed grid mapped to x + u(x) over the moving image; Jacobian determinant (folds outlined in black).", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    paths["report"] = report
    return paths
