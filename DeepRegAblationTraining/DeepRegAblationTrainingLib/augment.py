"""On-the-fly augmentation: random rigid + smooth non-rigid deformations, gamma and brightness.

Nothing is written to disk: every call draws a new transform from a ``torch.Generator``.
The datasets seed that generator from ``(seed, epoch, index)`` (:func:`seeded_generator`),
so an augmented sample is a pure function of those numbers (resumable, shardable, the same
with any number of data-loader workers).

Shapes follow ``DeepRegAblationLib.fields``: an image without batch dimension is ``(C, *S)``
(``C = 1``), a displacement ``(ndim, *S)`` in voxels, channel ``a`` along tensor axis ``a``.

Directions. An augmentation field ``disp_vox`` is applied as ``warp(image, disp_vox)``:
the augmented image at ``x`` shows the original at ``x + disp_vox(x)``. A synthetic pair
(:meth:`Augment.synthetic_pair`) carries ``disp_true_vox``, the displacement the network
should predict: ``warp(moving, disp_true_vox) ~= fixed`` (the same direction as the model's
``disp_vox``: fixed voxel -> moving voxel).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from DeepRegAblationLib import fields

Number = Union[int, float]


# --------------------------------------------------------------------------- generators
def seed_from(*keys: int) -> int:
    """A 63-bit seed that is a deterministic function of integer ``keys`` (e.g. seed, epoch, index)."""
    ints = [int(k) for k in keys]
    if any(k < 0 for k in ints):
        raise ValueError(f"seed keys must be integers >= 0, got {ints}")
    state = np.random.SeedSequence(ints).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def seeded_generator(*keys: int) -> torch.Generator:
    """CPU ``torch.Generator`` seeded from ``keys`` (see :func:`seed_from`)."""
    gen = torch.Generator()
    gen.manual_seed(seed_from(*keys))
    return gen


def _uniform(generator: torch.Generator, low: float, high: float, size: Sequence[int] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(size), generator=generator, dtype=torch.float64)


# --------------------------------------------------------------------------- random fields
def _bspline_weights(n: int, m: int) -> torch.Tensor:
    """``(n, m)`` cubic B-spline weights from ``m`` control points spanning the same extent as ``n`` voxels.

    Rows are non-negative and sum to 1, so every output vector is a convex combination of
    control vectors (a bound on the control vectors' length bounds the field's).
    """
    if m == 1:
        return torch.ones(n, 1, dtype=torch.float64)
    t = torch.arange(n, dtype=torch.float64) * ((m - 1) / max(n - 1, 1))
    k = torch.arange(m, dtype=torch.float64)
    d = (t[:, None] - k[None, :]).abs()
    w = torch.where(d < 1, (4 - 6 * d**2 + 3 * d**3) / 6, torch.where(d < 2, (2 - d) ** 3 / 6, torch.zeros_like(d)))
    return w / w.sum(dim=1, keepdim=True)


def random_smooth_field(
    shape: Sequence[int],
    max_disp_vox: Union[Number, Sequence[Number]],
    control_spacing: Number,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random smooth displacement ``(ndim, *shape)`` in voxels whose largest vector is ``max_disp_vox`` long.

    Random vectors on a coarse control grid (one control point every ``control_spacing``
    voxels, at least 2 per axis), interpolated with cubic B-splines (C2-smooth, a convex
    combination of the control vectors), then scaled so that the longest vector is exactly
    ``max_disp_vox``. A sequence ``max_disp_vox`` (one entry per axis, e.g. a bound in mm
    divided by the spacing) scales each component separately.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if ndim not in (2, 3) or any(n < 1 for n in shape):
        raise ValueError(f"shape must be 2 or 3 positive sizes, got {shape}")
    if float(control_spacing) <= 0:
        raise ValueError(f"control_spacing must be > 0 voxels, got {control_spacing}")
    if isinstance(max_disp_vox, (int, float)):
        scale = [float(max_disp_vox)] * ndim
    else:
        scale = [float(s) for s in max_disp_vox]
        if len(scale) != ndim:
            raise ValueError(f"max_disp_vox must be a number or {ndim} numbers, got {max_disp_vox}")
    if any(s < 0 or not math.isfinite(s) for s in scale):
        raise ValueError(f"max_disp_vox must be finite and >= 0, got {max_disp_vox}")
    control = [max(2, int(math.ceil((n - 1) / float(control_spacing))) + 1) for n in shape]
    # vectors uniform in the unit ball
    direction = torch.randn((ndim, *control), generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=0, keepdim=True).clamp_min(1e-12)
    radius = torch.rand(tuple(control), generator=generator, dtype=torch.float64) ** (1.0 / ndim)
    field = (direction * radius).to(torch.float32)
    for axis, (n, m) in enumerate(zip(shape, control)):
        weights_t = _bspline_weights(n, m).to(torch.float32).T  # (m, n)
        field = torch.movedim(torch.movedim(field, axis + 1, -1) @ weights_t, -1, axis + 1)
    longest = float(field.norm(dim=0).max())
    if longest > 0:
        field = field / longest
    return field * torch.tensor(scale, dtype=torch.float32).view(ndim, *([1] * ndim))


def random_rotation(ndim: int, max_deg: float, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, float]:
    """Random rotation matrix ``(ndim, ndim)`` (float64) and its angle in degrees, ``|angle| <= max_deg``.

    2D: angle uniform in ``[-max_deg, max_deg]``. 3D: axis uniform on the sphere, angle uniform
    in ``[-max_deg, max_deg]`` (Rodrigues), so the total rotation never exceeds ``max_deg``.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if max_deg < 0:
        raise ValueError(f"max_deg must be >= 0, got {max_deg}")
    angle_deg = float(_uniform(generator, -max_deg, max_deg))
    a = math.radians(angle_deg)
    if ndim == 2:
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        return rot, angle_deg
    axis = torch.randn(3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm().clamp_min(1e-12)
    k = torch.tensor(
        [[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]], dtype=torch.float64
    )
    rot = torch.eye(3, dtype=torch.float64) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)
    return rot, angle_deg


def invert_field(disp_vox: torch.Tensor, iterations: int = 40, tol_vox: float = 1e-3) -> torch.Tensor:
    """Approximate inverse ``v`` of a displacement ``u``: ``x + u(x) = y  <=>  y + v(y) = x``.

    Fixed-point iteration ``v <- -warp(u, v)`` (converges for fields whose Jacobian stays near
    the identity, as the augmentation fields do), started from the inverse computed on a grid
    4x coarser (recursively, for grids of 32 voxels or more per axis) and stopped when no vector
    changes by more than ``tol_vox``. ``(B, ndim, *S)`` in, same out.
    """
    shape = tuple(int(n) for n in disp_vox.shape[2:])
    with torch.no_grad():
        if min(shape) >= 32:
            coarse = tuple(int(math.ceil(n / 4)) for n in shape)
            inverse = fields.resize_field(invert_field(fields.resize_field(disp_vox, coarse), iterations, tol_vox), shape)
        else:
            inverse = -disp_vox
        for _ in range(int(iterations)):
            updated = -fields.warp(disp_vox, inverse)
            change = float((updated - inverse).abs().max())
            inverse = updated
            if change < tol_vox:
                break
    return inverse


# --------------------------------------------------------------------------- augmentation
class Augment:
    """Random spatial and intensity augmentation of single images ``(C, *S)`` (no batch dimension).

    Args:
        max_disp_mm: largest non-rigid displacement in mm (the amplitude of each draw is
            uniform in ``[0, max_disp_mm]``); 0 disables the non-rigid part.
        control_spacing_vox: control-point spacing of the smooth field, voxels.
        rotation_deg: largest rotation (about the image centre, in physical space), degrees.
        translation_vox: largest shift along each axis, voxels.
        gamma: ``(low, high)``; ``x -> x ** g`` on the image rescaled to [0, 1], ``g`` log-uniform.
            ``(1, 1)`` disables it.
        brightness: intensities are multiplied by ``1 + b``, ``b`` uniform in ``[-brightness, brightness]``.
        seed: seed of the generator used when a call gives none (``None``: torch's global RNG).
        max_tries: the spatial field is redrawn at half the non-rigid amplitude while it folds
            (``det(I + grad u) <= min_jacobian``), at most this many times.
    """

    def __init__(
        self,
        max_disp_mm: float = 4.0,
        control_spacing_vox: float = 16.0,
        rotation_deg: float = 10.0,
        translation_vox: float = 4.0,
        gamma: Tuple[float, float] = (0.5, 2.0),
        brightness: float = 0.2,
        seed: Optional[int] = None,
        min_jacobian: float = 0.1,
        max_tries: int = 6,
    ):
        for name, value in (
            ("max_disp_mm", max_disp_mm),
            ("rotation_deg", rotation_deg),
            ("translation_vox", translation_vox),
            ("brightness", brightness),
        ):
            if not math.isfinite(float(value)) or float(value) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if float(control_spacing_vox) <= 0:
            raise ValueError(f"control_spacing_vox must be > 0, got {control_spacing_vox!r}")
        if float(rotation_deg) > 180:
            raise ValueError(f"rotation_deg must be <= 180, got {rotation_deg!r}")
        gamma = tuple(float(g) for g in gamma)
        if len(gamma) != 2 or not 0 < gamma[0] <= gamma[1]:
            raise ValueError(f"gamma must be (low, high) with 0 < low <= high, got {gamma!r}")
        if float(brightness) >= 1:
            raise ValueError(f"brightness must be < 1 (a fraction), got {brightness!r}")
        self.max_disp_mm = float(max_disp_mm)
        self.control_spacing_vox = float(control_spacing_vox)
        self.rotation_deg = float(rotation_deg)
        self.translation_vox = float(translation_vox)
        self.gamma = gamma
        self.brightness = float(brightness)
        self.seed = seed
        self.min_jacobian = float(min_jacobian)
        self.max_tries = int(max_tries)
        self._generator: Optional[torch.Generator] = None
        if seed is not None:
            self._generator = torch.Generator()
            self._generator.manual_seed(int(seed))

    # ---- serialisation (for checkpoints / configs)
    def to_dict(self) -> Dict[str, Any]:
        return {
            "max_disp_mm": self.max_disp_mm,
            "control_spacing_vox": self.control_spacing_vox,
            "rotation_deg": self.rotation_deg,
            "translation_vox": self.translation_vox,
            "gamma": list(self.gamma),
            "brightness": self.brightness,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Augment":
        return cls(**d)

    def __repr__(self) -> str:
        return f"Augment({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    # ---- pieces
    def _gen(self, generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
        return generator if generator is not None else self._generator

    @staticmethod
    def _spacing(spacing_mm: Optional[Sequence[float]], ndim: int) -> Tuple[float, ...]:
        if spacing_mm is None:
            return (1.0,) * ndim
        if isinstance(spacing_mm, torch.Tensor):
            spacing_mm = spacing_mm.tolist()
        spacing = tuple(float(s) for s in spacing_mm)
        if len(spacing) != ndim or any(s <= 0 for s in spacing):
            raise ValueError(f"spacing_mm must be {ndim} positive numbers, got {spacing_mm!r}")
        return spacing

    def random_affine(
        self, shape: Sequence[int], spacing_mm: Optional[Sequence[float]] = None, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Random rigid map as a voxel matrix ``(ndim + 1, ndim + 1)`` (fixed voxel -> sampled voxel).

        Rotation in physical space about the grid centre (``S^-1 R S`` in voxels, ``S`` = diag
        spacing) plus a translation uniform in ``[-translation_vox, translation_vox]`` per axis.
        """
        gen = self._gen(generator)
        ndim = len(shape)
        spacing = torch.tensor(self._spacing(spacing_mm, ndim), dtype=torch.float64)
        rot, _ = random_rotation(ndim, self.rotation_deg, gen)
        linear = torch.diag(1.0 / spacing) @ rot @ torch.diag(spacing)
        shift = _uniform(gen, -self.translation_vox, self.translation_vox, (ndim,))
        return fields.centered_affine_matrix(linear[None], shift[None], shape)[0].to(torch.float32)

    def spatial_field(
        self, shape: Sequence[int], spacing_mm: Optional[Sequence[float]] = None, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Random rigid + smooth non-rigid displacement ``(ndim, *shape)`` in voxels, fold-free.

        ``compose(rigid, smooth)``: first the smooth field, then the rigid map. The non-rigid
        amplitude is uniform in ``[0, max_disp_mm]`` (per-axis voxel bound ``max_disp_mm / spacing``).
        """
        gen = self._gen(generator)
        shape = tuple(int(n) for n in shape)
        ndim = len(shape)
        spacing = self._spacing(spacing_mm, ndim)
        rigid = fields.affine_to_disp(self.random_affine(shape, spacing, gen)[None], shape)
        amplitude_mm = float(_uniform(gen, 0.0, self.max_disp_mm))
        if amplitude_mm > 0:
            unit = random_smooth_field(shape, [1.0 / s for s in spacing], self.control_spacing_vox, gen)[None]
        else:
            unit = torch.zeros((1, ndim, *shape))
        for _ in range(max(self.max_tries, 1)):
            total = fields.compose(rigid, unit * amplitude_mm) if amplitude_mm > 0 else rigid
            if amplitude_mm == 0 or float(fields.jacobian_determinant(total).min()) > self.min_jacobian:
                break
            amplitude_mm *= 0.5
        else:
            total = rigid
        return total[0]

    def intensity(self, image: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Gamma (on the image rescaled to its [min, max]) then brightness ``* (1 + b)``; same shape."""
        gen = self._gen(generator)
        log_g = _uniform(gen, math.log(self.gamma[0]), math.log(self.gamma[1]))
        b = float(_uniform(gen, -self.brightness, self.brightness))
        g = float(torch.exp(log_g))
        lo, hi = image.min(), image.max()
        out = image
        if g != 1.0 and float(hi - lo) > 0:
            out = lo + (hi - lo) * ((image - lo) / (hi - lo)).clamp(0, 1) ** g
        return out * (1.0 + b)

    @staticmethod
    def _check_image(image: torch.Tensor, labels: Optional[torch.Tensor]) -> None:
        if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
            raise ValueError(
                f"image must be a tensor (C, H, W) or (C, D, H, W) without batch dimension, "
                f"got {getattr(image, 'shape', type(image).__name__)}"
            )
        if labels is not None and tuple(labels.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match image shape {tuple(image.shape)}")

    @staticmethod
    def _warp(image: torch.Tensor, disp_vox: torch.Tensor, labels: bool = False) -> torch.Tensor:
        mode = "nearest" if labels else "bilinear"
        out = fields.warp(image[None].float(), disp_vox[None], mode=mode, padding="zeros")[0]
        return out.round().to(image.dtype) if labels else out

    def __call__(
        self,
        image: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        spacing_mm: Optional[Sequence[float]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """Augment one image (and its label map the same way, nearest neighbour).

        Returns ``{"image": (C, *S), "labels": (C, *S) | absent, "disp_vox": (ndim, *S)}`` with
        ``image = intensity(warp(input, disp_vox))``.
        """
        self._check_image(image, labels)
        gen = self._gen(generator)
        disp = self.spatial_field(image.shape[1:], spacing_mm, gen)
        out = {"image": self.intensity(self._warp(image, disp), gen), "disp_vox": disp}
        if labels is not None:
            out["labels"] = self._warp(labels, disp, labels=True)
        return out

    def synthetic_pair(
        self,
        image: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        spacing_mm: Optional[Sequence[float]] = None,
        generator: Optional[torch.Generator] = None,
        inverse_iterations: int = 40,
    ) -> Dict[str, torch.Tensor]:
        """A registration pair with a known answer: ``fixed`` = the image, ``moving`` = a deformed copy.

        One intensity augmentation is applied to the source (so both images share it), a
        random field ``u = disp_true_vox`` is drawn and ``moving = warp(fixed, inverse(u))``,
        hence ``warp(moving, disp_true_vox) ~= fixed`` (up to interpolation and the numerical
        inverse; exact where nothing leaves the image). Returns ``moving``, ``fixed`` ``(C, *S)``,
        ``disp_true_vox`` ``(ndim, *S)``, and ``moving_labels`` / ``fixed_labels`` when given.
        """
        self._check_image(image, labels)
        gen = self._gen(generator)
        fixed = self.intensity(image.float(), gen)
        disp_true = self.spatial_field(image.shape[1:], spacing_mm, gen)
        inverse = invert_field(disp_true[None], inverse_iterations)[0]
        out = {"fixed": fixed, "moving": self._warp(fixed, inverse), "disp_true_vox": disp_true}
        if labels is not None:
            out["fixed_labels"] = labels
            out["moving_labels"] = self._warp(labels, inverse, labels=True)
        return out
