"""Old path of the networks, kept for one release: they live in ``models.unet``, ``models.affine`` and
``models.network`` now (the integration of the re-layout removes this shim). Set ``CPU_CHANNELS_LAST``
on ``models.unet``, which reads it."""
from .models.affine import AFFINE_KINDS, KEYPOINT_RIDGE, AffineStage, KeypointAffineStage, affine_from_keypoints
from .models.network import DEFAULT_ARCH, IN_CHANNELS, RegistrationModel, build_model, model_from_config
from .models.unet import (
    FLOW_INIT_STD,
    LEAKY_SLOPE,
    UPSAMPLE_MODE,
    ConvAct,
    FlowHead,
    UNet,
)
from .models.variants import VariantSpec, get_variant

__all__ = [
    "DEFAULT_ARCH", "AFFINE_KINDS", "KEYPOINT_RIDGE", "LEAKY_SLOPE", "FLOW_INIT_STD", "IN_CHANNELS", "UPSAMPLE_MODE",
    "ConvAct", "UNet", "FlowHead", "AffineStage", "KeypointAffineStage", "affine_from_keypoints",
    "RegistrationModel", "build_model", "model_from_config", "VariantSpec", "get_variant",
]
