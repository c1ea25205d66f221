"""The networks of the four ablation variants, their checkpoints, and the one model resolver.

- ``unet``: the deformable U-Net and flow head (the same for every variant);
- ``affine``: the affine stages (keypoints, regression);
- ``network``: :class:`RegistrationModel`, :func:`build_model`, :func:`model_from_config`;
- ``variants``: the four variants as plain data (:data:`VARIANTS`);
- ``checkpoints``: atomic save, ``weights_only`` load, model rebuild;
- ``resolve``: shipped weights / checkpoint file / folder -> :class:`LoadedModel` (each file read once).
"""
from .affine import AFFINE_KINDS, KEYPOINT_RIDGE, AffineStage, KeypointAffineStage, affine_from_keypoints
from .checkpoints import (
    FORMAT,
    architecture,
    describe_architecture,
    load_checkpoint,
    load_model,
    load_model_state,
    model_from_checkpoint,
    save_checkpoint,
    ship_checkpoint,
)
from .network import DEFAULT_ARCH, RegistrationModel, build_model, model_from_config
from .resolve import (
    MODELS_DIR,
    LoadedModel,
    load_model_file,
    model_sources,
    resolve_model,
    resolve_models,
    shipped_model_path,
    untrained_warning,
)
from .unet import ConvAct, FlowHead, UNet
from .variants import REFERENCE_REGULARIZERS, VARIANTS, VariantSpec, get_variant

__all__ = [
    "ConvAct", "UNet", "FlowHead",
    "AFFINE_KINDS", "KEYPOINT_RIDGE", "AffineStage", "KeypointAffineStage", "affine_from_keypoints",
    "DEFAULT_ARCH", "RegistrationModel", "build_model", "model_from_config",
    "VariantSpec", "VARIANTS", "REFERENCE_REGULARIZERS", "get_variant",
    "FORMAT", "save_checkpoint", "load_checkpoint", "architecture", "describe_architecture", "load_model_state",
    "model_from_checkpoint", "load_model", "ship_checkpoint",
    "MODELS_DIR", "LoadedModel", "shipped_model_path", "model_sources", "untrained_warning", "load_model_file",
    "resolve_model", "resolve_models",
]
