"""Where the networks run: :func:`resolve_device` (``"auto"`` / ``"cpu"`` / ``"cuda[:N]"``) and
:func:`run_with_cpu_fallback` (CUDA out of memory -> the CPU, with a warning)."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Tuple, Union

import torch

__all__ = ["resolve_device", "run_with_cpu_fallback"]


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU. ``"cuda"`` without CUDA -> ``ValueError``."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but CUDA is not available here; use 'cpu' or 'auto'")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return resolved


def run_with_cpu_fallback(work: Callable[[torch.device], Any], device: torch.device, what: str = "the model") -> Tuple[Any, torch.device]:
    """``(work(device), device)``; when CUDA runs out of memory, warn and return ``(work(cpu), cpu)``."""
    try:
        return work(device), device
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if device.type != "cuda" or "out of memory" not in str(exc).lower():
            raise
        warnings.warn(f"CUDA ran out of memory for {what}; falling back to the CPU (slower)", RuntimeWarning, stacklevel=3)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        return work(cpu), cpu
