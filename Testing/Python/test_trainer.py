"""The trainer: resume after SIGKILL (bitwise), checkpoints, transfer learning, non-finite guard, CLI.

Runs are tiny: 32 x 32 synthetic OASIS-layout slices, a narrow U-Net, a few steps on one thread.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from DeepRegAblationLib.models.checkpoints import load_model
from DeepRegAblationLib.losses import CompositeLoss
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationTrainingLib import cli, data
from DeepRegAblationTrainingLib.training import precision, trainer
from DeepRegAblationTrainingLib.training.config import arch_overrides, train_data_spec
from DeepRegAblationTrainingLib.training.state import seed_everything
from DeepRegAblationTrainingLib.commands import train as train_command

TINY_ARCH = ["--features-enc", "8", "8", "8", "8", "--features-dec", "8", "8", "8", "8", "8", "8", "8"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return data.write_toy_oasis2d(tmp_path_factory.mktemp("toy"), n_subjects=6, shape=(32, 32))


def argv(toy_root, out, variant="regloss", steps=6, per_epoch=2, *extra):
    return [
        "train", "--variant", variant, "--data", f"oasis2d:{toy_root}", "--steps", str(steps),
        "--steps-per-epoch", str(per_epoch), "--val-pairs", "2", "--val-fraction", "0.4", "--threads", "1", "--device", "cpu",
        "--no-progress", "--checkpoint-every", "1", "--out", str(out), *TINY_ARCH, *extra,
    ]


def config(args):
    return train_command.config_from_args(cli.build_parser().parse_args(args))


@pytest.fixture(scope="module")
def baseline_run(toy_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    summary = trainer.train(config(argv(toy_root, out, "baseline", 4, 2)))
    return out, summary


def read_steps(out):
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def test_resume_after_sigkill_gives_bitwise_identical_weights(toy_root, tmp_path):
    uninterrupted = trainer.train(config(argv(toy_root, tmp_path / "full")))
    # the same run in another process, SIGKILLed mid-way through epoch 2 (after 3 steps, last.pt at step 2)
    killed = tmp_path / "killed"
    env = dict(os.environ, **{trainer.KILL_HOOK_ENV: "3"})
    proc = subprocess.run([sys.executable, "-m", "DeepRegAblationTrainingLib.cli", *argv(toy_root, killed)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = torch.load(killed / "last.pt", weights_only=True)
    assert partial["global_step"] == 2 and partial["epoch"] == 1
    assert [row["step"] for row in read_steps(killed)] == [1, 2, 3]
    resumed = trainer.train(config(argv(toy_root, killed, "regloss", 6, 2, "--resume")))
    assert resumed["steps"] == uninterrupted["steps"] == 6
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert a["model_state"].keys() == b["model_state"].keys()
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    for key, state in a["optimizer_state"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer_state"]["state"][key][name])
    # the model really trained, and the logs read like one run (the step logged after the checkpoint is dropped)
    initial = build_model("regloss", 2, enc_features=(8,) * 4, dec_features=(8,) * 7)
    assert any(not torch.equal(initial.state_dict()[k], a["model_state"][k]) for k in a["model_state"])
    full_rows, resumed_rows = read_steps(tmp_path / "full"), read_steps(killed)
    assert [r["step"] for r in resumed_rows] == list(range(1, 7))
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in full_rows]
    assert [r["epoch"] for r in (json.loads(l) for l in (killed / "epochs.jsonl").read_text().splitlines())] == [0, 1, 2]


def test_checkpoints_load_with_weights_only_and_carry_metadata(baseline_run):
    out, summary = baseline_run
    assert summary["last"] == out / "last.pt" and summary["best"] == out / "best.pt"
    assert {p.name for p in out.glob("*.pt")} == {"last.pt", "best.pt", "epoch_0001.pt", "epoch_0002.pt"}
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["preprocessing"]["spacing_mm"] == [1.0, 1.0]
    assert ckpt["preprocessing"]["shape"] == [32, 32]
    assert ckpt["preprocessing"]["normalization"]["method"] == "percentile"
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 4 and ckpt["epochs"] == 2
    assert isinstance(ckpt["rng_state"]["torch"], torch.Tensor)
    split = ckpt["data_split"]
    assert len(split["train"]) + len(split["val"]) == 6 and len(split["val_pairs"]) == 2
    assert json.loads((out / "split.json").read_text())["val"] == split["val"]
    assert ckpt["config"]["variant"] == "baseline" and ckpt["config"]["steps"] == 4
    assert ckpt["best"]["metric"] == "val_dice"
    assert len(ckpt["history"]) == 2 and "val_dice" in ckpt["history"][-1]
    model = load_model(out / "last.pt")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, x)["disp_vox"], summary["model"].eval()(x, x)["disp_vox"])
    # the validation pairs can be rebuilt from the checkpoint alone
    val = data.validation_dataset_from_split(split, data.Preprocess.from_dict({"ndim": 2}))
    assert [tuple(p) for p in split["val_pairs"]] == val.pairs


def test_init_from_another_architecture_is_a_clear_error(toy_root, baseline_run, tmp_path, capsys):
    out, _ = baseline_run
    with pytest.raises(ValueError, match=r"holds a \[baseline 2D affine=False.*builds \[affine_basic 2D affine=True"):
        trainer.train(config(argv(toy_root, tmp_path / "x", "affine_basic", 2, 2, "--init-from", str(out / "last.pt"))))
    # through the command line: exit status 2 and an error line naming both architectures
    status = cli.main(argv(toy_root, tmp_path / "y", "baseline", 2, 2, "--init-from", str(out / "last.pt"),
                           "--features-enc", "16", "16", "16", "16"))
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: --init-from checkpoint") and "enc_features=[8, 8, 8, 8]" in err
    assert not (tmp_path / "y" / "last.pt").exists()
    # the keypoint options are part of the architecture too (finer heat maps mean other weights)
    affine = tmp_path / "affine"
    trainer.train(config(argv(toy_root, affine, "affine_basic", 1, 1)))
    with pytest.raises(ValueError, match=r"affine_keypoint_strides=3.*builds.*affine_keypoint_strides=2"):
        trainer.train(config(argv(toy_root, tmp_path / "z", "affine_basic", 1, 1, "--init-from", str(affine / "last.pt"),
                                  "--affine-keypoint-strides", "2")))


def test_decoder_then_all_freezes_the_encoder_for_the_first_half(toy_root, baseline_run, tmp_path):
    out, _ = baseline_run
    init = torch.load(out / "last.pt", weights_only=True)["model_state"]
    run = tmp_path / "ft"
    trainer.train(config(argv(toy_root, run, "regloss", 4, 2, "--init-from", str(out / "last.pt"),
                              "--finetune", "decoder_then_all")))
    first = torch.load(run / "epoch_0001.pt", weights_only=True)["model_state"]
    second = torch.load(run / "epoch_0002.pt", weights_only=True)["model_state"]
    encoder = [k for k in init if k.startswith("unet.encoder.")]
    decoder = [k for k in init if k.startswith(("unet.decoder.", "flow."))]
    assert encoder and decoder
    assert all(torch.equal(first[k], init[k]) for k in encoder), "the encoder must stay frozen in the first half"
    assert any(not torch.equal(first[k], init[k]) for k in decoder)
    assert any(not torch.equal(second[k], init[k]) for k in encoder), "then everything trains"


class NaNOnCalls(CompositeLoss):
    """The real loss, except that the listed calls (1-based) return NaN."""

    bad_calls: set = set()

    def forward(self, *args, **kwargs):
        total, terms = super().forward(*args, **kwargs)
        type(self).calls = getattr(type(self), "calls", 0) + 1
        if type(self).calls in self.bad_calls or "all" in self.bad_calls:
            total = total * float("nan")
        return total, terms


def test_nonfinite_steps_are_skipped_counted_and_abort(toy_root, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "CompositeLoss", NaNOnCalls)
    NaNOnCalls.calls, NaNOnCalls.bad_calls = 0, {2, 3}
    summary = trainer.train(config(argv(toy_root, tmp_path / "some", "baseline", 4, 2)))
    assert summary["nonfinite_steps"] == 2 and summary["steps"] == 4
    rows = read_steps(tmp_path / "some")
    assert [r["skipped"] for r in rows] == [False, True, True, False]
    assert all(torch.isfinite(p).all() for p in summary["model"].parameters())
    # every step NaN (tolerated): nothing may change the weights
    NaNOnCalls.calls, NaNOnCalls.bad_calls = 0, {"all"}
    summary = trainer.train(config(argv(toy_root, tmp_path / "all", "baseline", 2, 2, "--max-nonfinite", "5")))
    seed_everything(0)
    initial = build_model("baseline", 2, enc_features=(8,) * 4, dec_features=(8,) * 7)
    for key, value in summary["model"].state_dict().items():
        assert torch.equal(value, initial.state_dict()[key]), key
    # too many: the run aborts with a message
    NaNOnCalls.calls = 0
    with pytest.raises(RuntimeError, match=r"3 steps with a non-finite loss.*max_nonfinite=2"):
        trainer.train(config(argv(toy_root, tmp_path / "abort", "baseline", 6, 2, "--max-nonfinite", "2")))


def test_resume_and_overwrite_guards(toy_root, baseline_run, tmp_path):
    out, _ = baseline_run
    with pytest.raises(ValueError, match="already holds a training run"):
        trainer.train(config(argv(toy_root, out, "baseline", 4, 2)))
    with pytest.raises(ValueError, match="configuration differs.*lr"):
        trainer.train(config(argv(toy_root, out, "baseline", 4, 2, "--resume", "--lr", "0.01")))
    for flags, field in ((["--reg-scale", "10"], "reg_scale"), (["--schedule", "constant"], "schedule")):
        with pytest.raises(ValueError, match=f"configuration differs.*{field}"):
            trainer.train(config(argv(toy_root, out, "baseline", 4, 2, "--resume", *flags)))
    # resuming a finished run with more steps continues it
    extended = tmp_path / "extended"
    trainer.train(config(argv(toy_root, extended, "baseline", 2, 2)))
    summary = trainer.train(config(argv(toy_root, extended, "baseline", 4, 2, "--resume")))
    assert summary["steps"] == 4 and [r["epoch"] for r in summary["history"]] == [0, 1]


def test_lr_anneal_follows_a_half_cosine_and_can_be_added_on_resume(toy_root, tmp_path):
    assert [trainer.lr_factor(s, 8, 4) for s in range(8)] == pytest.approx(
        [1, 1, 1, 1, 1, 0.5 * (1 + 2 ** -0.5), 0.5, 0.5 * (1 - 2 ** -0.5)])
    assert [trainer.lr_factor(s, 8, 0) for s in range(8)] == [1.0] * 8
    anneal = ["--lr", "0.002", "--lr-anneal-steps", "2"]
    full = trainer.train(config(argv(toy_root, tmp_path / "full", "baseline", 4, 2, *anneal)))
    assert [r["lr"] for r in read_steps(tmp_path / "full")] == pytest.approx([0.002, 0.002, 0.002, 0.001])
    # two steps at a constant rate, then resumed with two more annealed: the same run, bitwise
    trainer.train(config(argv(toy_root, tmp_path / "two", "baseline", 2, 2, "--lr", "0.002")))
    resumed = trainer.train(config(argv(toy_root, tmp_path / "two", "baseline", 4, 2, "--resume", *anneal)))
    for key, value in full["model"].state_dict().items():
        assert torch.equal(value, resumed["model"].state_dict()[key]), key
    with pytest.raises(ValueError, match=r"lr_anneal_steps \(5\) must not exceed steps \(4\)"):
        trainer.train(config(argv(toy_root, tmp_path / "bad", "baseline", 4, 2, "--lr-anneal-steps", "5")))


def test_segmentation_guidance_and_uncertainty_weighting(toy_root, tmp_path):
    out = tmp_path / "seg"
    summary = trainer.train(config(argv(toy_root, out, "regloss", 2, 2, "--seg-weight", "0.5", "--uncertainty")))
    rows = read_steps(out)
    assert all("seg" in r and 0.0 <= r["seg"] <= 1.0 for r in rows)
    log_vars = torch.load(out / "last.pt", weights_only=True)["loss_state"]
    assert log_vars and any(float(v) != 0.0 for v in log_vars.values()), "the learned weights must train"
    assert summary["nonfinite_steps"] == 0


def test_command_line_arguments(toy_root, tmp_path, capsys):
    cfg = config(argv(toy_root, tmp_path / "c", "regloss", 4, 2, "--reg", "grad_l2=0.5", "--similarity", "mse",
                      "--spacing", "1", "--shape", "32", "32", "--lr", "5e-4"))
    spec = cfg.variant_spec()
    assert spec.regularizers["grad_l2"] == 0.5 and spec.regularizers["jacobian_penalty"] == 0.1
    assert spec.similarity == "mse" and spec.lr == 5e-4
    tuned = config(argv(toy_root, tmp_path / "t", "regloss", 4, 2, "--schedule", "constant", "--reg-scale", "10")).variant_spec()
    assert tuned.schedule == "constant" and tuned.regularizers["jacobian_penalty"] == pytest.approx(1.0)
    assert tuned.regularizers["grad_l2"] == pytest.approx(0.1)
    assert cfg.data["shape"] == [32, 32] and cfg.data["spacing_mm"] == [1.0]
    assert config(argv(toy_root, tmp_path / "c", "regloss", 4, 2, "--reg", "none")).variant_spec().regularizers == {}
    assert cli.main(argv(toy_root, tmp_path / "d", "regloss", 4, 2, "--reg", "smoothness=1")) == 2
    assert "unknown regulariser 'smoothness'" in capsys.readouterr().err
    assert cli.main(["train", "--variant", "baseline", "--data", "zarr:/nothing"]) == 2
    assert "error: --data must start with" in capsys.readouterr().err
    assert cli.main(argv(tmp_path / "absent", tmp_path / "e", "baseline", 2, 2)) == 2
    assert "OASIS folder not found" in capsys.readouterr().err
    status = cli.main(argv(toy_root, tmp_path / "f", "baseline", 2, 2, "--shape", "30", "30"))
    assert status == 2 and "divisible by 16" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["baseline", "affine_basic"])
def test_mixed_precision_keeps_displacements_in_float32(variant):
    """The autocast wrapper (CUDA in training; exercised here with CPU bfloat16) only touches the conv stacks."""
    torch.manual_seed(0)
    model = build_model(variant, 2, enc_features=(8,) * 4, dec_features=(8,) * 7)
    names = sorted(model.state_dict())
    x, y = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    reference = model(x, y)
    undo = precision.enable_mixed_precision(model, "cpu", torch.bfloat16)
    mixed = model(x, y)
    assert mixed["disp_vox"].dtype == torch.float32 and mixed["affine_matrix_vox"].dtype == torch.float32
    assert mixed["warped"].dtype == torch.float32
    assert sorted(model.state_dict()) == names  # checkpoints unchanged
    mixed["warped"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.unet.parameters())
    undo()
    assert torch.equal(model(x, y)["disp_vox"], reference["disp_vox"])


def test_affine_weight_trains_the_affine_stage_on_its_own_loss(toy_root, tmp_path):
    """--affine-weight logs the affine part's own terms, is refused without an affine stage and on resume when changed."""
    out = tmp_path / "aw"
    trainer.train(config(argv(toy_root, out, "affine_basic", 1, 1, "--affine-weight", "1")))
    assert "affine_similarity" in read_steps(out)[0]
    with pytest.raises(ValueError, match="affine_weight"):
        trainer.train(config(argv(toy_root, out, "affine_basic", 2, 1, "--resume")))
    with pytest.raises(ValueError, match="variant 'baseline' has no affine stage"):
        trainer.train(config(argv(toy_root, tmp_path / "b", "baseline", 1, 1, "--affine-weight", "1")))


def test_similarity_mask_trains_on_the_labelled_voxels_and_needs_labels(toy_root, tmp_path, monkeypatch):
    """--similarity-mask-dilation reaches the loss with the fixed labels (without --seg-weight), is part of the
    resume check, and is refused by name for data without label maps."""
    seen = []
    masked_loss = trainer.CompositeLoss._similarity_mask

    def spy(self, fixed, fixed_labels):
        mask = masked_loss(self, fixed, fixed_labels)
        seen.append(mask)
        return mask

    monkeypatch.setattr(trainer.CompositeLoss, "_similarity_mask", spy)
    out = tmp_path / "masked"
    trainer.train(config(argv(toy_root, out, "baseline", 1, 1, "--similarity-mask-dilation", "1", "--val-every", "0")))
    assert seen and seen[0] is not None and 0 < float(seen[0].mean()) < 1
    labelled = data.build_data(config(argv(toy_root, tmp_path / "x", "baseline", 1, 1)).data, 2, 0, 4, None).train[0]
    assert torch.equal(labelled["fixed_foreground"], (labelled["fixed_labels"] > 0).to(torch.uint8))
    assert json.loads((out / "config.json").read_text())["similarity_mask_dilation"] == 1
    with pytest.raises(ValueError, match="configuration differs.*similarity_mask_dilation"):
        trainer.train(config(argv(toy_root, out, "baseline", 2, 1, "--resume", "--val-every", "0")))
    with pytest.raises(ValueError, match="similarity_mask_dilation 1 needs label maps"):
        trainer.train(config(argv(toy_root, tmp_path / "n", "baseline", 1, 1, "--similarity-mask-dilation", "1",
                                  "--labels", "none")))
    with pytest.raises(ValueError, match="similarity_mask_dilation must be None or an integer >= 0"):
        config(argv(toy_root, tmp_path / "v", "baseline", 1, 1, "--similarity-mask-dilation", "-1")).validate()


def test_train_options_map_to_the_data_spec_and_architecture():
    """The ``train`` command's options as the config's ``data`` and ``arch`` entries (key order kept: config.json)."""
    spec = train_data_spec("oasis2d:/x", labels="None", spacing=(2.0,), val_pairs=4, val_fraction=0.3, mode="scan_to_scan")
    assert spec == {"kind": "oasis2d", "path": "/x", "labels": None, "spacing_mm": [2.0], "val_pairs": 4,
                    "val_fraction": 0.3, "mode": "scan_to_scan", "augment": {"max_disp_mm": 4.0, "rotation_deg": 10.0}}
    assert list(spec) == ["kind", "path", "labels", "spacing_mm", "val_pairs", "val_fraction", "mode", "augment"]
    assert train_data_spec("list:/a.csv", no_augment=True)["augment"] is None
    # synthetic pairs are made by the augmentation: --no-augment does not remove it there
    assert train_data_spec("mni-synthetic", no_augment=True)["augment"] == {"max_disp_mm": 4.0, "rotation_deg": 10.0}
    assert train_data_spec("list:/a.csv", no_augment=True, synthetic=True, max_disp_mm=2.0)["synthetic"] is True
    # --synthetic-heads reaches the spec (so the resume check compares it with the data), and only for brain scans
    assert config(argv("/x", "/y", "baseline", 1, 1, "--data", "brains3d:/d", "--synthetic-heads", "0.5")).data["heads"] == 0.5
    with pytest.raises(ValueError, match="--synthetic-heads needs pairs of 3D brain scans"):
        config(argv("/x", "/y", "baseline", 1, 1, "--synthetic-heads", "0.5"))
    assert arch_overrides() is None
    arch = arch_overrides([8, 8], [8], True, 2, {"affine_keypoints": 16})
    assert arch == {"enc_features": [8, 8], "dec_features": [8], "diffeomorphic": True, "affine_passes": 2, "affine_keypoints": 16}


