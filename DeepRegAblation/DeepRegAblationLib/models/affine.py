"""The affine stage of the ``affine_*`` variants: keypoint matching (default) or regression.

Input ``(B, 2, *S)`` = ``cat(moving, fixed)``; output ``matrix_vox`` ``(B, ndim + 1, ndim + 1)``, the
homogeneous map of fixed voxel coordinates to moving voxel coordinates (tensor axis order).

- :class:`KeypointAffineStage` (``affine_kind="keypoints"``, the default): a shared encoder
  finds ``affine_keypoints`` keypoints in each image (spatial soft-argmax of heat maps) and
  the affine is their least-squares fit (:func:`affine_from_keypoints`), solved in closed form.
  Translation, rotation, scale and shear follow the keypoints, so a shift of the image shifts
  the answer exactly.
- :class:`AffineStage` (``affine_kind="regression"``, checkpoints made before the keypoint
  stage): stride-2 convolutions, global average pooling, a linear layer to
  ``ndim * ndim + ndim`` parameters, initialised to zero so that the stage starts as exactly
  the identity.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .. import fields
from .unet import CONV, ConvAct, check_ndim, conv_forward, feature_tuple

__all__ = ["AFFINE_KINDS", "KEYPOINT_RIDGE", "AffineStage", "KeypointAffineStage", "affine_from_keypoints"]

AFFINE_KINDS = ("keypoints", "regression")
"""``arch["affine_kind"]``: :class:`KeypointAffineStage` or :class:`AffineStage`."""
KEYPOINT_RIDGE = 1e-3  # ridge towards the identity, per keypoint, in half-extent units


class AffineStage(nn.Module):
    """Affine regression: ``(B, in_channels, *S)`` -> ``matrix_vox`` ``(B, ndim + 1, ndim + 1)``.

    Stride-2 ``ConvAct`` layers (``features``), global average pooling and a linear layer to
    ``ndim * ndim + ndim`` parameters ``p``. The linear part is ``I + p[:ndim*ndim]`` (row-major)
    about the grid centre; the translation in voxels is ``p[ndim*ndim:] * (S - 1) / 2``, i.e. the
    head predicts it in units of the half-extent of each axis (so one output unit spans half
    the image at any resolution, and Adam's step size is sensible for shifts of many voxels).
    The linear layer is initialised to zero: at initialisation the matrix is exactly ``I``.
    The matrix maps fixed voxel coordinates to moving voxel coordinates (tensor axis order).
    """

    def __init__(self, ndim: int, in_channels: int, features: Sequence[int]):
        super().__init__()
        self.ndim = check_ndim(ndim)
        feats = feature_tuple(features, "affine_features")
        layers = []
        prev = in_channels
        for nf in feats:
            layers.append(ConvAct(ndim, prev, nf, stride=2))
            prev = nf
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(prev, ndim * ndim + ndim)
        with torch.no_grad():
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = self.ndim
        shape = x.shape[2:]
        pooled = self.features(x).mean(dim=tuple(range(2, 2 + nd)))
        params = self.head(pooled)
        eye = torch.eye(nd, dtype=params.dtype, device=params.device)
        linear = eye + params[:, : nd * nd].reshape(-1, nd, nd)
        half_extent = torch.tensor([(int(n) - 1) / 2.0 for n in shape], dtype=params.dtype, device=params.device)
        translation_vox = params[:, nd * nd :] * half_extent
        return fields.centered_affine_matrix(linear, translation_vox, shape)


class KeypointAffineStage(nn.Module):
    """Affine from matched keypoints: ``(B, 2, *S)`` = ``cat(moving, fixed)`` -> ``matrix_vox`` ``(B, nd+1, nd+1)``.

    One encoder (the same weights for both images: ``affine_features`` 3x3 convolutions, the
    first ``strides`` (``arch["affine_keypoint_strides"]``) with stride 2) ends in a 1x1 convolution
    to ``K`` heat maps;
    a spatial softmax of each map gives one keypoint per map as the expected voxel position
    (cell ``o`` of a stride-``s`` map stands for voxel ``s * o``). With fixed keypoints
    ``q_k`` and moving keypoints ``p_k`` (voxels, in half-extent units about the grid
    centre), the fixed -> moving affine ``A`` (``nd x (nd+1)``) is the ridge least-squares fit

        ``A = (P Q^T + r K A0) (Q Q^T + r K I)^-1``,  ``Q = [q; 1]``, ``A0 = [I | 0]``,

    which is ``A0`` exactly when the two images are the same, and well defined whatever the
    keypoints (``r`` = :data:`KEYPOINT_RIDGE`). Gradients flow through the solve to the
    heat maps. Keypoints move with the image content, so the stage can express any
    translation, rotation, scale and shear, unlike a globally pooled regression.
    """

    def __init__(self, ndim: int, features: Sequence[int], keypoints: int, strides: int = 3):
        super().__init__()
        self.ndim = check_ndim(ndim)
        feats = feature_tuple(features, "affine_features")
        keypoints = int(keypoints)
        if keypoints < self.ndim + 1:
            raise ValueError(f"affine_keypoints must be >= ndim + 1 = {self.ndim + 1}, got {keypoints}")
        self.keypoints = keypoints
        self.stride = 2 ** min(int(strides), len(feats))  # voxels per heat-map cell
        layers, prev = [], 1
        for level, nf in enumerate(feats):
            layers.append(ConvAct(ndim, prev, nf, stride=2 if level < int(strides) else 1))
            prev = nf
        self.features = nn.Sequential(*layers)
        self.heatmaps = CONV[ndim](prev, keypoints, kernel_size=1)

    def keypoints_vox(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *S)`` -> ``(B, K, ndim)`` keypoints in voxels of the input grid (tensor axis order)."""
        logits = conv_forward(self.heatmaps, self.features(image))
        batch, k, cells = logits.shape[0], logits.shape[1], logits.shape[2:]
        weights = torch.softmax(logits.reshape(batch, k, -1).float(), dim=-1)
        axes = [torch.arange(n, dtype=weights.dtype, device=weights.device) * self.stride for n in cells]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.ndim)
        return weights @ grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = self.keypoints_vox(torch.cat([x[:, :1], x[:, 1:2]], dim=0))
        moving_kp, fixed_kp = both.chunk(2, dim=0)
        return affine_from_keypoints(moving_kp, fixed_kp, x.shape[2:], KEYPOINT_RIDGE * self.keypoints).to(x.dtype)


def affine_from_keypoints(
    moving_kp: torch.Tensor, fixed_kp: torch.Tensor, shape: Sequence[int], ridge: float = 0.0
) -> torch.Tensor:
    """Least-squares affine taking fixed keypoints onto moving ones, as a voxel matrix ``(B, nd+1, nd+1)``.

    Args:
        moving_kp, fixed_kp: ``(B, K, nd)`` matched keypoints in voxels (tensor axis order), ``K >= nd + 1``.
        shape: the grid's spatial shape; the fit is done in half-extent units about its centre.
        ridge: weight of the pull towards the identity (``0``: plain least squares).

    Returns:
        ``A`` with ``A @ [q; 1] ~= [p; 1]`` for fixed keypoint ``q`` and moving keypoint ``p``.
    """
    nd = len(shape)
    centre = torch.tensor([(int(n) - 1) / 2.0 for n in shape], dtype=fixed_kp.dtype, device=fixed_kp.device)
    half = torch.clamp(centre, min=0.5)
    p = ((moving_kp - centre) / half).transpose(1, 2)  # (B, nd, K)
    q = ((fixed_kp - centre) / half).transpose(1, 2)
    q1 = torch.cat([q, torch.ones_like(q[:, :1])], dim=1)  # (B, nd+1, K)
    eye = torch.eye(nd + 1, dtype=q.dtype, device=q.device)
    gram = q1 @ q1.transpose(1, 2) + ridge * eye
    rhs = p @ q1.transpose(1, 2) + ridge * eye[:nd]  # ridge towards A0 = [I | 0]
    a_norm = torch.linalg.solve(gram, rhs.transpose(1, 2)).transpose(1, 2)  # gram is symmetric; (B, nd, nd+1)
    # back to voxels: x_n = (x - c) / h, so A_vox = D^-1 [A_n; 0 1] D
    linear = half[:, None] * a_norm[:, :, :nd] / half[None, :]
    offset = centre + half * a_norm[:, :, nd] - (linear @ centre[:, None])[..., 0]
    top = torch.cat([linear, offset[..., None]], dim=-1)
    bottom = eye[nd:].expand(top.shape[0], 1, nd + 1)
    return torch.cat([top, bottom], dim=1)
