"""Training losses: image similarities, label losses, displacement regularizers, CompositeLoss.

Conventions (see ``fields.py``): batch-first tensors, images ``(B, C, *S)`` with ``S`` 2D or
3D, displacement fields ``disp_vox`` ``(B, ndim, *S)`` in voxel units (channel ``i`` moves
along tensor axis ``i``). Every function returns a scalar tensor that is *minimised*
(similarities are returned as losses: lower is more similar).

Image similarities (``SIMILARITIES``, ``losses.similarity``): :func:`mse`, :func:`lncc`, :func:`gncc`,
:func:`ssim_loss`, :func:`mutual_information`.
Label losses (``LABEL_LOSSES``, ``losses.labels``): :func:`soft_dice`, :func:`cross_entropy_logits`,
:func:`hausdorff_dt`; :func:`foreground_mask` (where a similarity counts).
Regularizers (``REGULARIZERS``, ``losses.regularizers``): :func:`grad_l2`, :func:`grad_l1`,
:func:`bending_energy`, :func:`displacement_hinge`, :func:`local_rigidity`, :func:`jacobian_penalty`.
Distillation (``losses.distillation``): :func:`field_distance`.
The training loss (``losses.composite``): :class:`CompositeLoss`, :data:`SCHEDULES`.

Regularizers work on voxel-unit fields, so their scale does not depend on the image size
(a "10 voxel" hinge threshold means 10 voxels). Passing ``spacing`` (mm per voxel, tensor
axis order) converts the field to mm and differentiates on the mm grid.

Every name is re-exported here: ``from DeepRegAblationLib.losses import lncc`` works, and code that
looks a loss up at call time (``losses.lncc(...)``) sees a replacement set on this package.
"""
from .checks import Spacing
from .composite import LABEL_LOSSES, REGULARIZERS, SCHEDULES, SIMILARITIES, CompositeLoss, reference_schedule
from .distillation import field_distance
from .labels import cross_entropy_logits, foreground_mask, hausdorff_dt, soft_dice
from .regularizers import bending_energy, displacement_hinge, grad_l1, grad_l2, jacobian_penalty, local_rigidity
from .similarity import gncc, lncc, mse, mutual_information, ssim_index, ssim_loss, ssim_map

__all__ = [
    "Spacing",
    "mse", "lncc", "gncc", "ssim_index", "ssim_map", "ssim_loss", "mutual_information",
    "soft_dice", "cross_entropy_logits", "hausdorff_dt", "foreground_mask",
    "grad_l2", "grad_l1", "bending_energy", "displacement_hinge", "local_rigidity", "jacobian_penalty",
    "field_distance",
    "SIMILARITIES", "LABEL_LOSSES", "REGULARIZERS", "SCHEDULES", "reference_schedule", "CompositeLoss",
]
