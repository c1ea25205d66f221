"""The progress protocol between a command and whoever runs it in the background (the Slicer panel).

The command prints, one per line on stdout:

- ``progress <fraction> <message>``: overall progress in [0, 1] (:func:`progress_line`);
- ``[<index>/<count>] <message>``: step ``index`` of ``count`` starts (:func:`step_line`);
- ``error: <message>``: the one-line error of a failed run (:func:`error_line`; exit status 2);
- ``warning: <message>``: something the user must know before trusting the results (:func:`warning_line`:
  an input outside what the models know, a header that tools read differently, ...).

Any other line is plain log text. :func:`parse_progress_line`, :func:`parse_error_line` and
:func:`parse_warning_line` read them back; they are the only parsers of this format.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = [
    "progress_line", "step_line", "error_line", "warning_line", "parse_progress_line", "parse_error_line",
    "parse_warning_line", "ERROR_PREFIX", "WARNING_PREFIX",
]

ERROR_PREFIX = "error:"
WARNING_PREFIX = "warning:"
_PROGRESS = re.compile(r"^\s*progress\s+(?P<value>\d+(?:\.\d+)?)(?:\s+(?P<message>.*))?$")
_STEP = re.compile(r"^\s*\[\s*(?P<index>\d+)\s*/\s*(?P<count>\d+)\s*\]\s*(?P<message>.*)$")


def progress_line(fraction: float, message: str) -> str:
    """``progress 0.420 message`` (the fraction clipped to [0, 1], three decimals)."""
    value = min(max(float(fraction), 0.0), 1.0)
    return f"progress {value:.3f} {' '.join(str(message).split())}".rstrip()


def step_line(index: int, count: int, message: str) -> str:
    """``[index/count] message``: step ``index`` (1-based) of ``count`` starts."""
    return f"[{int(index)}/{int(count)}] {' '.join(str(message).split())}".rstrip()


def error_line(message: str) -> str:
    """``error: message`` on one line."""
    return f"{ERROR_PREFIX} {' '.join(str(message).split())}"


def warning_line(message: str) -> str:
    """``warning: message`` on one line."""
    return f"{WARNING_PREFIX} {' '.join(str(message).split())}"


def parse_progress_line(line: str) -> Optional[Tuple[float, str]]:
    """A progress or step line -> ``(fraction, message)``; any other line -> ``None``.

    ``progress 0.42 msg`` gives 0.42; ``[2/4] msg`` (step 2 of 4 starts) gives 0.25.
    """
    match = _PROGRESS.match(line)
    if match:
        return min(max(float(match.group("value")), 0.0), 1.0), (match.group("message") or "").strip()
    match = _STEP.match(line)
    if match and int(match.group("count")) > 0:
        fraction = (int(match.group("index")) - 1) / int(match.group("count"))
        return min(max(fraction, 0.0), 1.0), match.group("message").strip()
    return None


def parse_error_line(line: str) -> Optional[str]:
    """The message of an ``error: ...`` line, else ``None``."""
    text = line.strip()
    if text.lower().startswith(ERROR_PREFIX):
        return text[len(ERROR_PREFIX):].strip()
    return None


def parse_warning_line(line: str) -> Optional[str]:
    """The message of a ``warning: ...`` line, else ``None``."""
    text = line.strip()
    if text.lower().startswith(WARNING_PREFIX):
        return text[len(WARNING_PREFIX):].strip()
    return None
