"""Registration of physical images: :func:`register`, instance refinement and :class:`RegistrationResult`.

Pipeline of :func:`register` (every array in numpy axis order ``(K, J, I)``, RAS mm):

1. validate the inputs (NaN, empty, vector, 2D/3D against the model, physical overlap);
2. the **model grid**: the checkpoint's ``preprocessing`` ``{"spacing_mm", "shape"}`` (tensor
   axis order) centred on the fixed image (``geometry.model_grid_for``), with the axes the model
   was trained on: ``preprocessing["orientation"] == "RAS"`` (3D models trained on volumes
   reoriented to RAS) gives a grid axis-aligned with RAS, ``(K, J, I) = (S, A, R)``; otherwise
   (2D models, older checkpoints, untrained networks) the fixed image's own axes. Without that
   metadata the fixed spacing and the fixed extent padded up to the network's size multiple
   (16), aligned with the fixed voxels where possible so that no interpolation happens;
3. both images normalised (robust 1-99 percentiles to [0, 1]) and resampled onto the model grid
   through their physical positions (any spacing, orientation, oblique matrices);
4. the network (optionally followed by :func:`refine`);
5. back to the **full-resolution fixed grid**: the affine part exactly, as a 4x4 RAS matrix
   from ``affine_matrix_vox``; the deformable part ``u_def`` (RAS mm) linearly interpolated from
   the model grid; total mapping ``q(p) = A (p + u_def(p))``, ``disp_ras_mm = q - p``;
6. the warped image by ONE interpolation of the ORIGINAL moving image at ``q(p)`` (labels by
   nearest neighbour), zero outside the moving image (``sitk.Resample`` semantics);
7. Jacobian determinant of ``q`` and ``metrics.registration_metrics`` (intensities normalised
   as in step 3, so ``mse`` is comparable between images).

Steps 5 to 7 work on whole grids in float32 (``geometry.affine_on_grid`` /
``geometry.sample_voxels``): voxel positions are computed in float64 per axis and rounded
once, grids that share their voxel lattice are copied without interpolation, and voxels that
land exactly on moving voxels get their values exactly.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from . import fields, geometry
from .imageio import ImageData, as_image, intensity_window, normalize_intensity, validate_image

PathLike = Union[str, Path]
Progress = Optional[Callable[[float, str], None]]

RESULT_FORMAT = "deepreg-ablation-result/1"
MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
"""Shipped weights: ``<MODELS_DIR>/<ndim>d/<variant>.pt``."""
REFINE_LR = 0.01
"""Default Adam step of :func:`refine`, in voxels of the model grid."""
INITIAL_ALIGNMENTS = ("none", "com")
"""``register(initial_alignment=...)``: physical space as is, or centres of mass translated together."""


# --------------------------------------------------------------------------- result
@dataclass
class RegistrationResult:
    """Everything one registration produced, on the full-resolution FIXED grid.

    Attributes:
        variant: variant id of the model.
        fixed_ijk_to_ras: ``(4, 4)`` grid of every array below.
        warped: ``(K, J, I)`` float32, the original moving image at ``p + u(p)``.
        warped_labels: ``(K, J, I)`` int32 (nearest neighbour), or ``None``.
        affine_ras: ``(4, 4)`` affine part, fixed RAS point -> moving RAS point.
        disp_ras_mm: ``(K, J, I, 3)`` float32 total displacement, RAS mm: fixed ``p`` -> moving ``p + u(p)``.
        deform_disp_ras_mm: ``(K, J, I, 3)`` float32 deformable part: moving point ``= affine_ras(p + u_def(p))``.
        jacobian: ``(K, J, I)`` float32 determinant of the Jacobian of the total mapping.
        metrics: ``metrics.registration_metrics`` keys plus ``runtime_s``.
        timings: seconds per stage (``read``, ``resample``, ``model``, ``refine``, ``upsample``, ``metrics``).
    """

    variant: str
    fixed_ijk_to_ras: np.ndarray
    warped: np.ndarray
    warped_labels: Optional[np.ndarray]
    affine_ras: np.ndarray
    disp_ras_mm: np.ndarray
    deform_disp_ras_mm: np.ndarray
    jacobian: np.ndarray
    metrics: Dict[str, float] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)

    _ARRAYS = ("fixed_ijk_to_ras", "warped", "affine_ras", "disp_ras_mm", "deform_disp_ras_mm", "jacobian")

    def save(self, path: PathLike) -> Path:
        """Write a compressed ``.npz`` (no pickled objects; metrics/timings as JSON text). Atomic."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.asarray(getattr(self, name)) for name in self._ARRAYS}
        if self.warped_labels is not None:
            arrays["warped_labels"] = np.asarray(self.warped_labels)
        arrays["format"] = np.array(RESULT_FORMAT)
        arrays["variant"] = np.array(self.variant)
        arrays["metrics_json"] = np.array(json.dumps({k: float(v) for k, v in self.metrics.items()}))
        arrays["timings_json"] = np.array(json.dumps({k: float(v) for k, v in self.timings.items()}))
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=str(path.parent))
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez_compressed(handle, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: PathLike) -> "RegistrationResult":
        """Read a file written by :meth:`save` (``allow_pickle=False``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"registration result file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != RESULT_FORMAT:
                raise ValueError(f"{path} is not a DeepRegAblation registration result ({RESULT_FORMAT})")
            return cls(
                variant=str(data["variant"]),
                warped_labels=data["warped_labels"] if "warped_labels" in data.files else None,
                metrics=json.loads(str(data["metrics_json"])),
                timings=json.loads(str(data["timings_json"])),
                **{name: data[name] for name in cls._ARRAYS},
            )

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.warped.shape)


# --------------------------------------------------------------------------- models and devices
def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU. ``"cuda"`` without CUDA -> ``ValueError``."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available here; use 'cpu' or 'auto'")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return resolved


def shipped_model_path(variant: str, ndim: int) -> Optional[Path]:
    """The shipped weights ``Resources/Models/<ndim>d/<variant>.pt`` when present, else ``None``."""
    path = MODELS_DIR / f"{int(ndim)}d" / f"{variant}.pt"
    return path if path.is_file() else None


def _variant_ids() -> Tuple[str, ...]:
    from .variants import VARIANTS

    return tuple(VARIANTS)


def load_registration_model(model: Any, ndim: int) -> Tuple[torch.nn.Module, Optional[dict], bool]:
    """Resolve ``model`` (variant id, checkpoint path or model) -> ``(model, preprocessing, trained)``.

    A variant id gives an untrained network (``trained=False``) of dimension ``ndim``; a path
    is loaded with ``checkpoints.load_checkpoint`` / ``checkpoints.load_model`` and gets the
    checkpoint's ``preprocessing`` as an attribute; a model object is used as is (its
    ``preprocessing`` attribute, if any, is honoured).
    """
    from .networks import RegistrationModel, build_model

    if isinstance(model, torch.nn.Module):
        if not isinstance(model, RegistrationModel) and not hasattr(model, "ndim"):
            raise ValueError(f"model must be a RegistrationModel, got {type(model).__name__}")
        return model, getattr(model, "preprocessing", None), True
    if isinstance(model, str) and model in _variant_ids():
        return build_model(model, ndim), None, False
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(
                f"model must be a variant id {list(_variant_ids())} or a checkpoint file; not found: {path}"
            )
        from . import checkpoints

        checkpoint = checkpoints.load_checkpoint(path)
        loaded = checkpoints.load_model(path)  # strict weights, architecture checks
        preprocessing = checkpoint.get("preprocessing") if isinstance(checkpoint, dict) else None
        loaded.preprocessing = preprocessing  # travels with the model (register() honours it)
        return loaded, preprocessing, True
    raise ValueError(
        f"model must be a variant id {list(_variant_ids())}, a checkpoint path or a RegistrationModel, "
        f"got {type(model).__name__}"
    )


def _model_size_multiple(model: torch.nn.Module) -> int:
    multiple = getattr(model, "size_multiple", None)
    if multiple is None:
        arch = getattr(model, "arch", {}) or {}
        multiple = 2 ** len(arch.get("enc_features", (0,) * 4))
    return int(multiple)


def model_orientation(preprocessing: Optional[dict], ndim: int) -> str:
    """Axes of the model grid (``geometry.MODEL_ORIENTATIONS``) a checkpoint's ``preprocessing`` asks for.

    ``"RAS"`` for a 3D model whose ``preprocessing["orientation"]`` is ``"RAS"`` (trained on
    volumes reoriented to RAS); ``"native"`` otherwise: 2D models keep the image axes in
    training and in use, and checkpoints without the entry predate it.
    """
    orientation = (preprocessing or {}).get("orientation")
    if orientation is None:
        return "native"
    if orientation not in geometry.MODEL_ORIENTATIONS:
        raise ValueError(
            f"checkpoint preprocessing orientation must be one of {list(geometry.MODEL_ORIENTATIONS)}, got {orientation!r}"
        )
    return "RAS" if orientation == "RAS" and int(ndim) == 3 else "native"


def model_grid_spec(
    fixed: ImageData, ndim: int, size_multiple: int, preprocessing: Optional[dict] = None
) -> Tuple[List[float], List[int]]:
    """Model spacing (mm) and shape in tensor axis order (``ndim`` entries each).

    From ``preprocessing["spacing_mm"]`` / ``["shape"]`` when given (``None`` entries fall back);
    the default spacing is the fixed spacing, the default shape covers the fixed image's extent
    at that spacing, padded up to a multiple of ``size_multiple``. Both are taken along the
    model grid's axes (:func:`model_orientation`: for ``"RAS"`` those of the fixed image's
    closest-RAS view).
    """
    preprocessing = preprocessing or {}
    fixed_spacing = list(fixed.spacing_kji)[-ndim:]
    fixed_shape = list(fixed.shape)[-ndim:]
    if model_orientation(preprocessing, ndim) == "RAS":
        view_matrix, view_shape = geometry.closest_ras_view(fixed.ijk_to_ras, fixed.shape)
        fixed_spacing, fixed_shape = list(geometry.spacing_kji(view_matrix)), list(view_shape)
    spacing = preprocessing.get("spacing_mm")
    spacing = fixed_spacing if spacing is None else [float(s) for s in spacing]
    if len(spacing) != ndim:
        raise ValueError(f"checkpoint preprocessing spacing_mm {spacing} does not have {ndim} entries for a {ndim}D model")
    shape = preprocessing.get("shape")
    if shape is None:
        extent = [n * s / m for n, s, m in zip(fixed_shape, fixed_spacing, spacing)]
        shape = [int(-(-int(np.ceil(e - 1e-6)) // size_multiple) * size_multiple) for e in extent]
    shape = [int(n) for n in shape]
    if len(shape) != ndim:
        raise ValueError(f"checkpoint preprocessing shape {shape} does not have {ndim} entries for a {ndim}D model")
    return spacing, shape


# --------------------------------------------------------------------------- refinement
def refine(
    model: torch.nn.Module,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    outputs: Dict[str, torch.Tensor],
    iterations: int,
    lr: float = REFINE_LR,
    loss: Optional[torch.nn.Module] = None,
    progress: Progress = None,
) -> Tuple[Dict[str, torch.Tensor], List[Dict[str, float]]]:
    """Instance optimisation: ``iterations`` Adam steps on the deformable field, from the network output.

    The optimised parameter is ``outputs["velocity_vox"]`` (diffeomorphic models) or
    ``outputs["deform_disp_vox"]``; the affine part stays fixed. The loss is the variant's
    ``CompositeLoss`` (similarity + its regularizers) with the schedule at the end of
    training (``epoch == epochs``, i.e. the smallest multiplier).

    Args:
        model: the ``RegistrationModel`` that produced ``outputs`` (variant and ``int_steps``).
        moving, fixed: ``(1, 1, *S)`` normalised images on the model grid.
        outputs: the model's output dict.
        iterations: number of Adam steps (0 returns ``outputs`` unchanged).
        lr: Adam step in voxels.
        loss: a loss with the ``CompositeLoss`` call signature (default: from the variant).
        progress: ``progress(fraction, message)`` after every step.

    Returns:
        ``(outputs, history)``: the refined output dict (same keys, detached) and the per-step
        loss terms (``CompositeLoss`` ``terms`` dicts, before each step).
    """
    iterations = int(iterations)
    if iterations < 0:
        raise ValueError(f"refine iterations must be >= 0, got {iterations}")
    if iterations == 0:
        return outputs, []
    from .losses import CompositeLoss

    loss_fn = loss if loss is not None else CompositeLoss.from_variant(model.variant)
    loss_fn = loss_fn.to(fixed.device)
    diffeomorphic = "velocity_vox" in outputs
    int_steps = int(getattr(model, "arch", {}).get("int_steps", 7))
    start = outputs["velocity_vox"] if diffeomorphic else outputs["deform_disp_vox"]
    param = start.detach().clone().requires_grad_(True)
    affine_disp = outputs["affine_disp_vox"].detach()
    has_affine = bool(torch.any(affine_disp != 0))
    optimizer = torch.optim.Adam([param], lr=float(lr))

    def assemble(field_param: torch.Tensor) -> Dict[str, torch.Tensor]:
        deform = fields.integrate_velocity(field_param, int_steps) if diffeomorphic else field_param
        disp = fields.compose(affine_disp, deform) if has_affine else deform
        out = dict(
            warped=fields.warp(moving, disp),
            disp_vox=disp,
            affine_matrix_vox=outputs["affine_matrix_vox"].detach(),
            affine_disp_vox=affine_disp,
            deform_disp_vox=deform,
        )
        if diffeomorphic:
            out["velocity_vox"] = field_param
        return out

    history: List[Dict[str, float]] = []
    with torch.enable_grad():
        for step in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            total, terms = loss_fn(assemble(param), fixed, epoch=1, epochs=1)
            total.backward()
            optimizer.step()
            history.append(terms)
            if progress is not None:
                progress((step + 1) / iterations, f"refine {step + 1}/{iterations}: loss {terms['total']:.5f}")
    with torch.no_grad():
        refined = assemble(param.detach())
    return {k: v.detach() for k, v in refined.items()}, history


_refine = refine  # register() has an argument named ``refine``


# --------------------------------------------------------------------------- register
def _check_dimension(image: ImageData, name: str, ndim: int) -> None:
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


def _labels_array(labels: ImageData, name: str) -> np.ndarray:
    array = labels.array
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} must hold integer labels, got non-integer values (shape {array.shape})")
    elif array.dtype.kind not in "biu":
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{name} label values {array.min()}..{array.max()} do not fit in int32")
    return array.astype(np.int32)


def run_with_cpu_fallback(work: Callable[[torch.device], Any], device: torch.device, what: str = "the model") -> Tuple[Any, torch.device]:
    """``(work(device), device)``; when CUDA runs out of memory, warn and return ``(work(cpu), cpu)``."""
    try:
        return work(device), device
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if device.type != "cuda" or "out of memory" not in str(exc).lower():
            raise
        warnings.warn(f"CUDA ran out of memory for {what}; falling back to the CPU (slower)", RuntimeWarning, stacklevel=3)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        return work(cpu), cpu


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


def center_of_mass_alignment(
    fixed: ImageData, moving: ImageData, fixed_norm: Optional[np.ndarray] = None, moving_norm: Optional[np.ndarray] = None
) -> np.ndarray:
    """``(4, 4)`` RAS translation taking the fixed image's intensity centre of mass onto the moving image's.

    The weights are the 1-99 percentile normalised intensities (``fixed_norm`` / ``moving_norm``
    when already computed), so the background counts for little.
    """
    fixed_norm = normalize_intensity(fixed.array) if fixed_norm is None else fixed_norm
    moving_norm = normalize_intensity(moving.array) if moving_norm is None else moving_norm
    return geometry.translation_matrix(
        geometry.center_of_mass_ras(moving_norm, moving.ijk_to_ras) - geometry.center_of_mass_ras(fixed_norm, fixed.ijk_to_ras)
    )


def register(
    fixed: Union[ImageData, PathLike],
    moving: Union[ImageData, PathLike],
    model: Any = "baseline",
    fixed_labels: Union[ImageData, PathLike, None] = None,
    moving_labels: Union[ImageData, PathLike, None] = None,
    refine: int = 0,
    device: Union[str, torch.device] = "auto",
    progress: Progress = None,
    refine_lr: float = REFINE_LR,
    initial_alignment: str = "none",
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with one model; results on the full-resolution fixed grid.

    Args:
        fixed, moving: scalar images (``ImageData`` or file paths), any grids / orientations,
            overlapping in physical space. Single-slice images need a 2D model, volumes a 3D one.
        model: a variant id (untrained network), a checkpoint path or a ``RegistrationModel``.
        fixed_labels, moving_labels: optional integer label maps, each on any grid in the space
            of its image (fixed labels are resampled onto the fixed grid by nearest neighbour,
            an exact copy when the grids are the same).
        refine: Adam iterations of instance optimisation after the network (:func:`refine`).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"`` (``ValueError`` without CUDA).
            CUDA out-of-memory falls back to the CPU with a warning.
        progress: ``progress(fraction, message)``.
        refine_lr: Adam step of the refinement, voxels.
        initial_alignment: ``"none"`` (the images as they lie in physical space) or ``"com"``: first
            translate the moving image so that its intensity centre of mass (1-99 percentile
            normalised intensities) falls on the fixed image's, as classical tools initialise
            inter-subject registration; the translation is part of ``affine_ras``.

    Returns:
        :class:`RegistrationResult` (see the module docstring for the pipeline).
    """
    report = progress or (lambda fraction, message: None)
    timings: Dict[str, float] = {}
    t_start = time.perf_counter()
    # messages name each input, and its file when it was given as a path
    names = {key: f"{key} {value}" if isinstance(value, (str, os.PathLike)) else key for key, value in (
        ("fixed", fixed), ("moving", moving), ("fixed_labels", fixed_labels), ("moving_labels", moving_labels))}
    fixed = as_image(fixed, "fixed")
    moving = as_image(moving, "moving")
    fixed_labels = as_image(fixed_labels, "fixed_labels", kind="labels")
    moving_labels = as_image(moving_labels, "moving_labels", kind="labels")
    timings["read"] = time.perf_counter() - t_start
    for image, name in ((fixed, "fixed"), (moving, "moving"), (fixed_labels, "fixed_labels"), (moving_labels, "moving_labels")):
        if image is not None:
            validate_image(image, name)
    for image, name in ((fixed, "fixed"), (moving, "moving")):
        if float(np.max(image.array)) == float(np.min(image.array)):
            raise ValueError(
                f"{name} is constant (every voxel is {float(np.min(image.array))}, shape {image.shape}): nothing to register"
            )
    if (fixed_labels is None) != (moving_labels is None):
        warnings.warn("only one of fixed_labels / moving_labels was given: label metrics are skipped", stacklevel=2)
    if initial_alignment not in INITIAL_ALIGNMENTS:
        raise ValueError(f"initial_alignment must be one of {list(INITIAL_ALIGNMENTS)}, got {initial_alignment!r}")
    torch_device = resolve_device(device)
    net, preprocessing, _ = load_registration_model(model, 2 if fixed.is_2d else 3)
    ndim = int(net.ndim)
    _check_dimension(fixed, names["fixed"], ndim)
    _check_dimension(moving, names["moving"], ndim)
    if initial_alignment == "none":  # with "com" the overlap is checked after the translation
        geometry.check_overlap(fixed, moving, names["fixed"], names["moving"])
    if fixed_labels is not None:
        geometry.check_overlap(fixed, fixed_labels, names["fixed"], names["fixed_labels"])
    if moving_labels is not None:
        geometry.check_overlap(moving, moving_labels, names["moving"], names["moving_labels"])
    variant_id = net.variant.id if hasattr(net, "variant") else str(model)

    # --- resample both images onto the model grid
    t0 = time.perf_counter()
    report(0.05, "resampling onto the model grid")
    spacing_mm, shape = model_grid_spec(fixed, ndim, _model_size_multiple(net), preprocessing)
    grid_ijk_to_ras, grid_shape = geometry.model_grid_for(
        fixed, spacing_mm, shape, orientation=model_orientation(preprocessing, ndim)
    )
    fixed_window = intensity_window(fixed.array)
    moving_window = intensity_window(moving.array)
    fixed_norm = normalize_intensity(fixed.array, window=fixed_window)
    moving_norm = normalize_intensity(moving.array, window=moving_window)
    # fixed-space point -> moving point, applied after the model's mapping
    initial_ras = np.eye(4)
    if initial_alignment == "com":
        initial_ras = center_of_mass_alignment(fixed, moving, fixed_norm, moving_norm)
        geometry.check_overlap(fixed, ImageData(moving.array, np.linalg.inv(initial_ras) @ moving.ijk_to_ras, moving.name))
    fixed_grid = geometry.resample_to_grid(fixed_norm, fixed.ijk_to_ras, grid_ijk_to_ras, grid_shape)
    moving_grid = geometry.resample_to_grid(  # the moving image as seen through the initial alignment
        moving_norm, np.linalg.inv(initial_ras) @ moving.ijk_to_ras, grid_ijk_to_ras, grid_shape
    )
    if ndim == 2:
        fixed_grid, moving_grid = fixed_grid[0], moving_grid[0]
    timings["resample"] = time.perf_counter() - t0

    # --- network (+ refinement)
    t0 = time.perf_counter()
    report(0.2, f"running {variant_id} on {torch_device.type}")
    was_training = net.training
    net.eval()
    try:
        outputs, used_device = _run_model(net, moving_grid, fixed_grid, torch_device)
        timings["model"] = time.perf_counter() - t0
        if refine:
            t0 = time.perf_counter()
            moving_t = torch.from_numpy(moving_grid)[None, None].to(used_device)
            fixed_t = torch.from_numpy(fixed_grid)[None, None].to(used_device)
            outputs, _ = _refine(
                net, moving_t, fixed_t, outputs, refine, lr=refine_lr,
                progress=lambda f, m: report(0.3 + 0.4 * f, m),
            )
            timings["refine"] = time.perf_counter() - t0
    finally:
        net.train(was_training)

    # --- back to the full-resolution fixed grid, in RAS mm
    t0 = time.perf_counter()
    report(0.75, "computing the full-resolution field and the warped image")
    affine_ras = initial_ras @ geometry.matrix_vox_to_ras(outputs["affine_matrix_vox"][0], grid_ijk_to_ras)
    deform_model_ras = geometry.disp_vox_to_ras(outputs["deform_disp_vox"][0], grid_ijk_to_ras).numpy()
    del outputs, moving_grid, fixed_grid  # the model-grid tensors are not needed any more
    deform_ras = torch.from_numpy(geometry.resample_channels(
        deform_model_ras, grid_ijk_to_ras, fixed.ijk_to_ras, fixed.shape, mode="linear", fill_value=None
    ))  # (3, K, J, I) RAS mm on the fixed grid; the field extends its border values
    disp_ras = geometry.affine_after_displacement(affine_ras, deform_ras, fixed.ijk_to_ras)
    del deform_ras
    timings["upsample"] = time.perf_counter() - t0
    report(0.85, "warped image, Jacobian and metrics")
    result = result_from_mapping(variant_id, fixed, moving, affine_ras, disp_ras, fixed_labels, moving_labels,
                                 timings, t_start, windows=(fixed_window, moving_window))
    report(1.0, "done")
    return result


def result_from_mapping(
    variant: str,
    fixed: ImageData,
    moving: ImageData,
    affine_ras: np.ndarray,
    disp_ras_mm: np.ndarray,
    fixed_labels: Optional[ImageData] = None,
    moving_labels: Optional[ImageData] = None,
    timings: Optional[Dict[str, float]] = None,
    t_start: Optional[float] = None,
    windows: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None,
) -> RegistrationResult:
    """A :class:`RegistrationResult` from a total mapping ``q(p) = p + disp_ras_mm(p)`` on the fixed grid.

    Used by :func:`register` and by the classical methods of the quality benchmark, so every
    method ends the same way: ONE interpolation of the original moving image (labels: nearest)
    at ``q(p)``, the Jacobian of the total field, and ``registration_metrics`` on 1-99 percentile
    normalised intensities.

    Args:
        affine_ras: ``(4, 4)`` affine part (fixed RAS point -> moving RAS point); the deformable
            part is ``u_def(p) = affine_ras^-1(q(p)) - p``.
        disp_ras_mm: total displacement on the fixed grid, RAS mm: a ``(K, J, I, 3)`` array or a
            ``(3, K, J, I)`` tensor (channels ``(x, y, z)``). Computed in float32.
        timings: seconds per stage so far (``warp`` and ``metrics`` are added).
        t_start: ``time.perf_counter()`` at the start of the registration (``runtime_s``).
        windows: ``(fixed_window, moving_window)`` of ``imageio.intensity_window`` when the caller
            has them already (default: computed here).
    """
    from .metrics import registration_metrics

    timings = dict(timings or {})
    t_start = time.perf_counter() if t_start is None else t_start
    shape = tuple(fixed.shape)
    if isinstance(disp_ras_mm, torch.Tensor):
        disp = disp_ras_mm.detach().cpu().to(torch.float32)
        if tuple(disp.shape) != (3,) + shape:
            raise ValueError(f"a disp_ras_mm tensor must be (3, K, J, I) = {(3,) + shape}, got {tuple(disp.shape)}")
    else:
        disp_array = np.asarray(disp_ras_mm, dtype=np.float32)
        if disp_array.shape != shape + (3,):
            raise ValueError(f"disp_ras_mm must be (K, J, I, 3) = {shape + (3,)} on the fixed grid, got {disp_array.shape}")
        if not disp_array.flags.writeable:  # e.g. np.broadcast_to of a constant shift
            disp_array = disp_array.copy()
        disp = torch.from_numpy(np.moveaxis(disp_array, -1, 0))
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    if affine_ras.shape != (4, 4):
        raise ValueError(f"affine_ras must be (4, 4), got {affine_ras.shape}")
    ndim = 2 if fixed.is_2d else 3
    t0 = time.perf_counter()

    def voxels_of_mapped_points(ijk_to_ras: np.ndarray) -> torch.Tensor:
        """``(3, K, J, I)`` voxel indices ``(k, j, i)`` in the grid ``ijk_to_ras`` of ``q(p) = p + d(p)``."""
        ras_to_kji = np.linalg.inv(ijk_to_ras)[[2, 1, 0]]
        return geometry.affine_on_grid(ras_to_kji @ fixed.ijk_to_ras, shape, linear=ras_to_kji[:, :3], field=disp)

    moving_tensor = torch.from_numpy(np.ascontiguousarray(moving.array, dtype=np.float32))[None]
    warped = geometry.sample_voxels(moving_tensor, voxels_of_mapped_points(moving.ijk_to_ras), "linear", 0.0)[0].numpy()
    warped_labels = None
    if moving_labels is not None:
        labels = torch.from_numpy(_labels_array(moving_labels, "moving_labels").astype(np.float64))[None]
        coords = voxels_of_mapped_points(moving_labels.ijk_to_ras)
        warped_labels = geometry.sample_voxels(labels, coords, "nearest", 0.0)[0].numpy().astype(np.int32)
    deform_ras = geometry.affine_after_displacement(np.linalg.inv(affine_ras), disp, fixed.ijk_to_ras)
    # the total displacement in fixed voxels, channels (k, j, i), for the Jacobian and the metrics
    disp_fixed_vox = geometry.disp_ras_to_vox(disp, fixed.ijk_to_ras, ndim)
    jacobian = fields.jacobian_determinant(disp_fixed_vox[None])[0].numpy().reshape(shape)
    timings["warp"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fixed_labels_grid = None
    if fixed_labels is not None and warped_labels is not None:
        fixed_labels_grid = geometry.resample_to_grid(
            _labels_array(fixed_labels, "fixed_labels"), fixed_labels.ijk_to_ras, fixed.ijk_to_ras,
            fixed.shape, mode="nearest",
        )
    squeeze = (lambda a: a[0]) if ndim == 2 else (lambda a: a)
    fixed_window, moving_window = windows or (intensity_window(fixed.array), intensity_window(moving.array))
    metrics = registration_metrics(
        squeeze(normalize_intensity(fixed.array, window=fixed_window)),
        squeeze(normalize_intensity(warped, window=moving_window)),
        disp_fixed_vox,
        spacing=fixed.spacing_kji[-ndim:],
        fixed_labels=None if fixed_labels_grid is None else squeeze(fixed_labels_grid),
        warped_labels=None if fixed_labels_grid is None else squeeze(warped_labels),
        jacobian=squeeze(jacobian),
    )
    timings["metrics"] = time.perf_counter() - t0
    metrics["runtime_s"] = time.perf_counter() - t_start
    return RegistrationResult(
        variant=variant,
        fixed_ijk_to_ras=fixed.ijk_to_ras.copy(),
        warped=warped,
        warped_labels=warped_labels,
        affine_ras=affine_ras,
        disp_ras_mm=np.ascontiguousarray(np.moveaxis(disp.numpy(), 0, -1)),
        deform_disp_ras_mm=np.ascontiguousarray(np.moveaxis(deform_ras.numpy(), 0, -1)),
        jacobian=jacobian,
        metrics={k: float(v) for k, v in metrics.items()},
        timings=timings,
    )
