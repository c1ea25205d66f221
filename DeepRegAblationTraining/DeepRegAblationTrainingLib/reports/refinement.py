"""The Markdown of the refinement comparison (``benchmarks.refinement``): per dataset, the network alone, the
network + refinement, the refinement from the centre of mass alone and the model-grid ceiling beside ANTs SyN,
and Dice against time for the two refinement starts (how long each needs to reach SyN's Dice).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["summarize_refinement", "time_to_reach", "markdown_refinement", "plot_dice_against_time"]

_LABELS = {
    "ants_syn": "ANTs SyN (antspyx defaults)",
    "com": "centre-of-mass translation alone",
    "network": "network alone",
    "network+refine": "network + recommended refinement (from the network's grid on, its field kept)",
    "com+refine": "recommended refinement from the centre of mass alone (no network)",
    "ceiling": "ceiling: the refined field on the network's grid and back",
}


def _mean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def summarize_refinement(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{dataset: {method: {"dice", "folding_pct", "runtime_s", "pairs"}}}`` (means over the dataset's pairs)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        methods: Dict[str, Dict[str, float]] = {}
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == dataset):
            mrows = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            methods[method] = {key: _mean([r[key] for r in mrows]) for key in ("dice", "folding_pct", "runtime_s")}
            methods[method]["pairs"] = len(mrows)
        out[dataset] = methods
    return out


def _curve(methods: Dict[str, Dict[str, float]], start: str) -> List[Tuple[str, float, float]]:
    """``(budget, mean time, mean Dice)`` points of one refinement start, by budget: ``0`` (the network alone, or the
    centre-of-mass translation alone), the iterations per level run, then ``recommended``."""
    prefix = "network+refine" if start == "network" else "com+refine"
    points = []
    if start in methods:
        points.append(("0", methods[start]["runtime_s"], methods[start]["dice"]))
    for method, values in methods.items():
        if method == prefix or method.startswith(prefix + "@"):
            points.append((method.split("@")[1] if "@" in method else "recommended", values["runtime_s"], values["dice"]))
    return sorted(points, key=lambda p: (p[0] == "recommended", int(p[0]) if p[0].isdigit() else 0))


def time_to_reach(methods: Dict[str, Dict[str, float]], start: str, target: float) -> Optional[Tuple[str, float]]:
    """The quickest ``(budget, mean time)`` of ``start``'s curve whose mean Dice reaches ``target`` (``None``: never)."""
    reached = [(budget, seconds) for budget, seconds, dice in _curve(methods, start) if dice >= target]
    return min(reached, key=lambda p: p[1]) if reached else None


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _dataset_section(dataset: str, methods: Dict[str, Dict[str, float]]) -> List[str]:
    syn = methods.get("ants_syn", {})
    syn_dice, syn_time = syn.get("dice", float("nan")), syn.get("runtime_s", float("nan"))
    lines = [f"### {dataset} ({int(max(v['pairs'] for v in methods.values()))} validation pairs)", "",
             "| method | Dice | Dice / SyN | folding (%) | time (s) | time / SyN |", "|---|---|---|---|---|---|"]
    for method, label in _LABELS.items():
        if method in methods:
            v = methods[method]
            lines.append(f"| {label} | {_fmt(v['dice'])} | {_fmt(v['dice'] / syn_dice, 2)} | {_fmt(v['folding_pct'], 3)} | "
                         f"{_fmt(v['runtime_s'], 1)} | {_fmt(v['runtime_s'] / syn_time, 2)} |")
    lines += ["", "Dice against time (iterations per level; 0 = the network alone / the centre-of-mass translation alone; "
              "`recommended` = the schedule itself):", "",
              "| start | " + " | ".join(budget for budget, _, _ in _curve(methods, "com")) + " |",
              "|---|" + "---|" * len(_curve(methods, "com"))]
    for start in ("network", "com"):
        lines.append(f"| {start} | " + " | ".join(f"{dice:.3f} in {seconds:.1f} s" for _, seconds, dice in _curve(methods, start)) + " |")
    reach = {start: time_to_reach(methods, start, syn_dice) for start in ("network", "com")}
    lines.append("")
    for start, words in (("network", "from the network"), ("com", "from the centre of mass")):
        hit = reach[start]
        lines.append(f"- Refinement {words} reaches SyN's Dice ({_fmt(syn_dice)}): "
                     + (f"at `{hit[0]}`, {hit[1]:.1f} s ({hit[1] / syn_time:.2f} x SyN's time)." if hit else "not within the budgets run."))
    if reach["network"] and reach["com"]:
        lines.append(f"- The network start needs {reach['network'][1] / reach['com'][1]:.2f} x the time of the centre-of-mass start.")
    return lines + [""]


def _goal_lines(summary: Dict[str, Dict[str, Dict[str, float]]]) -> List[str]:
    lines = ["Goals of issue 21 (every dataset): the network alone at least 0.95 x SyN's Dice, folding under 0.1 %, "
             "under 2 s; network + refinement at least SyN's Dice in at most half the time the centre-of-mass start "
             "needs and at most a quarter of SyN's time.", ""]
    for dataset, methods in summary.items():
        syn = methods.get("ants_syn")
        net = methods.get("network")
        if not syn or not net:
            continue
        reach_net = time_to_reach(methods, "network", syn["dice"])
        reach_com = time_to_reach(methods, "com", syn["dice"])
        parts = [f"network {net['dice'] / syn['dice']:.2f} x SyN ({'met' if net['dice'] >= 0.95 * syn['dice'] else 'missed'}), "
                 f"folding {net['folding_pct']:.3f} %, {net['runtime_s']:.1f} s"]
        if reach_net:
            ratio_com = f"{reach_net[1] / reach_com[1]:.2f} x the centre-of-mass start" if reach_com else "the centre-of-mass start never reaches it"
            met = reach_net[1] <= 0.25 * syn["runtime_s"] and (reach_com is None or reach_net[1] <= 0.5 * reach_com[1])
            parts.append(f"SyN's Dice reached from the network in {reach_net[1]:.1f} s = {reach_net[1] / syn['runtime_s']:.2f} x SyN's "
                         f"time, {ratio_com} ({'met' if met else 'missed'})")
        else:
            parts.append("SyN's Dice not reached from the network within the budgets run (missed)")
        lines.append(f"- {dataset}: " + "; ".join(parts) + ".")
    return lines + [""]


def markdown_refinement(rows: Sequence[Dict[str, Any]], setup: str, figure: Optional[str] = None) -> str:
    """The report section: goals, then per dataset the table of methods and the Dice-against-time points."""
    summary = summarize_refinement(rows)
    lines = ["## Refinement from the network against refinement from the centre of mass, beside ANTs SyN", "", setup, ""]
    lines += _goal_lines(summary)
    if figure:
        lines += [f"![Dice against time per dataset]({figure})", ""]
    for dataset, methods in summary.items():
        lines += _dataset_section(dataset, methods)
    return "\n".join(lines)


def plot_dice_against_time(rows: Sequence[Dict[str, Any]], path: Path) -> Path:
    """One panel per dataset: the two refinement starts' Dice against time, SyN and the network alone as points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarize_refinement(rows)
    fig = Figure(figsize=(4.0 * len(summary), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(summary), squeeze=False)[0]
    for ax, (dataset, methods) in zip(axes, summary.items()):
        for start, colour in (("network", "tab:red"), ("com", "tab:blue")):
            curve = _curve(methods, start)
            ax.plot([p[1] for p in curve], [p[2] for p in curve], "o-", color=colour, label=f"refinement from {start}")
        for method, marker in (("ants_syn", "s"), ("network", "^")):
            if method in methods:
                ax.plot(methods[method]["runtime_s"], methods[method]["dice"], marker, color="black" if method == "ants_syn" else "tab:red",
                        label=_LABELS[method])
        ax.set_title(dataset)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("Dice")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path
