"""Registration of physical images: :func:`register` and :func:`result_from_mapping`.

Pipeline of :func:`register` (every array in numpy axis order ``(K, J, I)``, RAS mm):

1. validate the inputs (NaN, empty, vector, 2D/3D against the model, physical overlap);
2. the **model grid**: the checkpoint's ``preprocessing`` ``{"spacing_mm", "shape"}`` (tensor
   axis order) centred on the fixed image (``geometry.model_grid_for``), with the axes the model
   was trained on: ``preprocessing["orientation"] == "RAS"`` (3D models trained on volumes
   reoriented to RAS) gives a grid axis-aligned with RAS, ``(K, J, I) = (S, A, R)``; otherwise
   (2D models, older checkpoints, untrained networks) the fixed image's own axes. Without that
   metadata the fixed spacing and the fixed extent padded up to the network's size multiple
   (16), aligned with the fixed voxels where possible so that no interpolation happens
   (``registration.model_grid``);
3. both images normalised (robust 1-99 percentiles to [0, 1]) and resampled onto the model grid
   through their physical positions (any spacing, orientation, oblique matrices);
4. the network (optionally followed by ``registration.refine.refine``);
5. back to the **full-resolution fixed grid**: the affine part exactly, as a 4x4 RAS matrix
   from ``affine_matrix_vox``; the deformable part ``u_def`` (RAS mm) linearly interpolated from
   the model grid; total mapping ``q(p) = A (p + u_def(p))``, ``disp_ras_mm = q - p``;
6. the warped image by ONE interpolation of the ORIGINAL moving image at ``q(p)`` (labels by
   nearest neighbour), zero outside the moving image (``sitk.Resample`` semantics);
7. Jacobian determinant of ``q`` and ``metrics.registration_metrics`` (intensities normalised
   as in step 3, so ``mse`` is comparable between images).

Step 5's total field is computed here (slab by slab); steps 6 and 7 are ``mapping.result_from_mapping``, the
common end of every method.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .. import geometry, resampling
from ..imageio import ImageData, as_image, intensity_window, normalize_intensity, validate_image
from ..models.resolve import resolve_model
from ..options import ALIGNMENT_CHOICES
from . import refine as refinement
from .alignment import center_of_mass_alignment, decide_initial_alignment
from .devices import resolve_device, run_with_cpu_fallback
from .input_warnings import input_features, input_warnings, warn_inputs
from .mapping import Window, result_from_mapping
from .memory import check_memory
from .model_grid import model_grid_spec, model_orientation, model_size_multiple
from .refine import RefineSchedule, refine_schedule
from .result import RegistrationResult

__all__ = ["register", "refine_without_network", "check_dimension"]

PathLike = Union[str, Path]
Progress = Optional[Callable[[float, str], None]]


def register(
    fixed: Union[ImageData, PathLike],
    moving: Union[ImageData, PathLike],
    model: Any = "baseline",
    fixed_labels: Union[ImageData, PathLike, None] = None,
    moving_labels: Union[ImageData, PathLike, None] = None,
    refine: Union[int, str, RefineSchedule, None] = 0,
    device: Union[str, torch.device] = "auto",
    progress: Progress = None,
    initial_alignment: str = "auto",
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with one model; results on the full-resolution fixed grid.

    Args:
        fixed, moving: scalar images (``ImageData`` or file paths), any grids / orientations,
            overlapping in physical space. Single-slice images need a 2D model, volumes a 3D one.
        model: a variant id (untrained network), a checkpoint path or a ``RegistrationModel``
            (``models.resolve.resolve_model``).
        fixed_labels, moving_labels: optional integer label maps, each on any grid in the space
            of its image (fixed labels are resampled onto the fixed grid by nearest neighbour,
            an exact copy when the grids are the same).
        refine: instance optimisation after the network (``registration.refine.refine``): ``0`` / ``"off"``
            (none), ``"recommended"`` (fast: affine at 8 and 4 mm, deformable at 8, 4 and 2 mm), ``"thorough"``
            (down to 1 mm or the fixed image's resolution) or an iteration count per level. After a trained
            network the levels coarser than its grid are skipped, each level stops once its loss flattens and,
            except with ``"thorough"``, the network's field is kept at its own resolution with a residual composed
            with it, at most ``refine.NETWORK_KEPT_ITERATIONS`` steps per level for ``"recommended"``
            (``refine.network_start_schedule``); a :class:`~.refine.RefineSchedule` is run as given.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"`` (``ValueError`` without CUDA).
            CUDA out-of-memory falls back to the CPU with a warning.
        progress: ``progress(fraction, message)``.
        initial_alignment: ``"none"`` (the images as they lie in physical space) or ``"com"``: first
            translate the moving image so that its intensity centre of mass (1-99 percentile
            normalised intensities) falls on the fixed image's, as classical tools initialise
            inter-subject registration; the translation is part of ``affine_ras``. ``"auto"``
            (default): what the checkpoint was trained with (``preprocessing["initial_alignment"]``,
            ``"com"`` for the shipped 3D models); for a checkpoint that does not record it,
            ``alignment.decide_initial_alignment`` (centres of mass for 3D pairs far apart). A checkpoint
            trained on grids centred on each brain's centre of mass (``preprocessing["center"] == "com"``)
            also gets its model grid centred on the fixed image's centre of mass.

    Returns:
        :class:`RegistrationResult` (see the module docstring for the pipeline). Its ``warnings`` name inputs
        outside what the models know (``input_warnings``: a field of view far from a brain's, inverted or
        foreign contrast, little overlap after alignment), each also emitted as an ``InputWarning``.
    """
    report = progress or (lambda fraction, message: None)
    timings: Dict[str, float] = {}
    t_start = time.perf_counter()
    names = _input_names(fixed, moving, fixed_labels, moving_labels)
    fixed = as_image(fixed, "fixed")
    moving = as_image(moving, "moving")
    fixed_labels = as_image(fixed_labels, "fixed_labels", kind="labels")
    moving_labels = as_image(moving_labels, "moving_labels", kind="labels")
    timings["read"] = time.perf_counter() - t_start
    _check_images(fixed, moving, fixed_labels, moving_labels, initial_alignment)
    schedule = refine_schedule(refine)  # ValueError before any work
    check_memory(fixed, moving, fixed_labels is not None and moving_labels is not None, schedule)  # before any large array
    torch_device = resolve_device(device)
    loaded = resolve_model(model, 2 if fixed.is_2d else 3)
    net, preprocessing = loaded.model, loaded.preprocessing
    ndim = int(net.ndim)
    check_dimension(fixed, names["fixed"], ndim)
    check_dimension(moving, names["moving"], ndim)
    initial_alignment = _choose_alignment(initial_alignment, preprocessing, ndim, fixed, moving, report)
    _check_overlaps(fixed, moving, fixed_labels, moving_labels, names, initial_alignment)
    variant_id = net.variant.id if hasattr(net, "variant") else str(model)

    t0 = time.perf_counter()
    report(0.05, "resampling onto the model grid")
    inputs = _model_inputs(fixed, moving, ndim, model_size_multiple(net), preprocessing, initial_alignment)
    timings["resample"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report(0.2, f"running {variant_id} on {torch_device.type}")
    affine_ras, deform_ras, used_device = _run_network(net, inputs, torch_device, timings, t0)
    deform_grid = inputs.grid_ijk_to_ras
    if schedule is not None and loaded.trained and not isinstance(refine, RefineSchedule):
        # a trained network resolved the levels coarser than its grid: start there (refine.network_start_schedule)
        spacing = geometry.spacing_from_matrix(inputs.grid_ijk_to_ras)[: 2 if ndim == 2 else 3]
        schedule = refinement.network_start_schedule(schedule, float(min(spacing)))
    if schedule is not None:
        affine_ras, deform_ras, deform_grid = _refine_network_output(
            fixed, moving, inputs, affine_ras, deform_ras, schedule, used_device, report, timings)

    inputs.fixed_norm = inputs.moving_norm = None  # full-resolution copies not needed any more
    t0 = time.perf_counter()
    report(0.75, "computing the full-resolution field and the warped image")
    disp_ras = _full_resolution_displacement(fixed, affine_ras, deform_ras, deform_grid)
    timings["upsample"] = time.perf_counter() - t0
    report(0.85, "warped image, Jacobian and metrics")
    result = result_from_mapping(variant_id, fixed, moving, affine_ras, disp_ras, fixed_labels, moving_labels,
                                 timings, t_start, windows=inputs.windows)
    result.warnings = _warnings_about_inputs(fixed, moving, result, inputs.windows)
    report(1.0, "done")
    return result


def refine_without_network(
    fixed: Union[ImageData, PathLike],
    moving: Union[ImageData, PathLike],
    fixed_labels: Union[ImageData, PathLike, None] = None,
    moving_labels: Union[ImageData, PathLike, None] = None,
    refine: Union[int, str, RefineSchedule] = "recommended",
    device: Union[str, torch.device] = "cpu",
    progress: Progress = None,
) -> RegistrationResult:
    """The instance refinement alone, from the centre-of-mass translation (no network): the reference that
    a network's start must beat. The same inputs, checks and final steps as :func:`register`
    (``variant`` ``"com+refine"``; ``metrics["runtime_s"]`` from the images in memory to the warped image)."""
    report = progress or (lambda fraction, message: None)
    t_start = time.perf_counter()
    fixed, moving = as_image(fixed, "fixed"), as_image(moving, "moving")
    fixed_labels = as_image(fixed_labels, "fixed_labels", kind="labels")
    moving_labels = as_image(moving_labels, "moving_labels", kind="labels")
    _check_images(fixed, moving, fixed_labels, moving_labels, "com")
    schedule = refine_schedule(refine)
    if schedule is None:
        raise ValueError(f"refine_without_network needs a refinement schedule, got {refine!r}")
    check_memory(fixed, moving, fixed_labels is not None and moving_labels is not None, schedule)  # before any large array
    windows = (intensity_window(fixed.array), intensity_window(moving.array))
    fixed_norm = ImageData(normalize_intensity(fixed.array, window=windows[0]), fixed.ijk_to_ras, "fixed")
    moving_norm = ImageData(normalize_intensity(moving.array, window=windows[1]), moving.ijk_to_ras, "moving")
    start = center_of_mass_alignment(fixed, moving, fixed_norm.array, moving_norm.array)
    geometry.check_overlap(fixed, ImageData(moving.array, np.linalg.inv(start) @ moving.ijk_to_ras, moving.name))
    t0 = time.perf_counter()
    refined = refinement.refine(fixed_norm, moving_norm, start, schedule=schedule, device=resolve_device(device),
                                progress=lambda f, m: report(0.8 * f, m))
    timings = dict(refined.timings, refine=time.perf_counter() - t0)
    fixed_norm = moving_norm = None  # full-resolution copies not needed any more
    disp_ras = _full_resolution_displacement(fixed, refined.affine_ras, refined.deform_ras, refined.grid_ijk_to_ras)
    report(0.85, "warped image, Jacobian and metrics")
    result = result_from_mapping("com+refine", fixed, moving, refined.affine_ras, disp_ras, fixed_labels,
                                 moving_labels, timings, t_start, windows=windows)
    result.warnings = _warnings_about_inputs(fixed, moving, result, windows)
    report(1.0, "done")
    return result


def _warnings_about_inputs(fixed: ImageData, moving: ImageData, result: RegistrationResult,
                           windows: Tuple[Window, Window]) -> List[str]:
    """Inputs outside what the models know (``input_warnings``), each also emitted as an ``InputWarning``."""
    features = input_features(fixed, moving, result.warped, result.metrics["ncc"], windows)
    messages = input_warnings(features, fixed, moving)
    warn_inputs(messages, result.variant)
    return messages


# --------------------------------------------------------------------------- input checks
def _input_names(fixed: Any, moving: Any, fixed_labels: Any, moving_labels: Any) -> Dict[str, str]:
    """The name of each input in messages: the argument, and its file when it was given as a path."""
    return {key: f"{key} {value}" if isinstance(value, (str, os.PathLike)) else key for key, value in (
        ("fixed", fixed), ("moving", moving), ("fixed_labels", fixed_labels), ("moving_labels", moving_labels))}


def _check_images(fixed: ImageData, moving: ImageData, fixed_labels: Optional[ImageData],
                  moving_labels: Optional[ImageData], initial_alignment: str) -> None:
    """Every image valid, neither intensity image constant, ``initial_alignment`` a known choice; a warning
    when only one label map was given (the label metrics are skipped)."""
    for image, name in ((fixed, "fixed"), (moving, "moving"), (fixed_labels, "fixed_labels"), (moving_labels, "moving_labels")):
        if image is not None:
            validate_image(image, name)
    for image, name in ((fixed, "fixed"), (moving, "moving")):
        if float(np.max(image.array)) == float(np.min(image.array)):
            raise ValueError(
                f"{name} is constant (every voxel is {float(np.min(image.array))}, shape {image.shape}): nothing to register"
            )
    if (fixed_labels is None) != (moving_labels is None):  # stacklevel: the caller of register()
        warnings.warn("only one of fixed_labels / moving_labels was given: label metrics are skipped", stacklevel=3)
    if initial_alignment not in ALIGNMENT_CHOICES:
        raise ValueError(f"initial_alignment must be one of {list(ALIGNMENT_CHOICES)}, got {initial_alignment!r}")


def check_dimension(image: ImageData, name: str, ndim: int) -> None:
    """``ValueError`` unless ``image`` suits a ``ndim``-D model (single-slice images for 2D models, volumes
    of at least 2 voxels along every axis for 3D ones); ``name`` names the image."""
    if ndim == 2 and not image.is_2d:
        raise ValueError(
            f"{name} is a 3D image (shape {image.shape}) but the model is 2D; "
            f"a 2D model registers single-slice images (1, J, I)"
        )
    if ndim == 3 and image.is_2d:
        raise ValueError(
            f"{name} is a 2D image (single slice, shape {image.shape}) but the model is 3D; "
            f"use a 2D model or a 3D image"
        )
    if ndim == 3 and min(image.shape) < 2:
        raise ValueError(f"{name} needs at least 2 voxels along every axis for a 3D model, got shape {image.shape}")


def _choose_alignment(initial_alignment: str, preprocessing: Optional[dict], ndim: int, fixed: ImageData,
                      moving: ImageData, report: Callable[[float, str], None]) -> str:
    """``"com"`` or ``"none"``: ``initial_alignment`` itself, or for ``"auto"`` what the model was trained
    with, else (a checkpoint that does not say) centres of mass when the volumes lie far apart."""
    if initial_alignment != "auto":
        return initial_alignment
    trained_with = (preprocessing or {}).get("initial_alignment") if ndim == 3 else "none"
    if trained_with in ("com", "none"):
        report(0.02, f"initial alignment {trained_with}: what the model was trained with")
        return str(trained_with)
    decision = decide_initial_alignment(fixed, moving, "auto")
    report(0.02, decision.reason)
    return decision.initial_alignment


def _check_overlaps(fixed: ImageData, moving: ImageData, fixed_labels: Optional[ImageData],
                    moving_labels: Optional[ImageData], names: Dict[str, str], initial_alignment: str) -> None:
    """Each label map overlaps its image, and (without a centre-of-mass translation, which is checked
    after it) the moving image overlaps the fixed one, in physical space."""
    if initial_alignment == "none":  # with "com" the overlap is checked after the translation
        geometry.check_overlap(fixed, moving, names["fixed"], names["moving"])
    if fixed_labels is not None:
        geometry.check_overlap(fixed, fixed_labels, names["fixed"], names["fixed_labels"])
    if moving_labels is not None:
        geometry.check_overlap(moving, moving_labels, names["moving"], names["moving_labels"])


# --------------------------------------------------------------------------- model grid and network
@dataclass
class _ModelInputs:
    """Both images normalised, and resampled onto the model grid as the network sees them.

    ``initial_ras`` (fixed-space point -> moving point) is applied after the model's mapping;
    ``fixed_grid`` / ``moving_grid`` are dropped once the network has run.
    """

    fixed_norm: np.ndarray
    moving_norm: np.ndarray
    windows: Tuple[Window, Window]
    grid_ijk_to_ras: np.ndarray
    initial_ras: np.ndarray
    fixed_grid: Optional[np.ndarray]
    moving_grid: Optional[np.ndarray]


def _model_inputs(fixed: ImageData, moving: ImageData, ndim: int, size_multiple: int, preprocessing: Optional[dict],
                  initial_alignment: str) -> _ModelInputs:
    """Normalise both images (1-99 percentiles), place the model grid and resample both onto it (the
    moving image as seen through the initial alignment)."""
    spacing_mm, shape = model_grid_spec(fixed, ndim, size_multiple, preprocessing)
    fixed_window = intensity_window(fixed.array)
    moving_window = intensity_window(moving.array)
    fixed_norm = normalize_intensity(fixed.array, window=fixed_window)
    moving_norm = normalize_intensity(moving.array, window=moving_window)
    grid_centre = None
    if ndim == 3 and (preprocessing or {}).get("center") == "com":  # as the model saw its training grids
        grid_centre = geometry.center_of_mass_ras(fixed_norm, fixed.ijk_to_ras)
    grid_ijk_to_ras, grid_shape = geometry.model_grid_for(
        fixed, spacing_mm, shape, orientation=model_orientation(preprocessing, ndim), center_ras=grid_centre
    )
    # fixed-space point -> moving point, applied after the model's mapping
    initial_ras = np.eye(4)
    if initial_alignment == "com":
        initial_ras = center_of_mass_alignment(fixed, moving, fixed_norm, moving_norm)
        geometry.check_overlap(fixed, ImageData(moving.array, np.linalg.inv(initial_ras) @ moving.ijk_to_ras, moving.name))
    fixed_grid = resampling.resample_to_grid(fixed_norm, fixed.ijk_to_ras, grid_ijk_to_ras, grid_shape)
    moving_grid = resampling.resample_to_grid(  # the moving image as seen through the initial alignment
        moving_norm, np.linalg.inv(initial_ras) @ moving.ijk_to_ras, grid_ijk_to_ras, grid_shape
    )
    if ndim == 2:
        fixed_grid, moving_grid = fixed_grid[0], moving_grid[0]
    return _ModelInputs(fixed_norm, moving_norm, (fixed_window, moving_window), grid_ijk_to_ras, initial_ras,
                        fixed_grid, moving_grid)


def _run_model(
    model: torch.nn.Module, moving: np.ndarray, fixed: np.ndarray, device: torch.device
) -> Tuple[Dict[str, torch.Tensor], torch.device]:
    """Forward pass on ``device``; on CUDA out-of-memory warn and fall back to the CPU."""

    def forward(dev: torch.device) -> Dict[str, torch.Tensor]:
        model.to(dev)
        moving_t = torch.from_numpy(moving)[None, None].to(dev)
        fixed_t = torch.from_numpy(fixed)[None, None].to(dev)
        with torch.no_grad():
            return model(moving_t, fixed_t)

    return run_with_cpu_fallback(forward, device, f"model input {moving.shape}")


def _run_network(net: torch.nn.Module, inputs: _ModelInputs, device: torch.device, timings: Dict[str, float],
                 t0: float) -> Tuple[np.ndarray, torch.Tensor, torch.device]:
    """The network on the model grid (eval mode, its mode restored after) -> ``(affine_ras (4, 4), deformable
    part (3, K, J, I) RAS mm on the model grid, the device it ran on)``; ``timings["model"]`` from ``t0``."""
    was_training = net.training
    net.eval()
    try:
        outputs, used_device = _run_model(net, inputs.moving_grid, inputs.fixed_grid, device)
        timings["model"] = time.perf_counter() - t0
    finally:
        net.train(was_training)
    grid_ijk_to_ras = inputs.grid_ijk_to_ras
    affine_ras = inputs.initial_ras @ geometry.matrix_vox_to_ras(outputs["affine_matrix_vox"][0], grid_ijk_to_ras)
    deform_ras = geometry.disp_vox_to_ras(outputs["deform_disp_vox"][0], grid_ijk_to_ras)
    inputs.fixed_grid = inputs.moving_grid = None  # the model-grid tensors are not needed any more
    return affine_ras, deform_ras, used_device


def _refine_network_output(fixed: ImageData, moving: ImageData, inputs: _ModelInputs, affine_ras: np.ndarray,
                           deform_ras: torch.Tensor, schedule: RefineSchedule, device: torch.device,
                           report: Callable[[float, str], None],
                           timings: Dict[str, float]) -> Tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """``registration.refine.refine`` from the network's mapping -> ``(affine_ras, deformable part, its grid)``."""
    t0 = time.perf_counter()
    report(0.3, f"refining ({schedule.name})")
    refined = refinement.refine(
        ImageData(inputs.fixed_norm, fixed.ijk_to_ras, "fixed"), ImageData(inputs.moving_norm, moving.ijk_to_ras, "moving"),
        affine_ras, deform_ras, inputs.grid_ijk_to_ras, schedule, device=device,
        progress=lambda f, m: report(0.3 + 0.45 * f, m),
    )
    timings.update(refined.timings)
    timings["refine"] = time.perf_counter() - t0
    return refined.affine_ras, refined.deform_ras, refined.grid_ijk_to_ras


def _full_resolution_displacement(fixed: ImageData, affine_ras: np.ndarray, deform_ras: torch.Tensor,
                                  deform_grid: np.ndarray) -> np.ndarray:
    """The total displacement ``(K, J, I, 3)`` float32 RAS mm on the fixed grid: the deformable part interpolated
    linearly from its grid (border values extended), then the affine part exactly; one slab at a time
    (``resampling.slabs``: the same values as on the whole grid at once, in bounded working memory)."""
    shape = tuple(fixed.shape)
    volume = deform_ras.numpy()
    out = np.empty(shape + (3,), dtype=np.float32)
    for k0, k1 in resampling.slabs(shape):
        part = torch.from_numpy(resampling.resample_channels(
            volume, deform_grid, fixed.ijk_to_ras, shape, mode="linear", fill_value=None, k_range=(k0, k1)
        ))  # (3, k1 - k0, J, I) RAS mm on the fixed grid; the field extends its border values
        total = geometry.affine_after_displacement(affine_ras, part, fixed.ijk_to_ras, k_start=k0)
        out[k0:k1] = np.moveaxis(total.numpy(), 0, -1)
    return out
