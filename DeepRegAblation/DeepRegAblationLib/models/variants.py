"""The four ablation variants as plain data.

==================  ====================================  ======================================  ======
id                  architecture                          training loss                           lr
==================  ====================================  ======================================  ======
``baseline``        U-Net + spatial transformer           similarity only                         1e-3
``regloss``         U-Net + spatial transformer           similarity + the five regularizers      1e-3
``affine_basic``    affine stage, then the same U-Net     similarity only                         3e-4
``affine_enhanced`` affine stage, then the same U-Net     similarity + the five regularizers      3e-4
==================  ====================================  ======================================  ======

The variants differ ONLY in the component under study:

- the deformable network is the same for all four (``models.network.DEFAULT_ARCH``: same feature
  counts, same LeakyReLU, same near-zero flow head, a displacement in voxels with no output
  cap, nothing variant-specific); the affine stage is the only architectural difference;
- the loss is the same similarity (``"lncc"``) for all four; the regularized variants add the
  five regularizers with the reference weights ``REFERENCE_REGULARIZERS`` (keys of
  ``losses.REGULARIZERS``), multiplied by the ``"reference"`` schedule
  ``max(0.01, 0.1 * (1 - epoch / epochs))``. All four carry the same schedule name; with no
  regularizers it multiplies nothing;
- the learning rate follows the affine stage (1e-3 without, 3e-4 with), as in the reference
  study. Every field can be overridden with :func:`get_variant`.

A :class:`VariantSpec` is immutable (its ``regularizers`` mapping too), hashable, picklable and
JSON-safe through :meth:`VariantSpec.to_dict` / :meth:`VariantSpec.from_dict`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Union

from ..options import VARIANT_IDS

__all__ = [
    "SCHEDULES", "LR_DEFORMABLE", "LR_AFFINE", "REFERENCE_REGULARIZERS", "VariantSpec", "VARIANTS", "get_variant",
]

SCHEDULES = ("reference", "constant")
LR_DEFORMABLE = 1e-3
LR_AFFINE = 3e-4

REFERENCE_REGULARIZERS: Dict[str, float] = {
    "grad_l2": 0.01,
    "displacement_hinge": 0.01,
    "local_rigidity": 0.005,
    "jacobian_penalty": 0.1,
    "bending_energy": 0.005,
}


class _FrozenDict(dict):
    """A ``dict`` that refuses to be changed (so a shared :data:`VARIANTS` entry stays as defined).

    Still a real ``dict``: ``json.dumps``, ``dataclasses.asdict``, pickling and copying work.
    """

    def _readonly(self, *args, **kwargs):
        raise TypeError("VariantSpec.regularizers is read-only; use get_variant(..., regularizers={...})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly
    __ior__ = _readonly

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


@dataclass(frozen=True)
class VariantSpec:
    """One ablation variant: what is built (``affine``) and how it is trained (loss, schedule, lr).

    Attributes:
        id: short name, e.g. ``"baseline"``.
        description: one line for reports and the GUI.
        affine: affine stage before the deformable U-Net.
        similarity: key of ``losses.SIMILARITIES`` (default ``"lncc"``).
        regularizers: key of ``losses.REGULARIZERS`` -> weight (>= 0); empty = similarity only.
        schedule: ``"reference"`` (``max(0.01, 0.1 * (1 - epoch / epochs))`` multiplies the
            regularizer weights) or ``"constant"`` (multiplier 1).
        lr: Adam learning rate; ``None`` means 1e-3 without affine stage, 3e-4 with one.
    """

    id: str
    description: str = ""
    affine: bool = False
    similarity: str = "lncc"
    regularizers: Dict[str, float] = field(default_factory=dict)
    schedule: str = "reference"
    lr: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a string, got {type(self.description).__name__}")
        if not isinstance(self.affine, bool):
            raise ValueError(f"affine must be True or False, got {self.affine!r}")
        if not isinstance(self.similarity, str) or not self.similarity:
            raise ValueError(f"similarity must be a loss name such as 'lncc', got {self.similarity!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not isinstance(self.regularizers, Mapping):
            raise ValueError(f"regularizers must be a mapping name -> weight, got {type(self.regularizers).__name__}")
        weights = {}
        for name, weight in self.regularizers.items():
            if not isinstance(name, str):
                raise ValueError(f"regularizers keys must be loss names (str), got {name!r}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"regularizers[{name!r}] must be a finite weight >= 0, got {weight!r}")
            weights[name] = float(weight)
        object.__setattr__(self, "regularizers", _FrozenDict(weights))
        lr = self.lr
        if lr is None:
            lr = LR_AFFINE if self.affine else LR_DEFORMABLE
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        object.__setattr__(self, "lr", float(lr))

    def __reduce__(self):
        return (VariantSpec.from_dict, (self.to_dict(),))

    @property
    def regularized(self) -> bool:
        """True when any regularizer has a non-zero weight."""
        return any(w > 0 for w in self.regularizers.values())

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe plain dict (str, bool, float, dict of floats)."""
        return {
            "id": self.id,
            "description": self.description,
            "affine": self.affine,
            "similarity": self.similarity,
            "regularizers": dict(self.regularizers),
            "schedule": self.schedule,
            "lr": self.lr,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VariantSpec":
        """Inverse of :meth:`to_dict`; ``ValueError`` on unknown or missing keys."""
        if not isinstance(d, Mapping):
            raise ValueError(f"variant dict must be a mapping, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown VariantSpec field(s) {unknown}; valid fields: {names}")
        if "id" not in d:
            raise ValueError(f"variant dict needs an 'id', got keys {sorted(d)}")
        return cls(**dict(d))


VARIANTS: Dict[str, VariantSpec] = {
    spec.id: spec
    for spec in (
        VariantSpec(
            id="baseline",
            description="U-Net + spatial transformer, similarity loss only",
            affine=False,
            regularizers={},
        ),
        VariantSpec(
            id="regloss",
            description="U-Net + spatial transformer, similarity + five regularizers",
            affine=False,
            regularizers=REFERENCE_REGULARIZERS,
        ),
        VariantSpec(
            id="affine_basic",
            description="affine stage then the same U-Net, similarity loss only",
            affine=True,
            regularizers={},
        ),
        VariantSpec(
            id="affine_enhanced",
            description="affine stage then the same U-Net, similarity + five regularizers",
            affine=True,
            regularizers=REFERENCE_REGULARIZERS,
        ),
    )
}
if tuple(VARIANTS) != VARIANT_IDS:  # the user options (options.VARIANT_IDS) name exactly these, in this order
    raise RuntimeError(f"VARIANTS {list(VARIANTS)} and options.VARIANT_IDS {list(VARIANT_IDS)} differ")


def get_variant(name_or_spec: Union[str, VariantSpec, Mapping[str, Any]], **overrides: Any) -> VariantSpec:
    """Look up a variant by id (or take a spec / its dict) and apply field overrides.

    ``get_variant("regloss", lr=5e-4, regularizers={"grad_l2": 0.02})``. Changing ``affine``
    without giving ``lr`` keeps the base variant's lr. ``ValueError`` names the valid ids or
    fields.
    """
    if isinstance(name_or_spec, VariantSpec):
        spec = name_or_spec
    elif isinstance(name_or_spec, str):
        if name_or_spec not in VARIANTS:
            raise ValueError(f"unknown variant {name_or_spec!r}; valid ids: {sorted(VARIANTS)}")
        spec = VARIANTS[name_or_spec]
    elif isinstance(name_or_spec, Mapping):
        spec = VariantSpec.from_dict(name_or_spec)
    else:
        raise ValueError(
            f"name_or_spec must be a variant id {sorted(VARIANTS)}, a VariantSpec or its dict, "
            f"got {type(name_or_spec).__name__}"
        )
    if not overrides:
        return spec
    names = [f.name for f in dataclasses.fields(VariantSpec)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"unknown VariantSpec field(s) {unknown}; valid fields: {names}")
    return dataclasses.replace(spec, **overrides)
