"""The deformable part of every variant: a voxelmorph-style U-Net and its flow head, and their layers.

One code path serves 2D and 3D (``ndim``). Shapes are batch-first, ``(B, C, *spatial)``;
displacements are ``(B, ndim, *spatial)`` in voxels (see ``fields``).

- :class:`UNet`: encoder of stride-2 convolutions (``enc_features``), decoder whose first
  ``len(enc_features)`` convolutions are each followed by a nearest-neighbour x2 upsampling
  and a skip concatenation (the last skip is the input itself), the remaining decoder
  convolutions at full resolution. 3x3(x3) convolutions, LeakyReLU(0.2), no normalization.
- :class:`FlowHead`: one convolution to ``ndim`` channels, weights ``Normal(0, 1e-5)``, zero
  bias. Its output is the displacement (or velocity) in voxels as is: no tanh, no scaling,
  no cap, identical for every variant.
- :class:`ConvAct`: the 3x3(x3) convolution + LeakyReLU block of the U-Net and the affine stages.

Speed: plain convolutions and in-place LeakyReLU; on CPU the convolutions run in
channels-last memory layout (oneDNN's fast path; see :data:`CPU_CHANNELS_LAST` and
:func:`conv_forward`). Parameters and outputs keep the ordinary layout.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LEAKY_SLOPE", "FLOW_INIT_STD", "UPSAMPLE_MODE", "CPU_CHANNELS_LAST", "CONV", "CHANNELS_LAST",
    "check_ndim", "feature_tuple", "conv_forward", "ConvAct", "UNet", "FlowHead",
]

LEAKY_SLOPE = 0.2
FLOW_INIT_STD = 1e-5

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
"""The convolution class of each ``ndim``."""
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
"""The channels-last memory format of each tensor rank (2D: 4, 3D: 5)."""
UPSAMPLE_MODE = "nearest"  # as voxelmorph
# On CPU, convolutions run in channels-last layout: same values up to float rounding,
# measured ~1.2x faster forward+backward (1.3x forward) at 64^3 and 256^2 on one thread.
CPU_CHANNELS_LAST = True


def check_ndim(ndim: Any) -> int:
    """``ndim`` itself when it is the int 2 or 3, else ``ValueError``."""
    if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return ndim


def feature_tuple(value: Any, name: str) -> Tuple[int, ...]:
    """``value`` as a non-empty tuple of positive ints (feature counts), else ``ValueError`` naming ``name``."""
    try:
        feats = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}") from None
    if not feats or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in feats):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return feats


# --------------------------------------------------------------------------- layers
def conv_forward(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; on CPU in channels-last memory layout (oneDNN's fast path, same values
    up to float rounding; parameters and results keep their ordinary layout semantics)."""
    if CPU_CHANNELS_LAST and x.device.type == "cpu":
        layout = CHANNELS_LAST[x.dim()]
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
        return grad.contiguous(memory_format=CHANNELS_LAST[grad.dim()])


class ConvAct(nn.Module):
    """3x3(x3) convolution, padding 1, stride 1 or 2, followed by LeakyReLU(0.2).

    ``(B, in_channels, *S)`` -> ``(B, out_channels, *S / stride)``.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = CONV[check_ndim(ndim)](in_channels, out_channels, kernel_size=3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: the convolution's output is not needed for its own backward
        return F.leaky_relu(conv_forward(self.conv, x), LEAKY_SLOPE, inplace=True)


class UNet(nn.Module):
    """voxelmorph-style U-Net; ``(B, in_channels, *S)`` -> ``(B, out_channels, *S)``.

    ``S`` must be divisible by ``2 ** len(enc_features)``. Encoder level ``i`` is a stride-2
    ``ConvAct`` to ``enc_features[i]``. Decoder conv ``i < len(enc_features)`` is followed by
    x2 nearest upsampling and concatenation with the encoder output of that resolution (the
    input image at full resolution); the remaining ``dec_features`` run at full resolution.
    """

    def __init__(self, ndim: int, in_channels: int, enc_features: Sequence[int], dec_features: Sequence[int]):
        super().__init__()
        self.ndim = check_ndim(ndim)
        enc = feature_tuple(enc_features, "enc_features")
        dec = feature_tuple(dec_features, "dec_features")
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
            x = x.contiguous(memory_format=CHANNELS_LAST[x.dim()])  # all skips in one layout
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
                if h.is_contiguous(memory_format=CHANNELS_LAST[h.dim()]) and h.requires_grad:
                    h = _ChannelsLastGrad.apply(h)
                h = torch.cat([h, skips.pop()], dim=1)
        return h


class FlowHead(nn.Module):
    """Convolution to ``ndim`` channels: displacement or velocity in voxels, ``(B, ndim, *S)``.

    Weights ``Normal(0, 1e-5)``, bias zero (the model starts near the identity). No activation.
    """

    def __init__(self, ndim: int, in_channels: int):
        super().__init__()
        self.conv = CONV[check_ndim(ndim)](in_channels, ndim, kernel_size=3, padding=1)
        with torch.no_grad():
            nn.init.normal_(self.conv.weight, mean=0.0, std=FLOW_INIT_STD)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_forward(self.conv, x).contiguous()
