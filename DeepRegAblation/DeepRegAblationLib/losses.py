"""Training losses: image similarities, label losses, displacement regularizers, CompositeLoss.

Conventions (see ``fields.py``): batch-first tensors, images ``(B, C, *S)`` with ``S`` 2D or
3D, displacement fields ``disp_vox`` ``(B, ndim, *S)`` in voxel units (channel ``i`` moves
along tensor axis ``i``). Every function returns a scalar tensor that is *minimised*
(similarities are returned as losses: lower is more similar).

Image similarities (``SIMILARITIES``): :func:`mse`, :func:`lncc`, :func:`gncc`,
:func:`ssim_loss`, :func:`mutual_information`.
Label losses (``LABEL_LOSSES``): :func:`soft_dice`, :func:`cross_entropy_logits`,
:func:`hausdorff_dt`.
Regularizers (``REGULARIZERS``): :func:`grad_l2`, :func:`grad_l1`, :func:`bending_energy`,
:func:`displacement_hinge`, :func:`local_rigidity`, :func:`jacobian_penalty`.

Regularizers work on voxel-unit fields, so their scale does not depend on the image size
(a "10 voxel" hinge threshold means 10 voxels). Passing ``spacing`` (mm per voxel, tensor
axis order) converts the field to mm and differentiates on the mm grid.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from . import fields

Spacing = Optional[Union[float, Sequence[float]]]


# --------------------------------------------------------------------------- validation
def _check_image(image: torch.Tensor, name: str) -> int:
    """Validate a ``(B, C, *S)`` floating image tensor; return its number of spatial dims."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (4, 5):
        raise ValueError(f"{name} must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(image.shape)})")
    fields.check_finite(image, name)
    return image.dim() - 2


def _check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str = "fixed", name_b: str = "warped") -> int:
    """Validate two floating images of identical shape; return the number of spatial dims."""
    ndim = _check_image(a, name_a)
    _check_image(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    for t, name in ((a, name_a), (b, name_b)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    return ndim


def _check_disp(disp_vox: torch.Tensor, name: str = "disp_vox", min_size: int = 2) -> int:
    """Validate a ``(B, ndim, *S)`` field (finite, every spatial size >= ``min_size``)."""
    ndim = fields.ndim_of_disp(disp_vox, name)
    fields.check_finite(disp_vox, name)
    if any(int(n) < min_size for n in disp_vox.shape[2:]):
        raise ValueError(f"{name} needs at least {min_size} voxels along every axis, got shape {tuple(disp_vox.shape)}")
    return ndim


def _to_mm(disp_vox: torch.Tensor, spacing: Spacing) -> Tuple[torch.Tensor, Tuple[float, ...]]:
    """Field in mm (channel ``i`` times ``spacing[i]``) and the spacing tuple (all 1 without spacing)."""
    ndim = disp_vox.shape[1]
    sp = fields.spacing_tuple(spacing, ndim)
    if spacing is None:
        return disp_vox, sp
    scale = torch.tensor(sp, dtype=disp_vox.dtype, device=disp_vox.device).view(1, ndim, *([1] * ndim))
    return disp_vox * scale, sp


# --------------------------------------------------------------------------- filters
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


# --------------------------------------------------------------------------- image similarities
def mse(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference over batch, channels and voxels."""
    _check_pair(fixed, warped)
    return torch.mean((fixed - warped) ** 2)


def lncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-8) -> torch.Tensor:
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

    Args:
        fixed, warped: ``(B, C, *S)``, same shape.
        window: odd window size in voxels (9 as in voxelmorph).
        eps: added to ``var(F) var(W)`` under the square root.
    """
    _check_pair(fixed, warped)
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
    return 1.0 - torch.mean(cc)


def gncc(fixed: torch.Tensor, warped: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Global normalised cross-correlation loss ``1 - mean_b(cc_b)``, in ``[0, 2]``.

    ``cc_b`` is the Pearson correlation of sample ``b`` over all channels and voxels
    (``eps`` guards constant images, which give ``cc = 0``).
    """
    _check_pair(fixed, warped)
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
    _check_pair(a, b, "a", "b")
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    if any(int(n) < window for n in a.shape[2:]):
        raise ValueError(f"SSIM needs every spatial size >= window={window}, got image shape {tuple(a.shape)}")
    if data_range is None:
        with torch.no_grad():
            data_range = float(torch.maximum(a.max(), b.max()) - torch.minimum(a.min(), b.min()))
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
    return torch.mean(num / den)


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
    _check_pair(fixed, warped)
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


# --------------------------------------------------------------------------- label losses
def _as_one_hot(labels: torch.Tensor, num_labels: int, name: str, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, *S)`` integer label map -> ``(B, num_labels, *S)`` one-hot of ``dtype``."""
    if labels.is_floating_point():
        if not torch.equal(labels, torch.round(labels)):
            raise ValueError(
                f"{name} has 1 channel, so it must be an integer label map, but holds non-integer values "
                f"(shape {tuple(labels.shape)}); pass one-hot probabilities as (B, L, *S) with L >= 2"
            )
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= num_labels:
        raise ValueError(
            f"{name} values must be in [0, {num_labels - 1}], got [{int(labels.min())}, {int(labels.max())}] "
            f"(shape {tuple(labels.shape)})"
        )
    return F.one_hot(labels[:, 0], num_labels).movedim(-1, 1).to(dtype)


def _one_hot_pair(
    a: torch.Tensor, b: torch.Tensor, num_labels: Optional[int], name_a: str, name_b: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bring two label inputs to one-hot ``(B, L, *S)`` of a common float dtype.

    A 1-channel input is an integer label map; an input with ``L >= 2`` channels is one-hot
    (probabilities). ``L`` comes from a one-hot input, else ``num_labels``, else
    ``1 + max label`` of both maps.
    """
    _check_image(a, name_a)
    _check_image(b, name_b)
    if a.dim() != b.dim() or a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"{name_a} and {name_b} must share batch and spatial shape: {tuple(a.shape)} vs {tuple(b.shape)}"
        )
    channels = [t.shape[1] for t in (a, b) if t.shape[1] > 1]
    if channels and (len(set(channels)) > 1 or (num_labels is not None and channels[0] != num_labels)):
        raise ValueError(
            f"{name_a} and {name_b} label channel counts disagree (num_labels={num_labels}): "
            f"{tuple(a.shape)} vs {tuple(b.shape)}"
        )
    if channels:
        count = channels[0]
    elif num_labels is not None:
        count = int(num_labels)
    else:
        count = int(max(a.max(), b.max())) + 1
    if count < 2:
        raise ValueError(f"need at least 2 labels (background + 1), got num_labels={count}")
    dtype = next((t.dtype for t in (a, b) if t.is_floating_point() and t.shape[1] > 1), torch.float32)
    one_hot = []
    for t, name in ((a, name_a), (b, name_b)):
        one_hot.append(_as_one_hot(t, count, name, dtype) if t.shape[1] == 1 else t.to(dtype))
    return one_hot[0], one_hot[1]


def soft_dice(
    fixed_labels: torch.Tensor,
    warped_labels: torch.Tensor,
    num_labels: Optional[int] = None,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Soft Dice loss ``1 - mean Dice`` over labels and batch.

    Each input is either one-hot / probabilities ``(B, L, *S)`` (``L >= 2``) or an integer
    label map ``(B, 1, *S)`` (converted to one-hot; ``L`` from the other input, else
    ``num_labels``, else ``1 + max label`` -- pass ``num_labels`` in training so every
    batch has the same labels). Per sample and label
    ``Dice = (2 sum(a b) + smooth) / (sum a + sum b + smooth)``, so a label absent from
    both scores 1. Channel 0 (background) is excluded unless ``include_background``.
    """
    a, b = _one_hot_pair(fixed_labels, warped_labels, num_labels, "fixed_labels", "warped_labels")
    if not include_background:
        a, b = a[:, 1:], b[:, 1:]
    dims = tuple(range(2, a.dim()))
    inter = torch.sum(a * b, dim=dims)
    total = torch.sum(a, dim=dims) + torch.sum(b, dim=dims)
    dice = (2.0 * inter + smooth) / (total + smooth)
    return 1.0 - dice.mean()


def cross_entropy_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of raw ``logits`` ``(B, L, *S)`` against ``labels``, mean over voxels.

    ``labels`` is an integer map ``(B, 1, *S)`` or ``(B, *S)`` (equal to
    ``F.cross_entropy(logits, labels)``), or soft targets ``(B, L, *S)`` (probabilities).
    The log-softmax is taken here: ``logits`` must be unnormalised scores. Inputs that are
    already probabilities (non-negative and summing to 1 over channels everywhere) are
    rejected, since feeding probabilities as logits silently flattens the loss.
    """
    _check_image(logits, "logits")
    if not logits.is_floating_point() or logits.shape[1] < 2:
        raise ValueError(f"logits must be floating (B, L, *S) with L >= 2, got {logits.dtype} {tuple(logits.shape)}")
    with torch.no_grad():
        if bool((logits >= 0).all()) and bool(torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-4)):
            raise ValueError(
                f"logits look like probabilities (non-negative, summing to 1 over channels; shape "
                f"{tuple(logits.shape)}); pass the network's raw scores"
            )
    log_p = F.log_softmax(logits, dim=1)
    if labels.dim() == logits.dim() - 1:
        labels = labels[:, None]
    if labels.dim() != logits.dim() or labels.shape[0] != logits.shape[0] or labels.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"labels must be (B, 1, *S), (B, *S) or (B, L, *S) matching logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.shape[1] == 1:
        target = _as_one_hot(labels, logits.shape[1], "labels", logits.dtype)
    elif labels.shape[1] == logits.shape[1]:
        fields.check_finite(labels, "labels")
        target = labels.to(logits.dtype)
    else:
        raise ValueError(f"labels channel count {labels.shape[1]} does not match logits {tuple(logits.shape)}")
    return -torch.mean(torch.sum(target * log_p, dim=1))


def _boundary_distance(mask: np.ndarray, spacing: Tuple[float, ...]) -> np.ndarray:
    """Unsigned distance (mm) of every voxel to the mask boundary; zeros without a boundary."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float64)
    return ndimage.distance_transform_edt(mask, sampling=spacing) + ndimage.distance_transform_edt(
        ~mask, sampling=spacing
    )


def hausdorff_dt(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 2.0,
    include_background: bool = False,
    spacing: Spacing = None,
) -> torch.Tensor:
    """Distance-transform Hausdorff loss (Karimi & Salcudean 2019, "HD-DT").

    ``mean((p - t)^2 * (d_p^alpha + d_t^alpha))`` where ``d_p``/``d_t`` are the unsigned
    distances (mm with ``spacing``, else voxels) to the boundary of ``p > 0.5`` and of
    ``t > 0.5`` (scipy EDT inside plus outside, zero for a channel without boundary),
    computed without gradient. Inputs as for :func:`soft_dice` (one-hot/probabilities
    ``(B, L, *S)`` or label maps ``(B, 1, *S)``); background channel 0 excluded by default.
    """
    p, t = _one_hot_pair(pred, target, None, "pred", "target")
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]
    sp = fields.spacing_tuple(spacing, p.dim() - 2)
    with torch.no_grad():
        dist = []
        for x in (p, t):
            masks = (x > 0.5).cpu().numpy()
            d = np.stack([[_boundary_distance(m, sp) for m in sample] for sample in masks])
            dist.append(torch.as_tensor(d, dtype=p.dtype, device=p.device))
        weight = dist[0] ** alpha + dist[1] ** alpha
    return torch.mean((p - t) ** 2 * weight)


# --------------------------------------------------------------------------- regularizers
def _central_interior(field: torch.Tensor, spacing: Tuple[float, ...]) -> torch.Tensor:
    """First derivatives ``(B, C, ndim, *S-2)`` by central differences on interior voxels."""
    grad = fields.spatial_gradient(field, spacing)
    inner = (slice(None),) * 3 + (slice(1, -1),) * (field.dim() - 2)
    return grad[inner]


def grad_l2(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Diffusion regularizer: mean over batch, channels and interior voxels of ``sum_j (du_i/dx_j)^2``.

    Central differences on the interior voxels (the border ring, where only one-sided
    differences exist, is left out), i.e. exactly MONAI ``DiffusionLoss(normalize=False)``
    (voxelmorph ``Grad('l2')`` uses forward differences and averages over axes instead).
    With ``spacing`` the field is converted to mm and differentiated on the mm grid
    (dimensionless strain). Needs >= 3 voxels per axis.
    """
    _check_disp(disp_vox, min_size=3)
    field, sp = _to_mm(disp_vox, spacing)
    return torch.mean(torch.sum(_central_interior(field, sp) ** 2, dim=2))


def grad_l1(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Total-variation-like regularizer: as :func:`grad_l2` with ``|du_i/dx_j|`` instead of squares."""
    _check_disp(disp_vox, min_size=3)
    field, sp = _to_mm(disp_vox, spacing)
    return torch.mean(torch.sum(torch.abs(_central_interior(field, sp)), dim=2))


def _second_difference(field: torch.Tensor, axis: int) -> torch.Tensor:
    """Compact pure second difference ``u[i+1] - 2u[i] + u[i-1]`` along spatial ``axis``, interior voxels."""
    dim = axis + 2
    n = field.shape[dim]
    d2 = field.narrow(dim, 2, n - 2) - 2 * field.narrow(dim, 1, n - 2) + field.narrow(dim, 0, n - 2)
    for other in range(2, field.dim()):  # crop the remaining axes to the interior too
        if other != dim:
            d2 = d2.narrow(other, 1, field.shape[other] - 2)
    return d2


def bending_energy(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Bending energy ``sum_ij (d2u/dx_i dx_j)^2`` (cross terms twice), mean over batch, channels, interior voxels.

    Pure second derivatives use the compact ``[1, -2, 1]`` stencil; mixed ones the 4-point
    central stencil (central difference of a central difference). This is exactly MONAI
    ``BendingEnergyLoss(normalize=False)``. With ``spacing`` the field is in mm and the
    derivatives divide by ``s_i s_j``. Needs >= 3 voxels per axis.
    """
    ndim = _check_disp(disp_vox, min_size=3)
    field, sp = _to_mm(disp_vox, spacing)
    first = fields.spatial_gradient(field, sp)  # (B, C, ndim, *S): central inside
    energy = 0.0
    for i in range(ndim):
        energy = energy + (_second_difference(field, i) / sp[i] ** 2) ** 2
        for j in range(i + 1, ndim):
            mixed = fields.spatial_gradient(first[:, :, i], sp)[:, :, j]
            mixed = mixed[(slice(None),) * 2 + (slice(1, -1),) * ndim]
            energy = energy + 2.0 * mixed**2
    return torch.mean(energy)


def displacement_hinge(disp_vox: torch.Tensor, threshold_vox: float = 10.0) -> torch.Tensor:
    """Magnitude hinge ``mean(relu(|u| - threshold_vox)^2)``, ``|u|`` the per-voxel Euclidean norm in voxels.

    Zero while every displacement is at most ``threshold_vox`` voxels; quadratic above.
    """
    _check_disp(disp_vox, min_size=1)
    if not threshold_vox >= 0:
        raise ValueError(f"threshold_vox must be >= 0, got {threshold_vox}")
    # clamp_min keeps sqrt's gradient finite at u = 0 (the hinge is flat there anyway)
    norm = torch.sqrt(torch.sum(disp_vox**2, dim=1).clamp_min(1e-12))
    return torch.mean(F.relu(norm - threshold_vox) ** 2)


def local_rigidity(disp_vox: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Local rigidity penalty ``mean ||J^T J - I||_F^2`` (orthonormality condition).

    ``J = I + grad u`` (``fields.jacobian_matrix``, central differences, one-sided at the
    border). ``J^T J = I`` exactly when the local map is a rotation (or reflection -- folds
    are the Jacobian penalty's job), so the penalty is zero for rigid motion, grows with
    local stretch/shear, and does not penalise translation or rotation as ``grad_l2`` does.
    """
    ndim = _check_disp(disp_vox)
    jac = fields.jacobian_matrix(disp_vox, spacing)  # (B, i, j, *S)
    penalty = 0.0
    for i in range(ndim):  # (J^T J)_ij = sum_k J_ki J_kj, symmetric: off-diagonal terms count twice
        for j in range(i, ndim):
            gram_ij = torch.sum(jac[:, :, i] * jac[:, :, j], dim=1)
            term = (gram_ij - 1.0) ** 2 if i == j else 2.0 * gram_ij**2
            penalty = penalty + term
    return torch.mean(penalty)


def jacobian_penalty(disp_vox: torch.Tensor, eps: float = 0.01, spacing: Spacing = None) -> torch.Tensor:
    """Folding penalty ``mean(relu(eps - det J))`` with ``det J`` from ``fields.jacobian_determinant``.

    No clamp of ``det J`` before the relu: every voxel with ``det J < eps`` (folded, or
    nearly so) has gradient ``-1/N`` w.r.t. its determinant, pushing it back to positive.
    The small margin ``eps`` keeps a non-zero push at ``det J = 0`` exactly.
    """
    _check_disp(disp_vox)
    det = fields.jacobian_determinant(disp_vox, spacing)
    return torch.mean(F.relu(eps - det))


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


# --------------------------------------------------------------------------- composite
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
    - ``affine_weight > 0`` with ``outputs["affine_disp_vox"]`` (a model with an affine stage)
      supervises the affine stage on its own: ``affine_weight * (L_sim + seg_weight * L_seg)``
      of the moving image (and labels) warped by the affine part alone. Without it the affine
      stage learns only through the total field, where the U-Net makes up for what it leaves.

    ``forward`` returns ``(total, terms)``; ``terms`` holds python floats: the *unweighted*
    value of each term (``"similarity"``, each regularizer name, ``"seg"``, ``"affine_similarity"``,
    ``"affine_seg"``), ``"schedule"`` and ``"total"``.
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
                            (affine_weight, "affine_weight")):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not max_log_var > 0:
            raise ValueError(f"max_log_var must be positive, got {max_log_var}")
        self.similarity = similarity
        self.regularizers = {k: float(v) for k, v in regularizers.items()}
        self.schedule = schedule
        self.seg_weight = float(seg_weight)
        self.similarity_weight = float(similarity_weight)
        self.affine_weight = float(affine_weight)
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
        """Build from a ``variants.VariantSpec`` (reads ``similarity``, ``regularizers``, ``schedule``)."""
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
        """
        if not isinstance(outputs, dict) or "disp_vox" not in outputs:
            raise ValueError("outputs must be the model's output dict with a 'disp_vox' entry")
        ndim = _check_image(fixed, "fixed")
        disp = outputs["disp_vox"]
        _check_disp(disp, "outputs['disp_vox']")
        if disp.dim() != ndim + 2 or disp.shape[0] != fixed.shape[0] or disp.shape[2:] != fixed.shape[2:]:
            raise ValueError(
                f"outputs['disp_vox'] must be (B, {ndim}, *S) matching fixed {tuple(fixed.shape)}, "
                f"got {tuple(disp.shape)}"
            )
        warped = outputs.get("warped")
        if warped is None:
            if moving is None:
                raise ValueError("outputs has no 'warped' entry and moving was not given")
            _check_pair(fixed, moving, "fixed", "moving")
            warped = fields.warp(moving, disp)
        _check_pair(fixed, warped, "fixed", "outputs['warped']")

        terms: Dict[str, float] = {}
        sim = SIMILARITIES[self.similarity](fixed, warped)
        terms["similarity"] = float(sim.detach())
        total = self._weighted("similarity", self.similarity_weight * sim)

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

        use_labels = self.seg_weight > 0 and fixed_labels is not None and moving_labels is not None
        if use_labels:
            fixed_oh, moving_oh = _one_hot_pair(
                fixed_labels, moving_labels, self.num_labels, "fixed_labels", "moving_labels"
            )
            if fixed_oh.shape[2:] != fixed.shape[2:] or fixed_oh.shape[0] != fixed.shape[0]:
                raise ValueError(
                    f"fixed_labels shape {tuple(fixed_labels.shape)} does not match fixed {tuple(fixed.shape)}"
                )
            fixed_oh, moving_oh = fixed_oh.to(disp.dtype), moving_oh.to(disp.dtype)
            seg = soft_dice(fixed_oh, fields.warp(moving_oh, disp))
            terms["seg"] = float(seg.detach())
            total = total + self._weighted("seg", self.seg_weight * seg)

        affine_disp = outputs.get("affine_disp_vox")
        if self.affine_weight > 0 and affine_disp is not None:
            if moving is None:
                raise ValueError("affine_weight > 0 needs the moving image")
            _check_pair(fixed, moving, "fixed", "moving")
            affine_term = SIMILARITIES[self.similarity](fixed, fields.warp(moving, affine_disp))
            terms["affine_similarity"] = float(affine_term.detach())
            if use_labels:
                affine_seg = soft_dice(fixed_oh, fields.warp(moving_oh, affine_disp))
                terms["affine_seg"] = float(affine_seg.detach())
                affine_term = affine_term + self.seg_weight * affine_seg
            total = total + self.affine_weight * affine_term

        terms["total"] = float(total.detach())
        return total, terms
