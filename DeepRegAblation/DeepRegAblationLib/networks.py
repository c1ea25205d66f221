"""Registration networks: a voxelmorph-style U-Net, an affine stage and :class:`RegistrationModel`.

One code path serves 2D and 3D (``ndim``). Shapes are batch-first, ``(B, C, *spatial)``;
displacements are ``(B, ndim, *spatial)`` in voxels (see ``fields``).

- :class:`UNet`: encoder of stride-2 convolutions (``enc_features``), decoder whose first
  ``len(enc_features)`` convolutions are each followed by a nearest-neighbour x2 upsampling
  and a skip concatenation (the last skip is the input itself), the remaining decoder
  convolutions at full resolution. 3x3(x3) convolutions, LeakyReLU(0.2), no normalization.
- :class:`FlowHead`: one convolution to ``ndim`` channels, weights ``Normal(0, 1e-5)``, zero
  bias. Its output is the displacement (or velocity) in voxels as is: no tanh, no scaling,
  no cap, identical for every variant.
- :class:`KeypointAffineStage` (``affine_kind="keypoints"``, the default): a shared encoder
  finds ``affine_keypoints`` keypoints in each image (spatial soft-argmax of heat maps) and
  the affine is their least-squares fit, solved in closed form. Translation, rotation, scale
  and shear follow the keypoints, so a shift of the image shifts the answer exactly.
- :class:`AffineStage` (``affine_kind="regression"``, checkpoints made before the keypoint
  stage): stride-2 convolutions, global average pooling, a linear layer to
  ``ndim * ndim + ndim`` parameters, initialised to zero so that the stage starts as exactly
  the identity.
- ``affine_passes`` > 1 runs the affine stage again on the moving image as the last pass left
  it and composes the answers (``A = A_1 @ A_2 ...``), the same weights in every pass.
- :class:`RegistrationModel`: optional affine stage, then the U-Net on
  ``concat(affinely warped moving, fixed)``; total displacement
  ``compose(affine_disp_vox, deform_disp_vox)`` and one interpolation of the original moving
  image.

The four ablation variants share every architecture constant (:data:`DEFAULT_ARCH`); the
affine stage is the only architectural difference between them.

Speed: plain convolutions and in-place LeakyReLU; on CPU the convolutions run in
channels-last memory layout (oneDNN's fast path; see :data:`CPU_CHANNELS_LAST`). Parameters
and outputs keep the ordinary layout.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fields
from .variants import VariantSpec, get_variant

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
)
AFFINE_KINDS = ("keypoints", "regression")
KEYPOINT_RIDGE = 1e-3  # ridge towards the identity, per keypoint, in half-extent units
LEAKY_SLOPE = 0.2
FLOW_INIT_STD = 1e-5
IN_CHANNELS = 2  # concat(moving, fixed), one channel each

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
UPSAMPLE_MODE = "nearest"  # as voxelmorph
# On CPU, convolutions run in channels-last layout: same values up to float rounding,
# measured ~1.2x faster forward+backward (1.3x forward) at 64^3 and 256^2 on one thread.
CPU_CHANNELS_LAST = True


def _check_ndim(ndim: Any) -> int:
    if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return ndim


def _features(value: Any, name: str) -> Tuple[int, ...]:
    try:
        feats = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}") from None
    if not feats or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in feats):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return feats


# --------------------------------------------------------------------------- layers
def _conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; on CPU in channels-last memory layout (oneDNN's fast path, same values
    up to float rounding; parameters and results keep their ordinary layout semantics)."""
    if CPU_CHANNELS_LAST and x.device.type == "cpu":
        layout = _CHANNELS_LAST[x.dim()]
        weight = conv.weight.contiguous(memory_format=layout)
        out = conv._conv_forward(x.contiguous(memory_format=layout), weight, conv.bias)
        return out.contiguous(memory_format=layout)  # small convs take a path that returns NC(D)HW
    return conv(x)


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient in channels-last layout.

    The gradient reaching an upsampled tensor is a channel slice of the concatenation's
    gradient; without this the upsampling backward transposes it to NC(D)HW (slow on CPU).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.contiguous(memory_format=_CHANNELS_LAST[grad.dim()])


class ConvAct(nn.Module):
    """3x3(x3) convolution, padding 1, stride 1 or 2, followed by LeakyReLU(0.2).

    ``(B, in_channels, *S)`` -> ``(B, out_channels, *S / stride)``.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = _CONV[_check_ndim(ndim)](in_channels, out_channels, kernel_size=3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: the convolution's output is not needed for its own backward
        return F.leaky_relu(_conv(self.conv, x), LEAKY_SLOPE, inplace=True)


class UNet(nn.Module):
    """voxelmorph-style U-Net; ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.

    ``S`` must be divisible by ``2 ** len(enc_features)``. Encoder level ``i`` is a stride-2
    ``ConvAct`` to ``enc_features[i]``. Decoder conv ``i < len(enc_features)`` is followed by
    x2 nearest upsampling and concatenation with the encoder output of that resolution (the
    input image at full resolution); the remaining ``dec_features`` run at full resolution.
    """

    def __init__(self, ndim: int, in_channels: int, enc_features: Sequence[int], dec_features: Sequence[int]):
        super().__init__()
        self.ndim = _check_ndim(ndim)
        enc = _features(enc_features, "enc_features")
        dec = _features(dec_features, "dec_features")
        if len(dec) < len(enc):
            raise ValueError(
                f"dec_features needs at least len(enc_features) = {len(enc)} entries (one per upsampling), "
                f"got enc_features {enc} and dec_features {dec}"
            )
        self.levels = len(enc)
        self.encoder = nn.ModuleList()
        prev = in_channels
        for nf in enc:
            self.encoder.append(ConvAct(ndim, prev, nf, stride=2))
            prev = nf
        # skips in the order the decoder consumes them: deepest-but-one level ... input image
        skip_channels = list(reversed([in_channels, *enc[:-1]]))
        self.decoder = nn.ModuleList()
        for i, nf in enumerate(dec):
            self.decoder.append(ConvAct(ndim, prev, nf))
            prev = nf + (skip_channels[i] if i < self.levels else 0)
        self.out_channels = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if CPU_CHANNELS_LAST and x.device.type == "cpu":
            x = x.contiguous(memory_format=_CHANNELS_LAST[x.dim()])  # all skips in one layout
        skips = [x]
        h = x
        for conv in self.encoder:
            h = conv(h)
            skips.append(h)
        skips.pop()  # the deepest level feeds the decoder directly
        for i, conv in enumerate(self.decoder):
            h = conv(h)
            if i < self.levels:
                h = F.interpolate(h, scale_factor=2, mode=UPSAMPLE_MODE)
                if h.is_contiguous(memory_format=_CHANNELS_LAST[h.dim()]) and h.requires_grad:
                    h = _ChannelsLastGrad.apply(h)
                h = torch.cat([h, skips.pop()], dim=1)
        return h


class FlowHead(nn.Module):
    """Convolution to ``ndim`` channels: displacement or velocity in voxels, ``(B, ndim, *S)``.

    Weights ``Normal(0, 1e-5)``, bias zero (the model starts near the identity). No activation.
    """

    def __init__(self, ndim: int, in_channels: int):
        super().__init__()
        self.conv = _CONV[_check_ndim(ndim)](in_channels, ndim, kernel_size=3, padding=1)
        with torch.no_grad():
            nn.init.normal_(self.conv.weight, mean=0.0, std=FLOW_INIT_STD)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv(self.conv, x).contiguous()


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
        self.ndim = _check_ndim(ndim)
        feats = _features(features, "affine_features")
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
        self.ndim = _check_ndim(ndim)
        feats = _features(features, "affine_features")
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
        self.heatmaps = _CONV[ndim](prev, keypoints, kernel_size=1)

    def keypoints_vox(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *S)`` -> ``(B, K, ndim)`` keypoints in voxels of the input grid (tensor axis order)."""
        logits = _conv(self.heatmaps, self.features(image))
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
        self.ndim = _check_ndim(ndim)
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
            ``"deform_disp_vox"`` ``(B, ndim, *S)``: the U-Net's displacement;
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
        field = self.flow(self.unet(torch.cat([moving_affine, fixed], dim=1)))
        out: Dict[str, torch.Tensor] = {}
        if self.arch["diffeomorphic"]:
            out["velocity_vox"] = field
            deform_disp_vox = fields.integrate_velocity(field, self.arch["int_steps"])
        else:
            deform_disp_vox = field
        if self.affine is not None:
            disp_vox = fields.compose(affine_disp_vox, deform_disp_vox)
        else:
            disp_vox = deform_disp_vox  # compose(0, u) == u exactly; skip the work
        out.update(
            warped=fields.warp(moving, disp_vox),
            disp_vox=disp_vox,
            affine_matrix_vox=matrix_vox,
            affine_disp_vox=affine_disp_vox,
            deform_disp_vox=deform_disp_vox,
        )
        return out

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
    merged["enc_features"] = _features(merged["enc_features"], "enc_features")
    merged["dec_features"] = _features(merged["dec_features"], "dec_features")
    merged["affine_features"] = _features(merged["affine_features"], "affine_features")
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
    passes = merged["affine_passes"]
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"affine_passes must be an int >= 1, got {passes!r}")
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
