"""The main job on the embedded default: register a synthetically deformed MNI152 template.

The fixed image is the MNI152 2009 T1 template that the nilearn wheel ships in its package data
(read by path, no download), resampled to 2 mm, with grey/white-matter labels from the tissue
maps shipped beside it. The moving image is the template deformed by a known random smooth
field with a small rotation and translation, then given other intensities (gamma and
brightness). All four variants register the pair, and so does the last one again with
instance refinement (the recommended schedule by default); the table compares them, including the error against the known
displacement (mean and 95th percentile endpoint error in mm inside the brain).

Writes into --out DIR everything `deepreg-ablation register` writes (per variant images, ITK
transforms, PNG glyph / Jacobian / checkerboard figures; metrics.csv/json; a Slicer scene),
plus DIR/inputs/ (fixed, moving, labels and the known displacement as an ITK field).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict

import numpy as np

from DeepRegAblationTrainingLib.commands.register import (
    VARIANT_IDS, prepare_out_dir, refine_argument, write_marker, write_summary, write_variant_outputs,
)

DEMO_SPACING_MM = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default demo_out)")
    parser.add_argument("--refine", nargs="?", const="recommended", default="recommended", type=refine_argument,
                        metavar="SCHEDULE",
                        help="instance refinement of the extra refined run: recommended (default), thorough, "
                             "N iterations per level, or off / 0 to skip it")
    parser.add_argument("--max-disp-mm", type=float, default=8.0, help="largest known non-rigid displacement (mm)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic deformation")
    parser.add_argument("--model", type=Path, default=None,
                        help="directory of <variant>.pt 3D checkpoints (default: the shipped models)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--spacing-mm", type=float, default=DEMO_SPACING_MM,
                        help="grid spacing of the pair (default 2 mm, the shipped 3D models' spacing)")


def load_mni(spacing_mm: float = DEMO_SPACING_MM):
    """The template and its tissue label map (1 grey, 2 white matter) resampled to ``spacing_mm``."""
    from DeepRegAblationLib import geometry
    from DeepRegAblationLib.imageio import ImageData
    from DeepRegAblationTrainingLib.data import load_mni_template

    template = load_mni_template(ndim=3, with_labels=True)
    t1, labels = template["image"], template["labels"]
    scale = spacing_mm / geometry.spacing_from_matrix(t1.ijk_to_ras)
    ijk_to_ras = t1.ijk_to_ras.copy()
    ijk_to_ras[:3, :3] = t1.ijk_to_ras[:3, :3] * scale[None, :]
    shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(t1.array.shape, scale[::-1]))

    def resample(image, mode, dtype, name):
        array = geometry.resample_to_grid(image.array, image.ijk_to_ras, ijk_to_ras, shape, mode=mode)
        return ImageData(array=array.astype(dtype), ijk_to_ras=ijk_to_ras, name=name)

    return (resample(t1, "linear", np.float32, "mni152_t1"),
            resample(labels, "nearest", np.int16, "mni152_tissue_labels"))


def make_moving(fixed, labels, max_disp_mm: float, seed: int):
    """Moving image, moving labels and the known displacement (RAS mm, fixed -> moving) on the fixed grid."""
    import torch

    from DeepRegAblationLib import geometry
    from DeepRegAblationLib.imageio import ImageData
    from DeepRegAblationTrainingLib.augment import Augment, seeded_generator

    spacing = geometry.spacing_kji(fixed.ijk_to_ras)
    image = torch.from_numpy(fixed.array.astype(np.float32))[None]
    image = image / float(np.percentile(fixed.array, 99.5))
    aug = Augment(max_disp_mm=max_disp_mm, control_spacing_vox=12.0, rotation_deg=5.0, translation_vox=2.0,
                  gamma=(0.7, 1.4), brightness=0.15)
    pair = aug.synthetic_pair(image, torch.from_numpy(labels.array.astype(np.int64))[None], spacing_mm=spacing,
                              generator=seeded_generator(seed, 1))
    moving = aug.intensity(pair["moving"], seeded_generator(seed, 2))  # a different contrast for the moving
    disp_true_ras_mm = geometry.disp_vox_to_ras_mm(pair["disp_true_vox"].numpy(), fixed.ijk_to_ras)
    to_image = lambda t, name, dtype: ImageData(array=t[0].numpy().astype(dtype), ijk_to_ras=fixed.ijk_to_ras, name=name)  # noqa: E731
    return (to_image(pair["fixed"], "fixed", np.float32), to_image(moving, "moving", np.float32),
            to_image(pair["moving_labels"], "moving_labels", np.int16), disp_true_ras_mm)


def endpoint_error_mm(disp_ras_mm: np.ndarray, disp_true_ras_mm: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Mean and 95th percentile of ``|u - u_true|`` (mm) over ``mask``; fields ``(K, J, I, 3)``."""
    err = np.linalg.norm(disp_ras_mm - disp_true_ras_mm, axis=-1)[mask]
    return {"epe_mean_mm": float(err.mean()), "epe_p95_mm": float(np.percentile(err, 95))}


def run(args: argparse.Namespace) -> int:
    from DeepRegAblationLib import exports
    from DeepRegAblationLib.imageio import write_image
    from DeepRegAblationLib.inference import register, resolve_device

    from DeepRegAblationTrainingLib.commands.register import _load_models, _model_sources

    start = time.perf_counter()
    resolve_device(args.device)
    prepare_out_dir(args.out)
    write_marker(args.out, demo=True, seed=args.seed)
    print(f"demo: MNI152 2009 T1 template (nilearn package data) at {args.spacing_mm:g} mm, known synthetic deformation", flush=True)
    template, template_labels = load_mni(args.spacing_mm)
    fixed, moving, moving_labels, disp_true = make_moving(template, template_labels, args.max_disp_mm, args.seed)
    fixed_labels = template_labels
    inputs = args.out / "inputs"
    for image in (fixed, moving, fixed_labels, moving_labels):
        write_image(inputs / f"{image.name}.nii.gz", image)
    exports.write_displacement_field(inputs / "known_displacement.nii.gz", disp_true, fixed.ijk_to_ras)
    brain = fixed_labels.array > 0
    print(f"      fixed {fixed.shape}, known displacement: max {np.linalg.norm(disp_true, axis=-1).max():.1f} mm, "
          f"mean in brain {np.linalg.norm(disp_true, axis=-1)[brain].mean():.1f} mm", flush=True)

    models = _load_models(_model_sources(args.model, list(VARIANT_IDS), 3), 3)
    runs = [(v, v, 0) for v in VARIANT_IDS]
    if args.refine not in ("off", 0):
        suffix = f"+refine{args.refine}" if isinstance(args.refine, int) else f"+refine-{args.refine}"
        runs.append((VARIANT_IDS[-1] + suffix, VARIANT_IDS[-1], args.refine))
    results, errors = [], {"identity": endpoint_error_mm(np.zeros_like(disp_true), disp_true, brain)}
    for index, (name, variant, refine) in enumerate(runs, 1):
        print(f"[{index}/{len(runs)}] {name}", flush=True)
        result = register(fixed, moving, models[variant], fixed_labels=fixed_labels, moving_labels=moving_labels,
                          refine=refine, device=args.device)
        result.variant = name
        errors[name] = endpoint_error_mm(result.disp_ras_mm, disp_true, brain)
        write_variant_outputs(args.out / name, fixed, moving, result)
        results.append(result)
    write_summary(args.out, fixed, moving, results, extra_columns=errors)
    print(f"\nbefore registration (identity): mean endpoint error {errors['identity']['epe_mean_mm']:.2f} mm, "
          f"p95 {errors['identity']['epe_p95_mm']:.2f} mm")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {args.out}")
    return 0
