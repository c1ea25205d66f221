"""Speed and memory benchmark of the four variants beside voxelmorph's ``VxmPairwise``.

Every case runs in a fresh Python process (``python -m DeepRegAblationTrainingLib.benchmarks.speed CASE_JSON``)
so that its peak memory is its own: peak resident memory (``ru_maxrss``, the whole process,
interpreter and PyTorch included) on CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

Cases
- ``train``: optimiser steps per second (forward, the variant's training loss, backward, Adam step
  with gradient clipping), batch 1, after one warm-up step.
- ``model``: model-only inference time (forward under ``torch.inference_mode``), median of repeats.
- ``pipeline``: full registration pipeline, read to written: read both NIfTI files, ``register``
  (resample, normalise, model, full-resolution field, Jacobian, metrics), write the NIfTI and ITK
  transform files (snapshots and the Slicer scene are not included).

The reference model is ``voxelmorph.nn.models.VxmPairwise`` (voxelmorph 0.3.x) built with the
same feature sizes, LeakyReLU(0.2) and no integration (our default is a plain displacement);
its U-Net is neurite's ``BasicUNet``: ``nb_features=[[16, 32, 32, 32], [32, 32, 32, 32]]``
plus our three full-resolution decoder convolutions is the closest match; both parameter
counts are reported. Its training loss is our baseline loss (local NCC) so that only the
network differs.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Sequence

__all__ = ["SIZES", "VXM", "run_case", "case_environment", "measure", "plan_cases", "markdown_tables",
           "machine_description"]

SIZES = {"2d": (160, 192), "3d128": (128, 128, 128), "3d160": (160, 192, 224),
         # the 3D brain models' grid (192 x 256 x 192 mm, data.brain_grid_shape) at 4, 3 and 2 mm
         "brain4mm": (48, 64, 48), "brain3mm": (64, 96, 64), "brain2mm": (96, 128, 96)}
VXM = "VxmPairwise"


# --------------------------------------------------------------------------- worker side
def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # Unix only: imported here so that Windows can import this module (and the CLI)
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vxm_model(ndim: int, enc: Sequence[int], dec: Sequence[int]):
    import torch.nn as nn
    from voxelmorph.nn.models import VxmPairwise

    levels = len(enc)
    return VxmPairwise(
        ndim=ndim, source_channels=1, target_channels=1,
        nb_features=[list(enc), list(dec[:levels])],
        activations=nn.LeakyReLU(0.2), integration_steps=0,
    )


def _vxm_forward(model, moving, fixed):
    disp = model(moving, fixed, return_field_type="displacement")
    from DeepRegAblationLib.fields import warp

    return {"warped": warp(moving, disp), "disp_vox": disp}


def _synthetic_pair(shape, device):
    """Two smooth random images (B=1, C=1) in [0, 1]."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    ndim = len(shape)
    mode = "trilinear" if ndim == 3 else "bilinear"
    coarse = torch.rand(2, 1, *[max(n // 16, 2) for n in shape], generator=gen)
    pair = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return pair[:1].to(device), pair[1:].to(device)


def _case_train(case: dict, device) -> dict:
    import torch
    from DeepRegAblationLib.losses import CompositeLoss
    from DeepRegAblationLib.models.network import build_model
    from DeepRegAblationLib.models.variants import get_variant

    shape = tuple(case["shape"])
    ndim = len(shape)
    moving, fixed = _synthetic_pair(shape, device)
    if case["model"] == VXM:
        ours = build_model("baseline", ndim)
        model = _vxm_model(ndim, ours.arch["enc_features"], ours.arch["dec_features"]).to(device)
        forward = lambda: _vxm_forward(model, moving, fixed)  # noqa: E731
        loss_fn = CompositeLoss.from_variant(get_variant("baseline"))
        lr = 1e-3
    else:
        model = build_model(case["model"], ndim).to(device)
        forward = lambda: model(moving, fixed)  # noqa: E731
        spec = get_variant(case["model"])
        loss_fn = CompositeLoss.from_variant(spec)
        lr = spec.lr
    optimizer = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        total, _ = loss_fn(forward(), fixed, moving, epoch=0, epochs=1)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(case["repeats"]):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / case["repeats"]
    return {"seconds": seconds, "steps_per_s": 1.0 / seconds, "params": sum(p.numel() for p in model.parameters())}


def _case_model(case: dict, device) -> dict:
    import torch
    from DeepRegAblationLib.models.network import build_model

    shape = tuple(case["shape"])
    ndim = len(shape)
    moving, fixed = _synthetic_pair(shape, device)
    if case["model"] == VXM:
        ours = build_model("baseline", ndim)
        model = _vxm_model(ndim, ours.arch["enc_features"], ours.arch["dec_features"]).to(device).eval()
        forward = lambda: _vxm_forward(model, moving, fixed)  # noqa: E731
    else:
        model = build_model(case["model"], ndim).to(device).eval()
        forward = lambda: model(moving, fixed)  # noqa: E731
    times = []
    with torch.inference_mode():
        forward()  # warm-up
        for _ in range(case["repeats"]):
            _sync(device)
            start = time.perf_counter()
            forward()
            _sync(device)
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "params": sum(p.numel() for p in model.parameters())}


def _case_pipeline(case: dict, device) -> dict:
    import numpy as np
    from DeepRegAblationLib.outputs.exports import write_result_files
    from DeepRegAblationLib.imageio import ImageData, read_image, write_image
    from DeepRegAblationLib.registration.pipeline import register
    from DeepRegAblationLib.models.network import build_model

    shape = tuple(case["shape"])
    ndim = len(shape)
    moving_t, fixed_t = _synthetic_pair(shape, "cpu")
    model = build_model(case["model"], ndim)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ijk_to_ras = np.diag([1.0, 1.0, 1.0, 1.0])
        paths = {}
        for name, tensor in (("fixed", fixed_t), ("moving", moving_t)):
            array = tensor[0, 0].numpy().astype(np.float32)
            if ndim == 2:
                array = array[None]
            paths[name] = tmp / f"{name}.nii.gz"
            write_image(paths[name], ImageData(array=array, ijk_to_ras=ijk_to_ras, name=name))
        times = []
        for repeat in range(case["repeats"] + 1):
            start = time.perf_counter()
            fixed = read_image(paths["fixed"])
            moving = read_image(paths["moving"])
            result = register(fixed, moving, model=model, device=str(device))
            write_result_files(tmp / f"out{repeat}", result)
            if repeat:  # the first run is the warm-up
                times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "stage_seconds": result.timings}


def run_case(case: dict) -> dict:
    """Run one case in this process and return its measurements (adds ``peak_mb``)."""
    import torch

    torch.set_num_threads(int(case["threads"]))
    torch.manual_seed(0)
    device = torch.device(case["device"])
    runner = {"train": _case_train, "model": _case_model, "pipeline": _case_pipeline}[case["kind"]]
    out = runner(case, device)
    out["peak_mb"] = _peak_memory_mb(device)
    return out


# --------------------------------------------------------------------------- driver side
def case_environment() -> dict:
    """The environment of a case's process: this one with the folders of both libraries first on ``PYTHONPATH``.

    Inside Slicer the libraries are on ``sys.path`` only (Slicer adds its modules' folders there), not on
    ``PYTHONPATH``, so a new ``sys.executable`` (``PythonSlicer``) process would not find them.
    """
    import DeepRegAblationLib
    import DeepRegAblationTrainingLib
    from DeepRegAblationLib.panel import process_environment

    packages = (DeepRegAblationLib, DeepRegAblationTrainingLib)
    folders = [str(Path(package.__file__).resolve().parents[1]) for package in packages]
    return process_environment(list(dict.fromkeys(folders)))


def measure(case: dict, timeout_s: float = 1800.0) -> dict:
    """Run ``case`` in a fresh interpreter (:func:`case_environment`); returns the case merged with its result
    or an error."""
    env = case_environment()
    proc = subprocess.run(
        [sys.executable, "-m", "DeepRegAblationTrainingLib.benchmarks.speed", json.dumps(case)],
        capture_output=True, text=True, timeout=timeout_s, env=env,
    )
    row = dict(case)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        row["error"] = tail[0][:300]
    else:
        row.update(json.loads(lines[-1]))
    return row


def plan_cases(
    kinds: Sequence[str], sizes: Sequence[str], variants: Sequence[str], device: str, threads: int,
    repeats: int, include_reference: bool = True,
) -> List[dict]:
    cases = []
    for kind in kinds:
        for size in sizes:
            models = list(variants) + ([VXM] if include_reference and kind != "pipeline" else [])
            for model in models:
                cases.append(dict(kind=kind, size=size, shape=list(SIZES[size]), model=model,
                                  device=device, threads=threads, repeats=repeats))
    return cases


def _fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_tables(rows: Sequence[dict]) -> str:
    """One Markdown table per case kind."""
    titles = {
        "train": "Training: optimiser steps per second (batch 1) and peak memory",
        "model": "Inference, model only: seconds per forward pass and peak memory",
        "pipeline": "Inference, full pipeline (read -> register -> NIfTI/ITK files written): seconds and peak memory",
    }
    out = []
    for kind in ("train", "model", "pipeline"):
        krows = [r for r in rows if r["kind"] == kind]
        if not krows:
            continue
        out.append(f"### {titles[kind]}\n")
        value_col = "steps/s" if kind == "train" else "seconds"
        out.append(f"| size | model | device | threads | {value_col} | peak memory (MiB) | parameters |")
        out.append("|---|---|---|---|---|---|---|")
        for r in krows:
            value = r.get("steps_per_s") if kind == "train" else r.get("seconds")
            if "error" in r:
                value_text, mem = f"error: {r['error']}", "-"
            else:
                value_text, mem = _fmt(value, 3), _fmt(r.get("peak_mb"), 0)
            shape = "x".join(str(n) for n in r["shape"])
            out.append(f"| {r['size']} ({shape}) | {r['model']} | {r['device']} | {r['threads']} | "
                       f"{value_text} | {mem} | {_fmt(r.get('params'))} |")
        out.append("")
    return "\n".join(out)


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Python {platform.python_version()}, torch {torch.__version__}, CPU {cpu} "
            f"({os.cpu_count()} logical cores), GPU: {gpu}; load average at the end (1, 5, 15 min): {load} "
            f"(other work on the machine slows every case)")


if __name__ == "__main__":
    print(json.dumps(run_case(json.loads(sys.argv[1]))))
