"""Synthetic heads: a skull-stripped brain placed inside the skull of a head scan (issue 21, the IXI arm).

Only 5 scans of ``../shared/data`` are heads with skull (IXI, 3 of them training subjects), and the networks do not
carry what they learn on the stripped brains to new heads: with the skull masked off the validation IXI pairs, the
same network is at 0.98-0.99 x SyN's Dice, with it 0.93 x. :func:`synthetic_head` makes a head from any labelled
stripped brain and one training head, so that the brains of every dataset can be seen inside a skull in training
(``PairDataset(heads=...)``, ``train --synthetic-heads P``).

Both samples are preprocessed store samples on the same model grid (``(1, *S)`` image in [0, 1], ``(1, *S)`` labels).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from DeepRegAblationLib import fields
from DeepRegAblationLib.losses.labels import foreground_mask

STRIPPED_BRAIN_THRESHOLD = 0.05
"""A stripped brain's voxels are those above this intensity (the background of a stripped scan is 0 after the 1-99
percentile window)."""


def _closed(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """A binary mask (``*S``, 2D or 3D) closed by a cube of side ``2 * radius + 1`` (dilated, then eroded as the
    complement dilated; both by ``losses.foreground_mask``): the holes and clefts of a brain's voxels filled."""
    dilated = foreground_mask(mask[None, None].long(), radius) > 0.5
    return (foreground_mask((~dilated).long(), radius) < 0.5)[0, 0]


def _mask_moments(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centroid and standard deviation, ``(ndim,)`` each in voxels, of the voxel coordinates where ``mask`` (``*S``)."""
    coords = torch.nonzero(mask).to(torch.float64)
    if coords.shape[0] < 2:
        raise ValueError(f"the brain mask has {coords.shape[0]} voxel(s): no brain to place")
    return coords.mean(0), coords.std(0).clamp_min(1e-3)


def synthetic_head(brain: Dict[str, Any], head: Dict[str, Any]) -> Dict[str, Any]:
    """``brain`` (a stripped scan) placed in ``head``'s skull: a new sample of ``brain``'s dataset.

    - The head's brain is its labelled voxels (``head["labels"] > 0``; a head without labels is refused), the
      stripped brain's its voxels above :data:`STRIPPED_BRAIN_THRESHOLD` (its labels may leave structures out, e.g.
      LPBA40's cerebellum), each closed by a 5-voxel cube.
    - The stripped brain is scaled along each axis and moved so that the centroid and spread of its brain's voxel
      coordinates meet those of the head's brain (``src(x) = c_brain + (x - c_head) * sd_brain / sd_head``,
      linear for the image, nearest for the labels), and its intensities scaled so that its brain's median meets
      the head's brain median (clipped to [0, 1]).
    - The head's own brain is replaced: by the placed brain where that lies (its mask sampled linearly: a soft edge),
      by the head brain's 5th-percentile intensity (dark, as the CSF around a brain in T1) where it does not.
      Skull, scalp, face and neck stay the head's, voxel for voxel: the placed brain and its labels end at the
      head's brain mask.

    Returns ``{"image": (1, *S) float32, "labels": (1, *S) int64 or None (the brain's, placed), "spacing_mm",
    "ijk_to_ras" (the head's grid), "dataset" (the brain's: its labels pair with its own dataset's)}``.
    """
    if head.get("labels") is None:
        raise ValueError("synthetic_head: the head sample has no label map, so its brain cannot be found")
    image_b, image_h = brain["image"].float(), head["image"].float()
    if image_b.shape != image_h.shape:
        raise ValueError(f"synthetic_head: brain and head grids differ: {tuple(image_b.shape)} vs {tuple(image_h.shape)}")
    labels_b = brain.get("labels")
    mask_b = _closed(image_b[0] > STRIPPED_BRAIN_THRESHOLD)
    mask_h = _closed(head["labels"][0] > 0)
    centre_b, sd_b = _mask_moments(mask_b)
    centre_h, sd_h = _mask_moments(mask_h)
    ndim = image_b.dim() - 1
    grid = fields.identity_grid(image_b.shape[1:], dtype=torch.float64)
    view = (ndim,) + (1,) * ndim
    src = (centre_b.view(view) + (grid - centre_h.view(view)) * (sd_b / sd_h).view(view)).float()[None]
    placed = fields.sample(image_b[None], src, padding="zeros")[0]
    placed_mask = fields.sample(mask_b[None, None].float(), src, padding="zeros")[0] * mask_h[None]
    scale = image_h[0][mask_h].median() / image_b[0][mask_b].median().clamp_min(1e-6)
    placed = (placed * scale).clamp(0.0, 1.0)
    dark = torch.quantile(image_h[0][mask_h], 0.05)
    base = torch.where(mask_h[None], dark, image_h)
    image = base * (1.0 - placed_mask) + placed * placed_mask
    labels = None
    if labels_b is not None:
        labels = torch.round(fields.sample(labels_b[None].float(), src, mode="nearest", padding="zeros")[0]).long()
        labels = torch.where(mask_h[None], labels, torch.zeros_like(labels))
    return {"image": image.float(), "labels": labels, "spacing_mm": brain["spacing_mm"],
            "ijk_to_ras": head.get("ijk_to_ras"), "dataset": brain.get("dataset")}
