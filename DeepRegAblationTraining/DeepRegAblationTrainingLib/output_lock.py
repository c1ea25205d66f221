"""One run per output folder: an exclusive lock beside ``--out``, and what killed runs left there.

Two runs aimed at one folder (two ``register`` commands, the Slicer panel's background run and a command,
two ``train`` runs with one ``--out``) would otherwise both succeed with one result lost. :func:`output_lock`
holds an exclusive operating-system lock on the file ``.<name>.lock`` beside the folder for the whole run:
the second run is refused at once with :class:`OutputInUseError` (the command line's ``error:`` line, exit
status 2) naming the run that holds it (command, pid, host, start time, recorded in the file).

The lock is ``fcntl.flock`` (POSIX) or ``msvcrt.locking`` (Windows): the system releases it when its process
ends, however it ends, so a run killed with SIGKILL never leaves a lock that blocks the next one (no pid to
check, no pid reuse to fear). The file itself is removed when the run ends normally; after a killed run it
stays and the next run takes it over (:attr:`OutputLock.killed_holder` says who left it).

:func:`leftover_staging` and :func:`clean_leftover_staging` deal with the hidden folders a killed
``register`` leaves beside its ``--out`` (``.<name>.partial-*`` being written, ``.<name>.previous-*`` being
replaced): called under the lock, so no live run owns them.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

__all__ = [
    "OutputInUseError", "OutputLock", "lock_path", "output_lock", "leftover_staging", "clean_leftover_staging",
]

_HELD: Dict[str, "OutputLock"] = {}
"""Locks this process holds, by lock file: a nested :func:`output_lock` of the same folder is a no-op."""


class OutputInUseError(RuntimeError):
    """Another live run holds the output folder's lock (the message names it and what to do)."""


@dataclass
class OutputLock:
    """A held lock: its file, open descriptor, and the record of a run that ended without releasing it."""

    path: Path
    fd: int
    killed_holder: Optional[dict] = None


def lock_path(out: Path) -> Path:
    """The lock file of output folder ``out``: ``.<name>.lock`` beside it (``out`` itself may be replaced)."""
    out = Path(os.path.abspath(os.fspath(out)))
    return out.with_name(f".{out.name}.lock")


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on ``fd``; False when another process holds it."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):
            return False
        raise
    return True


def _read_record(fd: int) -> Optional[dict]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _describe(record: Optional[dict]) -> str:
    if not record:
        return "another run"
    return (f"{record.get('command', 'another run')} (pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"started {record.get('started', '?')})")


def _acquire(path: Path, out: Path, command: str, role: str) -> OutputLock:
    """Open (creating) and lock ``path``; retried when the file was replaced between open and lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                holder = _read_record(fd)
                raise OutputInUseError(
                    f"{role} {out} is in use by {_describe(holder)}; wait "
                    f"for it to finish or choose another {role} (nothing was written; lock file {path})"
                )
            try:
                same = os.fstat(fd).st_ino == os.stat(str(path)).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            previous = _read_record(fd)
            record = dict(command=command, pid=os.getpid(), host=socket.gethostname(),
                          started=datetime.datetime.now().isoformat(timespec="seconds"))
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
            return OutputLock(path, fd, previous)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise OutputInUseError(f"{role} lock file {path} keeps being replaced by other runs; try again")


@contextlib.contextmanager
def output_lock(out: Path, command: str, role: str = "--out") -> Iterator[OutputLock]:
    """Hold the exclusive lock of output folder ``out`` for the block (see the module docstring).

    Args:
        out: the output folder (it need not exist).
        command: what holds it, recorded for the message of a refused run (e.g. ``"deepreg-ablation register"``).
        role: how messages name the folder.

    Raises:
        OutputInUseError: another live process holds it (at once, nothing done).
    """
    path = lock_path(out)
    key = str(path)
    if key in _HELD:  # nested in this process: already ours
        yield _HELD[key]
        return
    lock = _acquire(path, Path(os.path.abspath(os.fspath(out))), command, role)
    _HELD[key] = lock
    try:
        yield lock
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(str(path))  # still locked: a run that opened it meanwhile retries on the new file
        os.close(lock.fd)


def leftover_staging(out: Path) -> Dict[str, List[Path]]:
    """The hidden folders killed ``register`` runs left beside ``out``: ``{"partial": [...], "previous": [...]}``."""
    out = Path(os.path.abspath(os.fspath(out)))
    if not out.parent.is_dir():
        return {"partial": [], "previous": []}
    found: Dict[str, List[Path]] = {}
    for kind in ("partial", "previous"):
        found[kind] = sorted(p for p in out.parent.glob(f".{out.name}.{kind}-*") if p.is_dir())
    return found


def clean_leftover_staging(out: Path, log=None) -> List[Path]:
    """Remove what killed runs left beside ``out`` (call it under :func:`output_lock`); returns what was removed.

    Unfinished results (``.partial-*``) are deleted. Earlier results a killed run was replacing
    (``.previous-*``) are put back as ``out`` when ``out`` is missing (the run died between the two renames),
    else deleted. ``log(message)`` (default: print to stderr) says what was done.
    """
    out = Path(os.path.abspath(os.fspath(out)))
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    found = leftover_staging(out)
    removed: List[Path] = []
    previous = sorted(found["previous"], key=lambda p: p.stat().st_mtime)
    if previous and not out.exists():
        previous[-1].replace(out)
        say(f"note: put back the earlier results in {out} (a killed run had moved them to {previous[-1].name})")
        previous = previous[:-1]
    for folder in found["partial"] + previous:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        names = ", ".join(p.name for p in removed)
        say(f"note: removed {len(removed)} unfinished result folder(s) that a killed run left beside {out}: {names}")
    return removed
