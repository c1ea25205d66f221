"""The `ablation`, `sweep` and `evaluate` commands end to end on tiny data (2 training steps per run)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from DeepRegAblationTrainingLib import cli
from DeepRegAblationTrainingLib.data import write_toy_oasis2d

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VARIANTS = ["baseline", "regloss", "affine_basic", "affine_enhanced"]


def _csv(path: Path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _check_report_folder(out: Path, variants, n_pairs: int) -> None:
    for name in ("report.md", "summary.csv", "per_pair.csv", "split.json", "val_pairs.json", "command.txt"):
        assert (out / name).is_file(), name
    for name in ("training_curves.png", "accuracy_vs_folding.png", "examples.png"):
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    summary = _csv(out / "summary.csv")
    assert [r["variant"] for r in summary] == ["identity"] + list(variants)  # one row per variant
    per_pair = _csv(out / "per_pair.csv")
    assert len(per_pair) == n_pairs * (len(variants) + 1)
    pair_ids = {v: [r["pair_id"] for r in per_pair if r["variant"] == v] for v in ["identity"] + list(variants)}
    assert all(ids == pair_ids["identity"] for ids in pair_ids.values())  # the same fixed pairs for every variant
    pairs = json.loads((out / "val_pairs.json").read_text())["pairs"]
    assert [f"{m}->{f}" for m, f in pairs] == pair_ids["identity"]
    for metric in ("dice", "folding_pct", "mse"):
        tested = [r for r in summary if r["variant"] not in ("identity", "baseline")]
        p = np.array([float(r[f"{metric}_p"]) for r in tested])
        q = np.array([float(r[f"{metric}_q"]) for r in tested])
        assert np.all((p >= 0) & (p <= 1)), (metric, p)
        assert np.all(q >= p - 1e-12) and np.all(q <= 1), (metric, p, q)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(q[order]) >= -1e-12)
    for r in summary:
        assert 0.0 <= float(r["dice_mean"]) <= 1.0
        assert float(r["folding_pct_mean"]) >= 0.0
    text = (out / "report.md").read_text()
    assert "deepreg-ablation " in text and "## Results" in text
    for v in variants:
        assert f"| {v} |" in text


@pytest.fixture(scope="module")
def toy_ablation(tmp_path_factory):
    """The four-variant ablation on a toy neurite-OASIS-layout dataset (6 subjects, 32x32)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ablation")
    write_toy_oasis2d(root / "toy", n_subjects=6, shape=(32, 32), seed=1)
    out = root / "out"
    argv = ["ablation", "--data", f"oasis2d:{root / 'toy'}", "--steps", "2", "--steps-per-epoch", "1", "--val-pairs", "4", "--val-fraction", "0.5",
            "--train-val-pairs", "2", "--device", "cpu", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    return root, out, argv


def test_ablation_end_to_end(toy_ablation):
    root, out, argv = toy_ablation
    _check_report_folder(out, VARIANTS, n_pairs=4)
    command = (out / "command.txt").read_text()
    assert "deepreg-ablation ablation --data oasis2d:" in command and "--steps 2" in command
    # the command in command.txt parses back to the same options
    line = [ln for ln in command.splitlines() if ln.startswith("deepreg-ablation")][0]
    import shlex

    parsed = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert parsed.steps == 2 and parsed.variants == VARIANTS and parsed.val_pairs == 4
    runs = json.loads((out / "runs.json").read_text())
    assert set(runs) == set(VARIANTS)
    for v in VARIANTS:
        assert (out / "runs" / v / "last.pt").is_file()
        assert (out / "runs" / v / "steps.csv").is_file()


def test_ablation_is_resumable(toy_ablation):
    root, out, argv = toy_ablation
    ckpts = {v: out / "runs" / v / "last.pt" for v in VARIANTS}
    mtimes = {v: p.stat().st_mtime_ns for v, p in ckpts.items()}
    (out / "report.md").unlink()
    assert cli.main(argv) == 0  # final checkpoints exist: nothing is retrained, the report is rewritten
    assert (out / "report.md").is_file()
    assert {v: p.stat().st_mtime_ns for v, p in ckpts.items()} == mtimes
    runs = json.loads((out / "runs.json").read_text())
    assert not any(r["trained_now"] for r in runs.values())
    # a longer budget: the runs are partial now and need --resume
    longer = list(argv)
    longer[longer.index("--steps") + 1] = "3"
    longer[longer.index("--out") + 1] = str(root / "longer")  # same runs, another report folder
    longer += ["--variants", "baseline", "--runs-dir", str(out / "runs"), "--split", str(out / "split.json")]
    assert cli.main(longer) == 2
    assert cli.main(longer + ["--resume"]) == 0
    from DeepRegAblationLib.models.checkpoints import load_checkpoint

    assert int(load_checkpoint(ckpts["baseline"])["global_step"]) == 3


def test_evaluate_command(toy_ablation, tmp_path):
    root, out, _ = toy_ablation
    ev = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(out / "runs" / "regloss" / "last.pt"), str(out / "runs" / "affine_basic" / "last.pt"),
            "--data", f"oasis2d:{root / 'toy'}", "--pairs", str(out / "val_pairs.json"), "--out", str(ev)]
    assert cli.main(argv) == 0
    rows = _csv(ev / "per_pair.csv")
    ablation_rows = {(r["variant"], r["pair_id"]): r for r in _csv(out / "per_pair.csv")}
    assert len(rows) == 3 * 4
    for r in rows:  # the same checkpoint on the same pairs gives the same numbers
        ref = ablation_rows[(r["variant"], r["pair_id"])]
        for key in ("dice", "folding_pct", "mse", "max_disp_mm"):
            assert float(r[key]) == pytest.approx(float(ref[key]), rel=1e-6, abs=1e-9)
    assert [r["variant"] for r in _csv(ev / "summary.csv")] == ["identity", "regloss", "affine_basic"]
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", f"oasis2d:{root / 'toy'}",
                     "--out", str(ev)]) == 2


def test_sweep_command(toy_ablation, tmp_path):
    root, _, _ = toy_ablation
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", f"oasis2d:{root / 'toy'}", "--reg-types", "l2", "--lambdas", "0.001", "--runs", "bending:0.01",
            "--steps", "2", "--val-pairs", "3", "--val-fraction", "0.5", "--train-val-pairs", "0", "--no-augment",
            "--device", "cpu", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = _csv(out / "summary.csv")
    assert [(r["reg_type"], float(r["lambda"])) for r in summary] == [("l2", 0.001), ("bending", 0.01)]
    assert float(summary[0]["ref_folding_pct"]) == 4.1 and summary[1]["ref_folding_pct"] == ""
    config = json.loads((out / "runs" / "l2_0.001" / "config.json").read_text())
    variant = config["variant"]
    assert variant["similarity"] == "mse" and variant["schedule"] == "constant" and variant["lr"] == pytest.approx(1e-4)
    assert variant["regularizers"] == {"grad_l2": 0.001} and variant["affine"] is False
    assert (out / "figures" / "sweep_curves.png").read_bytes()[:8] == PNG_MAGIC
    text = (out / "report.md").read_text()
    assert "| l2 | 0.001 | 3 |" in text and "| bending | 0.01 | 3 |" in text
    assert "MSE vs no registration" in text and "barely left the identity" in text  # 2 steps: nothing learned
    assert cli.main(argv[:-2] + ["--runs", "l3:0.1", "--out", str(tmp_path / "bad")]) == 2


def test_ablation_on_real_oasis_crops(oasis_2d_dir, tmp_path):
    out = tmp_path / "real"
    argv = ["ablation", "--data", f"oasis2d:{oasis_2d_dir}", "--shape", "32", "32", "--max-subjects", "6",
            "--variants", "baseline", "affine_enhanced", "--steps", "2", "--val-pairs", "3", "--val-fraction", "0.5",
            "--train-val-pairs", "0", "--device", "cpu", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    _check_report_folder(out, ["baseline", "affine_enhanced"], n_pairs=3)
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["val"]) == 3
    assert all(s["id"].startswith("OASIS_OAS1_") for s in split["train"] + split["val"])
    rows = _csv(out / "per_pair.csv")
    assert all(not math.isnan(float(r["dice"])) for r in rows)


def test_ablation_with_the_tuned_arm(toy_ablation, tmp_path):
    """--tuned-reg-scale: regloss_tuned (reg_scale M, constant schedule) beside regloss (reference) in one report."""
    root, _, _ = toy_ablation
    out = tmp_path / "tuned"
    argv = ["ablation", "--data", f"oasis2d:{root / 'toy'}", "--variants", "baseline", "regloss", "affine_basic", "--tuned-reg-scale", "3",
            "--steps", "2", "--steps-per-epoch", "1", "--val-pairs", "3", "--val-fraction", "0.5", "--train-val-pairs", "0",
            "--device", "cpu", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    _check_report_folder(out, ["baseline", "regloss", "regloss_tuned", "affine_basic"], n_pairs=3)
    saved = {n: json.loads((out / "runs" / n / "config.json").read_text()) for n in ("regloss", "regloss_tuned", "affine_basic")}
    assert saved["regloss"]["schedule"] is None and saved["regloss"]["reg_scale"] == 1.0
    assert saved["regloss_tuned"]["schedule"] == "constant" and saved["regloss_tuned"]["reg_scale"] == 3.0
    assert saved["regloss_tuned"]["variant"] == "regloss" and saved["affine_basic"]["reg_scale"] == 1.0  # no tuned affine_basic
    assert saved["regloss_tuned"]["seed"] == saved["regloss"]["seed"] and saved["regloss_tuned"]["steps"] == saved["regloss"]["steps"]
    summary = {r["variant"]: r for r in _csv(out / "summary.csv")}
    assert math.isfinite(float(summary["regloss_tuned"]["dice_p"]))  # compared with baseline like the others
    text = (out / "report.md").read_text()
    assert "--tuned-reg-scale 3" in text and "**regularisation arms**" in text
    assert "**tuned arm**: the regularisers of `regloss` x 3 = {'grad_l2': 0.03, 'displacement_hinge': 0.03, " in text
    assert "`regloss`: U-Net" in text and "**reference arm**: regularisers" in text
    runs = json.loads((out / "runs.json").read_text())
    assert runs["regloss_tuned"]["schedule"] == "constant" and runs["regloss_tuned"]["reg_scale"] == 3.0
    # rerun: reused, not retrained; another M into the same runs folder is refused, not silently reused
    mtime = (out / "runs" / "regloss_tuned" / "last.pt").stat().st_mtime_ns
    assert cli.main(argv) == 0
    assert (out / "runs" / "regloss_tuned" / "last.pt").stat().st_mtime_ns == mtime
    other = list(argv)
    other[other.index("--tuned-reg-scale") + 1] = "4"
    assert cli.main(other) == 2
    # no regularised variant to tune; a bad multiplier
    assert cli.main(argv[:4] + ["baseline", "affine_basic"] + argv[7:]) == 2
    bad = list(argv)
    bad[bad.index("--tuned-reg-scale") + 1] = "-1"
    assert cli.main(bad) == 2


def test_sweep_over_regulariser_multipliers(toy_ablation, tmp_path):
    root, _, _ = toy_ablation
    out = tmp_path / "scales"
    argv = ["sweep", "--data", f"oasis2d:{root / 'toy'}", "--reg-scales", "2,0.5", "--steps", "2", "--val-pairs", "3",
            "--val-fraction", "0.5", "--train-val-pairs", "0", "--device", "cpu", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = _csv(out / "summary.csv")
    assert [(r["variant"], float(r["lambda"])) for r in summary] == [("regloss_x0.5", 0.5), ("regloss_x2", 2.0)]
    assert [r["chosen"] for r in summary] == ["True", "False"]  # 2 steps: nothing folds, the smallest M is chosen
    for name, m in (("regloss_x0.5", 0.5), ("regloss_x2", 2.0)):
        config = json.loads((out / "runs" / name / "config.json").read_text())
        assert config["variant"] == "regloss" and config["schedule"] == "constant" and config["reg_scale"] == m
        assert config["similarity"] is None and config["lr"] is None  # the variant's own lncc / lr, as in the ablation
    text = (out / "report.md").read_text()
    assert "## Chosen M" in text and "**M = 0.5**" in text and "| type | M | n |" in text
    assert "--reg-scales 2,0.5" in (out / "command.txt").read_text()
    # the λ-grid options do not mix with --reg-scales; the variant must have regularisers
    assert cli.main(argv[:-2] + ["--lambdas", "0.1", "--out", str(tmp_path / "bad1")]) == 2
    assert cli.main(argv[:-2] + ["--scale-variant", "baseline", "--out", str(tmp_path / "bad2")]) == 2
    assert cli.main(argv[:-2] + ["--folding-target", "0", "--out", str(tmp_path / "bad3")]) == 2
