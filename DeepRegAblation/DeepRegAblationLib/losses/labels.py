"""Label losses ``fn(a, b)`` on one-hot probabilities ``(B, L, *S)`` or integer label maps ``(B, 1, *S)``:
:func:`soft_dice`, :func:`cross_entropy_logits`, :func:`hausdorff_dt` (not valid as image similarities), and
:func:`foreground_mask` (where a similarity counts, ``CompositeLoss(similarity_mask_dilation=...)``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .. import fields
from .checks import Spacing, check_image

__all__ = ["one_hot_pair", "soft_dice", "cross_entropy_logits", "hausdorff_dt", "foreground_mask"]


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


def one_hot_pair(
    a: torch.Tensor, b: torch.Tensor, num_labels: Optional[int], name_a: str, name_b: str
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bring two label inputs to one-hot ``(B, L, *S)`` of a common float dtype.

    A 1-channel input is an integer label map; an input with ``L >= 2`` channels is one-hot
    (probabilities). ``L`` comes from a one-hot input, else ``num_labels``, else
    ``1 + max label`` of both maps.
    """
    check_image(a, name_a)
    check_image(b, name_b)
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


def foreground_mask(labels: torch.Tensor, dilation_vox: int) -> torch.Tensor:
    """``(B, 1, *S)`` float mask of the labelled voxels of ``labels``, grown by ``dilation_vox`` voxels (a cube).

    ``labels``: an integer label map ``(B, 1, *S)`` (labelled: ``> 0``) or one-hot ``(B, L, *S)``, channel 0 the
    background (labelled: background probability ``< 0.5``).
    """
    check_image(labels, "labels")
    if isinstance(dilation_vox, bool) or not isinstance(dilation_vox, int) or dilation_vox < 0:
        raise ValueError(f"dilation_vox must be an integer >= 0, got {dilation_vox!r}")
    inside = labels > 0 if labels.shape[1] == 1 else labels[:, :1] < 0.5
    mask = inside.to(torch.float32)
    if dilation_vox > 0:
        pool = F.max_pool3d if labels.dim() == 5 else F.max_pool2d
        mask = pool(mask, 2 * dilation_vox + 1, stride=1, padding=dilation_vox)
    return mask


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
    a, b = one_hot_pair(fixed_labels, warped_labels, num_labels, "fixed_labels", "warped_labels")
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
    check_image(logits, "logits")
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
    p, t = one_hot_pair(pred, target, None, "pred", "target")
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
