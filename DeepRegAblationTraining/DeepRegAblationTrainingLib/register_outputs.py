"""What ``register`` (and the demo) write into ``--out DIR``, and how.

- :func:`prepare_out_dir` / :func:`write_marker`: DIR is refused when it holds anything not written by
  this command (the :data:`MARKER` file tells);
- :func:`staged_output`: everything is written into a hidden folder beside DIR and renamed into place
  only when complete;
- :func:`write_variant_outputs`: per variant, NIfTI images, ITK transforms, PNG snapshots (and ``result.npz``);
- :func:`write_panel_outputs`: per variant, ``result.npz`` only (``--npz-only``: what the Slicer panel reads back);
- :func:`write_summary`: ``metrics.csv`` / ``metrics.json``, the Slicer scene, and the table printed to
  stdout (:func:`format_table`).

Snapshots and the scene are optional: a missing VTK / Slicer package or a failed render costs a
warning on stderr, never the run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from DeepRegAblationLib.progress import warning_line

__all__ = [
    "MARKER", "prepare_out_dir", "write_marker", "staged_output", "write_variant_outputs", "write_panel_outputs",
    "write_summary", "format_table",
]

MARKER = ".deepreg-ablation-register"
"""The file that marks a folder as written by ``deepreg-ablation register`` (so that a re-run may replace it)."""


def prepare_out_dir(out: Path) -> bool:
    """Refuse a non-empty DIR not made by this command. Returns True when DIR holds earlier results."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ValueError(
                f"--out {out} exists, is not empty and was not written by 'deepreg-ablation register' "
                f"(no {MARKER} file); choose a new or empty directory (nothing was written)"
            )
        return True
    return False


def write_marker(out: Path, **info) -> None:
    """Mark DIR as written by this command (so a re-run may replace it)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(dict(command="deepreg-ablation register", **info), indent=2) + "\n")


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Write into a new folder beside ``out`` and rename it to ``out`` only when everything is written.

    Yields the temporary folder (``.<name>.partial-*`` in ``out``'s parent, on the same file
    system). When the block ends normally, earlier results in ``out`` are replaced by renames; on
    any failure (bad input, a write error such as a full disk, Ctrl-C) the temporary folder is
    removed and ``out`` is left as it was. A killed process leaves only the hidden temporary
    folder, never a half-written ``out``. A write error is raised as ``RuntimeError`` (the
    command line's ``error:`` line).
    """
    out = Path(out).resolve()  # "." or a symbolic link: the folder itself is replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:12]}")
    staging.mkdir()  # the usual permissions, as --out itself would get
    try:
        try:
            yield staging
        except OSError as exc:
            if isinstance(exc, ValueError):  # imageio.ImageFileNotFoundError: a bad input, not a write error
                raise
            raise RuntimeError(f"writing the results for {out} failed ({exc}); nothing was written to {out}") from None
        previous = out.with_name(f".{out.name}.previous-{uuid.uuid4().hex[:12]}") if out.exists() else None
        if previous is not None:
            out.replace(previous)
        try:
            staging.replace(out)
        except OSError:
            if previous is not None:
                previous.replace(out)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _optional_outputs(what: str, func, *args) -> List[Path]:
    """Run the snapshot / scene writers: missing VTK / Slicer packages (or no off-screen
    rendering on this machine) only cost a warning; the registration files are already written."""
    try:
        written = func(*args)
    except ImportError as exc:
        print(f"warning: {what} skipped: {exc} (install vtk / slicer-core to get them)", file=sys.stderr)
        return []
    except Exception as exc:  # noqa: BLE001  optional outputs never fail the run (issue 13)
        print(f"warning: {what} failed and were skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []
    if written is None:
        return []
    return list(written) if isinstance(written, (list, tuple)) else [written]


def _write_snapshots(out_dir: Path, fixed, moving, result) -> List[Path]:
    from DeepRegAblationLib.outputs import snapshots

    return snapshots.write_snapshots(out_dir, fixed, moving, result)


def _write_scene(out_dir: Path, fixed, moving, results) -> Path:
    from DeepRegAblationLib import scene
    from DeepRegAblationLib.registration.memory import check_scene_memory

    check_scene_memory(fixed, len(results))  # skipped with a warning when it cannot fit
    return scene.write_results_scene(out_dir, fixed, moving, results)


def write_variant_outputs(variant_dir: Path, fixed, moving, result, save_npz: bool = False) -> List[Path]:
    """Everything written per variant: NIfTI images, ITK transforms, PNG snapshots (and result.npz)."""
    from DeepRegAblationLib.outputs import exports

    written = list(exports.write_result_files(variant_dir, result).values())
    if save_npz:
        written.append(result.save(variant_dir / "result.npz"))
    written += _optional_outputs("PNG snapshots", _write_snapshots, variant_dir, fixed, moving, result)
    return written


def write_panel_outputs(variant_dir: Path, result) -> List[Path]:
    """What the Slicer panel's background run writes per variant (``register --npz-only``): ``result.npz``, the one
    file the panel reads back. No NIfTI, no ITK transform, no off-screen render (seconds per variant for Compare
    all, and a native crash in a render window would fail the run)."""
    variant_dir.mkdir(parents=True, exist_ok=True)
    return [result.save(variant_dir / "result.npz")]


def write_summary(out: Path, fixed, moving, results, extra_columns: Optional[Dict[str, Dict[str, float]]] = None,
                  scene: bool = True) -> None:
    """metrics.csv / metrics.json, the Slicer scene (unless ``scene`` is false), and the table printed to stdout.

    ``extra_columns``: optional ``{variant: {column: value}}`` printed beside the table (the demo's
    error against the known displacement); the files keep the standard columns.
    """
    from DeepRegAblationLib.outputs import exports

    csv_path, json_path = exports.write_metrics(out, results)
    scene_files = _optional_outputs("Slicer scene", _write_scene, out / "scene", fixed, moving, results) if scene else []
    records = [exports.metrics_record(r) for r in results]
    for record in records:
        record.update((extra_columns or {}).get(str(record["variant"]), {}))
    print()
    print(format_table(records, extra=sorted({k for cols in (extra_columns or {}).values() for k in cols})))
    print()
    for result in results:  # again beside the numbers they concern (the panel's status log shows them too)
        for message in getattr(result, "warnings", []):
            print(warning_line(f"{result.variant}: {message}"), flush=True)
    print(f"metrics: {csv_path.name} {json_path.name}")
    if scene_files:
        print(f"Slicer scene: {os.path.relpath(scene_files[0], out)}")  # one path may be absolute, the other relative


def _format_cell(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}"


def format_table(records: List[dict], extra: Sequence[str] = ()) -> str:
    """Plain-text table of metrics records (``exports.METRIC_COLUMNS`` plus ``extra`` columns)."""
    from DeepRegAblationLib.outputs.exports import METRIC_COLUMNS

    columns = list(METRIC_COLUMNS) + list(extra)
    rows = [columns] + [[_format_cell(r.get(c)) for c in columns] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
