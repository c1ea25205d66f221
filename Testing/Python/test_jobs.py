"""The background job runner (``DeepRegAblationLib.jobs``) with real child processes.

What the panel relies on: output lines arrive in order, stdout and stderr merged, line ends stripped,
decoded as UTF-8 (undecodable bytes replaced); the exit is reported once, after the last line; Cancel
kills the whole process tree (the child's own children too: PythonSlicer is a launcher), and the
exit then comes as cancelled.
"""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import List, Tuple

import pytest

from DeepRegAblationLib import jobs


class Recorder:
    """Collects what a job's callbacks receive."""

    def __init__(self) -> None:
        self.lines: List[str] = []
        self.exits: List[Tuple[int, bool]] = []

    def on_line(self, line: str) -> None:
        self.lines.append(line)

    def on_exit(self, return_code: int, cancelled: bool) -> None:
        self.exits.append((return_code, cancelled))


def start(script: str, recorder: Recorder, **env_extra) -> jobs.BackgroundJob:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", **env_extra)
    return jobs.BackgroundJob([sys.executable, "-c", textwrap.dedent(script)], env,
                              on_line=recorder.on_line, on_exit=recorder.on_exit)


def poll_until_exit(job: jobs.BackgroundJob, recorder: Recorder, timeout_s: float = 60.0) -> None:
    """What the panel's QTimer does, every 20 ms here."""
    deadline = time.time() + timeout_s
    while job.is_running() and time.time() < deadline:
        job.poll()
        time.sleep(0.02)
    assert not job.is_running(), f"the job did not end within {timeout_s} s; lines so far: {recorder.lines}"


def test_lines_in_order_merged_and_the_exit_status_once():
    recorder = Recorder()
    job = start("""
        import sys
        print("progress 0.250 first")
        print("to stderr", file=sys.stderr, flush=True)
        sys.stdout.write("windows line end\\r\\n")
        print("")
        print("[2/4] regloss: registering")
        sys.exit(3)
    """, recorder)
    assert job.is_running() and job.command[0] == sys.executable
    poll_until_exit(job, recorder)
    assert recorder.lines == ["progress 0.250 first", "to stderr", "windows line end", "", "[2/4] regloss: registering"]
    assert recorder.exits == [(3, False)]
    job.poll()  # after the exit: nothing more
    assert recorder.exits == [(3, False)] and not job.cancelled


def test_non_ascii_and_undecodable_output():
    recorder = Recorder()
    job = start("""
        import sys
        print("Größe des Gehirns: 1 250 cm³ — ok ✓")
        sys.stdout.flush()
        sys.stdout.buffer.write(b"bad byte \\xff here\\n")
        sys.stdout.buffer.flush()
    """, recorder)
    poll_until_exit(job, recorder)
    assert recorder.lines == ["Größe des Gehirns: 1 250 cm³ — ok ✓", "bad byte \ufffd here"]
    assert recorder.exits == [(0, False)]


def test_exit_is_reported_after_the_last_line_even_when_polled_late():
    """A child that prints and exits at once: the lines still queued are delivered before ``on_exit``."""
    recorder = Recorder()
    order: List[str] = []
    job = jobs.BackgroundJob(
        [sys.executable, "-c", "for i in range(500): print(i)"], dict(os.environ),
        on_line=lambda line: order.append("line"), on_exit=lambda code, cancelled: order.append("exit"),
    )
    time.sleep(1.0)  # the process is gone before the first poll
    poll_until_exit(job, recorder)
    assert order == ["line"] * 500 + ["exit"]


def test_a_callback_that_polls_again_does_not_re_enter():
    """A callback that processes GUI events (the QTimer fires again inside it) must not nest deliveries."""
    delivered: List[str] = []
    exits: List[Tuple[int, bool]] = []

    def on_line(line: str) -> None:
        delivered.append(line)
        job.poll()  # re-entrant call: ignored
        delivered.append(f"end {line}")

    job = jobs.BackgroundJob([sys.executable, "-c", "print('a'); print('b')"], dict(os.environ),
                             on_line=on_line, on_exit=lambda code, cancelled: exits.append((code, cancelled)))
    deadline = time.time() + 60
    while job.is_running() and time.time() < deadline:
        job.poll()
        time.sleep(0.02)
    assert delivered == ["a", "end a", "b", "end b"]
    assert exits == [(0, False)]


@pytest.mark.skipif(os.name == "nt", reason="the test's process checks are POSIX; Windows uses taskkill /T")
def test_cancel_kills_the_child_and_its_children(tmp_path):
    """The child starts a grandchild (as PythonSlicer starts the real Python) that keeps writing to a file
    and holds the output pipe; Cancel ends both, and the exit comes as cancelled."""
    heartbeat = tmp_path / "heartbeat.txt"
    recorder = Recorder()
    job = start(f"""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c",
            "import time\\nwhile True:\\n    open({str(heartbeat)!r}, 'a').write('x')\\n    time.sleep(0.05)"])
        print("grandchild", grandchild.pid, flush=True)
        time.sleep(600)
    """, recorder)
    deadline = time.time() + 60
    while not (recorder.lines and heartbeat.is_file()) and time.time() < deadline:
        job.poll()
        time.sleep(0.05)
    assert recorder.lines and recorder.lines[0].startswith("grandchild "), recorder.lines
    grandchild_pid = int(recorder.lines[0].split()[1])

    started = time.time()
    job.cancel()
    poll_until_exit(job, recorder, timeout_s=30)
    assert time.time() - started < 15
    assert job.cancelled
    assert len(recorder.exits) == 1
    return_code, cancelled = recorder.exits[0]
    assert cancelled and return_code != 0

    size = heartbeat.stat().st_size
    time.sleep(0.5)
    assert heartbeat.stat().st_size == size, "the grandchild still runs after Cancel"
    assert not _alive(grandchild_pid)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def test_cancel_after_the_exit_changes_nothing():
    recorder = Recorder()
    job = start("print('done')", recorder)
    poll_until_exit(job, recorder)
    job.cancel()  # the process has exited: nothing to kill
    job.poll()
    assert recorder.exits == [(0, False)]


def test_a_command_that_cannot_start_raises_at_once(tmp_path):
    with pytest.raises(OSError):
        jobs.BackgroundJob([str(tmp_path / "no-such-program")], dict(os.environ),
                           on_line=lambda line: None, on_exit=lambda code, cancelled: None)


# --------------------------------------------------------------------------- Windows (issue 23)
def test_non_ascii_paths_survive_a_child_whose_console_encoding_is_not_utf8(tmp_path):
    """On Windows a child Python writes in the ANSI code page (cp1252 here, as its PYTHONIOENCODING) while the job
    decodes UTF-8: a non-ASCII path came out as replacement characters. The panel's environment
    (``panel.process_environment``) makes the child write UTF-8."""
    from DeepRegAblationLib import panel

    recorder = Recorder()
    path = "C:/Users/José/Gehirn-ü-ß/fixed.nrrd"
    env = panel.process_environment([], dict(os.environ, PYTHONIOENCODING="cp1252"))
    job = jobs.BackgroundJob([sys.executable, "-c", f"print('reading {path}')"], env,
                             on_line=recorder.on_line, on_exit=recorder.on_exit)
    poll_until_exit(job, recorder)
    assert recorder.lines == [f"reading {path}"]


class _StartupInfo:
    """``subprocess.STARTUPINFO`` (Windows only) as recorded here."""

    def __init__(self) -> None:
        self.dwFlags = 0
        self.wShowWindow = 1  # SW_SHOWNORMAL


def test_cancel_on_windows_runs_taskkill_without_a_console_window(monkeypatch):
    """Cancel's ``taskkill /T`` flashed a console window; Slicer hides it (``slicer.util.launchConsoleProcess``:
    ``STARTUPINFO`` with ``SW_HIDE``). Windows is not here: ``os.name`` and the Windows-only ``subprocess`` names
    are set for the call, ``subprocess.run`` records it."""
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "STARTUPINFO", _StartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "STARTF_USESHOWWINDOW", 1, raising=False)
    monkeypatch.setattr(subprocess, "SW_HIDE", 0, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append((args, kwargs)))

    class Proc:
        pid = 4242

        def poll(self):
            return None

        def wait(self, timeout=None):
            return 1

    monkeypatch.setattr(jobs.os, "name", "nt")
    jobs.kill_process_tree(Proc())
    monkeypatch.undo()
    assert len(calls) == 1 and calls[0][0] == ["taskkill", "/F", "/T", "/PID", "4242"]
    options = calls[0][1]
    assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0
    assert options["creationflags"] & 0x08000000
