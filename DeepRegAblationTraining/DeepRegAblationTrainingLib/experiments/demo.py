"""The main job (``deepreg-ablation demo``): the MNI152 template against itself deformed by a known field.

The fixed image is the MNI152 2009 T1 template that the nilearn wheel ships in its package data
(read by path, no download), resampled (:func:`load_mni`), with grey/white-matter labels from the
tissue maps shipped beside it. The moving image is the template deformed by a known random smooth
field with a small rotation and translation, then given other intensities (:func:`make_moving`).
Every variant registers the pair, and so does the last one again with instance refinement
(:func:`run_demo`); the table adds the error against the known displacement
(``evaluation.endpoint_error_stats_mm``: mean and 95th percentile in mm inside the brain).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from DeepRegAblationLib.options import VARIANT_IDS
from DeepRegAblationLib.progress import step_line

__all__ = ["DEMO_SPACING_MM", "load_mni", "make_moving", "run_demo"]

DEMO_SPACING_MM = 2.0
"""Grid spacing of the demo's pair: the shipped 3D models' spacing."""


def load_mni(spacing_mm: float = DEMO_SPACING_MM):
    """The template and its tissue label map (1 grey, 2 white matter) resampled to ``spacing_mm``."""
    from DeepRegAblationLib import geometry, resampling
    from DeepRegAblationLib.imageio import ImageData

    from ..data import load_mni_template

    template = load_mni_template(ndim=3, with_labels=True)
    t1, labels = template["image"], template["labels"]
    scale = spacing_mm / geometry.spacing_from_matrix(t1.ijk_to_ras)
    ijk_to_ras = t1.ijk_to_ras.copy()
    ijk_to_ras[:3, :3] = t1.ijk_to_ras[:3, :3] * scale[None, :]
    shape = tuple(int(np.floor((n - 1) / s)) + 1 for n, s in zip(t1.array.shape, scale[::-1]))

    def resample(image, mode, dtype, name):
        array = resampling.resample_to_grid(image.array, image.ijk_to_ras, ijk_to_ras, shape, mode=mode)
        return ImageData(array=array.astype(dtype), ijk_to_ras=ijk_to_ras, name=name)

    return (resample(t1, "linear", np.float32, "mni152_t1"),
            resample(labels, "nearest", np.int16, "mni152_tissue_labels"))


def make_moving(fixed, labels, max_disp_mm: float, seed: int):
    """Moving image, moving labels and the known displacement (RAS mm, fixed -> moving) on the fixed grid."""
    import torch

    from DeepRegAblationLib import geometry
    from DeepRegAblationLib.imageio import ImageData

    from ..augment import Augment, seeded_generator

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


def run_demo(out: Path, refine: Union[int, str] = "recommended", max_disp_mm: float = 8.0, seed: int = 0,
             model: Optional[Path] = None, device: str = "auto",
             spacing_mm: float = DEMO_SPACING_MM) -> Dict[str, Dict[str, float]]:
    """Write the demo's inputs and every variant's results into ``out`` and print the table.

    ``refine``: the schedule of the extra refined run of the last variant (``0`` / ``"off"``: none);
    ``model``: a folder of ``<variant>.pt`` 3D checkpoints (default: the shipped models). Returns
    the end-point errors ``{run name or "identity": {"epe_mean_mm", "epe_p95_mm"}}``.
    """
    from DeepRegAblationLib.registration.devices import resolve_device

    from ..register_outputs import prepare_out_dir, write_marker

    resolve_device(device)
    prepare_out_dir(out)
    write_marker(out, demo=True, seed=seed)
    print(f"demo: MNI152 2009 T1 template (nilearn package data) at {spacing_mm:g} mm, known synthetic deformation", flush=True)
    template, template_labels = load_mni(spacing_mm)
    fixed, moving, moving_labels, disp_true = make_moving(template, template_labels, max_disp_mm, seed)
    _write_inputs(out / "inputs", fixed, moving, template_labels, moving_labels, disp_true)
    brain = template_labels.array > 0
    print(f"      fixed {fixed.shape}, known displacement: max {np.linalg.norm(disp_true, axis=-1).max():.1f} mm, "
          f"mean in brain {np.linalg.norm(disp_true, axis=-1)[brain].mean():.1f} mm", flush=True)
    return _register_runs(out, fixed, moving, template_labels, moving_labels, disp_true, brain, refine, model, device)


def _write_inputs(folder: Path, fixed, moving, fixed_labels, moving_labels, disp_true: np.ndarray) -> None:
    """The pair, its label maps and the known displacement (an ITK field) in ``folder``."""
    from DeepRegAblationLib.outputs import exports
    from DeepRegAblationLib.imageio import write_image

    for image in (fixed, moving, fixed_labels, moving_labels):
        write_image(folder / f"{image.name}.nii.gz", image)
    exports.write_displacement_field(folder / "known_displacement.nii.gz", disp_true, fixed.ijk_to_ras)


def _register_runs(out: Path, fixed, moving, fixed_labels, moving_labels, disp_true: np.ndarray, brain: np.ndarray,
                   refine: Union[int, str], model: Optional[Path], device: str) -> Dict[str, Dict[str, float]]:
    """Every variant (and the refined run) on the pair: outputs, the summary table and the end-point errors."""
    from DeepRegAblationLib.registration.pipeline import register

    from ..evaluation.endpoint_error import endpoint_error_stats_mm
    from ..register_job import load_models
    from ..register_outputs import write_summary, write_variant_outputs

    models = load_models(model, list(VARIANT_IDS), 3)
    runs = [(v, v, 0) for v in VARIANT_IDS]
    if refine not in ("off", 0):
        suffix = f"+refine{refine}" if isinstance(refine, int) else f"+refine-{refine}"
        runs.append((VARIANT_IDS[-1] + suffix, VARIANT_IDS[-1], refine))
    results, errors = [], {"identity": endpoint_error_stats_mm(np.zeros_like(disp_true), disp_true, brain)}
    for index, (name, variant, run_refine) in enumerate(runs, 1):
        print(step_line(index, len(runs), name), flush=True)
        result = register(fixed, moving, models[variant], fixed_labels=fixed_labels, moving_labels=moving_labels,
                          refine=run_refine, device=device)
        result.variant = name
        errors[name] = endpoint_error_stats_mm(result.disp_ras_mm, disp_true, brain)
        write_variant_outputs(out / name, fixed, moving, result)
        results.append(result)
    write_summary(out, fixed, moving, results, extra_columns=errors)
    return errors
