"""Peak memory of the ``register`` command per voxel, at three resolutions of one brain (``bench --memory``).

The pair: the MNI152 2009 T1 template of the nilearn wheel, resampled onto a 200 x 240 x 200 mm field of
view at 1, 0.7 and 0.5 mm (:data:`SIZES`: 9.6 M, 28 M and 77 M voxels), as the fixed image; the moving
image is the template rotated by 3 degrees about S, shifted by (4, -3, 2) mm and its intensities scaled
(a rigidly moved scan), both float32 NIfTI files, with the template's tissue labels (0 background, 1 grey,
2 white matter) as label maps (:func:`pair_files`, written once into a cache folder and reused).

Each case runs the real command (``python -m DeepRegAblationTrainingLib.cli register ... --device cpu``, all
its default outputs: NIfTI and ITK files, snapshots, metrics, the Slicer scene unless ``no_scene``) in its
own process; its peak resident memory is the kernel's ``ru_maxrss`` of that process (``os.wait4``): the
whole process, interpreter, PyTorch and model included. Cases: one variant or ``all``, with and without
label maps, with and without refinement (``recommended``). :func:`markdown_table` prints peak memory and
bytes per voxel per case, and the slope between sizes (bytes per added voxel: linear scaling means a
constant slope).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .speed import case_environment

__all__ = [
    "SIZES", "FIELD_OF_VIEW_MM", "CASE_OPTIONS", "DEFAULT_CACHE", "grid_for", "pair_files", "plan_cases",
    "measure_case", "run_memory_cases", "markdown_table", "rows_json", "memory_section",
]

SIZES = {"1mm": 1.0, "0.7mm": 0.7, "0.5mm": 0.5}
"""Size key -> voxel spacing (mm) of the benchmark pair."""
FIELD_OF_VIEW_MM = (200.0, 240.0, 200.0)
"""Extent of the pair along R, A, S (mm): 400 x 480 x 400 voxels at 0.5 mm."""
CASE_OPTIONS = {
    "one": dict(variant="baseline", labels=False, refine=0),
    "one+labels": dict(variant="baseline", labels=True, refine=0),
    "one+refine": dict(variant="baseline", labels=False, refine="recommended"),
    "one+labels+refine": dict(variant="baseline", labels=True, refine="recommended"),
    "all": dict(variant="all", labels=False, refine=0),
    "all+labels": dict(variant="all", labels=True, refine=0),
    "all+refine": dict(variant="all", labels=False, refine="recommended"),
    "all+labels+refine": dict(variant="all", labels=True, refine="recommended"),
}
"""Case key -> the ``register`` options it runs with."""
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "deepreg-ablation-bench-memory"
"""Where the benchmark pairs are written (once) by default."""


def grid_for(spacing_mm: float):
    """``(ijk_to_ras (4, 4), shape (K, J, I))`` of the benchmark grid at ``spacing_mm``, RAS-aligned, centred on
    the template's centre."""
    import numpy as np

    counts = [int(round(extent / spacing_mm)) for extent in FIELD_OF_VIEW_MM]  # (i, j, k) = (R, A, S)
    ijk_to_ras = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    ijk_to_ras[:3, 3] = [-extent / 2.0 + spacing_mm / 2.0 for extent in FIELD_OF_VIEW_MM]
    ijk_to_ras[:3, 3] += [0.0, -18.0, 18.0]  # the MNI brain's centre lies near (0, -18, 18) mm
    return ijk_to_ras, tuple(counts[::-1])


def _rigid_motion():
    """The moving image's pose: fixed point -> moving point, RAS (3 degrees about S, a few mm)."""
    import math

    import numpy as np

    angle = math.radians(3.0)
    motion = np.eye(4)
    motion[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    motion[:3, 3] = [4.0, -3.0, 2.0]
    return motion


def pair_files(cache: Path, spacing_mm: float) -> Dict[str, Path]:
    """The benchmark pair at ``spacing_mm`` in ``cache`` (written once): ``{"fixed", "moving", "fixed_labels",
    "moving_labels"}`` -> NIfTI paths."""
    import numpy as np

    folder = Path(cache) / f"pair-{spacing_mm:g}mm"
    paths = {name: folder / f"{name}.nii.gz" for name in ("fixed", "moving", "fixed_labels", "moving_labels")}
    if all(p.is_file() for p in paths.values()):
        return paths
    from DeepRegAblationLib import resampling
    from DeepRegAblationLib.imageio import ImageData, write_image

    from ..data import load_mni_template

    template = load_mni_template(ndim=3, with_labels=True)
    ijk_to_ras, shape = grid_for(spacing_mm)
    placed = {"fixed": ijk_to_ras, "moving": np.linalg.inv(_rigid_motion()) @ ijk_to_ras}
    folder.mkdir(parents=True, exist_ok=True)
    for role, grid in placed.items():
        image = resampling.resample_to_grid(template["image"].array, template["image"].ijk_to_ras, grid, shape)
        if role == "moving":
            image *= np.float32(0.8)
        write_image(paths[role], ImageData(image.astype(np.float32), ijk_to_ras, role))
        del image
        labels = resampling.resample_to_grid(template["labels"].array, template["labels"].ijk_to_ras, grid, shape,
                                           mode="nearest")
        write_image(paths[f"{role}_labels"], ImageData(labels.astype(np.uint8), ijk_to_ras, f"{role}_labels"))
        del labels
    return paths


def plan_cases(sizes: Sequence[str], cases: Sequence[str]) -> List[dict]:
    """One case per size and case key (unknown keys: ``ValueError`` naming the valid ones)."""
    unknown = [s for s in sizes if s not in SIZES] + [c for c in cases if c not in CASE_OPTIONS]
    if unknown:
        raise ValueError(f"--memory: unknown size(s) or case(s) {unknown}; sizes {list(SIZES)}, cases {list(CASE_OPTIONS)}")
    return [dict(size=size, case=case, **CASE_OPTIONS[case]) for size in sizes for case in cases]


def _command(case: dict, paths: Dict[str, Path], out: Path, threads: int, no_scene: bool) -> List[str]:
    argv = [sys.executable, "-m", "DeepRegAblationTrainingLib.cli", "register", "--fixed", str(paths["fixed"]),
            "--moving", str(paths["moving"]), "--variant", case["variant"], "--device", "cpu", "--out", str(out)]
    if case["labels"]:
        argv += ["--fixed-labels", str(paths["fixed_labels"]), "--moving-labels", str(paths["moving_labels"])]
    if case["refine"]:
        argv += ["--refine", str(case["refine"])]
    if no_scene:
        argv += ["--no-scene"]
    return argv


def measure_case(case: dict, cache: Path, threads: int = 2, no_scene: bool = False,
                 timeout_s: float = 7200.0) -> dict:
    """Run one case in its own process; the case with ``peak_rss_bytes`` (``ru_maxrss``), ``voxels``,
    ``bytes_per_voxel``, ``seconds`` and ``status`` (or ``error``: the last line the command printed)."""
    import numpy as np

    paths = pair_files(cache, SIZES[case["size"]])
    voxels = int(np.prod(grid_for(SIZES[case["size"]])[1]))
    row = dict(case, voxels=voxels, threads=threads, scene=not no_scene)
    out_root = Path(tempfile.mkdtemp(prefix="deepreg-memory-", dir=str(cache)))
    env = dict(case_environment(), OMP_NUM_THREADS=str(threads))  # the libraries found as in Slicer (speed)
    log = out_root / "output.txt"
    start = time.perf_counter()
    try:
        with open(log, "w") as handle:
            proc = subprocess.Popen(_command(case, paths, out_root / "out", threads, no_scene), stdout=handle,
                                    stderr=subprocess.STDOUT, env=env)
            status, rusage = _wait(proc, timeout_s)
        row["seconds"] = time.perf_counter() - start
        row["peak_rss_bytes"] = int(rusage.ru_maxrss) * 1024  # Linux: KiB
        row["bytes_per_voxel"] = row["peak_rss_bytes"] / voxels
        row["status"] = status
        if status != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            row["error"] = (lines[-1] if lines else "no output")[:300]
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    return row


def _wait(proc: subprocess.Popen, timeout_s: float):
    """``(exit status, rusage)`` of ``proc`` (its own ``ru_maxrss``, not that of other children)."""
    deadline = time.time() + timeout_s
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
            return proc.returncode, rusage
        if time.time() > deadline:
            proc.kill()
        time.sleep(0.2)


def run_memory_cases(cases: Sequence[dict], cache: Path, threads: int = 2, no_scene: bool = False) -> List[dict]:
    """Measure every case, one process each, printing a line per case; one row per case."""
    rows = []
    for index, case in enumerate(cases, 1):
        row = measure_case(case, cache, threads, no_scene)
        rows.append(row)
        status = row.get("error") or f"{row['peak_rss_bytes'] / 1e9:.2f} GB, {row['bytes_per_voxel']:.0f} B/voxel"
        print(f"[{index}/{len(cases)}] memory {case['size']:6s} {case['case']:18s} {status} ({row['seconds']:.0f} s)",
              flush=True)
    return rows


def _slopes(rows: Sequence[dict]) -> Dict[str, str]:
    """Per case key: bytes per added voxel between consecutive sizes (``"-"`` with fewer than two sizes)."""
    out: Dict[str, str] = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        done = sorted((r for r in rows if r["case"] == case and "error" not in r), key=lambda r: r["voxels"])
        parts = [f"{(b['peak_rss_bytes'] - a['peak_rss_bytes']) / (b['voxels'] - a['voxels']):.0f}"
                 for a, b in zip(done, done[1:])]
        out[case] = ", ".join(parts) if parts else "-"
    return out


def markdown_table(rows: Sequence[dict]) -> str:
    """The memory table: one row per case, then the slopes between sizes."""
    lines = ["| size | voxels | variants | labels | refinement | peak RSS (GB) | bytes / voxel | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = "x".join(str(n) for n in grid_for(SIZES[r["size"]])[1][::-1])
        if "error" in r:
            memory = f"error: {r['error']}"
            per_voxel = "-"
        else:
            memory, per_voxel = f"{r['peak_rss_bytes'] / 1e9:.2f}", f"{r['bytes_per_voxel']:.0f}"
        lines.append(f"| {r['size']} ({shape}) | {r['voxels'] / 1e6:.1f} M | {r['variant']} | "
                     f"{'yes' if r['labels'] else 'no'} | {r['refine'] or 'off'} | {memory} | {per_voxel} | "
                     f"{r.get('seconds', float('nan')):.0f} |")
    slopes = _slopes(rows)
    if all(value == "-" for value in slopes.values()):  # one size: no slope
        return "\n".join(lines) + "\n"
    lines += ["", "Bytes per added voxel between consecutive sizes (peak RSS difference / voxel difference; a "
              "constant value means memory linear in the voxel count):", ""]
    lines += [f"- `{case}`: {value}" for case, value in slopes.items()]
    return "\n".join(lines) + "\n"


def rows_json(rows: Sequence[dict]) -> str:
    """The rows as JSON (for the report's ``.memory.json``)."""
    return json.dumps(list(rows), indent=1)


def memory_section(sizes: str, cases: str, cache: Path, threads: int, scene: bool) -> Tuple[str, List[dict]]:
    """``bench --memory``: the cases of ``sizes`` x ``cases`` (comma-separated keys) -> ``(markdown, rows)``."""
    planned = plan_cases([s.strip() for s in sizes.split(",") if s.strip()],
                         [c.strip() for c in cases.split(",") if c.strip()])
    start = time.perf_counter()
    rows = run_memory_cases(planned, Path(cache), threads, no_scene=not scene)
    from ..reports.tables import markdown_from_docstring

    text = "\n".join([
        "## Memory: peak resident memory of `register` per voxel", "",
        markdown_from_docstring(__doc__.strip().split("\n\n", 1)[1]), "",
        f"Setup: {threads} CPU thread(s) per case, outputs {'with' if scene else 'without'} the Slicer scene "
        f"(`--no-scene` {'not ' if scene else ''}given); wall time of this part {time.perf_counter() - start:.0f} s.", "",
        markdown_table(rows),
    ])
    return text, rows
