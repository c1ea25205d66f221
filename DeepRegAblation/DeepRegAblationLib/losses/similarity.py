"""Image similarity losses ``fn(fixed, warped)`` (lower is more similar): :func:`mse`, :func:`lncc`,
:func:`gncc`, :func:`ssim_loss`, :func:`mutual_information`, and :func:`ssim_index` (the metric).

Images are batch-first ``(B, C, *S)``, ``S`` 2D or 3D; every loss returns a scalar tensor.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .checks import check_pair

__all__ = ["mse", "lncc", "gncc", "ssim_index", "ssim_map", "ssim_loss", "mutual_information"]


def _box_mean(image: torch.Tensor, window: int) -> torch.Tensor:
    """Local mean over a ``window``^ndim cube centred on each voxel (windows cut at the border).

    Computed separably, one axis at a time: a border-cut box mean is the product of per-axis
    border-cut means, and three 1D passes cost ``3 * window`` instead of ``window**3`` per voxel.
    """
    ndim = image.dim() - 2
    pool = F.avg_pool3d if ndim == 3 else F.avg_pool2d
    out = image
    for axis in range(ndim):
        kernel = [1] * ndim
        kernel[axis] = window
        padding = [k // 2 for k in kernel]
        out = pool(out, tuple(kernel), stride=1, padding=tuple(padding), count_include_pad=False)
    return out


def _gaussian_filter_valid(image: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter per channel, ``valid`` mode (each axis shrinks by ``window - 1``)."""
    ndim = image.dim() - 2
    channels = image.shape[1]
    x = torch.arange(window, dtype=image.dtype, device=image.device) - (window - 1) / 2.0
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    conv = F.conv3d if ndim == 3 else F.conv2d
    out = image
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = window
        weight = kernel.view(1, 1, *shape).expand(channels, 1, *shape)
        out = conv(out, weight, groups=channels)
    return out


def mse(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference over batch, channels and voxels."""
    check_pair(fixed, warped)
    return torch.mean((fixed - warped) ** 2)


def lncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-8,
         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Local normalised cross-correlation loss ``1 - mean(cc)``, in ``[0, 2]``.

    For every voxel, over a ``window``^ndim cube around it (cut at the image border, so
    border windows use only real voxels), ``cc = cov(F, W) / sqrt(var(F) var(W) + eps)``
    with local means, variances clamped to ``>= 0`` (they are computed as
    ``E[x^2] - E[x]^2`` and may round below zero). ``cc`` is the *signed* correlation, in
    ``[-1, 1]`` (Cauchy-Schwarz), so contrast inversion is penalised, unlike the squared
    ``cc^2`` of voxelmorph/MONAI. Flat windows (zero variance) give ``cc = 0`` and finite
    gradients; ``eps`` (on the scale of a product of two variances) is negligible for
    textured windows of images normalised to ``[0, 1]``. Identical non-flat images give
    ``cc ~ 1``, the minimum of the loss.

    With ``mask`` (``(B, 1, *S)``, 1 = counted, 0 = not) the voxels outside it count as flat windows (``cc = 0``):
    what lies there (a skull) stops pulling, the mean stays over every voxel, so the loss keeps its scale and an image
    that is blank outside the mask has the same loss with or without it. The windows themselves are not masked.

    Args:
        fixed, warped: ``(B, C, *S)``, same shape.
        window: odd window size in voxels (9 as in voxelmorph).
        eps: added to ``var(F) var(W)`` under the square root.
        mask: optional ``(B, 1, *S)`` weights in ``[0, 1]`` (e.g. :func:`losses.labels.foreground_mask`).
    """
    check_pair(fixed, warped)
    if mask is not None and (mask.dim() != fixed.dim() or mask.shape[0] != fixed.shape[0] or mask.shape[1] != 1
                             or mask.shape[2:] != fixed.shape[2:]):
        raise ValueError(f"mask must be (B, 1, *S) = {(fixed.shape[0], 1) + tuple(fixed.shape[2:])}, got {tuple(mask.shape)}")
    if int(window) < 1 or int(window) % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    window = int(window)
    # the five local means in one pass (channels stacked): three pooling calls instead of fifteen
    stacked = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)
    mean_f, mean_w, mean_ff, mean_ww, mean_fw = torch.split(_box_mean(stacked, window), fixed.shape[1], dim=1)
    var_f = (mean_ff - mean_f * mean_f).clamp_min(0.0)
    var_w = (mean_ww - mean_w * mean_w).clamp_min(0.0)
    cov = mean_fw - mean_f * mean_w
    cc = cov / torch.sqrt(var_f * var_w + eps)
    if mask is not None:
        cc = cc * mask.to(cc.dtype)
    return 1.0 - torch.mean(cc)


def gncc(fixed: torch.Tensor, warped: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Global normalised cross-correlation loss ``1 - mean_b(cc_b)``, in ``[0, 2]``.

    ``cc_b`` is the Pearson correlation of sample ``b`` over all channels and voxels
    (``eps`` guards constant images, which give ``cc = 0``).
    """
    check_pair(fixed, warped)
    a = fixed.reshape(fixed.shape[0], -1)
    b = warped.reshape(warped.shape[0], -1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    n = a.shape[1]
    cc = (a * b).mean(dim=1) / torch.sqrt((a * a).sum(dim=1) / n * (b * b).sum(dim=1) / n + eps)
    return 1.0 - cc.mean()


def ssim_index(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: Optional[float] = None,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window, 2D or 3D.

    Local statistics use a separable Gaussian (``window`` taps, ``sigma`` voxels) in
    ``valid`` mode (no padding: only windows inside the image), population covariances,
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``; the default ``L`` is
    ``max(a, b) - min(a, b)`` over both images (not differentiated). Equal to
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L)`` on a single image.

    Args:
        a, b: ``(B, C, *S)``, same shape, every spatial size >= ``window``.

    Returns:
        Scalar: mean SSIM over batch, channels and window positions (1 for identical images).
    """
    check_pair(a, b, "a", "b")
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    if any(int(n) < window for n in a.shape[2:]):
        raise ValueError(f"SSIM needs every spatial size >= window={window}, got image shape {tuple(a.shape)}")
    if data_range is None:
        with torch.no_grad():
            data_range = float(torch.maximum(a.max(), b.max()) - torch.minimum(a.min(), b.min()))
    return torch.mean(ssim_map(a, b, data_range, window, sigma))


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The local SSIM of every window position (``valid`` mode) that :func:`ssim_index` averages.

    Args:
        a, b: ``(B, C, *S)``, same shape, every spatial size >= ``window`` (unchecked).
        data_range: ``L`` (a value <= 0 is taken as 1: two identical constant images).

    Returns:
        ``(B, C, *S')`` with ``S' = S - (window - 1)``. A block of positions needs only the ``window - 1``
        slices after it: the metrics of large volumes sum it slab by slab.
    """
    if not data_range > 0:
        data_range = 1.0  # two identical constant images: SSIM = 1 whatever L is
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    channels = a.shape[1]
    stats = _gaussian_filter_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1), window, sigma)  # one grouped pass
    mu_a, mu_b, e_aa, e_bb, e_ab = torch.split(stats, channels, dim=1)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return num / den


def ssim_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """``1 - SSIM`` (see :func:`ssim_index`), in ``[0, 2]``; 0 for identical images."""
    return 1.0 - ssim_index(fixed, warped, window=window, sigma=sigma)


def mutual_information(
    fixed: torch.Tensor, warped: torch.Tensor, bins: int = 32, sigma_ratio: float = 0.5, eps: float = 1e-10
) -> torch.Tensor:
    """Negative global mutual information (nats) from a Parzen (Gaussian) joint histogram.

    For multi-modal pairs. Each image is min-max scaled to ``[0, 1]`` per sample (the
    min/max are not differentiated); every voxel contributes to ``bins`` equally spaced
    bin centres with Gaussian weights of width ``sigma_ratio`` bin spacings, normalised to
    sum 1 per voxel. ``p(a, b)`` is the mean outer product of the two weight vectors;
    ``MI = sum p(a,b) log(p(a,b) / (p(a) p(b)))`` per sample, averaged over the batch.
    Memory is ``O(voxels * bins)`` per image.

    Returns:
        ``-MI`` (lower is more similar).
    """
    check_pair(fixed, warped)
    bins = int(bins)
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if not sigma_ratio > 0:
        raise ValueError(f"sigma_ratio must be positive, got {sigma_ratio}")
    batch = fixed.shape[0]
    centres = torch.linspace(0.0, 1.0, bins, dtype=fixed.dtype, device=fixed.device)
    sigma = sigma_ratio / (bins - 1)

    def weights(image: torch.Tensor) -> torch.Tensor:
        x = image.reshape(batch, -1)
        with torch.no_grad():
            lo = x.min(dim=1, keepdim=True).values
            span = (x.max(dim=1, keepdim=True).values - lo).clamp_min(1e-12)
        x = ((x - lo) / span)[..., None]  # (B, N, 1)
        w = torch.exp(-0.5 * ((x - centres) / sigma) ** 2)  # (B, N, bins)
        return w / w.sum(dim=-1, keepdim=True).clamp_min(eps)

    w_f, w_w = weights(fixed), weights(warped)
    joint = torch.bmm(w_f.transpose(1, 2), w_w) / w_f.shape[1]  # (B, bins, bins)
    p_f = joint.sum(dim=2, keepdim=True)
    p_w = joint.sum(dim=1, keepdim=True)
    mi = torch.sum(joint * (torch.log(joint + eps) - torch.log(p_f * p_w + eps)), dim=(1, 2))
    return -mi.mean()
