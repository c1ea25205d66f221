"""The six rows of issue 24's table, one test each, written against APIs that existed before the issue (behaviour
only: the command line, save_checkpoint, write_image), so that this file runs unchanged on the parent commit
edd8513, where all six fail (a bare OSError and exit 1; both runs exit 0; the .partial-* folder stays; no word about
the qform; no warning for the slab; no refusal before the run), and passes here. The detailed tests of each item
are test_checkpoint_files, test_output_lock, test_nifti_header, test_input_warnings, test_memory and test_fuzz."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from _registration_helpers import smooth_volume
from DeepRegAblationLib.imageio import ImageData, write_image
from DeepRegAblationLib.models.checkpoints import save_checkpoint
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationTrainingLib import cli

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGSTOP / SIGKILL")

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONUNBUFFERED="1")
CLI = [sys.executable, "-m", "DeepRegAblationTrainingLib.cli"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    fixed = write_image(root / "fixed.nii.gz", ImageData(smooth_volume((20, 20, 20), 0), np.eye(4)))
    moving = write_image(root / "moving.nii.gz", ImageData(smooth_volume((20, 20, 20), 1), np.eye(4)))
    return fixed, moving


def _argv(fixed, moving, out, *extra):
    return ["register", "--fixed", str(fixed), "--moving", str(moving), "--variant", "baseline", "--device", "cpu",
            "--no-scene", "--out", str(out), *extra]


def _start(argv):
    return subprocess.Popen(CLI + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def _until(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError("ended early")


def test_row1_a_cut_checkpoint(pair, tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", build_model("baseline", 3))
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:30000])
    proc = subprocess.run(CLI + _argv(*pair, tmp_path / "out", "--model", str(cut)), capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(cut) in proc.stderr, proc.stderr[-500:]


def test_row2_two_runs_into_one_out(pair, tmp_path):
    out = tmp_path / "out"
    first = _start(_argv(*pair, out))
    _until(first, "[1/1]")
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(CLI + _argv(pair[0], pair[0], out), capture_output=True, text=True, env=ENV, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert second.returncode != 0, "both runs succeeded"
    assert json.loads((out / ".deepreg-ablation-register").read_text())["moving"] == str(pair[1])


def test_row3_kill_9_leaves_nothing_behind(pair, tmp_path):
    out = tmp_path / "out"
    killed = _start(_argv(*pair, out))
    _until(killed, "[1/1]")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    again = subprocess.run(CLI + _argv(*pair, out), capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0
    assert not list(tmp_path.glob(".out.partial-*")), "the killed run's folder stays"


def test_row4_qform_sform_disagreement_is_reported(pair, tmp_path, capsys):
    import nibabel

    array = smooth_volume((20, 20, 20), 1).transpose(2, 1, 0).copy()
    image = nibabel.Nifti1Image(array, None)
    image.set_sform(np.eye(4), code=1)
    mirrored = np.eye(4)
    mirrored[0, 0] = -1.0
    image.set_qform(mirrored, code=1)
    path = tmp_path / "mirrored.nii.gz"
    nibabel.save(image, str(path))
    code = cli.main(_argv(pair[0], path, tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 0 and "qform" in err and "sform" in err, err


def test_row5_a_slab_registered_to_a_brain_warns(tmp_path, capsys):
    from DeepRegAblationTrainingLib.experiments.demo import load_mni

    template, _ = load_mni(3.0)
    k0 = template.shape[0] // 2 - 3
    grid = template.ijk_to_ras.copy()
    grid[:3, 3] += template.ijk_to_ras[:3, 2] * k0
    fixed = write_image(tmp_path / "brain.nii.gz", template)
    slab = write_image(tmp_path / "slab.nii.gz", ImageData(template.array[k0:k0 + 7].copy(), grid, "slab"))
    code = cli.main(["register", "--fixed", str(fixed), "--moving", str(slab), "--variant", "affine_enhanced",
                     "--device", "cpu", "--no-scene", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0
    assert "warning:" in captured.out + captured.err and json.loads((tmp_path / "out" / "metrics.json").read_text())[0].get("warnings")


def test_row6_a_run_that_cannot_fit_is_refused_before_it_starts(pair, tmp_path, capsys, monkeypatch):
    from DeepRegAblationLib import imageio

    voxels = 20 ** 3
    # enough for the header check (16 bytes per voxel), far too little to register (the interpreter alone needs more)
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: voxels * 16 + 1000)
    code = cli.main(_argv(*pair, tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and "GB of memory" in err, err
