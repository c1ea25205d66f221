"""Faults, scale and inputs that look valid (issue 24): each case run for real, what the user sees recorded.

:func:`run_faults` runs every case of :data:`CASES` in a temporary folder and returns one row per case: what the
program said (the ``error:`` or ``warning:`` line, with the temporary paths cut down) and the outcome (exit status,
what was kept). ``benchmarks.reliability`` puts the table into docs/reliability.md; the tests of each case are
named in its ``test`` column. Cases that need what is not installed (voxelmorph, MONAI, nilearn's template) or
POSIX signals say so instead of a result.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .speed import case_environment

__all__ = ["Row", "CASES", "run_faults", "markdown"]

Row = Dict[str, str]
_TINY = dict(enc_features=(8, 8, 8, 8), dec_features=(8,) * 7)
_CLI = [sys.executable, "-m", "DeepRegAblationTrainingLib.cli"]


def _short(text: str, root: Path) -> str:
    """``text`` on one line with the temporary folder cut down to ``.../``."""
    return " ".join(str(text).replace(str(root), "...").split()).replace("`", "'")


def _cli(argv: Sequence[str]) -> Tuple[int, str, str]:
    """``cli.main(argv)`` in this process: ``(exit status, stdout, stderr)``."""
    from .. import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _first(text: str, prefix: str) -> str:
    return next((line for line in text.splitlines() if line.startswith(prefix)), "(none)")


def _images(root: Path) -> Tuple[Path, Path]:
    from DeepRegAblationLib.imageio import ImageData, write_image

    rng = np.random.default_rng(0)
    from scipy import ndimage

    arrays = [ndimage.gaussian_filter(rng.random((20, 20, 20)), 2).astype(np.float32) * 100 for _ in range(2)]
    return tuple(write_image(root / f"{name}.nii.gz", ImageData(a, np.eye(4), name))  # type: ignore[return-value]
                 for name, a in zip(("fixed", "moving"), arrays))


# --------------------------------------------------------------------------- checkpoints
def _checkpoint_files(root: Path) -> List[Tuple[str, Callable[[], Path]]]:
    import torch

    from DeepRegAblationLib.models.checkpoints import save_checkpoint
    from DeepRegAblationLib.models.network import build_model

    good = save_checkpoint(root / "good" / "baseline.pt", build_model("baseline", 3, **_TINY))

    def write(name: str, data: bytes) -> Path:
        (root / name).write_bytes(data)
        return root / name

    def flipped() -> Path:
        data = bytearray(good.read_bytes())
        data[len(data) // 2: len(data) // 2 + 16] = bytes(16)
        return write("corrupt.pt", bytes(data))

    def torch_file(name: str, make: Callable[[], object]) -> Path:
        torch.save(make(), str(root / name))
        return root / name

    def vxm():
        from voxelmorph.nn.models import VxmPairwise

        return VxmPairwise(3, 1, 1, nb_features=(4, 4)).state_dict()

    def monai():
        from monai.networks.nets import UNet

        net = UNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8), strides=(2,))
        return {"net": net.state_dict(), "opt": torch.optim.Adam(net.parameters()).state_dict()}

    def npz() -> Path:
        with open(root / "teacher.npz", "wb") as handle:
            np.savez(handle, disp_vox=np.zeros((3, 4, 4, 4), np.float32))
        return root / "teacher.npz"

    return [
        ("a checkpoint cut short (30000 bytes)", lambda: write("cut.pt", good.read_bytes()[:30000])),
        ("16 zeroed bytes inside the weights", flipped),
        ("a text file named .pt", lambda: write("text.pt", b"not a checkpoint\n")),
        ("a distillation teacher .npz", npz),
        ("a voxelmorph VxmPairwise state dict", lambda: torch_file("voxelmorph.pt", vxm)),
        ("a MONAI checkpoint {'net', 'opt'}", lambda: torch_file("monai.pt", monai)),
        ("a 2D checkpoint for 3D images", lambda: save_checkpoint(root / "2d.pt", build_model("baseline", 2, **_TINY))),
        ("a regloss checkpoint as --variant baseline",
         lambda: save_checkpoint(root / "regloss.pt", build_model("regloss", 3, **_TINY))),
    ]


def _checkpoint_rows(root: Path) -> List[Row]:
    fixed, moving = _images(root)
    rows = []
    for what, make in _checkpoint_files(root):
        try:
            path = make()
        except ImportError as exc:
            rows.append(dict(case=f"`--model`: {what}", now=f"not run: {exc}", outcome="-"))
            continue
        code, _, err = _cli(["register", "--fixed", fixed, "--moving", moving, "--variant", "baseline", "--model", path,
                             "--device", "cpu", "--no-scene", "--out", root / "out"])
        rows.append(dict(case=f"`--model`: {what}", now=_short(_first(err, "error:"), root),
                         outcome=f"exit {code}, {'--out not created' if not (root / 'out').exists() else '--out written'}"))
    return rows


def _training_rows(root: Path) -> List[Row]:
    """``--init-from`` a cut checkpoint; ``--resume`` after a crash cut ``last.pt``."""
    from .. import data

    toy = data.write_toy_oasis2d(root / "toy", n_subjects=6, shape=(32, 32))
    run = root / "run"

    def train(*extra) -> Tuple[int, str, str]:
        return _cli(["train", "--variant", "baseline", "--data", f"oasis2d:{toy}", "--steps-per-epoch", "2",
                     "--val-pairs", "2", "--val-fraction", "0.4", "--threads", "1", "--device", "cpu", "--no-progress",
                     "--no-tensorboard", "--checkpoint-every", "1", "--features-enc", "8", "8", "8", "8",
                     "--features-dec", "8", "8", "8", "8", "8", "8", "8", *extra])

    from DeepRegAblationLib.models.checkpoints import save_checkpoint
    from DeepRegAblationLib.models.network import build_model

    cut = root / "cut-init.pt"
    cut.write_bytes(save_checkpoint(root / "good.pt", build_model("baseline", 2, **_TINY)).read_bytes()[:30000])
    code, _, err = train("--steps", "2", "--init-from", cut, "--out", root / "init")
    rows = [dict(case="`train --init-from` a checkpoint cut short", now=_short(_first(err, "error:"), root),
                 outcome=f"exit {code}")]
    train("--steps", "4", "--out", run)
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    code, _, err = train("--steps", "6", "--resume", "--out", run)
    rows.append(dict(case="`train --resume` after a crash cut `last.pt`", now=_short(_first(err, "warning:"), root),
                     outcome=f"exit {code}, run finished at step "
                             f"{json.loads((run / 'steps.jsonl').read_text().splitlines()[-1])['step']}"))
    return rows


# --------------------------------------------------------------------------- concurrent and killed runs
def _start(argv: Sequence[str]) -> subprocess.Popen:
    return subprocess.Popen(_CLI + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=case_environment())


def _until(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise RuntimeError(f"the run ended before {prefix!r}")


def _concurrency_rows(root: Path) -> List[Row]:
    if os.name == "nt":
        return [dict(case="two `register` runs into one `--out`", now="not run: needs POSIX signals", outcome="-")]
    fixed, moving = _images(root)
    out = root / "shared-out"
    argv = ["register", "--fixed", fixed, "--moving", moving, "--variant", "baseline", "--device", "cpu", "--no-scene",
            "--out", out]
    first = _start(argv)
    _until(first, "[1/1]")
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(_CLI + [str(a) for a in argv], capture_output=True, text=True, timeout=600,
                                env=case_environment())
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=600)
    rows = [dict(case="two `register` runs into one `--out` at once (the first frozen mid-run)",
                 now=_short(re.sub(r"pid \d+ on \S+, started [0-9T:-]+", "pid N on HOST, started TIME",
                                   _first(second.stderr, "error:")), root),
                 outcome=f"second: exit {second.returncode}; first: exit {first.returncode}, its results in `--out`")]
    killed_out = root / "killed-out"
    killed = _start(argv[:-1] + [killed_out])
    _until(killed, "[1/1]")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    left = sorted(p.name for p in root.glob(".killed-out.partial-*"))
    code, _, err = _cli(argv[:-1] + [killed_out])
    rows.append(dict(case="`kill -9` during a run, then the same command again",
                     now=_short(_first(err, "note: removed"), root),
                     outcome=f"left by the kill: {len(left)} `.partial-*` folder(s); after the next run (exit {code}): "
                             f"{len(list(root.glob('.killed-out.*-*')))}"))
    return rows


# --------------------------------------------------------------------------- headers, inputs, memory
def _header_rows(root: Path) -> List[Row]:
    import nibabel
    import SimpleITK as sitk

    from DeepRegAblationLib.imageio import read_image

    rows = []
    for scode in (1, 2):
        mirrored = np.diag([1.0, 1.2, 1.5, 1.0])
        mirrored[0, :] *= -1
        image = nibabel.Nifti1Image(np.random.default_rng(0).random((14, 12, 10)).astype(np.float32), None)
        image.set_sform(np.diag([1.0, 1.2, 1.5, 1.0]), code=scode)
        image.set_qform(mirrored, code=1)
        path = root / f"mirrored-qform-sform{scode}.nii.gz"
        nibabel.save(image, str(path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ours = read_image(path, "moving image (--moving)").ijk_to_ras
        itk = sitk.ReadImage(str(path))
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(itk.GetDirection()).reshape(3, 3) * np.asarray(itk.GetSpacing())
        lps[:3, 3] = itk.GetOrigin()
        same = np.allclose(ours, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-6)
        rows.append(dict(case=f"NIfTI whose qform is mirrored against its sform (sform_code {scode})",
                         now=_short(f"warning: {caught[0].message}" if caught else "(no warning)", root),
                         outcome=f"placed as SimpleITK places it: {'yes' if same else 'NO'}"))
    return rows


def _input_rows(root: Path) -> List[Row]:
    """The brain (the MNI152 template at 3 mm) against a slab, its inversion, a box, half of it, itself aside."""
    try:
        from ..experiments.demo import load_mni

        template, _ = load_mni(3.0)
    except (ImportError, ValueError) as exc:
        return [dict(case="inputs outside what the models know", now=f"not run: {exc}", outcome="-")]
    from DeepRegAblationLib.imageio import ImageData, write_image

    def block(k0: int, k1: int, name: str) -> ImageData:
        grid = template.ijk_to_ras.copy()
        grid[:3, 3] += template.ijk_to_ras[:3, 2] * k0
        return ImageData(template.array[k0:k1].copy(), grid, name)

    middle = template.shape[0] // 2
    aside = template.ijk_to_ras.copy()
    aside[0, 3] += 100.0
    rng = np.random.default_rng(7)
    from scipy import ndimage

    box = ndimage.gaussian_filter(rng.random((50, 50, 50)), 1.5).astype(np.float32)
    box_grid = np.diag([3.0, 3.0, 3.0, 1.0])
    box_grid[:3, 3] = template.ijk_to_ras[:3, 3] + 20.0
    cases = [
        ("a 20-slice slab (21 mm) registered to a whole brain", block(middle - 3, middle + 4, "slab"), "auto"),
        ("the brain with inverted contrast", template.with_array(template.array.max() - template.array, "inverted"), "auto"),
        ("not a brain: a 150 mm box of texture", ImageData(box, box_grid, "box"), "auto"),
        ("only the upper half of the brain", block(middle, template.shape[0], "upper"), "auto"),
        ("the brain 100 mm aside, no initial alignment", ImageData(template.array, aside, "aside"), "none"),
    ]
    fixed = write_image(root / "brain.nii.gz", template)
    rows = []
    for what, moving, align in cases:
        path = write_image(root / f"{moving.name}.nii.gz", moving)
        code, out, err = _cli(["register", "--fixed", fixed, "--moving", path, "--variant", "affine_enhanced",
                               "--device", "cpu", "--no-scene", "--init-align", align, "--out", root / f"out-{moving.name}"])
        lines = [line for line in (out + err).splitlines() if line.startswith("warning: affine_enhanced")]
        record = json.loads((root / f"out-{moving.name}" / "metrics.json").read_text())[0] if code == 0 else {}
        rows.append(dict(case=what, now=_short(lines[0] if lines else "(no warning)", root),
                         outcome=f"exit {code}; {len(record.get('warnings', []))} warning(s) in metrics.json"))
    return rows


def _memory_rows(root: Path) -> List[Row]:
    from DeepRegAblationLib.imageio import ImageData
    from DeepRegAblationLib.registration.memory import InsufficientMemoryError, check_memory, registration_memory_bytes

    grid = np.diag([0.5, 0.5, 0.5, 1.0])
    huge = ImageData(np.broadcast_to(np.float32(0), (400, 480, 400)), grid, "0.5 mm")  # no voxels allocated
    need = registration_memory_bytes(huge, huge)
    try:
        check_memory(huge, huge, available=int(need * 0.8))
        message = "(accepted)"
    except InsufficientMemoryError as exc:
        message = f"error: {exc}"
    return [dict(case="a 0.5 mm pair (400 x 480 x 400) on a machine with 80 % of the memory it needs", now=message,
                 outcome="refused before any work (exit 2 from the command line)")]


CASES: Tuple[Tuple[str, Callable[[Path], List[Row]], str], ...] = (
    ("checkpoints", _checkpoint_rows, "test_checkpoint_files.py"),
    ("training checkpoints", _training_rows, "test_checkpoint_files.py"),
    ("concurrent and killed runs", _concurrency_rows, "test_output_lock.py"),
    ("headers", _header_rows, "test_nifti_header.py"),
    ("inputs", _input_rows, "test_input_warnings.py"),
    ("memory", _memory_rows, "test_memory.py"),
)
"""``(group, runner(folder) -> rows, the tests that assert it)``."""


def run_faults(root: Path) -> List[Row]:
    """Every case of :data:`CASES` in its own sub-folder of ``root``; one row per case (with ``group`` and ``test``)."""
    rows: List[Row] = []
    for group, runner, test in CASES:
        folder = Path(root) / group.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # the command line prints each one as its 'warning:' line
            for row in runner(folder):
                rows.append(dict(row, group=group, test=test))
    return rows


BEFORE = {
    "`--model`: a checkpoint cut short (30000 bytes)": "bare traceback, `OSError: [Errno 22] Invalid argument`, exit 1, "
                                                       "file not named",
    "`--model`: 16 zeroed bytes inside the weights": "loaded silently (PyTorch does not check the CRC)",
    "two `register` runs into one `--out` at once (the first frozen mid-run)": "both exit 0; the first run's "
                                                                               "results are gone",
    "`kill -9` during a run, then the same command again": "a `.<out>.partial-*` folder stays beside `--out`",
    "NIfTI whose qform is mirrored against its sform (sform_code 1)": "accepted without a word",
    "NIfTI whose qform is mirrored against its sform (sform_code 2)": "accepted without a word",
    "a 20-slice slab (21 mm) registered to a whole brain": "exit 0, displacements up to 86 mm, SSIM 0.40, no warning",
    "a 0.5 mm pair (400 x 480 x 400) on a machine with 80 % of the memory it needs": "peak 13 GB (about 170 bytes per "
                                                                                     "voxel): killed or swapping",
}
"""What the issue found before (its table), by case."""


def markdown(rows: Sequence[Row], command: str, seconds: float) -> str:
    """The section of docs/reliability.md: one row per case, what the user sees now and before."""
    lines = [
        "## Faults, scale and inputs that look valid", "",
        f"Produced by `{command}` ({seconds:.0f} s): each case run for real (`benchmarks.faults`), the temporary "
        "folder shown as `...`. Before: what the same case did on the code before issue 24 (its table), where it "
        "was recorded.", "",
        "| group | case | now: what the user sees | outcome | before | tests |", "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['group']} | {row['case']} | `{row['now']}` | {row['outcome']} | "
                     f"{BEFORE.get(row['case'], '-')} | `{row['test']}` |")
    return "\n".join(lines) + "\n"


def _elapsed(start: float) -> float:
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> int:  # pragma: no cover - run through benchmarks.reliability
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepreg-faults-") as tmp:
        rows = run_faults(Path(tmp))
    sys.stdout.write(markdown(rows, "python -m DeepRegAblationTrainingLib.benchmarks.faults", _elapsed(start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
