"""From "shipped weights, a checkpoint file or a folder of them" to loaded models: the one resolver.

Every caller that needs a model goes through here: ``register()`` (:func:`resolve_model`), the
``register`` and ``demo`` commands (:func:`model_sources`, :func:`resolve_models`), the quality
benchmark (entries ``NAME=CHECKPOINT``, seeded untrained networks), the evaluation (:func:`load_model_file`)
and the Slicer panel. Each checkpoint file is read once; its content stays in
:attr:`LoadedModel.checkpoint`.

- Shipped weights: ``<MODELS_DIR>/<ndim>d/<variant>.pt`` (:func:`shipped_model_path`).
- ``model_sources(None, variants, ndim)``: the shipped file of each variant, ``None`` where none is
  shipped (an UNTRAINED network is used there, with :func:`untrained_warning`); a folder: its
  ``<variant>.pt`` files; a file: the one variant.
- A loaded model keeps the checkpoint's ``preprocessing`` as an attribute (``register()`` honours it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint
from .network import RegistrationModel, build_model
from .variants import VARIANTS

__all__ = [
    "MODELS_DIR", "SOURCES", "LoadedModel", "shipped_model_file", "shipped_model_path", "training_ids",
    "model_sources", "untrained_warning", "split_named_entry", "load_model_file", "untrained_model",
    "resolve_model", "resolve_models",
]

PathLike = Union[str, "os.PathLike[str]"]

MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "Resources" / "Models"
"""Shipped weights: ``<MODELS_DIR>/<ndim>d/<variant>.pt``."""
SOURCES = ("shipped", "checkpoint", "untrained", "object")
"""Where a :class:`LoadedModel` came from: the shipped weights, a checkpoint file given by the user, an
untrained network of a variant id, or a model object given as is."""


@dataclass
class LoadedModel:
    """One model ready for ``register(model=...)``, and where it came from.

    Attributes:
        name: the row name: the variant id, or ``NAME`` of a ``NAME=CHECKPOINT`` entry.
        model: the network (eval mode, except a model object, which is used as it is).
        preprocessing: the checkpoint's ``preprocessing`` (model grid, orientation, alignment), or ``None``.
        source: one of :data:`SOURCES`.
        path: the checkpoint file (``None`` for untrained networks and objects).
        checkpoint: the file's content, read once (``None`` for untrained networks and objects).
    """

    name: str
    model: torch.nn.Module
    preprocessing: Optional[dict]
    source: str
    path: Optional[Path] = None
    checkpoint: Optional[dict] = None

    @property
    def trained(self) -> bool:
        """False for an untrained network built from a variant id."""
        return self.source != "untrained"

    @property
    def variant(self) -> str:
        """The variant id the model was built for (``model.variant.id``)."""
        return self.model.variant.id

    @property
    def train_ids(self) -> Optional[set]:
        """Subject ids the model was trained on (the checkpoint's ``data_split["train"]``), or ``None``."""
        return None if self.checkpoint is None else training_ids(self.checkpoint)


# --------------------------------------------------------------------------- where the weights are
def shipped_model_file(variant: str, ndim: int) -> Path:
    """Where the shipped weights of ``variant`` for ``ndim`` dimensions are (or would be): ``<MODELS_DIR>/<ndim>d/<variant>.pt``."""
    return MODELS_DIR / f"{int(ndim)}d" / f"{variant}.pt"


def shipped_model_path(variant: str, ndim: int) -> Optional[Path]:
    """The shipped weights ``Resources/Models/<ndim>d/<variant>.pt`` when present, else ``None``."""
    path = shipped_model_file(variant, ndim)
    return path if path.is_file() else None


def training_ids(checkpoint: dict) -> Optional[set]:
    """Subject ids the checkpoint's model was trained on (``data_split["train"]``), or ``None``."""
    split = checkpoint.get("data_split") or checkpoint.get("split")
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        return None
    ids = set()
    for entry in split["train"]:
        ids.add(str(entry.get("id")) if isinstance(entry, dict) else str(entry))
    return ids


def model_sources(
    model: Optional[PathLike], variants: Sequence[str], ndim: int, role: str = "--model"
) -> Dict[str, Optional[Path]]:
    """``{variant: checkpoint path, or None (untrained)}`` for ``variants``.

    ``model`` ``None``: the shipped weights of each variant (``None`` where none is shipped); a folder:
    its ``<variant>.pt`` for every variant (``FileNotFoundError`` naming the missing files); a file: the
    one variant (``ValueError`` for several). ``role`` names ``model`` in the messages.
    """
    if model is None:
        return {v: shipped_model_path(v, ndim) for v in variants}
    model = Path(os.fspath(model))
    if not model.exists():
        raise FileNotFoundError(f"{role} not found: {model}")
    if model.is_dir():
        sources = {v: model / f"{v}.pt" for v in variants}
        missing = [str(p) for p in sources.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{role} directory {model} lacks the checkpoint(s) {missing}")
        return sources
    if len(variants) != 1:
        raise ValueError(
            f"{role} {model} is one file, but --variant all needs a directory holding "
            f"{', '.join(v + '.pt' for v in VARIANTS)}"
        )
    return {variants[0]: model}


def untrained_warning(variants: Sequence[str], ndim: int) -> str:
    """The command line's warning for the variants that run an untrained network (no weights given or shipped)."""
    return (
        f"warning: no trained {ndim}D weights for {', '.join(variants)} (none given with --model, none "
        f"shipped): those results are from an UNTRAINED network (close to the identity), not a trained model"
    )


def split_named_entry(entry: str) -> Tuple[str, Optional[str]]:
    """``"NAME=CHECKPOINT"`` -> ``("NAME", "CHECKPOINT")``; ``"NAME"`` -> ``("NAME", None)`` (spaces stripped)."""
    name, _, given = (part.strip() for part in str(entry).partition("="))
    return name, (given or None)


# --------------------------------------------------------------------------- loading
def load_model_file(
    path: PathLike,
    ndim: Optional[int] = None,
    variant: Optional[str] = None,
    role: str = "--model",
    name: Optional[str] = None,
    source: str = "checkpoint",
) -> LoadedModel:
    """Read a checkpoint file once and build its model (CPU, eval mode, strict weights).

    Args:
        path: the checkpoint (``FileNotFoundError`` / ``CheckpointError`` from ``checkpoints.load_checkpoint``).
        ndim: if given, the model must have this dimensionality (checked after ``variant``).
        variant: if given, the checkpoint must hold this variant.
        role: names the file in the messages (``"--model"``: ``"--model checkpoint PATH holds ..."``; shipped
            weights are named ``"shipped weights PATH"``).
        name: the row name (default: ``variant``, else the checkpoint's variant id).
        source: ``"checkpoint"`` or ``"shipped"``.
    """
    path = Path(os.fspath(path))
    what = "shipped weights" if source == "shipped" else f"{role} checkpoint"
    checkpoint = load_checkpoint(path, role=what)  # the one reader: file, format and content checked
    net = model_from_checkpoint(checkpoint, path)  # strict weights, architecture checks
    preprocessing = checkpoint.get("preprocessing")
    net.preprocessing = preprocessing  # travels with the model (register() honours it)
    loaded_id = getattr(getattr(net, "variant", None), "id", None)
    if variant is not None and loaded_id != variant:
        raise CheckpointError(f"{what} {path} holds variant {loaded_id!r}, not {variant!r}")
    if ndim is not None and int(net.ndim) != int(ndim):
        kind = "single-slice (2D)" if int(ndim) == 2 else "3D"
        raise CheckpointError(
            f"{what} {path} is a {net.ndim}D model but --fixed is a {kind} image; use a {ndim}D checkpoint"
        )
    return LoadedModel(name or variant or str(loaded_id), net, preprocessing, source, path, checkpoint)


def untrained_model(variant: str, ndim: int, seed: Optional[int] = None, name: Optional[str] = None) -> LoadedModel:
    """An untrained network of ``variant`` (eval mode); ``seed``: ``torch.manual_seed(seed)`` first."""
    if seed is not None:
        torch.manual_seed(seed)
    return LoadedModel(name or variant, build_model(variant, ndim).eval(), None, "untrained")


def resolve_model(model: Any, ndim: int) -> LoadedModel:
    """What ``register(model=...)`` takes: a variant id, a checkpoint path or a model object.

    A variant id gives an untrained network of dimension ``ndim``; a path is read once (its
    ``preprocessing`` travels with the model as an attribute; the dimension is checked against the
    images by ``register``); a model object is used as is (its ``preprocessing`` attribute, if any,
    is honoured).
    """
    if isinstance(model, torch.nn.Module):
        if not isinstance(model, RegistrationModel) and not hasattr(model, "ndim"):
            raise ValueError(f"model must be a RegistrationModel, got {type(model).__name__}")
        variant = getattr(getattr(model, "variant", None), "id", None)
        return LoadedModel(str(variant or type(model).__name__), model, getattr(model, "preprocessing", None), "object")
    if isinstance(model, str) and model in VARIANTS:
        return untrained_model(model, ndim)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(
                f"model must be a variant id {list(VARIANTS)} or a checkpoint file; not found: {path}"
            )
        return load_model_file(path)
    raise ValueError(
        f"model must be a variant id {list(VARIANTS)}, a checkpoint path or a RegistrationModel, "
        f"got {type(model).__name__}"
    )


def resolve_models(
    model: Optional[PathLike],
    variants: Sequence[str],
    ndim: int,
    untrained: bool = False,
    seed: Optional[int] = None,
    on_untrained: Optional[Callable[[List[str]], None]] = None,
    role: str = "--model",
) -> Dict[str, LoadedModel]:
    """``{name: LoadedModel}`` for ``variants`` from ``model`` (``None``, a checkpoint file or a folder).

    ``model`` as in :func:`model_sources`; each checkpoint is checked to hold its variant in ``ndim``
    dimensions (messages name ``role``). Without ``model`` an entry may also be ``NAME=CHECKPOINT``: that
    file under the row name ``NAME`` (``source`` ``"checkpoint"``, no variant check: e.g. the runs of a
    sweep beside the shipped models); ``ValueError`` when the file does not exist.

    Variants without weights (none shipped, or ``untrained=True``: the shipped weights are ignored) get
    an untrained network, ``torch.manual_seed(seed)`` before each when ``seed`` is given;
    ``on_untrained(names)`` is called with their names before anything is loaded (e.g. to print
    :func:`untrained_warning`).
    """
    if model is not None:
        entries = [(variant, None, path) for variant, path in model_sources(model, variants, ndim, role).items()]
    else:
        entries = [_named_entry(entry, ndim, untrained) for entry in variants]
    missing = [name for name, given, path in entries if given is None and path is None]
    if missing and on_untrained is not None:
        on_untrained(missing)
    models: Dict[str, LoadedModel] = {}
    for name, given, path in entries:
        if given is not None:  # NAME=CHECKPOINT
            if not Path(given).is_file():
                raise ValueError(f"variant {name!r}: checkpoint file not found: {given}")
            models[name] = load_model_file(given, name=name)
        elif path is None:
            if seed is not None:
                torch.manual_seed(seed)
            models[name] = _untrained_entry(name, ndim)
        else:
            models[name] = load_model_file(path, ndim, name, role, source="checkpoint" if model is not None else "shipped")
    return models


def _named_entry(entry: str, ndim: int, untrained: bool) -> Tuple[str, Optional[str], Optional[Path]]:
    """``(name, given checkpoint or None, shipped path or None)`` of a ``variant`` or ``NAME=CHECKPOINT`` entry."""
    name, given = split_named_entry(entry)
    if given is not None or untrained:
        return name, given, None
    return name, None, shipped_model_path(name, ndim)


def _untrained_entry(name: str, ndim: int) -> LoadedModel:
    """An untrained network for the entry ``name`` (a variant id; anything else fails as in :func:`resolve_model`)."""
    loaded = resolve_model(name, ndim)
    loaded.name = name
    loaded.source = "untrained"
    return loaded
