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
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import fields, geometry
from .imageio import ImageData, as_image, intensity_window, normalize_intensity, validate_image

PathLike = Union[str, Path]
Progress = Optional[Callable[[float, str], None]]

RESULT_FORMAT = "deepreg-ablation-result/1"
MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
"""Shipped weights: ``<MODELS_DIR>/<ndim>d/<variant>.pt``."""
INITIAL_ALIGNMENTS = ("auto", "none", "com")
"""``register(initial_alignment=...)``: the checkpoint's choice, physical space as is, or centres of mass translated together."""


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
        metrics: ``metrics.registration_metrics`` keys plus ``runtime_s`` (the registration: inputs in
            memory to the full-resolution field, warped image and labels) and ``metrics_s`` (the metrics).
        timings: seconds per stage (``read``, ``resample``, ``model``, ``refine`` and ``refine_<stage>_<s>mm``
            per level, ``upsample``, ``warp``, ``metrics``).
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
@dataclass(frozen=True)
class RefineSchedule:
    """Coarse-to-fine instance optimisation of one pair (:func:`refine`).

    Attributes:
        name: ``"recommended"``, ``"thorough"`` or ``"custom"``.
        affine_levels_mm: grid spacings (mm) of the affine stage, coarse to fine.
        deform_levels_mm: grid spacings (mm) of the deformable stage, coarse to fine. A level finer
            than the fixed image is its full resolution; levels that end up on the same grid are run once.
        affine_iterations, deform_iterations: most Adam steps per level (the early stop may end a level sooner).
        affine_step_vox, deform_step_vox: Adam step, in voxels of each level's grid (the affine
            translation moves by about that much per step, the velocity field too).
        int_steps: scaling-and-squaring steps of the velocity field.
        patience: a level stops after this many steps without a relative loss improvement of ``tolerance``.
        min_factor: no level is finer than this many fixed voxels per level voxel along an axis
            (2, as the antspyx SyN default, stops one octave above the image resolution; 1 reaches it).
    """

    name: str
    affine_levels_mm: Tuple[float, ...]
    deform_levels_mm: Tuple[float, ...]
    affine_iterations: int
    deform_iterations: int
    affine_step_vox: float = 0.25
    deform_step_vox: float = 0.3
    int_steps: int = 6
    patience: int = 6
    tolerance: float = 1e-4
    min_factor: int = 2


REFINE_SCHEDULES: Dict[str, RefineSchedule] = {
    "recommended": RefineSchedule("recommended", (8.0, 4.0), (8.0, 4.0, 2.0), 30, 25),
    "thorough": RefineSchedule("thorough", (8.0, 4.0, 2.0), (8.0, 4.0, 2.0, 1.0), 60, 60, min_factor=1),
}
"""The two named schedules: ``recommended`` (fast: 8, 4 and 2 mm, never the image's own resolution) and
``thorough`` (down to 1 mm or the image's resolution)."""
REFINE_CHOICES = ("off", "recommended", "thorough")
REFINE_LNCC_WINDOW = 5
"""LNCC window of the refinement, voxels of each level (20 mm at 4 mm, 10 mm at 2 mm)."""
REFINE_DIFFUSION_WEIGHT = 1.0
"""Weight of ``losses.grad_l2`` of the velocity field (voxels of the level), the same for every variant."""
REFINE_FOLDING_WEIGHT = 10.0
"""Weight of ``losses.jacobian_penalty`` of the integrated field."""
REFINE_FOREGROUND = 0.05
"""Each level's grid is the box of the fixed image's voxels above this normalised intensity, grown by
``REFINE_LNCC_WINDOW`` voxels (skull-stripped brains: a half to two thirds of the volume); the field
outside extends its border values."""
REFINE_THREADS = 1
"""CPU threads of the refinement. Its grids are small and its steps many small tensor operations:
one thread avoids OpenMP synchronisation, which on a busy 2-core machine made a 4 mm step of a
head pair 6 to 40 times slower with two threads (0.1 s against 0.6-4 s)."""
REFINE_MIN_OVERLAP = 0.01
"""Refinement refuses a mapping that takes less than this fraction of the fixed grid into the moving image."""


def refine_schedule(refine: Union[int, str, RefineSchedule, None]) -> Optional[RefineSchedule]:
    """Parse ``register(refine=...)``: ``0`` / ``"off"`` / ``None`` -> ``None`` (no refinement);
    ``"recommended"`` / ``"thorough"`` (or ``True``: recommended) -> that schedule; an integer ``N > 0`` (or its
    text) -> the recommended levels with ``N`` iterations per level; a :class:`RefineSchedule` as is.
    A negative count or an unknown name raises ``ValueError``."""
    if refine is None or refine is False:
        return None
    if refine is True:
        return REFINE_SCHEDULES["recommended"]
    if isinstance(refine, RefineSchedule):
        return refine
    if isinstance(refine, str):
        text = refine.strip().lower()
        if text in ("off", "none", ""):
            return None
        if text in REFINE_SCHEDULES:
            return REFINE_SCHEDULES[text]
        try:
            refine = int(text)
        except ValueError:
            raise ValueError(
                f"refine must be 'off', 'recommended', 'thorough' or a number of iterations per level, got {refine!r}"
            ) from None
    if isinstance(refine, (int, np.integer)) or (isinstance(refine, float) and float(refine).is_integer()):
        count = int(refine)
        if count < 0:
            raise ValueError(f"refine iterations must be >= 0, got {count}")
        if count == 0:
            return None
        base = REFINE_SCHEDULES["recommended"]
        return RefineSchedule("custom", base.affine_levels_mm, base.deform_levels_mm, count, count,
                              min_factor=base.min_factor)
    raise ValueError(f"refine must be 'off', 'recommended', 'thorough' or an iteration count, got {refine!r}")


@dataclass
class RefineResult:
    """What :func:`refine` found: ``q(p) = affine_ras(p + u(p))`` with ``u`` = ``deform_ras`` on ``grid_ijk_to_ras``.

    Attributes:
        affine_ras: ``(4, 4)`` fixed RAS point -> moving RAS point.
        deform_ras: ``(3, K, J, I)`` float32 tensor, RAS mm, the integrated velocity field on the finest level's grid.
        grid_ijk_to_ras: ``(4, 4)`` of that grid.
        timings: seconds per level, ``refine_affine_<s>mm`` / ``refine_deform_<s>mm``.
        history: one dict per level: ``level``, ``iterations``, ``loss_start``, ``loss_end``.
    """

    affine_ras: np.ndarray
    deform_ras: torch.Tensor
    grid_ijk_to_ras: np.ndarray
    timings: Dict[str, float]
    history: List[Dict[str, Any]]


def _pooling_factors(image: ImageData, spacing_mm: float, ndim: int, min_factor: int = 1) -> Tuple[int, int, int]:
    """Integer block size per axis ``(k, j, i)`` that brings ``image`` closest to ``spacing_mm`` (>= ``min_factor``)."""
    factors = [max(int(min_factor), int(round(spacing_mm / s))) for s in image.spacing_kji]
    if ndim == 2:
        factors[0] = 1
    return tuple(min(f, n) for f, n in zip(factors, image.shape))


def _pooled(image: ImageData, factors: Sequence[int], ndim: int, device: torch.device) -> Tuple[torch.Tensor, np.ndarray]:
    """Block means of ``image`` -> ``((1, 1, *S) float32 tensor, (4, 4) ijk_to_ras)`` (a partial last block is
    the mean of its voxels, its centre taken as that of a full block)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32)).to(device)
    tensor = tensor[None, None] if ndim == 3 else tensor[0][None, None]
    kernel = tuple(factors)[-ndim:]
    if any(f > 1 for f in kernel):
        pool = torch.nn.functional.avg_pool3d if ndim == 3 else torch.nn.functional.avg_pool2d
        tensor = pool(tensor, kernel, kernel, ceil_mode=True)
    scale = np.eye(4)
    for axis_ijk, factor in enumerate(reversed(factors)):  # (i, j, k)
        scale[axis_ijk, axis_ijk] = factor
        scale[axis_ijk, 3] = (factor - 1) / 2.0
    return tensor.contiguous(), image.ijk_to_ras @ scale


def _crop_to_foreground(image: torch.Tensor, ijk_to_ras: np.ndarray, margin: int) -> Tuple[torch.Tensor, np.ndarray]:
    """``(1, 1, *S)`` image cropped to the box of its voxels above ``REFINE_FOREGROUND`` grown by ``margin``
    voxels (the whole image when none is), and the ``(4, 4)`` of the cropped grid."""
    mask = image[0, 0] > REFINE_FOREGROUND
    if not bool(mask.any()):
        return image, ijk_to_ras
    ndim = mask.dim()
    slices, start = [], np.zeros(3)
    for axis in range(ndim):
        hits = torch.nonzero(mask.any(dim=tuple(a for a in range(ndim) if a != axis))).flatten()
        low = max(int(hits[0]) - margin, 0)
        high = min(int(hits[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(low, high))
        start[ndim - 1 - axis] = low  # (i, j[, k])
    shift = np.eye(4)
    shift[:3, 3] = start
    return image[(slice(None), slice(None)) + tuple(slices)].contiguous(), ijk_to_ras @ shift


class _Level:
    """One pyramid level: the pooled fixed image cropped to its foreground (its grid is the level's grid),
    the pooled moving image, and the control grid of the velocity field (every other level voxel)."""

    def __init__(self, fixed: ImageData, moving: ImageData, spacing_mm: float, ndim: int, device: torch.device,
                 cache: Dict[Tuple[str, Tuple[int, ...]], Tuple[torch.Tensor, np.ndarray]], min_factor: int = 1):
        self.ndim = ndim
        self.factors = _pooling_factors(fixed, spacing_mm, ndim, min_factor)
        self.spacing_mm = float(max(f * s for f, s in zip(self.factors, fixed.spacing_kji)))
        self.name = f"{self.spacing_mm:g}mm"
        moving_factors = _pooling_factors(moving, self.spacing_mm, ndim, min_factor)
        for key, image, factors in (("fixed", fixed, self.factors), ("moving", moving, moving_factors)):
            if (key, factors) not in cache:
                cache[(key, factors)] = _pooled(image, factors, ndim, device)
        self.fixed, self.grid_ijk_to_ras = _crop_to_foreground(*cache[("fixed", self.factors)], REFINE_LNCC_WINDOW)
        self.moving, self.moving_ijk_to_ras = cache[("moving", moving_factors)]
        self.shape = tuple(self.fixed.shape[2:])
        self.identity = fields.identity_grid(self.shape, device=device)[None]
        axes = [2, 1, 0][3 - ndim:]  # ijk column / row of each tensor axis
        self._columns = np.concatenate([self.grid_ijk_to_ras[:, axes], self.grid_ijk_to_ras[:, 3:]], axis=1)  # (4, nd+1)
        moving_sizes = np.asarray(self.moving.shape[2:], dtype=np.float64)
        self._to_moving = (2.0 / np.maximum(moving_sizes - 1, 1))[:, None] * np.linalg.inv(self.moving_ijk_to_ras)[axes]
        self._device = device
        # the velocity field's grid: every other level voxel (align_corners: node c is level voxel c * scale)
        self.control_shape = tuple(max(2, (n + 1) // 2) if n > 1 else 1 for n in self.shape)
        scale = np.eye(4)
        for axis, (n, c) in enumerate(zip(self.shape[::-1], self.control_shape[::-1])):  # (i, j[, k])
            scale[axis, axis] = (n - 1) / max(c - 1, 1)
        self.control_ijk_to_ras = self.grid_ijk_to_ras @ scale

    def sampling_matrix(self, affine_ras: torch.Tensor) -> torch.Tensor:
        """``(nd, nd + 1)``: level voxel (tensor order, homogeneous) -> grid_sample coordinate of the moving level."""
        to_moving = torch.as_tensor(self._to_moving, dtype=affine_ras.dtype, device=affine_ras.device)
        columns = torch.as_tensor(self._columns, dtype=affine_ras.dtype, device=affine_ras.device)
        matrix = to_moving @ affine_ras @ columns
        offset = torch.zeros_like(matrix)
        offset[:, -1] = 1.0
        return (matrix - offset).to(torch.float32)

    def warp(self, affine_ras: torch.Tensor, disp_vox: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The moving level at ``affine_ras(p + u(p))`` on the level grid -> ``(warped (1, 1, *S), grid)``."""
        matrix = self.sampling_matrix(affine_ras)
        points = self.identity if disp_vox is None else self.identity + disp_vox
        nd = self.ndim
        coords = torch.einsum("ij,bj...->bi...", matrix[:, :nd], points) + matrix[:, nd].view(1, nd, *([1] * nd))
        grid = torch.movedim(coords.flip(1), 1, -1)
        warped = torch.nn.functional.grid_sample(self.moving, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return warped, grid

    @property
    def _control_volume_shape(self) -> Tuple[int, int, int]:
        return tuple(self.control_shape) if self.ndim == 3 else (1,) + tuple(self.control_shape)

    def to_control_vox(self, field_ras: torch.Tensor, ijk_to_ras: np.ndarray) -> torch.Tensor:
        """A RAS mm field ``(3, K, J, I)`` on another grid -> ``(1, nd, *C)`` voxels of the control grid (border values extended)."""
        on_control = geometry.resample_channels(
            field_ras.detach().cpu().numpy(), ijk_to_ras, self.control_ijk_to_ras, self._control_volume_shape,
            mode="linear", fill_value=None,
        )
        vox = geometry.disp_ras_to_vox(torch.from_numpy(on_control), self.control_ijk_to_ras, self.ndim)
        return vox[None].to(self._device)

    def control_to_ras(self, field_vox: torch.Tensor) -> torch.Tensor:
        """``(1, nd, *C)`` voxels of the control grid -> ``(3, K, J, I)`` RAS mm."""
        return geometry.disp_vox_to_ras(field_vox[0].detach().cpu(), self.control_ijk_to_ras)

    def to_level(self, field_vox: torch.Tensor) -> torch.Tensor:
        """Control-grid field (its voxels) -> the level grid (level voxels), trilinear (``fields.resize_field``)."""
        return fields.resize_field(field_vox, self.shape)


def _overlap(grid: torch.Tensor) -> float:
    """Fraction of level voxels whose grid_sample coordinate falls inside the moving image."""
    return float((grid.abs() <= 1.0).all(dim=-1).float().mean())


def _optimise(
    params: List[Dict[str, Any]],
    loss_fn: Callable[[], torch.Tensor],
    iterations: int,
    schedule: RefineSchedule,
    what: str,
    progress: Callable[[int, float], None],
) -> Dict[str, Any]:
    """Adam on ``params`` (torch param groups) until ``iterations`` or no improvement for ``patience`` steps.

    Returns the state of the lowest loss seen (a NaN or inf loss ends the level there, with a
    ``RuntimeWarning``, and restores that state; ``ValueError`` when the very first loss is not finite).
    """
    tensors = [p for group in params for p in group["params"]]
    optimizer = torch.optim.Adam(params)
    best_loss, best_state, since_best, first, steps = float("inf"), None, 0, None, 0
    for step in range(iterations + 1):
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn()
        value = float(loss.detach())
        if not math.isfinite(value):
            if best_state is None:
                raise ValueError(f"refinement: the {what} loss is not finite from the start ({value}); check the inputs")
            warnings.warn(
                f"refinement: the {what} loss became {value} at step {step}; keeping the last finite state "
                f"(loss {best_loss:.5f}) and stopping the refinement there", RuntimeWarning, stacklevel=4,
            )
            break
        first = value if first is None else first
        if value < best_loss - schedule.tolerance * abs(best_loss) or best_state is None:
            best_loss, since_best = value, 0
            best_state = [t.detach().clone() for t in tensors]
        else:
            since_best += 1
        if step == iterations or since_best >= schedule.patience:
            break
        loss.backward()
        optimizer.step()
        steps = step + 1
        progress(steps, value)
    with torch.no_grad():
        for tensor, saved in zip(tensors, best_state):
            tensor.copy_(saved)
    return {"iterations": steps, "loss_start": first, "loss_end": best_loss, "finite": math.isfinite(value)}


def refine(
    fixed: ImageData,
    moving: ImageData,
    affine_ras: np.ndarray,
    deform_ras: Optional[torch.Tensor] = None,
    deform_ijk_to_ras: Optional[np.ndarray] = None,
    schedule: Union[int, str, RefineSchedule] = "recommended",
    device: Union[str, torch.device] = "cpu",
    progress: Progress = None,
) -> RefineResult:
    """Instance optimisation of one pair, from any start (a network's output, the identity, a centre-of-mass shift).

    The mapping is ``q(p) = A (p + u(p))`` (fixed RAS point -> moving RAS point). On a pyramid of
    grids covering the fixed image (block means of the fixed image at about ``s`` mm, cropped to its
    foreground, the moving image likewise), first the 12 affine parameters are optimised
    (``A = A0 . D``, ``D`` an affine correction about the fixed image's centre, Adam steps of
    ``affine_step_vox`` voxels) with ``u`` held at its start, on ``schedule.affine_levels_mm``; then
    ``u = exp(v)``: a stationary velocity field ``v`` on each level's control grid (every other level
    voxel), integrated by scaling and squaring there (``fields.integrate_velocity``) and upsampled
    linearly to the level grid (``fields.resize_field``); ``v`` is carried up to the next level. The
    first level starts at ``v = u_start`` (``exp(u) ~ u`` for small ``u``). Loss: ``losses.lncc``
    (window ``REFINE_LNCC_WINDOW``) + ``REFINE_DIFFUSION_WEIGHT * grad_l2(v)`` +
    ``REFINE_FOLDING_WEIGHT * jacobian_penalty(u)``, the same for every variant. Each level stops
    early when the loss stops improving (``patience``) and keeps its lowest-loss state.

    Args:
        fixed, moving: the images, intensities normalised to about [0, 1] (e.g. ``imageio.normalize_intensity``).
        affine_ras: ``(4, 4)`` starting affine part.
        deform_ras, deform_ijk_to_ras: starting deformable part ``(3, K, J, I)`` RAS mm on the grid
            ``deform_ijk_to_ras`` (``None``: zero).
        schedule: ``"recommended"``, ``"thorough"``, an iteration count per level, or a :class:`RefineSchedule`.
        device: where to optimise.
        progress: ``progress(fraction, message)``.

    Raises:
        ValueError: a mapping that takes (almost) no part of the fixed image into the moving image
            (``REFINE_MIN_OVERLAP``), a negative iteration count, a loss that is not finite from the start.
    """
    plan = refine_schedule(schedule)
    if plan is None:
        raise ValueError(f"refine needs a schedule, got {schedule!r} (no refinement)")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, REFINE_THREADS)))
    try:
        return _refine_levels(fixed, moving, affine_ras, deform_ras, deform_ijk_to_ras, plan, torch.device(device), progress)
    finally:
        torch.set_num_threads(threads)


def _refine_levels(
    fixed: ImageData,
    moving: ImageData,
    affine_ras: np.ndarray,
    deform_ras: Optional[torch.Tensor],
    deform_ijk_to_ras: Optional[np.ndarray],
    plan: RefineSchedule,
    device: torch.device,
    progress: Progress,
) -> RefineResult:
    """:func:`refine` after the argument checks."""
    from . import losses

    report = progress or (lambda fraction, message: None)
    ndim = 2 if fixed.is_2d else 3
    affine0 = np.asarray(affine_ras, dtype=np.float64)
    cache: Dict[Tuple[str, Tuple[int, ...]], Tuple[torch.Tensor, np.ndarray]] = {}

    def levels(spacings: Sequence[float]) -> List[_Level]:
        out: List[_Level] = []
        for spacing in spacings:
            level = _Level(fixed, moving, float(spacing), ndim, device, cache, plan.min_factor)
            if not out or level.factors != out[-1].factors:
                out.append(level)
        return out

    affine_levels = levels(plan.affine_levels_mm)
    deform_levels = levels(plan.deform_levels_mm)
    total = plan.affine_iterations * len(affine_levels) + plan.deform_iterations * len(deform_levels)
    done = [0]

    def start_field(level: _Level) -> Optional[torch.Tensor]:
        """The starting deformable part on the level's control grid (its voxels), ``None`` when zero."""
        if deform_ras is None or not bool(torch.any(torch.as_tensor(deform_ras) != 0)):
            return None
        return level.to_control_vox(torch.as_tensor(deform_ras), deform_ijk_to_ras)

    # affine correction D about the fixed centre: D(p) = (I + B)(p - c) + c + t
    centre = torch.tensor(geometry.voxel_to_ras((np.asarray(fixed.shape[::-1], float) - 1) / 2.0, fixed.ijk_to_ras),
                          dtype=torch.float64, device=device)
    linear = torch.zeros(3, 3, dtype=torch.float64, device=device, requires_grad=True)
    shift = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
    a0 = torch.as_tensor(affine0, device=device)
    radius_mm = 0.5 * float(np.linalg.norm(np.asarray(fixed.shape, float) * np.asarray(fixed.spacing_kji)))
    if ndim == 2:
        radius_mm = 0.5 * float(np.linalg.norm(np.asarray(fixed.shape[1:], float) * np.asarray(fixed.spacing_kji[1:])))

    def affine() -> torch.Tensor:
        top = torch.cat([torch.eye(3, dtype=torch.float64, device=device) + linear,
                         (centre + shift - (torch.eye(3, dtype=torch.float64, device=device) + linear) @ centre)[:, None]], 1)
        bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64, device=device)
        return a0 @ torch.cat([top, bottom], 0)

    timings: Dict[str, float] = {}
    history: List[Dict[str, Any]] = []

    def step_report(stage: str, level: _Level):
        def callback(step: int, value: float) -> None:
            done[0] += 1
            if step % 10 == 0:
                report(done[0] / total, f"refine {stage} {level.name}: step {step}, loss {value:.4f}")
        return callback

    def check_overlap(level: _Level, disp: Optional[torch.Tensor], when: str) -> None:
        with torch.no_grad():
            _, grid = level.warp(affine(), disp)
        fraction = _overlap(grid)
        if fraction < REFINE_MIN_OVERLAP:
            raise ValueError(
                f"refinement: {when} the mapping takes only {100 * fraction:.2f} % of the fixed image "
                f"(shape {fixed.shape}) into the moving image (shape {moving.shape}); the images do not overlap "
                f"after alignment: check their positions or align their centres of mass first (--init-align com)"
            )

    stopped = False
    for level in affine_levels:
        t0 = time.perf_counter()
        disp = start_field(level)
        disp = None if disp is None else level.to_level(disp)
        check_overlap(level, disp, f"at the start of the affine stage ({level.name})")
        step_mm = plan.affine_step_vox * level.spacing_mm
        groups = [{"params": [shift], "lr": step_mm}, {"params": [linear], "lr": step_mm / radius_mm}]
        loss_fn = lambda level=level, disp=disp: losses.lncc(level.fixed, level.warp(affine(), disp)[0], REFINE_LNCC_WINDOW)  # noqa: E731
        report(done[0] / total, f"refine affine {level.name} ({level.shape})")
        record = _optimise(groups, loss_fn, plan.affine_iterations, plan, f"affine {level.name}", step_report("affine", level))
        history.append(dict(level=f"affine_{level.name}", **record))
        timings[f"refine_affine_{level.name}"] = time.perf_counter() - t0
        if not record["finite"]:
            stopped = True
            break
    affine_final = affine().detach()

    velocity: Optional[torch.Tensor] = None  # (1, nd, *C) voxels of velocity_level's control grid
    velocity_level = deform_levels[0]
    for level in deform_levels:
        t0 = time.perf_counter()
        if velocity is None:
            base = start_field(level)
        else:  # the previous level's velocity, carried onto this level's control grid
            base = level.to_control_vox(velocity_level.control_to_ras(velocity), velocity_level.control_ijk_to_ras)
        if base is None:
            base = torch.zeros((1, ndim) + level.control_shape, device=device)
        velocity, velocity_level = base, level
        if stopped:
            break
        if level is deform_levels[0]:
            check_overlap(level, None, "after the affine stage")
        param = base.clone().requires_grad_(True)

        def loss_fn(level=level, param=param) -> torch.Tensor:
            disp = fields.integrate_velocity(param, plan.int_steps)
            warped, _ = level.warp(affine_final, level.to_level(disp))
            return (losses.lncc(level.fixed, warped, REFINE_LNCC_WINDOW)
                    + REFINE_DIFFUSION_WEIGHT * losses.grad_l2(param)
                    + REFINE_FOLDING_WEIGHT * losses.jacobian_penalty(disp))

        report(done[0] / total, f"refine deformable {level.name} ({level.shape})")
        # the velocity lives on the control grid (half the level's voxels per axis): a step of
        # deform_step_vox level voxels is half as many control voxels
        record = _optimise([{"params": [param], "lr": 0.5 * plan.deform_step_vox}], loss_fn, plan.deform_iterations, plan,
                           f"deformable {level.name}", step_report("deformable", level))
        history.append(dict(level=f"deform_{level.name}", **record))
        velocity = param.detach()
        timings[f"refine_deform_{level.name}"] = time.perf_counter() - t0
        if not record["finite"]:
            break
    t0 = time.perf_counter()
    with torch.no_grad():
        disp = fields.integrate_velocity(velocity, plan.int_steps)
    timings["refine_integrate"] = time.perf_counter() - t0
    report(1.0, "refinement done")
    return RefineResult(
        affine_ras=affine_final.cpu().numpy(), deform_ras=velocity_level.control_to_ras(disp),
        grid_ijk_to_ras=velocity_level.control_ijk_to_ras.copy(), timings=timings, history=history,
    )


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
    refine: Union[int, str, RefineSchedule, None] = 0,
    device: Union[str, torch.device] = "auto",
    progress: Progress = None,
    initial_alignment: str = "auto",
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with one model; results on the full-resolution fixed grid.

    Args:
        fixed, moving: scalar images (``ImageData`` or file paths), any grids / orientations,
            overlapping in physical space. Single-slice images need a 2D model, volumes a 3D one.
        model: a variant id (untrained network), a checkpoint path or a ``RegistrationModel``.
        fixed_labels, moving_labels: optional integer label maps, each on any grid in the space
            of its image (fixed labels are resampled onto the fixed grid by nearest neighbour,
            an exact copy when the grids are the same).
        refine: instance optimisation after the network (:func:`refine`): ``0`` / ``"off"`` (none),
            ``"recommended"`` (fast: affine at 8 and 4 mm, deformable at 4 and 2 mm), ``"thorough"``
            (down to 1 mm or the fixed image's resolution) or an iteration count per level.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"`` (``ValueError`` without CUDA).
            CUDA out-of-memory falls back to the CPU with a warning.
        progress: ``progress(fraction, message)``.
        initial_alignment: ``"none"`` (the images as they lie in physical space) or ``"com"``: first
            translate the moving image so that its intensity centre of mass (1-99 percentile
            normalised intensities) falls on the fixed image's, as classical tools initialise
            inter-subject registration; the translation is part of ``affine_ras``. ``"auto"``
            (default): what the checkpoint was trained with (``preprocessing["initial_alignment"]``,
            ``"com"`` for the shipped 3D models); for a checkpoint that does not record it,
            ``choices.decide_initial_alignment`` (centres of mass for 3D pairs far apart). A checkpoint trained on grids
            centred on each brain's centre of mass (``preprocessing["center"] == "com"``) also
            gets its model grid centred on the fixed image's centre of mass.

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
    schedule = refine_schedule(refine)  # ValueError before any work
    torch_device = resolve_device(device)
    net, preprocessing, _ = load_registration_model(model, 2 if fixed.is_2d else 3)
    ndim = int(net.ndim)
    _check_dimension(fixed, names["fixed"], ndim)
    _check_dimension(moving, names["moving"], ndim)
    if initial_alignment == "auto":
        trained_with = (preprocessing or {}).get("initial_alignment") if ndim == 3 else "none"
        if trained_with in ("com", "none"):
            initial_alignment = str(trained_with)
            report(0.02, f"initial alignment {initial_alignment}: what the model was trained with")
        else:  # a checkpoint that does not say: centres of mass when the volumes lie far apart
            from .choices import decide_initial_alignment

            decision = decide_initial_alignment(fixed, moving, "auto")
            initial_alignment = decision.initial_alignment
            report(0.02, decision.reason)
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
    finally:
        net.train(was_training)
    affine_ras = initial_ras @ geometry.matrix_vox_to_ras(outputs["affine_matrix_vox"][0], grid_ijk_to_ras)
    deform_ras = geometry.disp_vox_to_ras(outputs["deform_disp_vox"][0], grid_ijk_to_ras)
    deform_grid = grid_ijk_to_ras
    del outputs, moving_grid, fixed_grid  # the model-grid tensors are not needed any more
    if schedule is not None:
        t0 = time.perf_counter()
        report(0.3, f"refining ({schedule.name})")
        refined = _refine(
            ImageData(fixed_norm, fixed.ijk_to_ras, "fixed"), ImageData(moving_norm, moving.ijk_to_ras, "moving"),
            affine_ras, deform_ras, grid_ijk_to_ras, schedule, device=used_device,
            progress=lambda f, m: report(0.3 + 0.45 * f, m),
        )
        affine_ras, deform_ras, deform_grid = refined.affine_ras, refined.deform_ras, refined.grid_ijk_to_ras
        timings.update(refined.timings)
        timings["refine"] = time.perf_counter() - t0

    # --- back to the full-resolution fixed grid, in RAS mm
    t0 = time.perf_counter()
    report(0.75, "computing the full-resolution field and the warped image")
    deform_ras = torch.from_numpy(geometry.resample_channels(
        deform_ras.numpy(), deform_grid, fixed.ijk_to_ras, fixed.shape, mode="linear", fill_value=None
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
        t_start: ``time.perf_counter()`` at the start of the registration: ``runtime_s`` runs from
            there to the warped image and labels (the metrics are ``metrics_s``).
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
    runtime_s = time.perf_counter() - t_start  # the registration: inputs in memory -> field and warped image

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
    metrics["runtime_s"] = runtime_s
    metrics["metrics_s"] = timings["metrics"]
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
