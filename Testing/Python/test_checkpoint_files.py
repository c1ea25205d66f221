"""Checkpoints are read like images (issue 24, item 1): one reader for every ``.pt`` the project opens.

A checkpoint cut short, corrupt, not a checkpoint at all, another program's weights (a voxelmorph or MONAI
state dict, built here with the installed packages), the wrong dimension or variant: ``models.checkpoints.
load_checkpoint`` raises one ``CheckpointError`` (a ``ValueError``) whose one-line message names the file and
the problem; the command line prints it as one ``error:`` line and exits with status 2 (``--model``,
``--init-from``, ``--resume``); the panel's checkpoint field says it without PyTorch; a training run whose
``last.pt`` was cut resumes from its newest good ``epoch_XXXX.pt`` with a warning; ``scripts/brains3d/carry.sh``
stages what an unfinished run needs to resume in a new checkout (issue 21).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _registration_helpers import smooth_volume
from DeepRegAblationLib import checkpoint_files, panel
from DeepRegAblationLib.imageio import ImageData, write_image
from DeepRegAblationLib.models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationLib.models.resolve import MODELS_DIR, load_model_file
from DeepRegAblationTrainingLib import cli, data
from DeepRegAblationTrainingLib.training import trainer

TINY = dict(enc_features=(8, 8, 8, 8), dec_features=(8,) * 7)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid 3D baseline checkpoint (tiny network)."""
    return save_checkpoint(tmp_path_factory.mktemp("good") / "baseline.pt", build_model("baseline", 3, **TINY))


def _cut(good: Path, path: Path, size: int) -> Path:
    path.write_bytes(good.read_bytes()[:size])
    return path


def _flip(good: Path, path: Path) -> Path:
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)  # zeros in the middle of a weight tensor's bytes
    path.write_bytes(bytes(data))
    return path


def _voxelmorph_state_dict(path: Path) -> Path:
    from voxelmorph.nn.models import VxmPairwise

    torch.save(VxmPairwise(3, 1, 1, nb_features=(4, 4)).state_dict(), str(path))
    return path


def _monai_state_dict(path: Path) -> Path:
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8), strides=(2,))
    torch.save(net.state_dict(), str(path))
    return path


def _monai_checkpoint(path: Path) -> Path:
    """MONAI's CheckpointSaver layout: ``{"net": state_dict, "opt": ...}``."""
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8), strides=(2,))
    torch.save({"net": net.state_dict(), "opt": torch.optim.Adam(net.parameters()).state_dict()}, str(path))
    return path


def _pickled_module(path: Path) -> Path:
    from voxelmorph.nn.models import VxmPairwise

    torch.save(VxmPairwise(3, 1, 1, nb_features=(4, 4)), str(path))  # the whole module object, pickled
    return path


def _npz(path: Path) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, disp_vox=np.zeros((3, 4, 4, 4), np.float32))
    return path


# (case, builder(good, path) -> path, phrase in the message)
FILE_CASES = [
    ("cut-30000-bytes", lambda g, p: _cut(g, p, 30000), "is truncated"),
    ("cut-half", lambda g, p: _cut(g, p, g.stat().st_size // 2), "is truncated"),
    ("cut-last-byte", lambda g, p: _cut(g, p, g.stat().st_size - 1), "is truncated"),
    ("corrupt-bytes", _flip, "is corrupt"),
    ("empty", lambda g, p: _cut(g, p, 0), "is an empty file"),
    ("text", lambda g, p: (p.write_text("not a checkpoint\n"), p)[1], "is not a checkpoint"),
    ("npz", lambda g, p: _npz(p), "NumPy .npz archive"),
]
CONTENT_CASES = [
    ("voxelmorph-state-dict", lambda g, p: _voxelmorph_state_dict(p), "another program's weights"),
    ("monai-state-dict", lambda g, p: _monai_state_dict(p), "another program's weights"),
    ("monai-checkpoint", lambda g, p: _monai_checkpoint(p), "another program's checkpoint"),
    ("pickled-module", lambda g, p: _pickled_module(p), "pickled Python objects"),
]
ALL_CASES = FILE_CASES + CONTENT_CASES


def _one_line(message: str, path: Path) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message, message
    assert "Traceback" not in message


@pytest.mark.parametrize("case, build, phrase", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_load_checkpoint_names_the_file_and_the_problem(good, tmp_path, case, build, phrase):
    path = build(good, tmp_path / f"{case}.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, role="--model checkpoint")
    message = str(err.value)
    _one_line(message, path)
    assert message.startswith(f"--model checkpoint {path}") and phrase in message, message
    assert isinstance(err.value, ValueError)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    fixed = write_image(root / "fixed.nii.gz", ImageData(smooth_volume((16, 16, 16), 0), np.eye(4)))
    moving = write_image(root / "moving.nii.gz", ImageData(smooth_volume((16, 16, 16), 1), np.eye(4)))
    return fixed, moving


def _register(images, model, out, capsys, variant="baseline"):
    code = cli.main(["register", "--fixed", str(images[0]), "--moving", str(images[1]), "--variant", variant,
                     "--model", str(model), "--device", "cpu", "--no-scene", "--out", str(out)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, build, phrase", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_register_model_exits_2_with_one_line(good, images, tmp_path, capsys, case, build, phrase):
    path = build(good, tmp_path / f"{case}.pt")
    code, err = _register(images, path, tmp_path / "out", capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --model checkpoint"), err
    _one_line(lines[0], path)
    assert phrase in lines[0]
    assert not (tmp_path / "out").exists()


def test_wrong_dimension_and_variant_are_one_line_errors(images, tmp_path, capsys):
    two_d = save_checkpoint(tmp_path / "models2d" / "baseline.pt", build_model("baseline", 2, **TINY))
    code, err = _register(images, two_d, tmp_path / "out", capsys)
    assert code == 2 and err.count("\n") == 1 and str(two_d) in err and "is a 2D model" in err, err
    regloss = save_checkpoint(tmp_path / "regloss.pt", build_model("regloss", 3, **TINY))
    code, err = _register(images, regloss, tmp_path / "out", capsys)
    assert code == 2 and err.count("\n") == 1 and str(regloss) in err and "holds variant 'regloss'" in err, err


def test_a_real_process_with_a_cut_checkpoint_exits_2_without_a_trace(good, images, tmp_path):
    """The issue's row: ``--model`` a truncated .pt gave ``OSError: [Errno 22]``, exit 1, the file not named."""
    cut = _cut(good, tmp_path / "cut.pt", 30000)
    proc = subprocess.run(
        [sys.executable, "-m", "DeepRegAblationTrainingLib.cli", "register", "--fixed", str(images[0]),
         "--moving", str(images[1]), "--variant", "baseline", "--model", str(cut), "--device", "cpu",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "OSError" not in proc.stderr
    assert proc.stderr.strip().startswith(f"error: --model checkpoint {cut} is truncated"), proc.stderr


@pytest.mark.parametrize("case, build, phrase", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_the_panel_says_what_is_wrong_without_pytorch(good, tmp_path, case, build, phrase):
    path = build(good, tmp_path / f"{case}.pt")
    problem = panel.checkpoint_problem(str(path), "baseline")
    assert phrase in problem and path.name in problem, problem
    assert checkpoint_files.checkpoint_file_problem(path) != ""
    assert panel.checkpoint_problem(str(good), "baseline") == ""


def test_the_torch_free_check_needs_no_torch(good):
    """checkpoint_files imports nothing of PyTorch (the panel asks on every change)."""
    code = ("import sys, DeepRegAblationLib.checkpoint_files as c, DeepRegAblationLib.panel; "
            f"assert c.checkpoint_file_problem({str(good)!r}) == ''; assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 0, proc.stderr


def test_every_shipped_checkpoint_passes_the_reader():
    shipped = sorted(MODELS_DIR.glob("*d/*.pt"))
    if not shipped:
        pytest.skip("no shipped weights")
    for path in shipped:
        assert checkpoint_files.checkpoint_file_problem(path) == "", path
        load_checkpoint(path, role="shipped weights")


def test_the_shipped_3d_models_share_one_recipe():
    """The 3D ablation is fair only if the four files differ in the affine stage and the regularisers alone: the same
    U-Net and number of U-Net passes, the same steps, anneal, label weight, averaging, training data (augmentation,
    synthetic heads, mirrored pairs) and start (the folder of the files each run began from) (issue 21: a file shipped
    from another recipe, e.g. one single-pass file among cascades, or one run without the synthetic heads, fails here)."""
    paths = [MODELS_DIR / "3d" / f"{variant}.pt" for variant in ("baseline", "regloss", "affine_basic", "affine_enhanced")]
    if not all(path.is_file() for path in paths):
        pytest.skip("no shipped 3D weights")
    files = {path.stem: load_checkpoint(path, role="shipped weights") for path in paths}

    def recipe(ckpt):
        arch = dict(ckpt["model_config"]["arch"])
        arch.pop("affine_passes")  # only the affine variants run the affine stage
        config = ckpt["config"]
        data = config["data"]
        return (arch, config["steps"], config["lr_anneal_steps"], config["seg_weight"], config["arch"].get("deform_passes"),
                ckpt["shipped_from"]["global_steps"], data.get("augment"), data.get("heads"), data.get("mirror"),
                os.path.dirname(config["init_from"] or ""))

    recipes = {name: recipe(ckpt) for name, ckpt in files.items()}
    assert all(r == recipes["baseline"] for r in recipes.values()), recipes
    for name in ("affine_basic", "affine_enhanced"):
        assert files[name]["model_config"]["arch"]["affine_passes"] == 2, name
    regularised = {name: (files[name]["config"]["schedule"], files[name]["config"]["reg_scale"],
                          files[name]["model_config"]["variant"]["regularizers"]) for name in ("regloss", "affine_enhanced")}
    assert regularised["regloss"] == regularised["affine_enhanced"], regularised


def test_shipped_weights_that_are_cut_name_the_file(good, tmp_path):
    cut = _cut(good, tmp_path / "baseline.pt", 30000)
    with pytest.raises(CheckpointError, match=r"^shipped weights .*baseline.pt is truncated"):
        load_model_file(cut, 3, "baseline", role="shipped weights", source="shipped")


# --------------------------------------------------------------------------- training: --init-from, --resume
@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return data.write_toy_oasis2d(tmp_path_factory.mktemp("toy"), n_subjects=6, shape=(32, 32))


TINY_ARGS = ["--features-enc", "8", "8", "8", "8", "--features-dec", "8", "8", "8", "8", "8", "8", "8"]


def _train_argv(toy_root, out, steps, *extra):
    return ["train", "--variant", "baseline", "--data", f"oasis2d:{toy_root}", "--steps", str(steps),
            "--steps-per-epoch", "2", "--val-pairs", "2", "--val-fraction", "0.4", "--threads", "1",
            "--device", "cpu", "--no-progress", "--no-tensorboard", "--checkpoint-every", "1", "--out", str(out),
            *TINY_ARGS, *extra]


def test_init_from_a_cut_checkpoint_exits_2(toy_root, good, tmp_path, capsys):
    cut = _cut(good, tmp_path / "cut.pt", 30000)
    code = cli.main(_train_argv(toy_root, tmp_path / "run", 2, "--init-from", str(cut)))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --init-from checkpoint {cut} is truncated"), err
    assert err.count("\n") == 1


def test_resume_after_last_pt_was_cut_uses_the_newest_good_epoch_checkpoint(toy_root, tmp_path, capsys):
    """A crash that cut last.pt: --resume warns and continues from epoch_0002.pt; the result equals an
    uninterrupted run bitwise (CPU). With no good checkpoint left: exit 2 naming last.pt."""
    full = tmp_path / "full"
    assert cli.main(_train_argv(toy_root, full, 6)) == 0
    killed = tmp_path / "killed"
    env = dict(os.environ, **{trainer.KILL_HOOK_ENV: "5"}, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "DeepRegAblationTrainingLib.cli", *_train_argv(toy_root, killed, 6)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    last = killed / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # cut by the crash
    capsys.readouterr()
    assert cli.main(_train_argv(toy_root, killed, 6, "--resume")) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and str(last) in err and "epoch_0002.pt" in err, err
    a = torch.load(full / "last.pt", weights_only=True)["model_state"]
    b = torch.load(last, weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (killed / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))

    for path in killed.glob("*.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    code = cli.main(_train_argv(toy_root, killed, 8, "--resume"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: --resume checkpoint {last} is truncated"), err
    assert "no earlier epoch_XXXX.pt" in err


def test_carry_sh_stages_what_a_run_needs_to_resume_in_a_new_checkout(toy_root, tmp_path):
    """scripts/brains3d/carry.sh: in a repository that ignores runs/, it stages last.pt, the averaging window's epoch
    files slimmed to their weights (same weights, no optimiser moments) and the logs, not the earlier epochs; the
    staged run resumes; ``carry.sh drop`` unstages it and leaves the files; ``carry.sh averaged`` keeps a finished
    run's average and small files only."""
    repo = tmp_path / "repo"
    run = repo / "runs" / "toy"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / ".gitignore").write_text("/runs/\n")
    assert cli.main(_train_argv(toy_root, run, 6)) == 0  # epochs 1-3 of 2 steps
    before = {e: torch.load(run / f"epoch_000{e}.pt", weights_only=True) for e in (2, 3)}
    script = Path(__file__).resolve().parents[2] / "scripts" / "brains3d" / "carry.sh"
    env = dict(os.environ, FIRST="2", PY=sys.executable, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(["bash", str(script), "runs/toy"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    staged = subprocess.run([*git, "diff", "--cached", "--name-only"], capture_output=True, text=True, check=True).stdout
    assert sorted(staged.split()) == sorted(f"runs/toy/{name}" for name in (
        "last.pt", "epoch_0002.pt", "epoch_0003.pt", "config.json", "split.json", "steps.csv", "steps.jsonl", "epochs.csv",
        "epochs.jsonl", "val_pairs.json"))
    for epoch, old in before.items():
        slim = torch.load(run / f"epoch_000{epoch}.pt", weights_only=True)
        assert "optimizer_state" in old and "optimizer_state" not in slim
        assert all(torch.equal(old["model_state"][k], slim["model_state"][k]) for k in old["model_state"])
    assert "optimizer_state" in torch.load(run / "last.pt", weights_only=True)
    assert cli.main(_train_argv(toy_root, run, 8, "--resume")) == 0
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 8

    proc = subprocess.run(["bash", str(script), "drop", "runs/toy"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run([*git, "diff", "--cached", "--name-only"], capture_output=True, text=True).stdout == ""
    assert (run / "epoch_0002.pt").is_file()
    proc = subprocess.run(["bash", str(script), str(tmp_path)], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "has no last.pt" in proc.stderr

    # a finished run: "averaged" keeps its average (the next run's start) and small files, not last.pt or the epochs
    proc = subprocess.run(["bash", str(script), "runs/toy"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["bash", str(script), "averaged", "runs/toy"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "has no average_*.pt" in proc.stderr
    torch.save({"model_state": {}}, run / "average_2-3.pt")
    proc = subprocess.run(["bash", str(script), "averaged", "runs/toy"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    staged = subprocess.run([*git, "diff", "--cached", "--name-only"], capture_output=True, text=True, check=True).stdout
    assert sorted(staged.split()) == sorted(f"runs/toy/{name}" for name in (
        "average_2-3.pt", "config.json", "split.json", "steps.csv", "steps.jsonl", "epochs.csv", "epochs.jsonl",
        "val_pairs.json"))
