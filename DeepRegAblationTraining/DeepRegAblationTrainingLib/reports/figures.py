"""The report figures, PNG files written with matplotlib's Agg canvas (no display, no pyplot state).

Training curves (from the trainer's CSV logs), accuracy versus folding, one example pair per
variant (images, the fixed grid mapped into the moving image, the Jacobian determinant) and the
sweep's curves (accuracy versus folding, folding and MSE versus the swept value).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..evaluation import stats
from ..evaluation.evaluate import PairPrediction
from .tables import METRIC_LABELS, PathLike, group_by_variant, metric_values
from .training_logs import run_logs

__all__ = [
    "REFERENCE_COLOR", "variant_colors", "plot_training_curves", "plot_accuracy_vs_folding", "draw_deformation_grid",
    "plot_deformation_examples", "plot_sweep_curves", "write_run_figures",
]


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



_STEP_KEYS = ("step", "global_step", "iteration", "epoch")
_LOSS_KEYS = ("loss", "total", "train_loss", "loss_total")


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
        steps, epochs = run_logs(path)
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
        x, y = metric_values(vrows, folding), metric_values(vrows, accuracy)
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



def write_run_figures(fig_dir: Path, training_logs: Optional[Mapping[str, PathLike]] = None,
                      examples: Optional[Mapping[str, PairPrediction]] = None) -> Dict[str, Path]:
    """The figures every report of trained runs has: ``training_curves`` (of the logs that exist) and
    ``examples`` (when given). Returns ``{name: path}`` of those written."""
    paths: Dict[str, Path] = {}
    logs = {k: v for k, v in (training_logs or {}).items() if v is not None and Path(v).exists()}
    if logs:
        paths["training_curves"] = plot_training_curves(logs, fig_dir / "training_curves.png", smooth=25)
    if examples:
        paths["examples"] = plot_deformation_examples(examples, fig_dir / "examples.png")
    return paths
