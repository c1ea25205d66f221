"""Corrupt inputs never pass silently: every kind of bad file against every entry point that reads images.

    python -m DeepRegAblationTrainingLib.benchmarks.reliability --report docs/reliability.md

writes each bad file of :data:`CASES` (tiny: 16^3 voxels, made on the fly in a temporary
folder), hands it to each entry point of :data:`ENTRY_POINTS` in the place it expects an image
or a label map, and writes the table of outcomes. ``Testing/Python/test_bad_inputs.py`` runs
the same table and asserts that every bad file is refused with a message naming it (for the
command: exit status 2, one ``error:`` line, nothing in ``--out``) and every control accepted.

Every entry point reads through ``imageio.read_image`` (the one reading path): the ``register``
command and ``inference.register`` (also what the Slicer module runs, in a background
``register`` process whose ``error:`` line it shows), the training data (``data.build_data``,
shared by ``train`` and ``ablation``), the evaluation data (``evaluation.validation_set``,
shared by ``evaluate``, ``ablation`` and ``sweep``), ``bench --quality`` (``benchmarks.quality.quality_table``)
and the demo's MNI152 template loader (``data.load_mni_template``).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np

__all__ = [
    "SIZE", "REFUSED", "REPORT_COMMAND", "volume", "label_map", "nifti_bytes", "Case", "CASES", "Inputs", "make_inputs",
    "EntryPoint", "ENTRY_POINTS", "Outcome", "run_one", "run_table", "markdown", "MEMORY_REPORTS", "memory_markdown",
    "issue24_sections", "main",
]

SIZE = 16
"""Edge of the test volumes, voxels."""

REFUSED = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError)
"""What ``cli.main`` prints as one ``error:`` line with exit status 2; any other exception is a trace."""

REPORT_COMMAND = "python -m DeepRegAblationTrainingLib.benchmarks.reliability --report docs/reliability.md"


# --------------------------------------------------------------------------- files
def volume(shape: Sequence[int] = (SIZE, SIZE, SIZE), seed: int = 0) -> np.ndarray:
    """A smooth blob with a little noise, float32, in NIfTI (i, j, k) order."""
    rng = np.random.default_rng(seed)
    grid = np.indices(tuple(shape)).astype(np.float32)
    centre = (np.asarray(shape) - 1) / 2.0 + rng.uniform(-1.0, 1.0, len(shape))
    r2 = sum(((g - c) / (0.35 * n)) ** 2 for g, c, n in zip(grid, centre, shape))
    return (np.exp(-r2) + 0.05 * rng.standard_normal(tuple(shape))).astype(np.float32)


def label_map(shape: Sequence[int] = (SIZE, SIZE, SIZE), seed: int = 0) -> np.ndarray:
    """Labels 0 / 1 / 2 (background, shell, core) of :func:`volume`, uint8."""
    blob = volume(shape, seed)
    return ((blob > 0.3).astype(np.uint8) + (blob > 0.7)).astype(np.uint8)


def nifti_bytes(array_ijk: np.ndarray, affine: Optional[np.ndarray] = None, **fields) -> bytes:
    """An uncompressed single-file NIfTI-1 of ``array_ijk`` (qform and sform ``affine``, default 1 mm
    identity), with raw header ``fields`` set last, exactly as given (e.g. a broken ``pixdim``)."""
    import nibabel

    array_ijk = np.asarray(array_ijk)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    header = nibabel.Nifti1Header()
    header.set_data_dtype(array_ijk.dtype)
    header.set_data_shape(array_ijk.shape)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    for key, value in fields.items():
        header[key] = value
    header["vox_offset"] = 352
    buffer = io.BytesIO()
    header.write_to(buffer)
    buffer.write(b"\0" * (352 - buffer.tell()))
    buffer.write(array_ijk.tobytes(order="F"))
    return buffer.getvalue()


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=6, mtime=0)


def _valid_gz() -> bytes:
    return _gz(nifti_bytes(volume()))


def _flipped(data: bytes) -> bytes:
    data = bytearray(data)
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    return bytes(data)


def _short(raw: bytes) -> bytes:
    """A NIfTI that stops half way through its voxels (the header still declares all of them)."""
    return raw[: 352 + (len(raw) - 352) // 2]


def _nrrd(directions: str, data: bytes) -> bytes:
    header = (
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {SIZE} {SIZE} {SIZE}\nspace directions: {directions}\nkinds: domain domain domain\n"
        "endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n"
    )
    return header.encode() + data


def _with_value(value: float) -> np.ndarray:
    array = volume()
    array[3, 4, 5] = value
    return array


def _vector_image(path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((SIZE, SIZE, SIZE, 3), np.float32), isVector=True), str(path))


def _far_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 3] = [500.0, 0.0, 0.0]
    return affine


_NO_ORIENTATION = dict(qform_code=0, sform_code=0)  # the spacing is pixdim alone


@dataclass(frozen=True)
class Case:
    """One kind of file: ``write(path)`` makes it; ``role`` is where the entry points get it."""

    id: str
    description: str
    role: str  # "image" or "labels"
    write: Callable[[Path], None]
    suffix: str = ".nii.gz"
    bad: bool = True


def _content(make: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(make())


CASES: Tuple[Case, ...] = (
    Case("valid-image", "control: a valid 16^3 float32 image", "image", _content(_valid_gz), bad=False),
    Case("valid-labels", "control: a valid uint8 label map", "labels", _content(lambda: _gz(nifti_bytes(label_map()))),
         bad=False),
    Case("valid-4d-singleton", "control: a 16^3 image in a 4D header (16, 16, 16, 1), as ibsr18 ships", "image",
         _content(lambda: _gz(nifti_bytes(volume()[..., None]))), bad=False),
    Case("valid-float-labels", "control: a float32 label map holding integer values", "labels",
         _content(lambda: _gz(nifti_bytes(label_map().astype(np.float32)))), bad=False),
    Case("gzip-cut-header", "gzip cut after 40 bytes (inside the header)", "image", _content(lambda: _valid_gz()[:40])),
    Case("gzip-cut-10", "gzip cut at 10 % of its bytes", "image", _content(lambda: _valid_gz()[: len(_valid_gz()) // 10])),
    Case("gzip-cut-50", "gzip cut at 50 % of its bytes", "image", _content(lambda: _valid_gz()[: len(_valid_gz()) // 2])),
    Case("gzip-cut-trailer", "gzip without its last 4 bytes (the size trailer)", "image",
         _content(lambda: _valid_gz()[:-4])),
    Case("gzip-corrupt", "8 flipped bytes in the middle of the gzip stream", "image", _content(lambda: _flipped(_valid_gz()))),
    Case("bad-magic", "NIfTI header with a wrong magic string", "image",
         _content(lambda: _gz(nifti_bytes(volume(), magic=b"xyz")))),
    Case("not-an-image", "a text file named .nii.gz", "image", _content(lambda: b"not an image\n" * 40)),
    Case("zero-bytes", "an empty file", "image", _content(lambda: b"")),
    Case("short-data-gz", "complete gzip stream, but half the voxel bytes the header declares", "image",
         _content(lambda: _gz(_short(nifti_bytes(volume()))))),
    Case("short-data-nii", "uncompressed .nii with half the voxel bytes the header declares", "image",
         _content(lambda: _short(nifti_bytes(volume()))), suffix=".nii"),
    Case("zero-spacing", "pixdim 0 along i (no qform / sform)", "image",
         _content(lambda: _gz(nifti_bytes(volume(), pixdim=[1, 0, 1, 1, 0, 0, 0, 0], **_NO_ORIENTATION)))),
    Case("negative-spacing", "pixdim -1 along i (no qform / sform)", "image",
         _content(lambda: _gz(nifti_bytes(volume(), pixdim=[1, -1, 1, 1, 0, 0, 0, 0], **_NO_ORIENTATION)))),
    Case("nan-spacing", "pixdim NaN along i (no qform / sform)", "image",
         _content(lambda: _gz(nifti_bytes(volume(), pixdim=[1, np.nan, 1, 1, 0, 0, 0, 0], **_NO_ORIENTATION)))),
    Case("singular-direction", "sform whose i and j axes are the same direction", "image",
         _content(lambda: _gz(nifti_bytes(volume(), qform_code=0, srow_x=[1, 1, 0, 0], srow_y=[0, 0, 0, 0])))),
    Case("nrrd-singular-direction", "NRRD whose i and j space directions coincide", "image",
         _content(lambda: _nrrd("(1,0,0) (1,0,0) (0,0,1)", volume().tobytes(order="F"))), suffix=".nrrd"),
    Case("nrrd-truncated", "NRRD with a third of its raw voxel bytes", "image",
         _content(lambda: _nrrd("(1,0,0) (0,1,0) (0,0,1)", volume().tobytes(order="F")[: SIZE ** 3 * 4 // 3])),
         suffix=".nrrd"),
    Case("4d-volumes", "4D: three 16^3 volumes", "image", _content(lambda: _gz(nifti_bytes(volume((SIZE, SIZE, SIZE, 3)))))),
    Case("one-voxel-thick", "a 16 x 1 x 16 volume (one voxel thick along j)", "image",
         _content(lambda: _gz(nifti_bytes(volume((SIZE, 1, SIZE)))))),
    Case("huge-size", "header declaring 30000^3 voxels (16^3 stored)", "image",
         _content(lambda: _gz(nifti_bytes(volume(), dim=[3, 30000, 30000, 30000, 1, 1, 1, 1])))),
    Case("nan-voxels", "one NaN voxel", "image", _content(lambda: _gz(nifti_bytes(_with_value(np.nan))))),
    Case("inf-voxels", "one +inf voxel", "image", _content(lambda: _gz(nifti_bytes(_with_value(np.inf))))),
    Case("constant", "every voxel 0 (blank)", "image", _content(lambda: _gz(nifti_bytes(np.zeros((SIZE,) * 3, np.float32))))),
    Case("vector", "3 components per voxel", "image", _vector_image),
    Case("float-labels", "label map of non-integer float values", "labels", _content(lambda: _gz(nifti_bytes(volume())))),
    Case("negative-labels", "label map with the value -1", "labels",
         _content(lambda: _gz(nifti_bytes(label_map().astype(np.int16) - 1)))),
    Case("labels-grid-mismatch", "12^3 label map 500 mm away from its image", "labels",
         _content(lambda: _gz(nifti_bytes(label_map((12, 12, 12)), _far_affine())))),
    Case("directory", "a directory named like an image file", "image", lambda path: path.mkdir()),
    Case("missing", "no such file", "image", lambda path: None),
)


# --------------------------------------------------------------------------- entry points
@dataclass(frozen=True)
class Inputs:
    """Valid files that go with a bad one: a fixed / moving pair with labels, an untrained 3D checkpoint."""

    fixed: Path
    moving: Path
    fixed_labels: Path
    moving_labels: Path
    model: Path


def make_inputs(folder: Path) -> Inputs:
    from DeepRegAblationLib.models.checkpoints import save_checkpoint
    from DeepRegAblationLib.models.network import build_model

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, make in (("fixed", lambda: volume(seed=0)), ("moving", lambda: volume(seed=1)),
                       ("fixed_labels", lambda: label_map(seed=0)), ("moving_labels", lambda: label_map(seed=1))):
        paths[name] = folder / f"{name}.nii.gz"
        paths[name].write_bytes(_gz(nifti_bytes(make())))
    return Inputs(model=save_checkpoint(folder / "baseline.pt", build_model("baseline", 3)), **paths)


def _pair(path: Path, role: str, inputs: Inputs) -> Tuple[Path, Path]:
    """``(fixed image, fixed labels)`` with the file under test in its role."""
    return (path, inputs.fixed_labels) if role == "image" else (inputs.fixed, path)


def _register_command(path: Path, role: str, inputs: Inputs, out: Path) -> Tuple[int, str]:
    from .. import cli

    fixed, fixed_labels = _pair(path, role, inputs)
    argv = ["register", "--fixed", fixed, "--moving", inputs.moving, "--fixed-labels", fixed_labels,
            "--moving-labels", inputs.moving_labels, "--variant", "baseline", "--model", inputs.model,
            "--device", "cpu", "--init-align", "none", "--out", out]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main([str(a) for a in argv])
    return code, stderr.getvalue()


def _register_api(path: Path, role: str, inputs: Inputs, out: Path) -> None:
    from DeepRegAblationLib.registration.pipeline import register

    fixed, fixed_labels = _pair(path, role, inputs)
    register(fixed, inputs.moving, inputs.model, fixed_labels=fixed_labels, moving_labels=inputs.moving_labels,
             device="cpu", initial_alignment="none")


def _subject_list(path: Path, role: str, inputs: Inputs, folder: Path) -> Path:
    """A CSV of four subjects, the last one holding the file under test."""
    fixed, fixed_labels = _pair(path, role, inputs)
    rows = [(inputs.fixed, inputs.fixed_labels), (inputs.moving, inputs.moving_labels),
            (inputs.moving, inputs.moving_labels), (fixed, fixed_labels)]  # fmt: skip
    csv_path = folder / "subjects.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "labels"])
        writer.writerows([f"s{n}", str(image), str(labels)] for n, (image, labels) in enumerate(rows))
    return csv_path


def _training_data(path: Path, role: str, inputs: Inputs, out: Path) -> None:
    from ..data import build_data

    spec = {"kind": "list", "path": str(_subject_list(path, role, inputs, out.parent)), "val_fraction": 0.5, "val_pairs": 1}
    bundle = build_data(spec, ndim=3, seed=0)
    bundle.train[0]  # the first step's data


def _evaluation_data(path: Path, role: str, inputs: Inputs, out: Path) -> None:
    from ..evaluation import validation_set

    spec = {"kind": "list", "path": str(_subject_list(path, role, inputs, out.parent)), "val_fraction": 0.5}
    dataset, _ = validation_set(spec, ndim=3, n_pairs=1)
    dataset[0]


def _bench_quality(path: Path, role: str, inputs: Inputs, out: Path) -> None:
    from ..data import Subject
    from .quality import quality_table

    fixed, fixed_labels = _pair(path, role, inputs)
    pair = (Subject("fixed", fixed, fixed_labels), Subject("moving", inputs.moving, inputs.moving_labels))
    quality_table([pair], variants=[], methods=["identity"], device="cpu")


def _demo_template(path: Path, role: str, inputs: Inputs, out: Path) -> None:
    from ..data import mni

    with mock.patch.object(mni, "nilearn_data_dir", lambda: path.parent):  # the nilearn package folder
        mni.load_mni_template(ndim=3, with_labels=False)


@dataclass(frozen=True)
class EntryPoint:
    """``run(path, role, inputs, out)``: returns ``(exit status, stderr)`` for a command, ``None`` for a
    function; raises when a function refuses. ``file_name``: the name the entry point reads the file by."""

    id: str
    description: str
    run: Callable[[Path, str, Inputs, Path], Optional[Tuple[int, str]]]
    roles: Tuple[str, ...] = ("image", "labels")
    file_name: Optional[str] = None


def _entry_points() -> Tuple[EntryPoint, ...]:
    from ..data import MNI_TEMPLATE

    return (
        EntryPoint("register-command", "`deepreg-ablation register` (cli.main; what the Slicer module runs)",
                   _register_command),
        EntryPoint("register-api", "`inference.register()` with file paths", _register_api),
        EntryPoint("training-data", "training data: `data.build_data` (`train`, `ablation`)", _training_data),
        EntryPoint("evaluation-data", "evaluation data: `evaluation.validation_set` (`evaluate`, `ablation`, `sweep`)",
                   _evaluation_data),
        EntryPoint("bench-quality", "`bench --quality` pairs: `benchmarks.quality.quality_table`", _bench_quality),
        EntryPoint("demo-template", "`demo`: the MNI152 template loader `data.load_mni_template`", _demo_template,
                   roles=("image",), file_name=MNI_TEMPLATE),
    )


ENTRY_POINTS = _entry_points()


# --------------------------------------------------------------------------- running the table
@dataclass
class Outcome:
    """What one entry point did with one file.

    status: ``"refused"`` (a clean error), ``"accepted"``, ``"crashed"`` (an exception the command
    line would show as a trace, or another exit status) or ``"n/a"`` (the entry point reads no file
    in that role). ``names_file``: the message holds the file's path. ``error_lines``: ``error:``
    lines on stderr (command only). ``out_clean``: nothing at ``--out`` nor beside it (command only).
    """

    case: Case
    entry: EntryPoint
    status: str
    detail: str = ""
    message: str = ""
    names_file: bool = False
    error_lines: Optional[int] = None
    out_clean: Optional[bool] = None
    seconds: float = 0.0

    @property
    def as_expected(self) -> bool:
        if self.status == "n/a":
            return True
        if not self.case.bad:
            return self.status == "accepted"
        return (self.status == "refused" and self.names_file and self.error_lines in (None, 1)
                and self.out_clean is not False)


def run_one(case: Case, entry: EntryPoint, inputs: Inputs, root: Path) -> Outcome:
    """Write ``case`` into a new folder under ``root`` and hand it to ``entry``."""
    if case.role not in entry.roles:
        return Outcome(case, entry, "n/a")
    work = root / f"{entry.id}--{case.id}"
    work.mkdir(parents=True)
    path = work / (entry.file_name or f"{case.role}{case.suffix}")
    case.write(path)
    out = work / "out"
    start = time.perf_counter()
    command = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            command = entry.run(path, case.role, inputs, out)
    except REFUSED as exc:
        outcome = Outcome(case, entry, "refused", type(exc).__name__, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bare trace at the command line: what the table looks for
        outcome = Outcome(case, entry, "crashed", type(exc).__name__, str(exc))
    else:
        if command is None:
            outcome = Outcome(case, entry, "accepted")
        else:
            code, stderr = command
            errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
            status = {0: "accepted", 2: "refused"}.get(code, "crashed")
            outcome = Outcome(case, entry, status, f"exit {code}", errors[0] if errors else stderr.strip(),
                              error_lines=len(errors))
            if code != 0:
                outcome.out_clean = not out.exists() and not any(p.name.startswith(".out.") for p in work.iterdir())
    outcome.names_file = str(path) in outcome.message
    outcome.seconds = time.perf_counter() - start
    return outcome


def run_table(root: Path, cases: Sequence[Case] = CASES, entries: Sequence[EntryPoint] = ENTRY_POINTS) -> List[Outcome]:
    """Every case against every entry point, in ``root`` (which must be empty or new)."""
    inputs = make_inputs(root / "inputs")
    return [run_one(case, entry, inputs, root / "runs") for case in cases for entry in entries]


# --------------------------------------------------------------------------- report
def _cell(outcome: Outcome) -> str:
    if outcome.status == "n/a":
        return "–"
    text = outcome.status if not outcome.detail.startswith("exit") else f"{outcome.status} ({outcome.detail})"
    if outcome.as_expected:
        return text
    problems = []
    if outcome.case.bad and outcome.status == "refused" and not outcome.names_file:
        problems.append("file not named")
    if outcome.error_lines not in (None, 1):
        problems.append(f"{outcome.error_lines} error lines")
    if outcome.out_clean is False:
        problems.append("--out written")
    return f"**{text.upper()}**" + (f" ({', '.join(problems)})" if problems else "")


def markdown(outcomes: Sequence[Outcome], seconds: float) -> str:
    cases = list(dict.fromkeys(o.case for o in outcomes))
    entries = list(dict.fromkeys(o.entry for o in outcomes))
    by_key = {(o.case.id, o.entry.id): o for o in outcomes}
    checked = [o for o in outcomes if o.status != "n/a"]
    bad = [o for o in checked if o.case.bad]
    count = lambda items, test: sum(1 for o in items if test(o))  # noqa: E731
    lines = [
        "# Reliability: corrupt inputs never pass silently",
        "",
        f"Produced by `{REPORT_COMMAND}` ({seconds:.0f} s on this machine); "
        "`Testing/Python/test_bad_inputs.py` asserts the same table.",
        "",
        "Every image and label file goes through one reader, `DeepRegAblationLib.imageio.read_image`. It reads "
        "the whole file (a truncated or corrupt gzip stream is an error, not zeros), checks the header (finite "
        "positive spacing, a non-singular direction, a size that fits in the available memory, 2 or 3 spatial "
        "dimensions after dropping trailing singleton axes) and the voxels (finite; an image is not constant; "
        "labels are integers >= 0), and raises one error type, `imageio.ImageReadError` (a `ValueError`), whose "
        "message names the argument, the file and the problem. The command line prints it as one line "
        "`error: ...` and exits with status 2; the Slicer module runs `register` in a background process and "
        "shows that line in its status area. `register` writes into a temporary folder beside `--out` and "
        "renames it into place only when everything is written; a training or evaluation data set lists every "
        "bad file at once, before the first step.",
        "",
        "## Outcome",
        "",
        f"- {len([c for c in cases if c.bad])} kinds of bad file x {len(entries)} entry points: {len(bad)} checks "
        f"(plus {len(checked) - len(bad)} with the valid controls).",
        f"- refused with a message naming the file: {count(bad, lambda o: o.as_expected)} of {len(bad)}",
        f"- silently accepted: {count(bad, lambda o: o.status == 'accepted')}",
        f"- bare tracebacks (or another exit status): {count(checked, lambda o: o.status == 'crashed')}",
        f"- refused without naming the file: {count(bad, lambda o: o.status == 'refused' and not o.names_file)}",
        f"- half-written `--out` after a failure: {count(bad, lambda o: o.out_clean is False)}",
        f"- valid controls accepted: {count(checked, lambda o: not o.case.bad and o.status == 'accepted')} of "
        f"{len(checked) - len(bad)}",
        "",
        "A full disk during `register` (a write raising `OSError(ENOSPC)`) and a write error while a "
        "training checkpoint is saved are tested in `Testing/Python/test_bad_inputs.py` and "
        "`Testing/Python/test_checkpoints.py`: `--out` is not created, the previous checkpoint stays intact.",
        "",
        "## Table",
        "",
        "Entry points: " + "; ".join(f"**{e.id}**: {e.description}" for e in entries) + ". "
        "`refused (exit 2)`: the command printed one `error:` line naming the file and wrote nothing to `--out`; "
        "`refused`: the function raised an error naming the file; `–`: that entry point reads no file in that role.",
        "",
        "| case | file | role | " + " | ".join(e.id for e in entries) + " |",
        "|---|---|---|" + "---|" * len(entries),
    ]
    for case in cases:
        cells = [_cell(by_key[(case.id, e.id)]) for e in entries]
        lines.append(f"| `{case.id}` | {case.description} | {case.role} | " + " | ".join(cells) + " |")
    lines += ["", "## What the user sees (`register`, `error:` line)", ""]
    for case in cases:
        outcome = by_key[(case.id, entries[0].id)]
        if case.bad and outcome.message:
            lines.append(f"- `{case.id}`: `{_short_paths(outcome.message)}`")
    return "\n".join(lines) + "\n"


def _short_paths(message: str) -> str:
    """The message with the temporary folder of the run cut down to ``.../``."""
    import re

    return re.sub(r"/\S*/runs/[^/\s]+/", ".../", re.sub(r"/\S*/inputs/", ".../", message)).replace("`", "'")


MEMORY_REPORTS = (Path("docs/benchmarks-memory.memory.json"), Path("docs/benchmarks-memory-0.5mm.memory.json"))
"""The ``bench --memory`` runs whose tables the report carries (each with the command that measured it)."""


def memory_markdown(paths: Sequence[Path]) -> str:
    """The memory section: the table of each ``bench --memory`` run in ``paths`` (absent files are skipped)."""
    from . import memory

    parts = ["## Memory: peak resident memory of `register`", "",
             "Measured by `deepreg-ablation bench --memory` (`benchmarks.memory`: each case the real `register` "
             "command in its own process, its peak RSS from the kernel, `ru_maxrss`); the pair is the MNI152 "
             "template on a 200 x 240 x 200 mm field of view at 1, 0.7 and 0.5 mm and itself moved rigidly. "
             "`registration.memory` refuses a run whose estimated need exceeds the available memory before any "
             "work (see the cases above), and skips the Slicer scene with a warning when it cannot fit. These "
             "tables are not measured by this report's command (the 0.5 mm case alone takes minutes and about 4.3 GB): "
             "each is read from the rows a `bench --memory` run saved, and that run's command stands above it.", ""]
    for path in paths:
        if not Path(path).is_file():
            continue
        payload = json.loads(Path(path).read_text())
        report = Path(path).with_name(Path(path).name.replace(".memory.json", ".md"))
        parts += [f"Produced by `{payload['command']}` (rows: `{Path(path).as_posix()}`; its full report, machine "
                  f"and date: `{report.as_posix()}`):", "", memory.markdown_table(payload["rows"])]
    return "\n".join(parts) + "\n"


def issue24_sections(root: Path, memory_reports: Sequence[Path]) -> str:
    """The sections added by issue 24: the faults table, the fuzzer's table and the memory tables."""
    from . import faults, fuzz

    start = time.perf_counter()
    fault_rows = faults.run_faults(root / "faults")
    text = faults.markdown(fault_rows, REPORT_COMMAND, time.perf_counter() - start)
    start = time.perf_counter()
    fuzz_rows = fuzz.run_cases(fuzz.plan_cases(root / "fuzz", fuzz.DEFAULT_CASES, 0), root / "fuzz")
    text += "\n" + fuzz.markdown(fuzz_rows, REPORT_COMMAND, time.perf_counter() - start)
    return text + "\n" + memory_markdown(memory_reports)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m DeepRegAblationTrainingLib.benchmarks.reliability", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown table here (default: stdout)")
    parser.add_argument("--memory-json", type=Path, nargs="*", default=list(MEMORY_REPORTS),
                        help="bench --memory results to include (default: the committed ones)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepreg-reliability-") as tmp:
        outcomes = run_table(Path(tmp))
        text = markdown(outcomes, time.perf_counter() - start)
        text += "\n" + issue24_sections(Path(tmp), args.memory_json)
    if args.report is None:
        sys.stdout.write(text)
    else:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
        print(f"wrote {args.report}")
    failed = [o for o in outcomes if not o.as_expected]
    for outcome in failed:
        print(f"UNEXPECTED {outcome.case.id} x {outcome.entry.id}: {outcome.status} {outcome.detail} {outcome.message}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
