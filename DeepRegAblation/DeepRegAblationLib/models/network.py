"""The registration network of one ablation variant: :class:`RegistrationModel`, built from plain data.

Shapes are batch-first, ``(B, C, *spatial)``; displacements are ``(B, ndim, *spatial)`` in voxels
(see ``fields``).

- :class:`RegistrationModel`: optional affine stage (``models.affine``), then the U-Net
  (``models.unet``) on ``concat(affinely warped moving, fixed)``; total displacement
  ``compose(affine_disp_vox, deform_disp_vox)`` and one interpolation of the original moving
  image.
- ``affine_passes`` > 1 runs the affine stage again on the moving image as the last pass left
  it and composes the answers (``A = A_1 @ A_2 ...``), the same weights in every pass.
- ``deform_passes`` > 1 (a cascade) runs the U-Net again on the moving image warped by the total field
  so far and composes its answer after the last one, the same weights in every pass.
- :func:`build_model` (an untrained network of a variant) and :func:`model_from_config` (the
  architecture a checkpoint records).

The four ablation variants share every architecture constant (:data:`DEFAULT_ARCH`); the
affine stage is the only architectural difference between them.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from .. import fields
from .affine import AFFINE_KINDS, AffineStage, KeypointAffineStage
from .unet import FlowHead, UNet, check_ndim, feature_tuple
from .variants import VariantSpec, get_variant

__all__ = ["DEFAULT_ARCH", "IN_CHANNELS", "RegistrationModel", "build_model", "model_from_config"]

DEFAULT_ARCH: Dict[str, Any] = dict(
    enc_features=(16, 32, 32, 32),
    dec_features=(32, 32, 32, 32, 32, 16, 16),
    diffeomorphic=False,
    int_steps=7,
    affine_features=(16, 32, 64, 64),
    affine_kind="keypoints",
    affine_keypoints=32,
    affine_keypoint_strides=3,
    affine_passes=1,
    deform_passes=1,
)
IN_CHANNELS = 2  # concat(moving, fixed), one channel each


# --------------------------------------------------------------------------- model
class RegistrationModel(nn.Module):
    """Pairwise registration network of one ablation variant.

    Attributes:
        ndim: 2 or 3.
        variant: the :class:`VariantSpec` it was built for (``variant.affine`` adds the affine stage).
        arch: the architecture constants (see :data:`DEFAULT_ARCH`).
        unet, flow: deformable part (same for every variant).
        affine: :class:`KeypointAffineStage` / :class:`AffineStage` (``arch["affine_kind"]``) or ``None``.
    """

    def __init__(self, variant: Union[str, VariantSpec], ndim: int, arch: Mapping[str, Any]):
        super().__init__()
        self.variant = get_variant(variant)
        self.ndim = check_ndim(ndim)
        self.arch = _normalize_arch(arch)
        self.unet = UNet(ndim, IN_CHANNELS, self.arch["enc_features"], self.arch["dec_features"])
        self.flow = FlowHead(ndim, self.unet.out_channels)
        self.affine = _affine_stage(ndim, self.arch) if self.variant.affine else None

    @property
    def size_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (``2 ** len(enc_features)``)."""
        return 2 ** len(self.arch["enc_features"])

    def parameter_counts(self) -> Dict[str, int]:
        """Number of parameters of the deformable part (U-Net + flow head) and of the affine stage."""
        deformable = sum(p.numel() for p in self.unet.parameters()) + sum(p.numel() for p in self.flow.parameters())
        affine = sum(p.numel() for p in self.affine.parameters()) if self.affine is not None else 0
        return {"deformable": deformable, "affine": affine}

    def _check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        nd = self.ndim
        layout = "(B, 1, D, H, W)" if nd == 3 else "(B, 1, H, W)"
        for name, t in (("moving", moving), ("fixed", fixed)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
            if t.dim() != nd + 2:
                raise ValueError(
                    f"{name} must be {layout} for a {nd}D model, got shape {tuple(t.shape)} "
                    f"({t.dim() - 2}D input to a {nd}D model)"
                )
            if t.shape[1] != 1:
                raise ValueError(f"{name} must have 1 channel {layout}, got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be floating point, got dtype {t.dtype} (shape {tuple(t.shape)})")
        if moving.shape != fixed.shape:
            raise ValueError(
                f"moving and fixed shapes differ: moving {tuple(moving.shape)} vs fixed {tuple(fixed.shape)}"
            )
        multiple = self.size_multiple
        if any(int(n) % multiple for n in moving.shape[2:]):
            raise ValueError(
                f"spatial size of moving/fixed {tuple(moving.shape[2:])} must be divisible by {multiple} "
                f"(2 ** len(enc_features) = 2 ** {len(self.arch['enc_features'])}); pad or resize the images"
            )
        fields.check_finite(moving, "moving")
        fields.check_finite(fixed, "fixed")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Register ``moving`` to ``fixed``.

        Args:
            moving, fixed: ``(B, 1, *S)``, same shape, ``S`` divisible by :attr:`size_multiple`.

        Returns:
            dict with
            ``"warped"`` ``(B, 1, *S)``: ``warp(moving, disp_vox)``;
            ``"disp_vox"`` ``(B, ndim, *S)``: total fixed -> moving displacement in voxels,
            ``compose(affine_disp_vox, deform_disp_vox)``;
            ``"affine_matrix_vox"`` ``(B, ndim + 1, ndim + 1)`` (identity without affine stage);
            ``"affine_disp_vox"`` ``(B, ndim, *S)`` (zeros without affine stage);
            ``"deform_disp_vox"`` ``(B, ndim, *S)``: the U-Net's displacement (with ``deform_passes`` > 1
            the composition of every pass's);
            ``"velocity_vox"`` ``(B, ndim, *S)`` only in diffeomorphic mode
            (``deform_disp_vox = integrate_velocity(velocity_vox, int_steps)``).
            Without the affine stage ``disp_vox`` and ``deform_disp_vox`` are the same tensor.
        """
        self._check_inputs(moving, fixed)
        batch, shape = moving.shape[0], tuple(moving.shape[2:])
        if self.affine is not None:
            matrix_vox = self.affine(torch.cat([moving, fixed], dim=1))
            for _ in range(self.arch["affine_passes"] - 1):  # each pass corrects what the last one left
                seen = fields.warp(moving, fields.affine_to_disp(matrix_vox, shape))
                matrix_vox = matrix_vox @ self.affine(torch.cat([seen, fixed], dim=1))
            affine_disp_vox = fields.affine_to_disp(matrix_vox, shape)
            moving_affine = fields.warp(moving, affine_disp_vox)
        else:
            matrix_vox = fields.identity_matrix(batch, self.ndim, device=moving.device, dtype=moving.dtype)
            affine_disp_vox = moving.new_zeros((batch, self.ndim) + shape)
            moving_affine = moving
        out: Dict[str, torch.Tensor] = {}
        deform_disp_vox = self._deformable_pass(moving_affine, fixed, out)
        disp_vox = self._total(affine_disp_vox, deform_disp_vox)
        for _ in range(self.arch["deform_passes"] - 1):  # each pass corrects what the total field so far left
            deform_disp_vox = fields.compose(deform_disp_vox, self._deformable_pass(fields.warp(moving, disp_vox), fixed))
            disp_vox = self._total(affine_disp_vox, deform_disp_vox)
        out.update(
            warped=fields.warp(moving, disp_vox),
            disp_vox=disp_vox,
            affine_matrix_vox=matrix_vox,
            affine_disp_vox=affine_disp_vox,
            deform_disp_vox=deform_disp_vox,
        )
        return out

    def _deformable_pass(self, moving: torch.Tensor, fixed: torch.Tensor,
                         out: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """The U-Net's displacement ``(B, ndim, *S)`` for ``moving`` -> ``fixed`` (integrated in diffeomorphic
        mode; its velocity goes to ``out["velocity_vox"]`` when ``out`` is given)."""
        field = self.flow(self.unet(torch.cat([moving, fixed], dim=1)))
        if not self.arch["diffeomorphic"]:
            return field
        if out is not None:
            out["velocity_vox"] = field
        return fields.integrate_velocity(field, self.arch["int_steps"])

    def _total(self, affine_disp_vox: torch.Tensor, deform_disp_vox: torch.Tensor) -> torch.Tensor:
        """``compose(affine, deformable)``; without an affine stage the deformable field itself (exactly)."""
        return fields.compose(affine_disp_vox, deform_disp_vox) if self.affine is not None else deform_disp_vox

    def config(self) -> Dict[str, Any]:
        """JSON-safe dict from which :func:`model_from_config` rebuilds this architecture."""
        arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.arch.items()}
        return {"variant": self.variant.to_dict(), "ndim": self.ndim, "arch": arch}

    def extra_repr(self) -> str:
        return f"variant={self.variant.id!r}, ndim={self.ndim}, diffeomorphic={self.arch['diffeomorphic']}"


def _affine_stage(ndim: int, arch: Mapping[str, Any]) -> nn.Module:
    if arch["affine_kind"] == "keypoints":
        return KeypointAffineStage(ndim, arch["affine_features"], arch["affine_keypoints"], arch["affine_keypoint_strides"])
    return AffineStage(ndim, IN_CHANNELS, arch["affine_features"])


def _normalize_arch(arch: Mapping[str, Any]) -> Dict[str, Any]:
    """Complete ``arch`` with :data:`DEFAULT_ARCH`, validate it, feature lists as tuples."""
    if not isinstance(arch, Mapping):
        raise ValueError(f"arch must be a mapping, got {type(arch).__name__}")
    unknown = sorted(set(arch) - set(DEFAULT_ARCH))
    if unknown:
        raise ValueError(f"unknown architecture option(s) {unknown}; valid options: {sorted(DEFAULT_ARCH)}")
    merged = dict(DEFAULT_ARCH)
    merged.update(arch)
    merged["enc_features"] = feature_tuple(merged["enc_features"], "enc_features")
    merged["dec_features"] = feature_tuple(merged["dec_features"], "dec_features")
    merged["affine_features"] = feature_tuple(merged["affine_features"], "affine_features")
    if not isinstance(merged["diffeomorphic"], bool):
        raise ValueError(f"diffeomorphic must be True or False, got {merged['diffeomorphic']!r}")
    if merged["affine_kind"] not in AFFINE_KINDS:
        raise ValueError(f"affine_kind must be one of {list(AFFINE_KINDS)}, got {merged['affine_kind']!r}")
    keypoints = merged["affine_keypoints"]
    if isinstance(keypoints, bool) or not isinstance(keypoints, int) or keypoints < 4:
        raise ValueError(f"affine_keypoints must be an int >= 4, got {keypoints!r}")
    strides = merged["affine_keypoint_strides"]
    if isinstance(strides, bool) or not isinstance(strides, int) or not 0 <= strides <= len(merged["affine_features"]):
        raise ValueError(
            f"affine_keypoint_strides must be an int from 0 to len(affine_features) = {len(merged['affine_features'])}, "
            f"got {strides!r}"
        )
    for name in ("affine_passes", "deform_passes"):
        passes = merged[name]
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"{name} must be an int >= 1, got {passes!r}")
    steps = merged["int_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"int_steps must be an int >= 0, got {steps!r}")
    return merged


def build_model(variant: Union[str, VariantSpec], ndim: int, **arch_overrides: Any) -> RegistrationModel:
    """Untrained :class:`RegistrationModel` for ``variant`` (id or spec) in ``ndim`` (2 or 3) dimensions.

    ``arch_overrides`` replace entries of :data:`DEFAULT_ARCH` (``ValueError`` on unknown keys).
    Parameters are initialised from torch's global RNG: seed it for reproducible builds.
    """
    return RegistrationModel(variant, ndim, arch_overrides)


def model_from_config(config: Mapping[str, Any]) -> RegistrationModel:
    """Rebuild a model from :meth:`RegistrationModel.config` (untrained weights).

    A config without ``affine_kind`` comes from a checkpoint made before the keypoint stage:
    its affine stage is the ``"regression"`` one.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"model config must be a mapping, got {type(config).__name__}")
    missing = sorted({"variant", "ndim", "arch"} - set(config))
    if missing:
        raise ValueError(f"model config misses {missing}; got keys {sorted(config)}")
    arch = dict(config["arch"])
    arch.setdefault("affine_kind", "regression")
    return RegistrationModel(VariantSpec.from_dict(config["variant"]), config["ndim"], arch)
