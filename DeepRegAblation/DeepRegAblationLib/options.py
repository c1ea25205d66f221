"""The user's options, defined once: read by the command line, the Slicer panel and the API alike.

- **Variants**: the four ablation variants (:data:`VARIANT_IDS`) and ``"all"``.
- **Refinement** (instance optimisation after the network): ``off``, ``recommended``, ``thorough``,
  or a number of iterations per level (the panel's ``custom``). :func:`parse_refine` reads the
  command line's and the API's value, :func:`refine_argument` the panel's pair of widgets.
- **Initial alignment**: ``auto`` (what the model was trained with), ``com`` (centres of mass
  translated together), ``none``.
- **Device**: ``auto``, ``cpu``, ``cuda``.

Each choice is an ``Enum`` (the panel's parameter node stores members by name) whose ``label()`` is
the panel's text. Nothing here imports torch, numpy or Slicer.
"""
from __future__ import annotations

import enum
import numbers
from typing import List, Sequence, Union

__all__ = [
    "VARIANT_IDS", "ALL_VARIANTS", "VariantChoice", "parse_variants",
    "RefineChoice", "REFINE_CHOICES", "REFINE_SCHEDULE_NAMES", "RefineArgument", "parse_refine", "refine_argument",
    "refine_cli_arguments", "AlignmentChoice", "ALIGNMENT_CHOICES", "DeviceChoice", "DEVICE_CHOICES",
]

VARIANT_IDS = ("baseline", "regloss", "affine_basic", "affine_enhanced")
"""The four ablation variants, in the order of every table (``models.variants.VARIANTS`` has these keys)."""
ALL_VARIANTS = "all"


class VariantChoice(enum.Enum):
    """A variant, or all four (``"all"``)."""

    baseline = "baseline"
    regloss = "regloss"
    affine_basic = "affine_basic"
    affine_enhanced = "affine_enhanced"
    compare_all = ALL_VARIANTS

    def label(self) -> str:
        return {
            "baseline": "baseline: U-Net, similarity only",
            "regloss": "regloss: U-Net + regularization losses",
            "affine_basic": "affine_basic: affine + U-Net, similarity only",
            "affine_enhanced": "affine_enhanced: affine + U-Net + regularization",
            ALL_VARIANTS: "Compare all four variants",
        }[self.value]


def parse_variants(value: Union[str, Sequence[str]]) -> List[str]:
    """``"all"`` -> the four ids; one id, or a list of ids -> that list (order kept, repeats dropped).

    Raises ``ValueError`` naming the valid ids for anything else (or an empty list).
    """
    items = [value] if isinstance(value, str) else list(value)
    if items == [ALL_VARIANTS]:
        return list(VARIANT_IDS)
    unknown = [v for v in items if v not in VARIANT_IDS]
    if unknown or not items:
        raise ValueError(f"variants must be 'all' or ids among {list(VARIANT_IDS)}, got {value!r}")
    return list(dict.fromkeys(items))


class RefineChoice(enum.Enum):
    """The panel's refinement choice; ``custom`` takes its iterations per level from a second widget."""

    off = "off"
    recommended = "recommended"
    thorough = "thorough"
    custom = "custom"

    def label(self) -> str:
        return {
            "off": "Off (network only, fastest)",
            "recommended": "Recommended (fast)",
            "thorough": "Thorough (slower, to full resolution)",
            "custom": "Custom iterations",
        }[self.value]


REFINE_CHOICES = tuple(choice.value for choice in RefineChoice)
REFINE_SCHEDULE_NAMES = ("recommended", "thorough")
"""The named refinement schedules (``registration.refine.REFINE_SCHEDULES`` has these keys)."""
RefineArgument = Union[int, str]
"""``register(refine=...)``: ``0`` (off), ``"recommended"``, ``"thorough"`` or iterations per level (``int > 0``)."""


def parse_refine(value: Union[None, bool, int, str]) -> RefineArgument:
    """The command line's / API's refinement value -> ``0``, ``"recommended"``, ``"thorough"`` or ``N > 0``.

    Accepts ``None`` / ``False`` / ``"off"`` / ``"none"`` / ``""`` / ``0`` (off), ``True`` (recommended),
    a schedule name (any case) or a non-negative whole number: an integer (numpy's too), a float with
    no fraction, or its text. ``ValueError`` otherwise (``registration.refine.refine_schedule`` reads it).
    """
    if value is None or value is False:
        return 0
    if value is True:
        return "recommended"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none", ""):
            return 0
        if text in REFINE_SCHEDULE_NAMES:
            return text
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"refine must be 'off', 'recommended', 'thorough' or a number of iterations per level, got {value!r}"
            ) from None
    if isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()):
        count = int(value)
        if count < 0:
            raise ValueError(f"refine iterations must be >= 0, got {count}")
        return count
    raise ValueError(f"refine must be 'off', 'recommended', 'thorough' or an iteration count, got {value!r}")


def refine_argument(choice: str, iterations: int = 0) -> RefineArgument:
    """The panel's choice -> ``register``'s ``refine``: 0 (off), a schedule name, or ``iterations`` (custom, >= 1)."""
    if choice not in REFINE_CHOICES:
        raise ValueError(f"refinement choice must be one of {REFINE_CHOICES}, got {choice!r}")
    if choice == RefineChoice.off.value:
        return 0
    if choice != RefineChoice.custom.value:
        return choice
    if int(iterations) < 1:
        raise ValueError(f"custom refinement needs at least 1 iteration, got {iterations}")
    return int(iterations)


def refine_cli_arguments(refine: RefineArgument) -> List[str]:
    """``register``'s command-line arguments for ``refine``: none (off), ``--refine`` (recommended),
    ``--refine thorough`` or ``--refine N``."""
    if refine == "recommended":
        return ["--refine"]
    if refine == "thorough":
        return ["--refine", "thorough"]
    if isinstance(refine, str) or int(refine) < 0:
        raise ValueError(f"refine must be 'recommended', 'thorough' or a number of iterations >= 0, got {refine!r}")
    return ["--refine", str(int(refine))] if int(refine) > 0 else []


class AlignmentChoice(enum.Enum):
    """Initial alignment before the network: the model's own choice, centres of mass, or none."""

    auto = "auto"
    com = "com"
    none = "none"

    def label(self) -> str:
        return {
            "auto": "Automatic (when the centres are far apart)",
            "com": "Always align centres of mass",
            "none": "Never (use the volumes where they lie)",
        }[self.value]


ALIGNMENT_CHOICES = tuple(choice.value for choice in AlignmentChoice)


class DeviceChoice(enum.Enum):
    """Keep ``cuda`` last: the panel removes that last item when PyTorch has no CUDA."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"

    def label(self) -> str:
        return {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "CUDA GPU"}[self.value]


DEVICE_CHOICES = tuple(choice.value for choice in DeviceChoice)
