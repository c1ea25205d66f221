"""A command run as a background process, its output delivered by polling (no Qt, no Slicer).

:class:`BackgroundJob` starts the command at once. A reader thread queues the process's merged
stdout/stderr lines (decoded as UTF-8, undecodable bytes replaced by U+FFFD, line ends stripped);
:meth:`BackgroundJob.poll`, called by the owner on its own thread (the Slicer panel: a ``qt.QTimer``
every 200 ms, so the callbacks run on the GUI thread), hands each queued line to ``on_line(line)`` and,
once the process has exited and its output is drained, calls ``on_exit(return_code, cancelled)``
exactly once. :meth:`BackgroundJob.cancel` kills the process and its children
(:func:`kill_process_tree`).

Platforms: on Linux and macOS the process leads a new session, so its process group holds its
children (Slicer's ``PythonSlicer`` is a launcher that starts the real Python); on Windows it gets a
new process group and no console window, and ``taskkill /T`` ends the tree, itself started without a
console window (:func:`hidden_console_options`, as ``slicer.util.launchConsoleProcess`` starts its
processes). The child's output is read as UTF-8: its environment should ask for it (``PYTHONUTF8``,
``PYTHONIOENCODING``, as ``panel.process_environment`` does), or a Windows child writes its ANSI code page.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from typing import Any, Callable, Dict, Sequence

__all__ = ["BackgroundJob", "kill_process_tree", "hidden_console_options"]


def hidden_console_options() -> Dict[str, Any]:
    """``subprocess`` options that start a console program without a console window on Windows: a
    ``STARTUPINFO`` with ``SW_HIDE`` (what ``slicer.util.launchConsoleProcess`` passes) and
    ``CREATE_NO_WINDOW``; ``{}`` on other systems."""
    if os.name != "nt":
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = subprocess.SW_HIDE
    return {"startupinfo": info, "creationflags": subprocess.CREATE_NO_WINDOW}


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and its children (PythonSlicer is a launcher that starts the real Python)."""
    if proc.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, **hidden_console_options())
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session: group id == pid
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _popen_options(env: Dict[str, str]) -> Dict[str, Any]:
    """``subprocess.Popen`` options: merged text output read line by line, own process group."""
    options: Dict[str, Any] = dict(
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        universal_newlines=True, encoding="utf-8", errors="replace", bufsize=1,
    )
    if os.name == "nt":
        hidden = hidden_console_options()
        options["startupinfo"] = hidden["startupinfo"]
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | hidden["creationflags"]
    else:
        options["start_new_session"] = True
    return options


class BackgroundJob:
    """``command`` (program and arguments) running in a child process with environment ``env``.

    Args:
        command: the program and its arguments (each turned into ``str``).
        env: the child's whole environment.
        on_line: called by :meth:`poll` with each output line (without its line end).
        on_exit: called by :meth:`poll` once, with the exit status (negative: killed by that signal,
            POSIX) and whether :meth:`cancel` was called.
    """

    def __init__(self, command: Sequence[str], env: Dict[str, str],
                 on_line: Callable[[str], None], on_exit: Callable[[int, bool], None]) -> None:
        self.command = [str(part) for part in command]
        self.cancelled = False
        self._polling = False
        self._exited = False
        self._on_line = on_line
        self._on_exit = on_exit
        self._lines: "queue.Queue[str]" = queue.Queue()
        self._proc = subprocess.Popen(self.command, **_popen_options(env))
        self._reader = threading.Thread(target=self._read_output, name="DeepRegAblationOutput", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        for line in iter(self._proc.stdout.readline, ""):
            self._lines.put(line.rstrip("\r\n"))
        self._proc.stdout.close()

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            self._on_line(line)

    def poll(self) -> None:
        """Deliver the queued lines; after the exit (output drained), call ``on_exit`` once.

        Does nothing after the exit was delivered, nor when called again from inside a callback
        (a callback that processes GUI events must not re-enter).
        """
        if self._polling or self._exited:
            return
        self._polling = True
        try:
            self._drain()
            if self._reader.is_alive() or self._proc.poll() is None:
                return
            self._drain()
            self._exited = True
        finally:
            self._polling = False
        self._on_exit(self._proc.returncode, self.cancelled)

    def is_running(self) -> bool:
        """True until :meth:`poll` has delivered the exit."""
        return not self._exited

    def cancel(self) -> None:
        """Kill the process and its children; :meth:`poll` then reports the exit as cancelled."""
        self.cancelled = True
        kill_process_tree(self._proc)
