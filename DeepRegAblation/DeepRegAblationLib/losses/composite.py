"""The training loss: :class:`CompositeLoss` (similarity + scheduled regularizers + optional Dice and
affine-stage terms), the registries of the losses by name, and the regularizer schedules.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from .. import fields
from .checks import check_disp, check_image, check_pair
from .distillation import field_distance
from .labels import cross_entropy_logits, foreground_mask, hausdorff_dt, one_hot_pair, soft_dice
from .regularizers import bending_energy, displacement_hinge, grad_l1, grad_l2, jacobian_penalty, local_rigidity
from .similarity import gncc, lncc, mse, mutual_information, ssim_loss

__all__ = ["SIMILARITIES", "LABEL_LOSSES", "REGULARIZERS", "SCHEDULES", "reference_schedule", "CompositeLoss"]


SIMILARITIES: Dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse,
    "lncc": lncc,
    "gncc": gncc,
    "ssim_loss": ssim_loss,
    "mutual_information": mutual_information,
}
"""Image similarity losses ``fn(fixed, warped)``."""

LABEL_LOSSES: Dict[str, Callable[..., torch.Tensor]] = {
    "soft_dice": soft_dice,
    "cross_entropy_logits": cross_entropy_logits,
    "hausdorff_dt": hausdorff_dt,
}
"""Label losses ``fn(a, b)`` on one-hot / label maps (not valid as image similarities)."""

REGULARIZERS: Dict[str, Callable[..., torch.Tensor]] = {
    "grad_l2": grad_l2,
    "grad_l1": grad_l1,
    "bending_energy": bending_energy,
    "displacement_hinge": displacement_hinge,
    "local_rigidity": local_rigidity,
    "jacobian_penalty": jacobian_penalty,
}
"""Displacement regularizers ``fn(disp_vox)``."""


def reference_schedule(epoch: float, epochs: float) -> float:
    """Regularizer multiplier of the reference study: ``max(0.01, 0.1 * (1 - epoch / epochs))``."""
    if not epochs > 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    return max(0.01, 0.1 * (1.0 - float(epoch) / float(epochs)))


SCHEDULES: Dict[str, Callable[[float, float], float]] = {
    "reference": reference_schedule,
    "constant": lambda epoch, epochs: 1.0,
}


class CompositeLoss(nn.Module):
    """Similarity + weighted regularizers (+ optional label Dice), optionally uncertainty-weighted.

    ``total = similarity_weight * L_sim + sum_r schedule(epoch) * w_r * L_r + seg_weight * L_seg``.

    - Regularizers act on ``outputs["deform_disp_vox"]`` when present, else on
      ``outputs["disp_vox"]``: the affine stage's field is linear, so smoothness, bending,
      rigidity and hinge penalties on the total field would fight a legitimate global
      scaling/shear/translation rather than the deformable residual they are meant to tame.
    - ``schedule``: ``"reference"`` (:func:`reference_schedule`) or ``"constant"`` (1)
      multiplies every regularizer weight.
    - ``uncertainty=True`` (Kendall et al. 2018): each term ``T_i`` above becomes
      ``exp(-s_i) T_i + s_i`` with a learned log-variance ``s_i`` (``nn.Parameter``, init 0,
      so the first step equals the unweighted loss). ``s_i`` is used through the smooth
      bound ``s_max * tanh(s_i / s_max)``: a term that is exactly zero (a hinge below
      threshold, no folds) would otherwise drive ``s_i`` to ``-inf`` and the total with it.
    - ``seg_weight > 0`` with ``fixed_labels`` and ``moving_labels`` given adds soft Dice
      between the fixed labels and the moving labels (one-hot) warped linearly by the
      total ``outputs["disp_vox"]``.
    - ``distill_weight > 0`` with ``teacher_disp_vox`` given adds ``distill_weight`` times the mean end-point
      error (voxels) between the total field and the teacher's (``losses.distillation.field_distance``).
    - ``similarity_mask_dilation = N`` (an integer, ``lncc`` only): the similarity (and the affine stage's) counts
      only the fixed image's labelled voxels (``fixed_foreground``, else ``fixed_labels``) grown by ``N`` voxels
      (:func:`losses.labels.foreground_mask`); voxels outside count as flat windows (``lncc``'s ``mask``). On a head
      with skull, the network is trained to align the labelled brain rather than the skull around it; on a
      skull-stripped brain the loss hardly changes. A pair given neither (its fixed image has no labels) counts
      every voxel.
    - ``affine_weight > 0`` with ``outputs["affine_disp_vox"]`` (a model with an affine stage)
      supervises the affine stage on its own: ``affine_weight * (L_sim + seg_weight * L_seg)``
      of the moving image (and labels) warped by the affine part alone. Without it the affine
      stage learns only through the total field, where the U-Net makes up for what it leaves.

    ``forward`` returns ``(total, terms)``; ``terms`` holds python floats: the *unweighted*
    value of each term (``"similarity"``, each regularizer name, ``"seg"``, ``"affine_similarity"``,
    ``"affine_seg"``, ``"distill"``), ``"schedule"`` and ``"total"``.
    """

    def __init__(
        self,
        similarity: str = "lncc",
        regularizers: Optional[Dict[str, float]] = None,
        schedule: str = "reference",
        uncertainty: bool = False,
        seg_weight: float = 0.0,
        similarity_weight: float = 1.0,
        num_labels: Optional[int] = None,
        max_log_var: float = 6.0,
        affine_weight: float = 0.0,
        distill_weight: float = 0.0,
        similarity_mask_dilation: Optional[int] = None,
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            extra = " (a label loss, not an image similarity)" if similarity in LABEL_LOSSES else ""
            raise ValueError(f"similarity must be one of {sorted(SIMILARITIES)}, got {similarity!r}{extra}")
        regularizers = dict(regularizers or {})
        for name, weight in regularizers.items():
            if name not in REGULARIZERS:
                raise ValueError(f"regularizers key {name!r} is not one of {sorted(REGULARIZERS)}")
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"regularizers[{name!r}] must be a finite weight >= 0, got {weight!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        for value, name in ((seg_weight, "seg_weight"), (similarity_weight, "similarity_weight"),
                            (affine_weight, "affine_weight"), (distill_weight, "distill_weight")):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if similarity_mask_dilation is not None:
            if isinstance(similarity_mask_dilation, bool) or not isinstance(similarity_mask_dilation, int) \
                    or similarity_mask_dilation < 0:
                raise ValueError(f"similarity_mask_dilation must be None or an integer >= 0, got {similarity_mask_dilation!r}")
            if similarity != "lncc":
                raise ValueError(f"similarity_mask_dilation needs the lncc similarity, got {similarity!r}")
        if not max_log_var > 0:
            raise ValueError(f"max_log_var must be positive, got {max_log_var}")
        self.similarity = similarity
        self.regularizers = {k: float(v) for k, v in regularizers.items()}
        self.schedule = schedule
        self.seg_weight = float(seg_weight)
        self.similarity_weight = float(similarity_weight)
        self.affine_weight = float(affine_weight)
        self.distill_weight = float(distill_weight)
        self.similarity_mask_dilation = similarity_mask_dilation
        self.num_labels = num_labels
        self.max_log_var = float(max_log_var)
        self.uncertainty = bool(uncertainty)
        self.log_vars = nn.ParameterDict()
        if self.uncertainty:
            names = ["similarity"] + list(self.regularizers) + (["seg"] if self.seg_weight > 0 else [])
            for name in names:
                self.log_vars[name] = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_variant(cls, spec, **kw) -> "CompositeLoss":
        """Build from a ``models.variants.VariantSpec`` (reads ``similarity``, ``regularizers``, ``schedule``)."""
        return cls(similarity=spec.similarity, regularizers=dict(spec.regularizers), schedule=spec.schedule, **kw)

    def schedule_value(self, epoch: float, epochs: float) -> float:
        """Multiplier of every regularizer weight at ``epoch`` of ``epochs``."""
        return SCHEDULES[self.schedule](epoch, epochs)

    def _weighted(self, name: str, value: torch.Tensor) -> torch.Tensor:
        if not self.uncertainty:
            return value
        s = self.max_log_var * torch.tanh(self.log_vars[name] / self.max_log_var)
        return torch.exp(-s) * value + s

    def forward(
        self,
        outputs: Dict[str, torch.Tensor],
        fixed: torch.Tensor,
        moving: Optional[torch.Tensor] = None,
        fixed_labels: Optional[torch.Tensor] = None,
        moving_labels: Optional[torch.Tensor] = None,
        epoch: float = 0,
        epochs: float = 1,
        teacher_disp_vox: Optional[torch.Tensor] = None,
        fixed_foreground: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Total loss and per-term values.

        Args:
            outputs: model output dict with ``"disp_vox"`` ``(B, ndim, *S)`` and ``"warped"``
                ``(B, C, *S)`` (computed as ``warp(moving, disp_vox)`` when absent and
                ``moving`` is given); ``"deform_disp_vox"`` optional.
            fixed: ``(B, C, *S)``.
            moving: ``(B, C, *S)``, only needed without ``outputs["warped"]``.
            fixed_labels, moving_labels: ``(B, 1, *S)`` label maps or ``(B, L, *S)`` one-hot.
            epoch, epochs: position in training, for the schedule.
            teacher_disp_vox: ``(B, ndim, *S)`` a teacher's total field of the pair (distillation; used when
                ``distill_weight > 0``).
            fixed_foreground: ``(B, 1, *S)`` the fixed image's labelled voxels (``> 0``; the similarity mask, else
                ``fixed_labels``; used with ``similarity_mask_dilation``).
        """
        disp, warped = self._fields(outputs, fixed, moving)
        terms: Dict[str, float] = {}
        mask = self._similarity_mask(fixed, fixed_labels if fixed_foreground is None else fixed_foreground)
        total = self._similarity_term(fixed, warped, terms, mask)
        total = self._add_regularizers(total, outputs, disp, epoch, epochs, terms)
        labels = None
        if self.seg_weight > 0 and fixed_labels is not None and moving_labels is not None:
            labels = self._one_hot_labels(fixed, fixed_labels, moving_labels, disp.dtype)
            total = self._add_seg(total, labels, disp, terms)
        affine_disp = outputs.get("affine_disp_vox")
        if self.affine_weight > 0 and affine_disp is not None:
            total = self._add_affine_terms(total, fixed, moving, affine_disp, labels, terms, mask)
        if self.distill_weight > 0 and teacher_disp_vox is not None:
            distill = field_distance(disp, teacher_disp_vox)
            terms["distill"] = float(distill.detach())
            total = total + self.distill_weight * distill
        terms["total"] = float(total.detach())
        return total, terms

    # ------------------------------------------------------------------ the steps of forward()
    @staticmethod
    def _fields(
        outputs: Dict[str, torch.Tensor], fixed: torch.Tensor, moving: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(disp_vox, warped)`` of ``outputs`` (``warped`` computed from ``moving`` when absent)."""
        if not isinstance(outputs, dict) or "disp_vox" not in outputs:
            raise ValueError("outputs must be the model's output dict with a 'disp_vox' entry")
        ndim = check_image(fixed, "fixed")
        disp = outputs["disp_vox"]
        check_disp(disp, "outputs['disp_vox']")
        if disp.dim() != ndim + 2 or disp.shape[0] != fixed.shape[0] or disp.shape[2:] != fixed.shape[2:]:
            raise ValueError(
                f"outputs['disp_vox'] must be (B, {ndim}, *S) matching fixed {tuple(fixed.shape)}, "
                f"got {tuple(disp.shape)}"
            )
        warped = outputs.get("warped")
        if warped is None:
            if moving is None:
                raise ValueError("outputs has no 'warped' entry and moving was not given")
            check_pair(fixed, moving, "fixed", "moving")
            warped = fields.warp(moving, disp)
        check_pair(fixed, warped, "fixed", "outputs['warped']")
        return disp, warped

    def _similarity_mask(self, fixed: torch.Tensor, labelled: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``None``, or with ``similarity_mask_dilation`` the ``(B, 1, *S)`` mask of the fixed image's labelled voxels
        (``labelled``: ``fixed_foreground`` or ``fixed_labels``) grown by that many voxels (``None`` without them)."""
        if self.similarity_mask_dilation is None or labelled is None:
            return None
        mask = foreground_mask(labelled, self.similarity_mask_dilation)
        if mask.shape[0] != fixed.shape[0] or mask.shape[2:] != fixed.shape[2:]:
            raise ValueError(f"the fixed labels' shape {tuple(labelled.shape)} does not match fixed {tuple(fixed.shape)}")
        return mask.to(fixed.dtype)

    def _similarity(self, fixed: torch.Tensor, warped: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The unweighted similarity loss (``mask``: see :meth:`_similarity_mask`)."""
        if mask is None:
            return SIMILARITIES[self.similarity](fixed, warped)
        return SIMILARITIES[self.similarity](fixed, warped, mask=mask)

    def _similarity_term(self, fixed: torch.Tensor, warped: torch.Tensor, terms: Dict[str, float],
                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weighted similarity, the first term of the total."""
        sim = self._similarity(fixed, warped, mask)
        terms["similarity"] = float(sim.detach())
        return self._weighted("similarity", self.similarity_weight * sim)

    def _add_regularizers(self, total: torch.Tensor, outputs: Dict[str, torch.Tensor], disp: torch.Tensor,
                          epoch: float, epochs: float, terms: Dict[str, float]) -> torch.Tensor:
        """``total`` plus each scheduled, weighted regularizer of the deformable field (one at a time, in order)."""
        sched = self.schedule_value(epoch, epochs)
        terms["schedule"] = float(sched)
        reg_disp = outputs.get("deform_disp_vox")
        if reg_disp is None:
            reg_disp = disp
        elif reg_disp.shape != disp.shape:
            raise ValueError(
                f"outputs['deform_disp_vox'] shape {tuple(reg_disp.shape)} differs from "
                f"outputs['disp_vox'] {tuple(disp.shape)}"
            )
        for name, weight in self.regularizers.items():
            value = REGULARIZERS[name](reg_disp)
            terms[name] = float(value.detach())
            total = total + self._weighted(name, sched * weight * value)
        return total

    def _one_hot_labels(self, fixed: torch.Tensor, fixed_labels: torch.Tensor, moving_labels: torch.Tensor,
                        dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(fixed, moving)`` labels one-hot ``(B, L, *S)`` of ``dtype``, checked against ``fixed``."""
        fixed_oh, moving_oh = one_hot_pair(
            fixed_labels, moving_labels, self.num_labels, "fixed_labels", "moving_labels"
        )
        if fixed_oh.shape[2:] != fixed.shape[2:] or fixed_oh.shape[0] != fixed.shape[0]:
            raise ValueError(
                f"fixed_labels shape {tuple(fixed_labels.shape)} does not match fixed {tuple(fixed.shape)}"
            )
        return fixed_oh.to(dtype), moving_oh.to(dtype)

    def _add_seg(self, total: torch.Tensor, labels: Tuple[torch.Tensor, torch.Tensor], disp: torch.Tensor,
                 terms: Dict[str, float]) -> torch.Tensor:
        """``total`` plus the weighted soft Dice of the moving labels warped by the total field."""
        fixed_oh, moving_oh = labels
        seg = soft_dice(fixed_oh, fields.warp(moving_oh, disp))
        terms["seg"] = float(seg.detach())
        return total + self._weighted("seg", self.seg_weight * seg)

    def _add_affine_terms(self, total: torch.Tensor, fixed: torch.Tensor, moving: Optional[torch.Tensor],
                          affine_disp: torch.Tensor, labels: Optional[Tuple[torch.Tensor, torch.Tensor]],
                          terms: Dict[str, float], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``total`` plus ``affine_weight`` times the affine stage's own similarity (and Dice, with ``labels``)."""
        if moving is None:
            raise ValueError("affine_weight > 0 needs the moving image")
        check_pair(fixed, moving, "fixed", "moving")
        affine_term = self._similarity(fixed, fields.warp(moving, affine_disp), mask)
        terms["affine_similarity"] = float(affine_term.detach())
        if labels is not None:
            fixed_oh, moving_oh = labels
            affine_seg = soft_dice(fixed_oh, fields.warp(moving_oh, affine_disp))
            terms["affine_seg"] = float(affine_seg.detach())
            affine_term = affine_term + self.seg_weight * affine_seg
        return total + self.affine_weight * affine_term
