"""Concurrent runs cannot destroy each other's results (issue 24, item 2), with real processes.

A run is frozen with SIGSTOP while it holds its output folder (deterministic, no test hook in the code):
a second ``register`` into the same ``--out`` (from the command line or the panel's background run) or a
second ``train`` into the same ``--out`` is refused at once with exit status 2; the first then finishes
with its results intact. A ``register`` killed with SIGKILL leaves a hidden ``.<out>.partial-*`` folder
and its lock file: the next run takes the lock over and removes the folder, saying so.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from _registration_helpers import CLI, CLI_ENV, write_smooth_images
from DeepRegAblationLib import jobs, panel
from DeepRegAblationTrainingLib import data
from DeepRegAblationTrainingLib.output_lock import OutputInUseError, lock_path, output_lock

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGSTOP / SIGKILL")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    files = write_smooth_images(tmp_path_factory.mktemp("pair"), fixed=0, moving=1, second=5)
    return files["fixed"], files["moving"], files["second"]


def _register_argv(fixed, moving, out):
    return ["register", "--fixed", str(fixed), "--moving", str(moving), "--variant", "baseline", "--device", "cpu",
            "--no-scene", "--out", str(out)]


def _start_registering(fixed, moving, out) -> subprocess.Popen:
    """A ``register`` child that holds ``--out`` and is inside its registration (its ``[1/1]`` line was printed)."""
    proc = subprocess.Popen(CLI + _register_argv(fixed, moving, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=CLI_ENV)
    _wait_for_line(proc, "[1/1]")
    return proc


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout_s: float = 240.0) -> list:
    """Lines of ``proc`` up to the first that starts with ``prefix`` (the process is then inside its run)."""
    lines, deadline = [], time.time() + timeout_s
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before {prefix!r}: {lines}")
        lines.append(line.rstrip())
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"no {prefix!r} line within {timeout_s} s: {lines}")


def _finish(proc: subprocess.Popen) -> str:
    rest, _ = proc.communicate(timeout=600)
    return rest


def test_a_second_register_into_the_same_out_is_refused_and_the_first_keeps_its_results(pair, tmp_path):
    fixed, moving, second = pair
    out = tmp_path / "out"
    first = _start_registering(fixed, moving, out)
    first.send_signal(signal.SIGSTOP)
    try:
        t0 = time.time()
        other = subprocess.run(CLI + _register_argv(fixed, second, out), capture_output=True, text=True, env=CLI_ENV,
                               timeout=300)
        refused_after_s = time.time() - t0
    finally:
        first.send_signal(signal.SIGCONT)
    rest = _finish(first)
    assert other.returncode == 2, other.stdout + other.stderr
    assert other.stderr.startswith(f"error: --out {out} is in use by deepreg-ablation register (pid {first.pid}"), other.stderr
    assert "results:" not in other.stdout and "[1/1]" not in other.stdout  # refused before any work
    assert refused_after_s < 60
    assert first.returncode == 0, rest
    assert f"results: {out}" in rest
    marker = json.loads((out / ".deepreg-ablation-register").read_text())
    assert marker["moving"] == str(moving)  # the first run's results, not the refused one's
    assert (out / "baseline" / "warped.nii.gz").is_file()
    assert not lock_path(out).exists()  # released and removed at the end
    assert not list(tmp_path.glob(".out.partial-*"))


def test_the_panels_background_run_is_refused_while_a_command_writes_its_folder(pair, tmp_path):
    fixed, moving, second = pair
    out = tmp_path / "results"
    first = _start_registering(fixed, moving, out)
    first.send_signal(signal.SIGSTOP)
    outcomes, logged = [], []
    try:
        command = panel.register_command({"fixed": fixed, "moving": second}, out, ["baseline"], None, "cpu")
        job = panel.RegistrationJob(fixed_volume=None, moving_volume=None, work_dir=tmp_path, out_dir=out,
                                    variant_ids=["baseline"], reuse=True, metrics_table=None, on_log=logged.append,
                                    on_progress=lambda f, m: None, on_finished=outcomes.append)
        ended = []
        background = jobs.BackgroundJob(command, CLI_ENV, on_line=job.handle_line,
                                        on_exit=lambda code, cancelled: ended.append((code, cancelled)))
        deadline = time.time() + 300
        while not ended and time.time() < deadline:
            background.poll()
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGCONT)
    outcome = job.ended_outcome(*ended[0])
    assert outcome is not None and outcome.status == "failed"
    assert "is in use by deepreg-ablation register" in outcome.message and str(first.pid) in outcome.message
    rest = _finish(first)
    assert first.returncode == 0, rest
    assert json.loads((out / ".deepreg-ablation-register").read_text())["moving"] == str(moving)


def test_a_register_killed_with_sigkill_leaves_nothing_the_next_run_keeps(pair, tmp_path):
    fixed, moving, _ = pair
    out = tmp_path / "out"
    killed = _start_registering(fixed, moving, out)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    partial = list(tmp_path.glob(".out.partial-*"))
    assert len(partial) == 1 and not out.exists()  # what the killed run left
    assert lock_path(out).exists()  # its lock file stays, but the lock itself went with the process
    again = subprocess.run(CLI + _register_argv(fixed, moving, out), capture_output=True, text=True, env=CLI_ENV,
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed 1 unfinished result folder(s)" in again.stderr and partial[0].name in again.stderr
    assert not partial[0].exists() and not list(tmp_path.glob(".out.*-*"))
    assert (out / "baseline" / "warped.nii.gz").is_file()
    assert not lock_path(out).exists()


def test_killed_between_the_two_renames_puts_the_earlier_results_back(pair, tmp_path, capsys):
    """A run killed after moving the earlier results aside and before renaming its own into place."""
    from DeepRegAblationTrainingLib.output_lock import clean_leftover_staging

    out = tmp_path / "out"
    previous = tmp_path / ".out.previous-0123456789ab"
    (previous / "baseline").mkdir(parents=True)
    (previous / "metrics.json").write_text("[]")
    (tmp_path / ".out.partial-ba9876543210").mkdir()
    with output_lock(out, "test"):
        removed = clean_leftover_staging(out)
    assert (out / "metrics.json").is_file() and not previous.exists()
    assert [p.name for p in removed] == [".out.partial-ba9876543210"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return data.write_toy_oasis2d(tmp_path_factory.mktemp("toy"), n_subjects=6, shape=(32, 32))


def _train_argv(toy_root, out, *extra):
    return ["train", "--variant", "baseline", "--data", f"oasis2d:{toy_root}", "--steps", "4", "--steps-per-epoch", "2",
            "--val-pairs", "2", "--val-fraction", "0.4", "--threads", "1", "--device", "cpu", "--no-tensorboard",
            "--checkpoint-every", "1", "--out", str(out), "--features-enc", "8", "8", "8", "8",
            "--features-dec", "8", "8", "8", "8", "8", "8", "8", *extra]


def test_a_second_training_run_into_the_same_out_is_refused(toy_root, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(CLI + _train_argv(toy_root, out, "--no-progress"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=CLI_ENV)
    deadline = time.time() + 240
    while not (out / "config.json").is_file() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    try:
        other = subprocess.run(CLI + _train_argv(toy_root, out, "--no-progress", "--resume"), capture_output=True,
                               text=True, env=CLI_ENV, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    rest = _finish(first)
    assert other.returncode == 2, other.stdout + other.stderr
    assert other.stderr.startswith(f"error: --out {out} is in use by deepreg-ablation train --variant baseline "
                                   f"(pid {first.pid}"), other.stderr
    assert first.returncode == 0, rest
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one run's steps, not two runs' interleaved


def test_the_lock_in_one_process(tmp_path):
    out = tmp_path / "x"
    with output_lock(out, "first") as held:
        with output_lock(out, "nested") as again:  # the same process: already held
            assert again is held
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "first"
        code = ("import sys; from pathlib import Path; from DeepRegAblationTrainingLib.output_lock import output_lock\n"
                f"with output_lock(Path({str(out)!r}), 'second'): pass")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CLI_ENV, timeout=120)
        assert proc.returncode != 0 and "OutputInUseError" in proc.stderr and "in use by first" in proc.stderr
    assert not lock_path(out).exists()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=CLI_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr  # free again
    assert OutputInUseError.__mro__[1] is RuntimeError  # the command line's exit status 2
