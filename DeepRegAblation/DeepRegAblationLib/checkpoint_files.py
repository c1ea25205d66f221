"""What is wrong with a checkpoint FILE, found without PyTorch: cut short, corrupt, or not a checkpoint at all.

A PyTorch checkpoint (``torch.save``, the zip format of PyTorch >= 1.6) is a zip archive whose
entries sit under one folder: ``<name>/data.pkl`` (the pickled structure), ``<name>/data/<n>`` (the
tensors' bytes), ``<name>/version``... Every entry carries a CRC-32 and the archive ends with its
central directory. :func:`checkpoint_file_problem` reads the whole file once and finds:

- an empty file, a directory, something that is not a zip archive (a text file, an old-style
  pickle);
- a file cut short (no central directory at the end: a crash or an incomplete copy);
- damaged bytes (an entry whose CRC-32 does not match: PyTorch itself does not check them and would
  load the damaged weights silently);
- a zip archive that is not a PyTorch file: a NumPy ``.npz`` (e.g. a distillation teacher field),
  anything else without ``data.pkl``.

It is the first step of ``models.checkpoints.load_checkpoint`` (the one reader of every ``.pt``
the project opens) and what the Slicer panel asks on every change of its checkpoint field, so it
imports neither PyTorch nor numpy.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import List, Union

__all__ = ["ZIP_MAGIC", "checkpoint_file_problem", "is_pytorch_archive"]

ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a zip archive (a ``torch.save`` file, a ``.npz``)."""
_PICKLE_PROTOCOL_2 = b"\x80\x02"  # old-style torch.save files (before PyTorch 1.6) and plain pickles

PathLike = Union[str, "os.PathLike[str]"]


def is_pytorch_archive(names: List[str]) -> bool:
    """Whether the entry names of a zip archive are those of a ``torch.save`` file (one ``*/data.pkl``)."""
    return any(name.endswith("/data.pkl") or name == "data.pkl" for name in names)


def checkpoint_file_problem(path: PathLike) -> str:
    """``""`` when ``path`` is a complete, undamaged PyTorch archive; else the problem, worded to follow
    the file's name (``"is truncated: ..."``, ``"is corrupt: ..."``, ``"is not a checkpoint: ..."``).

    Reads the whole file (a CRC-32 check of every entry); a missing file gives ``"does not exist"``.
    """
    path = Path(os.fspath(path))
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a checkpoint file"
    size = path.stat().st_size
    if size == 0:
        return "is an empty file (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != ZIP_MAGIC:
        if head.startswith(_PICKLE_PROTOCOL_2):
            return ("is not a checkpoint of this program: an old-style PyTorch or Python pickle file (not the zip "
                    "format that torch.save writes since PyTorch 1.6)")
        return f"is not a checkpoint: not a PyTorch archive (it starts with {head!r}, {size} bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not is_pytorch_archive(names):
                return _not_pytorch(names)
            damaged = archive.testzip()  # reads every entry, checks its CRC-32
    except zipfile.BadZipFile as exc:
        if "central directory" in str(exc).lower() or "not a zip file" in str(exc).lower():
            return (f"is truncated: its zip archive has no end (no central directory; {size} bytes on disk): cut "
                    f"short by a crash, a full disk or an incomplete copy")
        return f"is corrupt: {exc} ({size} bytes on disk)"
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        return f"is corrupt: its zip archive cannot be read ({type(exc).__name__}: {exc}; {size} bytes on disk)"
    if damaged is not None:
        return f"is corrupt: its entry {damaged!r} fails its CRC-32 check (damaged bytes; {size} bytes on disk)"
    return ""


def _not_pytorch(names: List[str]) -> str:
    """The problem of a zip archive that is not a ``torch.save`` file."""
    if names and all(name.endswith(".npy") for name in names):
        arrays = ", ".join(name[: -len(".npy")] for name in names[:4]) + (", ..." if len(names) > 4 else "")
        return f"is a NumPy .npz archive (arrays {arrays}), not a checkpoint"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"is not a checkpoint: a zip archive without PyTorch data (entries {shown or 'none'})"
