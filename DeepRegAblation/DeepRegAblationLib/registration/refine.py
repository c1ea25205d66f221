"""Instance refinement of one pair: coarse-to-fine optimisation of an affine part, then of a
stationary velocity field, from any start (a network's output, the identity, a centre-of-mass shift).

:func:`refine` works on a pyramid (``registration.pyramid``) of grids covering the fixed image;
:func:`refine_schedule` reads ``register(refine=...)`` (parsed with ``options.parse_refine``) into a
:class:`RefineSchedule`; the ``REFINE_*`` constants are the loss and the machinery shared by every
variant.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import fields, geometry, losses
from ..imageio import ImageData
from ..options import parse_refine
from .pyramid import REFINE_FOREGROUND, PyramidLevel, mapped_fraction

__all__ = [
    "RefineSchedule", "REFINE_SCHEDULES", "REFINE_LNCC_WINDOW", "REFINE_DIFFUSION_WEIGHT", "REFINE_FOLDING_WEIGHT",
    "REFINE_FOREGROUND", "REFINE_THREADS", "REFINE_MIN_OVERLAP", "refine_schedule", "RefineResult", "refine",
    "NETWORK_START_FLAT_WINDOW", "NETWORK_START_FLAT_TOLERANCE", "NETWORK_KEPT_ITERATIONS", "network_start_schedule",
]

Progress = Optional[Callable[[float, str], None]]


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
        flat_window, flat_tolerance: with ``flat_window > 0`` a level also stops once the loss has changed by
            less than ``flat_tolerance`` (relative) over the last ``flat_window`` steps: it has flattened.
        keep_start: ``False``: the starting deformable part is the velocity's starting value, on the first
            deformable level's control grid (coarsened to it). ``True``: it is kept as it is, resampled onto each
            level's own grid, and the refinement optimises a residual ``r = exp(v)`` composed with it,
            ``u(p) = r(p) + u_start(p + r(p))`` (``fields.compose``); the diffusion and folding penalties are on that
            total (level voxels), so the start's roughness is penalised as a velocity start's would be, without
            coarsening it.
        network_kept_iterations: after a trained network (:func:`network_start_schedule`): ``> 0``: the network's
            field is kept (``keep_start``) and each level runs at most this many steps; ``0``: it starts the velocity
            (``keep_start=False``) and the levels run ``affine_iterations`` / ``deform_iterations``.
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
    flat_window: int = 0
    flat_tolerance: float = 1e-3
    keep_start: bool = False
    network_kept_iterations: int = 0


NETWORK_KEPT_ITERATIONS = 8
"""Most steps per level of the recommended refinement after a network, whose field it keeps: on the validation pairs of
the four 3D datasets, 8 steps per level from the shipped ``affine_enhanced`` ended within 0.002 of the Dice of the whole
recommended refinement from the centre of mass or above it (+0.005 to +0.015 on three datasets), in 0.42-0.58 of its
time (``scripts/brains3d/network_start_levels.py --caps``; ``docs/results/distill-3d/README.md``, paragraph "The
network start keeps the network's field")."""

REFINE_SCHEDULES: Dict[str, RefineSchedule] = {
    "recommended": RefineSchedule("recommended", (8.0, 4.0), (8.0, 4.0, 2.0), 30, 25,
                                  network_kept_iterations=NETWORK_KEPT_ITERATIONS),
    "thorough": RefineSchedule("thorough", (8.0, 4.0, 2.0), (8.0, 4.0, 2.0, 1.0), 60, 60, min_factor=1),
}
"""The two named schedules: ``recommended`` (fast: 8, 4 and 2 mm, never the image's own resolution; after a network
its field kept, at most ``NETWORK_KEPT_ITERATIONS`` steps per level) and ``thorough`` (down to 1 mm or the image's
resolution; after a network its field starts the velocity: kept, the levels ran to their cap of 60 steps)."""
REFINE_LNCC_WINDOW = 5
"""LNCC window of the refinement, voxels of each level (20 mm at 4 mm, 10 mm at 2 mm)."""
REFINE_DIFFUSION_WEIGHT = 1.0
"""Weight of ``losses.grad_l2`` of the velocity field (voxels of the level), the same for every variant."""
REFINE_FOLDING_WEIGHT = 10.0
"""Weight of ``losses.jacobian_penalty`` of the integrated field."""
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
    A negative count or an unknown name raises ``ValueError`` (``options.parse_refine``)."""
    if isinstance(refine, RefineSchedule):
        return refine
    value = parse_refine(refine)
    if isinstance(value, str):
        return REFINE_SCHEDULES[value]
    if value == 0:
        return None
    base = REFINE_SCHEDULES["recommended"]
    return RefineSchedule("custom", base.affine_levels_mm, base.deform_levels_mm, value, value,
                          min_factor=base.min_factor, network_kept_iterations=value)


NETWORK_START_FLAT_WINDOW = 5
"""After a network: a level stops once its loss fell by less than ``NETWORK_START_FLAT_TOLERANCE`` over this many steps."""
NETWORK_START_FLAT_TOLERANCE = 1e-3


def network_start_schedule(plan: RefineSchedule, network_spacing_mm: float,
                           keep_start: Optional[bool] = None) -> RefineSchedule:
    """``plan`` for refining a trained network's output: the levels coarser than the network's grid are skipped
    (the network resolved them; the finest affine and deformable levels at or above the network's spacing stay)
    and a level stops once its loss has flattened (``flat_window``). With ``plan.network_kept_iterations > 0`` (the
    recommended schedule, an iteration count) the network's field is kept at its own resolution, the refinement
    composing a residual with it (:class:`RefineSchedule` ``keep_start``), and each level runs at most that many steps;
    otherwise (the thorough schedule) the field starts the velocity. ``keep_start`` (``True`` / ``False``) overrides
    the choice and leaves the iterations as they are. The name gets ``"+network"``."""
    def kept(levels: Sequence[float]) -> Tuple[float, ...]:
        fine = tuple(s for s in levels if s <= float(network_spacing_mm) + 1e-6)
        return fine if fine else tuple(levels[-1:])

    cap = plan.network_kept_iterations if keep_start is None else 0
    iterations = {} if cap <= 0 else dict(affine_iterations=min(plan.affine_iterations, cap),
                                          deform_iterations=min(plan.deform_iterations, cap))
    return dataclasses.replace(
        plan, name=f"{plan.name}+network", affine_levels_mm=kept(plan.affine_levels_mm),
        deform_levels_mm=kept(plan.deform_levels_mm), flat_window=NETWORK_START_FLAT_WINDOW,
        flat_tolerance=NETWORK_START_FLAT_TOLERANCE, keep_start=cap > 0 if keep_start is None else bool(keep_start),
        **iterations,
    )


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


_WARN_STACKLEVEL = 6
"""A non-finite loss warns at the caller of :func:`refine` (``_optimise`` <- one level <- its stage <-
``_refine_levels`` <- ``refine`` <- caller)."""


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
    values: List[float] = []
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
                f"(loss {best_loss:.5f}) and stopping the refinement there", RuntimeWarning, stacklevel=_WARN_STACKLEVEL,
            )
            break
        first = value if first is None else first
        if value < best_loss - schedule.tolerance * abs(best_loss) or best_state is None:
            best_loss, since_best = value, 0
            best_state = [t.detach().clone() for t in tensors]
        else:
            since_best += 1
        values.append(value)
        if step == iterations or since_best >= schedule.patience or _flattened(values, schedule):
            break
        loss.backward()
        optimizer.step()
        steps = step + 1
        progress(steps, value)
    with torch.no_grad():
        for tensor, saved in zip(tensors, best_state):
            tensor.copy_(saved)
    return {"iterations": steps, "loss_start": first, "loss_end": best_loss, "finite": math.isfinite(value)}


def _flattened(values: Sequence[float], schedule: RefineSchedule) -> bool:
    """True when the loss changed by less than ``flat_tolerance`` (relative) over the last ``flat_window`` steps.

    A loss that still moves either way is not flat: Adam's first steps from a network's output may raise it, and
    stopping there cost the demo's refined run 0.37 mm of end-point error (``deepreg-ablation demo``: 1.05 mm at
    commit 4a910e0, 0.68 mm with this rule)."""
    window = schedule.flat_window
    if window <= 0 or len(values) <= window:
        return False
    return abs(values[-1 - window] - values[-1]) < schedule.flat_tolerance * abs(values[-1])


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
    first level starts at ``v = u_start`` (``exp(u) ~ u`` for small ``u``); with ``schedule.keep_start``
    (:func:`network_start_schedule` ``keep_start=True``) ``u_start`` is kept at its own resolution instead and
    ``u(p) = r(p) + u_start(p + r(p))`` with ``r = exp(v)``, ``v`` starting at zero, and both penalties act on that
    total ``u`` on the level grid (level voxels) instead of on ``v`` and ``exp(v)``. Loss: ``losses.lncc``
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


class _AffineCorrection:
    """The affine part being optimised: ``A = A0 . D``, ``D(p) = (I + B)(p - c) + c + t`` an affine correction
    about the fixed image's centre ``c`` (``B``: :attr:`linear`, ``t``: :attr:`shift`, float64, start at 0)."""

    def __init__(self, fixed: ImageData, affine_ras: np.ndarray, device: torch.device):
        self.device = device
        a0 = np.asarray(affine_ras, dtype=np.float64)
        self.centre = torch.tensor(
            geometry.voxel_to_ras((np.asarray(fixed.shape[::-1], float) - 1) / 2.0, fixed.ijk_to_ras),
            dtype=torch.float64, device=device)
        self.linear = torch.zeros(3, 3, dtype=torch.float64, device=device, requires_grad=True)
        self.shift = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
        self.a0 = torch.as_tensor(a0, device=device)
        self.radius_mm = 0.5 * float(np.linalg.norm(np.asarray(fixed.shape, float) * np.asarray(fixed.spacing_kji)))
        if fixed.is_2d:
            self.radius_mm = 0.5 * float(np.linalg.norm(np.asarray(fixed.shape[1:], float) * np.asarray(fixed.spacing_kji[1:])))

    def matrix(self) -> torch.Tensor:
        """``(4, 4)`` float64 ``A0 . D`` (differentiable in :attr:`linear` and :attr:`shift`)."""
        device = self.device
        top = torch.cat([torch.eye(3, dtype=torch.float64, device=device) + self.linear,
                         (self.centre + self.shift - (torch.eye(3, dtype=torch.float64, device=device) + self.linear) @ self.centre)[:, None]], 1)
        bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64, device=device)
        return self.a0 @ torch.cat([top, bottom], 0)

    def param_groups(self, step_mm: float) -> List[Dict[str, Any]]:
        """Adam groups: the shift moves about ``step_mm`` per step, the linear part as much at the image's radius."""
        return [{"params": [self.shift], "lr": step_mm}, {"params": [self.linear], "lr": step_mm / self.radius_mm}]


class _Refinement:
    """One :func:`refine` run after the argument checks: its pyramid levels, progress, timings and history."""

    def __init__(self, fixed: ImageData, moving: ImageData, deform_ras: Optional[torch.Tensor],
                 deform_ijk_to_ras: Optional[np.ndarray], plan: RefineSchedule, device: torch.device, progress: Progress):
        self.fixed, self.moving, self.plan, self.device = fixed, moving, plan, device
        self.deform_ras, self.deform_ijk_to_ras = deform_ras, deform_ijk_to_ras
        self.has_start = deform_ras is not None and bool(torch.any(torch.as_tensor(deform_ras) != 0))
        self.kept_by_factors: Dict[Tuple[int, ...], torch.Tensor] = {}  # kept_start per level grid
        self.report = progress or (lambda fraction, message: None)
        self.ndim = 2 if fixed.is_2d else 3
        self.cache: Dict[Tuple[str, Tuple[int, ...]], Tuple[torch.Tensor, np.ndarray]] = {}
        self.timings: Dict[str, float] = {}
        self.history: List[Dict[str, Any]] = []
        self.done = 0
        self.total = 0

    def levels(self, spacings: Sequence[float]) -> List[PyramidLevel]:
        """The levels at ``spacings`` (mm), coarse to fine; levels that end up on the same grid run once."""
        out: List[PyramidLevel] = []
        for spacing in spacings:
            level = PyramidLevel(self.fixed, self.moving, float(spacing), self.ndim, self.device, self.cache,
                                 self.plan.min_factor, margin=REFINE_LNCC_WINDOW)
            if not out or level.factors != out[-1].factors:
                out.append(level)
        return out

    def start_field(self, level: PyramidLevel) -> Optional[torch.Tensor]:
        """The starting deformable part on the level's control grid (its voxels), ``None`` when zero."""
        if not self.has_start:
            return None
        return level.to_control_vox(torch.as_tensor(self.deform_ras), self.deform_ijk_to_ras)

    def kept_start(self, level: PyramidLevel) -> Optional[torch.Tensor]:
        """``plan.keep_start``: the starting deformable part on the level grid (level voxels), else ``None``."""
        if not (self.plan.keep_start and self.has_start):
            return None
        if level.factors not in self.kept_by_factors:
            self.kept_by_factors[level.factors] = level.to_level_vox(torch.as_tensor(self.deform_ras), self.deform_ijk_to_ras)
        return self.kept_by_factors[level.factors]

    def held_field(self, level: PyramidLevel) -> Optional[torch.Tensor]:
        """The deformable part the affine stage holds, on the level grid (level voxels); ``None`` when zero."""
        if self.plan.keep_start:
            return self.kept_start(level)
        disp = self.start_field(level)
        return None if disp is None else level.to_level(disp)

    def step_report(self, stage: str, level: PyramidLevel) -> Callable[[int, float], None]:
        """``progress(step, loss)`` of :func:`_optimise`: counts the steps, reports every tenth."""
        def callback(step: int, value: float) -> None:
            self.done += 1
            if step % 10 == 0:
                self.report(self.done / self.total, f"refine {stage} {level.name}: step {step}, loss {value:.4f}")
        return callback

    def check_overlap(self, level: PyramidLevel, affine: _AffineCorrection, disp: Optional[torch.Tensor], when: str) -> None:
        """``ValueError`` when the mapping takes less than ``REFINE_MIN_OVERLAP`` of the level into the moving image."""
        with torch.no_grad():
            _, grid = level.warp(affine.matrix(), disp)
        fraction = mapped_fraction(grid)
        if fraction < REFINE_MIN_OVERLAP:
            raise ValueError(
                f"refinement: {when} the mapping takes only {100 * fraction:.2f} % of the fixed image "
                f"(shape {self.fixed.shape}) into the moving image (shape {self.moving.shape}); the images do not overlap "
                f"after alignment: check their positions or align their centres of mass first (--init-align com)"
            )

    # ------------------------------------------------------------------ the affine stage
    def affine_stage(self, levels: List[PyramidLevel], affine: _AffineCorrection) -> bool:
        """Optimise ``affine`` level by level (the deformable part held at its start); True when a loss
        stopped being finite (the refinement ends there)."""
        for level in levels:
            t0 = time.perf_counter()
            record = self._affine_level(level, affine)
            self.timings[f"refine_affine_{level.name}"] = time.perf_counter() - t0
            if not record["finite"]:
                return True
        return False

    def _affine_level(self, level: PyramidLevel, affine: _AffineCorrection) -> Dict[str, Any]:
        disp = self.held_field(level)
        self.check_overlap(level, affine, disp, f"at the start of the affine stage ({level.name})")
        groups = affine.param_groups(self.plan.affine_step_vox * level.spacing_mm)
        loss_fn = lambda level=level, disp=disp: losses.lncc(level.fixed, level.warp(affine.matrix(), disp)[0], REFINE_LNCC_WINDOW)  # noqa: E731
        self.report(self.done / self.total, f"refine affine {level.name} ({level.shape})")
        record = _optimise(groups, loss_fn, self.plan.affine_iterations, self.plan, f"affine {level.name}",
                           self.step_report("affine", level))
        self.history.append(dict(level=f"affine_{level.name}", **record))
        return record

    # ------------------------------------------------------------------ the deformable stage
    def deform_stage(self, levels: List[PyramidLevel], affine: _AffineCorrection, affine_final: torch.Tensor,
                     stopped: bool) -> Tuple[torch.Tensor, PyramidLevel]:
        """Optimise the velocity field level by level, each starting from the last one's; returns the
        velocity ``(1, nd, *C)`` (voxels of its level's control grid) and that level."""
        velocity: Optional[torch.Tensor] = None
        velocity_level = levels[0]
        for level in levels:
            t0 = time.perf_counter()
            base = self.start_velocity(level, velocity, velocity_level)
            velocity, velocity_level = base, level
            if stopped:
                break
            if level is levels[0]:
                self.check_overlap(level, affine, self.kept_start(level), "after the affine stage")
            velocity, record = self._deform_level(level, base, affine_final)
            self.timings[f"refine_deform_{level.name}"] = time.perf_counter() - t0
            if not record["finite"]:
                break
        return velocity, velocity_level

    def start_velocity(self, level: PyramidLevel, velocity: Optional[torch.Tensor],
                       velocity_level: PyramidLevel) -> torch.Tensor:
        """The level's starting velocity: the start field (first level; zero with ``plan.keep_start``, where the
        velocity is the residual's), else the previous level's velocity carried onto this level's control grid;
        zero when there is none."""
        if velocity is None:
            base = None if self.plan.keep_start else self.start_field(level)
        else:
            base = level.to_control_vox(velocity_level.control_to_ras(velocity), velocity_level.control_ijk_to_ras)
        if base is None:
            base = torch.zeros((1, self.ndim) + level.control_shape, device=self.device)
        return base

    def _deform_level(self, level: PyramidLevel, base: torch.Tensor,
                      affine_final: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        plan = self.plan
        param = base.clone().requires_grad_(True)
        start = self.kept_start(level)

        def loss_fn(level=level, param=param, start=start) -> torch.Tensor:
            disp = fields.integrate_velocity(param, plan.int_steps)
            if start is None:
                warped, _ = level.warp(affine_final, level.to_level(disp))
                smoothed, folding = param, losses.jacobian_penalty(disp)
            else:  # the residual composed with the kept start, on the level grid; both penalties on that total
                total = fields.compose(start, level.to_level(disp))
                warped, _ = level.warp(affine_final, total)
                smoothed, folding = total, losses.jacobian_penalty(total)
            return (losses.lncc(level.fixed, warped, REFINE_LNCC_WINDOW)
                    + REFINE_DIFFUSION_WEIGHT * losses.grad_l2(smoothed)
                    + REFINE_FOLDING_WEIGHT * folding)

        self.report(self.done / self.total, f"refine deformable {level.name} ({level.shape})")
        # the velocity lives on the control grid (half the level's voxels per axis): a step of
        # deform_step_vox level voxels is half as many control voxels
        record = _optimise([{"params": [param], "lr": 0.5 * plan.deform_step_vox}], loss_fn, plan.deform_iterations, plan,
                           f"deformable {level.name}", self.step_report("deformable", level))
        self.history.append(dict(level=f"deform_{level.name}", **record))
        return param.detach(), record

    def result(self, affine_final: torch.Tensor, velocity: torch.Tensor, velocity_level: PyramidLevel) -> RefineResult:
        """The integrated velocity in RAS mm on its control grid (with ``plan.keep_start``: composed with the kept
        start, on the level grid), with the affine part."""
        t0 = time.perf_counter()
        start = self.kept_start(velocity_level)
        with torch.no_grad():
            disp = fields.integrate_velocity(velocity, self.plan.int_steps)
            if start is not None:  # the total on the level grid: the kept start keeps its resolution
                disp = fields.compose(start, velocity_level.to_level(disp))
        self.timings["refine_integrate"] = time.perf_counter() - t0
        self.report(1.0, "refinement done")
        if start is not None:
            deform_ras, grid = velocity_level.level_to_ras(disp), velocity_level.grid_ijk_to_ras.copy()
        else:
            deform_ras, grid = velocity_level.control_to_ras(disp), velocity_level.control_ijk_to_ras.copy()
        return RefineResult(affine_ras=affine_final.cpu().numpy(), deform_ras=deform_ras, grid_ijk_to_ras=grid,
                            timings=self.timings, history=self.history)


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
    """:func:`refine` after the argument checks: the affine stage, then the deformable stage."""
    run = _Refinement(fixed, moving, deform_ras, deform_ijk_to_ras, plan, device, progress)
    affine_levels = run.levels(plan.affine_levels_mm)
    deform_levels = run.levels(plan.deform_levels_mm)
    run.total = plan.affine_iterations * len(affine_levels) + plan.deform_iterations * len(deform_levels)
    affine = _AffineCorrection(fixed, affine_ras, device)
    stopped = run.affine_stage(affine_levels, affine)
    affine_final = affine.matrix().detach()
    velocity, velocity_level = run.deform_stage(deform_levels, affine, affine_final, stopped)
    return run.result(affine_final, velocity, velocity_level)
