"""The Slicer-free part of the DeepRegAblation panel's logic: no Qt, no MRML, no PyTorch when imported.

- **What to run**: :func:`checkpoint_problem` (why a checkpoint file or folder cannot serve the chosen
  variants; the panel asks on every change), :func:`models_to_run` (what ``inference.register(model=...)``
  gets, once per registration, in the blocking run), :func:`initial_alignment_argument`.
- **The background run**: :func:`register_command` (``PythonSlicer -m DeepRegAblationTrainingLib.cli
  register ... --npz-only --out DIR``: only ``result.npz`` and the metrics; arguments by
  :func:`register_arguments`), run with
  :func:`process_environment` (:func:`library_paths` first on ``PYTHONPATH``, unbuffered output);
  :class:`RegistrationJob` reads its output lines (the :mod:`.progress` protocol) and says how it ended.
- **Results**: :func:`load_results` (the run's ``<variant>/result.npz`` files), :func:`metrics_summary`,
  :class:`RegistrationOutcome` (what the panel's ``onFinished`` callback gets) and
  :class:`DisplaySettings` (the panel's Display section, applied by ``scene.apply_display_settings``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .options import ALIGNMENT_CHOICES, VARIANT_IDS, RefineArgument, parse_variants, refine_cli_arguments
from .progress import parse_error_line, parse_progress_line, parse_warning_line

if TYPE_CHECKING:  # pragma: no cover
    from .registration.result import RegistrationResult

__all__ = [
    "DisplaySettings", "RegistrationOutcome", "RegistrationJob", "checkpoint_problem", "checkpoint_files_problem",
    "models_to_run",
    "initial_alignment_argument", "register_arguments", "register_command", "library_paths", "python_executable",
    "process_environment", "load_results", "metrics_summary", "version_tuple", "CLI_MODULE", "LIBRARY_PACKAGES",
    "StartGuard",
]

CLI_MODULE = "DeepRegAblationTrainingLib.cli"
"""The module the background process runs (``python -m``)."""
LIBRARY_PACKAGES = ("DeepRegAblationLib", "DeepRegAblationTrainingLib")
"""The packages the background process imports (found by :func:`library_paths`)."""
TAIL_LINES = 20
"""Plain output lines a :class:`RegistrationJob` keeps (the last five explain a failure without ``error:`` line)."""


# --------------------------------------------------------------------------- display and outcome
@dataclass
class DisplaySettings:
    """How results are shown in the slice views (the Display section of the panel)."""

    show_glyphs: bool = True
    glyph_spacing_mm: float = 0.0  # 0 = automatic
    glyph_scale_percent: float = 100.0  # of the automatic arrow length
    show_jacobian: bool = False
    jacobian_opacity: float = 0.6
    jacobian_min: float = -1.0
    jacobian_max: float = 3.0


def metrics_summary(variant: str, metrics: Dict[str, float]) -> str:
    """One line of the most telling metrics, skipping those that are NaN (e.g. Dice without labels)."""
    parts = []
    for key, label, unit, digits in (
        ("dice", "Dice", "", 3), ("hd95_mm", "HD95", " mm", 2), ("ncc", "NCC", "", 3),
        ("folding_pct", "folding", " %", 3), ("sdlogj", "SDlogJ", "", 3),
        ("max_disp_mm", "max displacement", " mm", 1), ("runtime_s", "runtime", " s", 1),
    ):
        value = metrics.get(key)
        if value is None or not math.isfinite(float(value)):
            continue
        parts.append(f"{label} {float(value):.{digits}f}{unit}")
    return f"{variant}: " + (", ".join(parts) if parts else "no metrics")


@dataclass
class RegistrationOutcome:
    """What a background registration ended with (given to the panel's ``onFinished`` callback).

    The attribute names are those of the module's API (camelCase, as Slicer's Python code).

    status: "done", "cancelled" or "failed"; message: plain-words error when failed.
    fixedVolume: the fixed volume node the results live on.
    nodes: variant -> dict of output nodes (``scene.add_registration_to_scene`` keys).
    metrics: variant -> metrics dict; table: the metrics table node.
    warnings: variant -> warnings about inputs outside what the models know (``RegistrationResult.warnings``).
    """

    status: str
    message: str = ""
    fixedVolume: Any = None
    nodes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    table: Any = None
    warnings: Dict[str, List[str]] = field(default_factory=dict)

    @classmethod
    def done(cls, fixed_volume: Any, results: Sequence["RegistrationResult"], nodes: Dict[str, Dict[str, Any]],
             table: Any) -> "RegistrationOutcome":
        """The outcome of results added to the scene (``nodes`` by variant, the metrics ``table`` node)."""
        return cls(status="done", fixedVolume=fixed_volume, nodes=dict(nodes),
                   metrics={result.variant: dict(result.metrics) for result in results}, table=table,
                   warnings={result.variant: list(getattr(result, "warnings", [])) for result in results})

    def summaryLines(self) -> List[str]:
        """:func:`metrics_summary` of every variant, each followed by its warnings (``"variant: warning: ..."``)."""
        lines = []
        for variant, values in self.metrics.items():
            lines.append(metrics_summary(variant, values))
            lines += [f"{variant}: warning: {message}" for message in self.warnings.get(variant, [])]
        return lines


# --------------------------------------------------------------------------- the background run
@dataclass
class RegistrationJob:
    """One background registration: its inputs, folders and callbacks, and what its output said.

    ``fixed_volume``, ``moving_volume`` and ``metrics_table`` are the panel's MRML nodes (used only
    when the results are added to the scene); ``work_dir`` holds the written inputs and ``out_dir``
    (``work_dir/results``) the command's results.
    """

    fixed_volume: Any
    moving_volume: Any
    work_dir: Path
    out_dir: Path
    variant_ids: List[str]
    reuse: bool
    metrics_table: Any
    on_log: Callable[[str], None]
    on_progress: Callable[[float, str], None]
    on_finished: Callable[[RegistrationOutcome], None]
    start_time: float = field(default_factory=time.time)
    error_lines: List[str] = field(default_factory=list)
    tail_lines: List[str] = field(default_factory=list)
    warning_lines: List[str] = field(default_factory=list)

    def handle_line(self, line: str) -> None:
        """One output line: progress lines go to ``on_progress`` (and their message to ``on_log``),
        ``error:`` lines are kept for the failure message, ``warning:`` lines in ``warning_lines`` (each
        once), any other non-blank line is logged."""
        if not line.strip():
            return
        progress = parse_progress_line(line)
        if progress is not None:
            self.on_progress(*progress)
            if progress[1]:
                self.on_log(progress[1])
            return
        error = parse_error_line(line)
        if error is not None:
            self.error_lines.append(error)
        warning = parse_warning_line(line)
        if warning is not None:
            if warning in self.warning_lines:
                return  # the command repeats its warnings beside the metrics table
            self.warning_lines.append(warning)
        self.tail_lines = (self.tail_lines + [line])[-TAIL_LINES:]
        self.on_log(line)

    def ended_outcome(self, return_code: int, cancelled: bool) -> Optional[RegistrationOutcome]:
        """The outcome of a cancelled or failed run; ``None`` when the run succeeded (load its results)."""
        if cancelled:
            return RegistrationOutcome(status="cancelled")
        if return_code != 0:
            detail = "; ".join(self.error_lines) or "\n".join(self.tail_lines[-5:]) or "no output"
            return RegistrationOutcome(
                status="failed", message=f"The registration process failed (exit status {return_code}): {detail}"
            )
        return None

    def finish(self, outcome: RegistrationOutcome) -> None:
        """Log how the run ended and after how long, and call ``on_finished``."""
        self.on_log(f"Finished ({outcome.status}) after {time.time() - self.start_time:.1f} s.")
        self.on_finished(outcome)


def register_arguments(files: Dict[str, Path], out_dir: Path, variant_ids: Sequence[str], model: Optional[str],
                       device: str, refine: RefineArgument = 0, initial_alignment: str = "none") -> List[str]:
    """``register`` and its arguments for the panel's background run (the input files written by the
    panel: ``files["fixed"]``, ``["moving"]``, optional ``["fixed_labels"]``, ``["moving_labels"]``).

    ``variant_ids``: one variant or all four; ``initial_alignment``: "auto" (``register`` decides:
    what the model was trained with, else the centres-of-mass rule), "none" or "com".
    """
    args = ["register", "--fixed", str(files["fixed"]), "--moving", str(files["moving"])]
    for role in ("fixed_labels", "moving_labels"):
        if role in files:
            args += [f"--{role.replace('_', '-')}", str(files[role])]
    if list(variant_ids) == list(VARIANT_IDS):
        args += ["--variant", "all"]
    elif len(variant_ids) == 1:
        args += ["--variant", variant_ids[0]]
    else:
        raise ValueError(f"the background registration runs one variant or all four, got {list(variant_ids)}")
    if model:
        args += ["--model", str(model)]
    if initial_alignment not in ALIGNMENT_CHOICES:
        raise ValueError(f"initial_alignment must be one of {ALIGNMENT_CHOICES}, got {initial_alignment!r}")
    return args + ["--device", device, *refine_cli_arguments(refine), "--init-align", initial_alignment,
                   "--npz-only", "--out", str(out_dir)]  # the panel builds its nodes from result.npz: nothing else


def python_executable() -> str:
    """Slicer's Python launcher (PythonSlicer), so the process sees Slicer's packages (torch)."""
    return shutil.which("PythonSlicer") or sys.executable


def register_command(files: Dict[str, Path], out_dir: Path, variant_ids: Sequence[str], model: Optional[str],
                     device: str, refine: RefineArgument = 0, initial_alignment: str = "none") -> List[str]:
    """The whole ``deepreg-ablation register`` command line for the written input files:
    :func:`python_executable` ``-m DeepRegAblationTrainingLib.cli`` and :func:`register_arguments`.

    ``refine``: 0, "recommended", "thorough" or iterations; ``initial_alignment``: "auto", "none" or "com"
    (checked by :func:`initial_alignment_argument` before).
    """
    return [python_executable(), "-m", CLI_MODULE] + register_arguments(
        files, out_dir, variant_ids, model, device, refine, initial_alignment
    )


def library_paths(module_dir: Path, training_module_dir: Optional[Path] = None) -> List[str]:
    """Folders holding ``DeepRegAblationLib`` and ``DeepRegAblationTrainingLib`` (for PYTHONPATH).

    Looked for in ``module_dir`` (the DeepRegAblation module's folder), ``training_module_dir`` (the
    DeepRegAblationTraining module's folder, when Slicer has it) and ``module_dir/../DeepRegAblationTraining``
    (the source tree). Raises ``RuntimeError`` naming a package found in none of them.
    """
    here = Path(module_dir)
    candidates = [here] + ([Path(training_module_dir)] if training_module_dir is not None else [])
    candidates.append(here.parent / "DeepRegAblationTraining")
    paths: List[str] = []
    for package in LIBRARY_PACKAGES:
        folder = next((c for c in candidates if (c / package / "__init__.py").is_file()), None)
        if folder is None:
            raise RuntimeError(
                f"The {package} package of the DeepRegAblation extension was not found next to {here}; "
                "reinstall the extension."
            )
        if str(folder) not in paths:
            paths.append(str(folder))
    return paths


def process_environment(paths: Sequence[str], environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The background process's environment: ``environ`` (default ``os.environ``) with ``paths`` put
    before its ``PYTHONPATH``, ``PYTHONUNBUFFERED=1`` (progress lines arrive as they are printed) and
    ``PYTHONUTF8=1`` / ``PYTHONIOENCODING=utf-8``: the output is read as UTF-8 (``jobs``), and on Windows a
    child Python would otherwise write its ANSI code page (non-ASCII paths became replacement characters)."""
    env = dict(os.environ if environ is None else environ)
    previous = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(list(paths) + ([previous] if previous else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONUTF8"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def load_results(out_dir: Path, variant_ids: Sequence[str]) -> List["RegistrationResult"]:
    """The ``<variant>/result.npz`` files under ``out_dir``, read in the order of ``variant_ids``
    (other folders after them, by name). ``RuntimeError`` when there is none."""
    from .registration.result import RegistrationResult

    out_dir = Path(out_dir)
    result_files = sorted(out_dir.glob("*/result.npz"))
    order = {variant: index for index, variant in enumerate(variant_ids)}
    result_files.sort(key=lambda path: (order.get(path.parent.name, len(order)), path.parent.name))
    if not result_files:
        raise RuntimeError(f"The registration finished but wrote no result.npz under {out_dir}.")
    return [RegistrationResult.load(path) for path in result_files]


# --------------------------------------------------------------------------- what to run
def checkpoint_problem(path: str, variants: Union[str, Sequence[str]]) -> str:
    """Plain-words reason why ``path`` cannot provide the models of ``variants`` ("" if it can).

    A checkpoint file holds one variant (it must be the single chosen one; the registration checks
    that the file really holds it); a folder must hold ``<variant>.pt`` for every chosen variant.
    """
    # free of torch (the panel asks on every change): the paths only; models.resolve reads the files at run time
    if not path or not os.path.exists(path):
        return "Choose an existing checkpoint file or folder (or use the shipped weights)."
    ids = parse_variants(variants)
    if os.path.isfile(path):
        if len(ids) != 1:
            return ("A checkpoint file holds one variant: choose that variant, or give a folder of "
                    "<variant>.pt checkpoints to compare all four.")
        return checkpoint_files_problem([path])
    missing = [f"{v}.pt" for v in ids if not os.path.isfile(os.path.join(path, f"{v}.pt"))]
    if missing:
        return f"The checkpoint folder lacks {', '.join(missing)}."
    return checkpoint_files_problem([os.path.join(path, f"{v}.pt") for v in ids])


def checkpoint_files_problem(paths: Sequence[str]) -> str:
    """The first checkpoint file of ``paths`` that is cut short, corrupt or not a checkpoint, in plain words
    (``checkpoint_files.checkpoint_file_problem``, no PyTorch); "" when every file is a complete archive."""
    from .checkpoint_files import checkpoint_file_problem

    for path in paths:
        problem = checkpoint_file_problem(path)
        if problem:
            return f"The checkpoint {os.path.basename(path)} ({path}) {problem}."
    return ""


def models_to_run(model: Any, variants: Union[str, Sequence[str]], ndim: int) -> List[Any]:
    """What ``inference.register(model=...)`` gets, once per registration to run.

    ``None``: the shipped weights of each variant, or (as the command line does) the untrained
    network of a variant with no shipped weights, with a warning. A folder: its ``<variant>.pt``
    (:func:`checkpoint_problem` must find none missing). A checkpoint file or a ``RegistrationModel``:
    that one model.
    """
    from .models.resolve import model_sources, shipped_model_file

    if model is not None and not isinstance(model, (str, Path)):
        return [model]
    if model is not None:
        if not os.path.exists(str(model)):
            raise ValueError(f"The checkpoint file or folder does not exist: {model}")
        if os.path.isfile(str(model)):
            return [str(model)]  # one model; the registration checks what the file holds
        problem = checkpoint_problem(str(model), variants)
        if problem:
            raise ValueError(problem)
    sources = model_sources(model, parse_variants(variants), ndim)
    for variant, path in sources.items():
        if path is None:
            logging.warning(
                f"DeepRegAblation: no shipped {ndim}D weights for '{variant}' "
                f"({shipped_model_file(variant, ndim)}): using an UNTRAINED network, "
                "close to the identity. Choose a checkpoint or train one with DeepRegAblationTraining."
            )
    return [str(path) if path is not None else variant for variant, path in sources.items()]


def initial_alignment_argument(choice: str, log: Optional[Callable[[str], None]] = None) -> str:
    """The ``initial_alignment`` to pass to ``register`` for the panel's ``choice`` ("auto", "com", "none").

    ``"auto"`` is passed on: ``register`` decides per model (what it was trained with, else the
    centres-of-mass rule) and says why in a progress line (the status log); this says so in ``log``
    (default ``logging.info``). ``ValueError`` for any other choice.
    """
    if choice not in ALIGNMENT_CHOICES:
        raise ValueError(f"alignment choice must be one of {ALIGNMENT_CHOICES}, got {choice!r}")
    if choice == "auto":
        (log or logging.info)("Initial alignment: automatic (what the model was trained with; the centres of "
                              "mass for the shipped 3D models)")
    return choice


def version_tuple(version: str) -> Tuple[int, ...]:
    """``"2.1.0+cu121"`` -> ``(2, 1, 0)``: the first three numbers of a version, local part dropped."""
    numbers = re.findall(r"\d+", version.split("+")[0])[:3]
    return tuple(int(n) for n in numbers)


# --------------------------------------------------------------------------- one start at a time
class StartGuard:
    """One start at a time: refuses a start while another one is starting.

    A double click on Apply: the first click's start logs lines, and each line processes GUI events
    (``slicer.app.processEvents``, so that the panel shows it), which delivers the second click while the
    first start is still running; both would then start a background run and break each other. The
    panel checks :attr:`busy` before anything else; the logic's start runs inside :meth:`starting`.
    """

    def __init__(self) -> None:
        self._busy = False

    @property
    def busy(self) -> bool:
        """True while a start is under way."""
        return self._busy

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """The block of one start; ``RuntimeError`` when another one is under way. Freed when the block ends,
        normally or by an exception."""
        if self._busy:
            raise RuntimeError("A registration is already starting; wait for it (or cancel it once it runs).")
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
