"""evaluation/evaluate.py: per-pair metrics of a model whose displacement is set by hand (a known translation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from DeepRegAblationLib.models import checkpoints, network as networks
from DeepRegAblationTrainingLib import evaluation

from _scripts import brains3d_script

SHIFT_VOX = (2.0, 3.0)  # rows, columns
SPACING_MM = (1.0, 1.5)


def _pair(with_truth: bool = True, truth=SHIFT_VOX):
    """32x32 pair whose moving image is the fixed one shifted by SHIFT_VOX (objects inside the image)."""
    fixed_labels = np.zeros((32, 32), dtype=np.int64)
    fixed_labels[8:16, 10:20] = 1
    fixed_labels[18:26, 6:14] = 2
    fixed_labels[4:9, 22:27] = 3
    fixed = (fixed_labels * 0.3).astype(np.float32)
    fixed[4:9, 22:27] += 0.05 * np.arange(5, dtype=np.float32)[:, None]  # some texture
    shift = tuple(int(s) for s in SHIFT_VOX)
    moving = np.roll(fixed, shift, axis=(0, 1))
    moving_labels = np.roll(fixed_labels, shift, axis=(0, 1))
    item = {
        "moving": torch.from_numpy(moving)[None],
        "fixed": torch.from_numpy(fixed)[None],
        "moving_labels": torch.from_numpy(moving_labels)[None],
        "fixed_labels": torch.from_numpy(fixed_labels)[None],
        "spacing_mm": torch.tensor(SPACING_MM),
        "pair_id": "a->b",
    }
    if with_truth:
        item["disp_true_vox"] = torch.tensor(truth, dtype=torch.float32).view(2, 1, 1).expand(2, 32, 32).clone()
    return item


def _translation_model(shift=SHIFT_VOX) -> networks.RegistrationModel:
    """A real baseline model whose flow head outputs the constant ``shift`` (weights 0, bias = shift)."""
    model = networks.build_model("baseline", ndim=2)
    with torch.no_grad():
        model.flow.conv.weight.zero_()
        model.flow.conv.bias.copy_(torch.tensor(shift))
    return model


def test_known_translation_metrics_are_exact():
    model = _translation_model()
    rows = evaluation.evaluate_model(model, [_pair()], device="cpu")
    assert len(rows) == 1
    row = rows[0]
    assert row["variant"] == "baseline" and row["pair_id"] == "a->b"
    assert row["dice"] == pytest.approx(1.0)
    assert row["dice_1"] == row["dice_2"] == row["dice_3"] == pytest.approx(1.0)
    assert row["hd95_mm"] == pytest.approx(0.0, abs=1e-9)
    assert row["tre_mm"] == pytest.approx(0.0, abs=1e-9)
    assert row["folding_pct"] == 0.0
    assert row["sdlogj"] == pytest.approx(0.0, abs=1e-6)
    assert row["mse"] == pytest.approx(0.0, abs=1e-12)
    assert row["ncc"] == pytest.approx(1.0)
    assert row["ssim"] == pytest.approx(1.0, abs=1e-6)
    norm_vox = math.hypot(*SHIFT_VOX)
    norm_mm = math.hypot(SHIFT_VOX[0] * SPACING_MM[0], SHIFT_VOX[1] * SPACING_MM[1])
    assert row["max_disp_vox"] == pytest.approx(norm_vox, rel=1e-6)
    assert row["mean_disp_vox"] == pytest.approx(norm_vox, rel=1e-6)
    assert row["max_disp_mm"] == pytest.approx(norm_mm, rel=1e-6)
    assert row["mean_disp_mm"] == pytest.approx(norm_mm, rel=1e-6)
    assert row["tre_true_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["runtime_s"] >= 0.0


def test_endpoint_error_against_a_wrong_truth_and_identity_tre():
    # truth (0, 0): the end-point error is the whole shift in mm
    rows = evaluation.evaluate_model(_translation_model(), [_pair(truth=(0.0, 0.0))])
    norm_mm = math.hypot(SHIFT_VOX[0] * SPACING_MM[0], SHIFT_VOX[1] * SPACING_MM[1])
    assert rows[0]["tre_true_mm"] == pytest.approx(norm_mm, rel=1e-6)
    # no registration: every label centroid is off by the shift (in mm, axis order kept)
    ident = evaluation.evaluate_model(None, [_pair(with_truth=False)])[0]
    assert ident["variant"] == "identity"
    assert ident["tre_mm"] == pytest.approx(norm_mm, rel=1e-9)
    assert ident["dice"] < 0.8 and ident["mse"] > 0
    assert ident["folding_pct"] == 0.0 and ident["max_disp_vox"] == 0.0
    assert math.isnan(ident["tre_true_mm"])
    # a shift along the wrong axes must not look right
    swapped = evaluation.evaluate_model(_translation_model(SHIFT_VOX[::-1]), [_pair(with_truth=False)])[0]
    assert swapped["dice"] < 0.9 and swapped["tre_mm"] > 1.0


def test_evaluate_checkpoint_and_csv_round_trip(tmp_path):
    model = _translation_model()
    ckpt = tmp_path / "translation.pt"
    checkpoints.save_checkpoint(ckpt, model)
    rows = evaluation.evaluate_checkpoint(ckpt, [_pair(), _pair(truth=(0.0, 0.0))], device="cpu")
    assert [r["checkpoint"] for r in rows] == [str(ckpt)] * 2
    assert rows[0]["dice"] == pytest.approx(1.0) and rows[0]["tre_true_mm"] == pytest.approx(0.0, abs=1e-6)
    path = evaluation.write_rows_csv(rows, tmp_path / "rows.csv")
    back = evaluation.read_rows_csv(path)
    assert len(back) == 2
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["variant", "checkpoint", "pair_id"]
    assert header.index("dice_1") < header.index("dice_2") < header.index("dice_3")
    for key in ("dice", "folding_pct", "max_disp_mm", "tre_true_mm"):
        assert back[1][key] == pytest.approx(rows[1][key], rel=1e-12)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        evaluation.evaluate_checkpoint(tmp_path / "missing.pt", [_pair()])


def test_bad_pair_item_is_a_value_error():
    item = _pair()
    item["fixed"] = item["fixed"][:, :16]
    with pytest.raises(ValueError, match="moving"):
        evaluation.evaluate_model(None, [item])
    with pytest.raises(ValueError, match="empty"):
        evaluation.evaluate_model(None, [])


def test_the_two_endpoint_errors_and_their_units():
    """``mean_endpoint_error_mm``: voxel fields (channels first) -> one mean in mm; ``endpoint_error_stats_mm``:
    RAS mm fields (channels last) -> mean and 95th percentile over a mask."""
    disp = np.zeros((2, 4, 5))
    truth = np.zeros_like(disp)
    truth[0] = 1.0  # one voxel along axis 0, whose voxels are 2 mm
    assert evaluation.mean_endpoint_error_mm(disp, truth, (2.0, 1.0)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shapes differ"):
        evaluation.mean_endpoint_error_mm(disp, truth[:, :3], (2.0, 1.0))
    ras = np.zeros((3, 4, 5, 3))
    ras_truth = np.zeros_like(ras)
    ras_truth[..., 2] = np.arange(60, dtype=float).reshape(3, 4, 5)
    mask = np.zeros((3, 4, 5), bool)
    mask[0] = True  # errors 0..19 mm
    stats = evaluation.endpoint_error_stats_mm(ras, ras_truth, mask)
    assert stats == {"epe_mean_mm": pytest.approx(9.5), "epe_p95_mm": pytest.approx(np.percentile(np.arange(20.0), 95))}


def test_training_pairs_are_cycles_of_training_subjects_per_dataset():
    """train_val_gap.py pairs (issue 21): on the shipped split, only training subjects, each dataset its own cycle of
    evenly spaced subjects (5, IXI's three), no subject paired with itself."""
    import json
    from pathlib import Path

    gap = brains3d_script("train_val_gap")
    split = json.loads((Path(__file__).resolve().parents[2] / gap.SPLIT).read_text())
    pairs = gap.cycle_pairs(split["train"])
    assert {subject for pair in pairs for subject in pair} <= set(split["train"])
    by_dataset = {}
    for moving, fixed in pairs:
        assert moving != fixed and moving.split("-")[0] == fixed.split("-")[0]
        by_dataset.setdefault(moving.split("-")[0], []).append((moving, fixed))
    assert {k: len(v) for k, v in by_dataset.items()} == {"ibsr18": 5, "ixi": 3, "lpba40": 5, "miccai2012": 5}
    for cycle in by_dataset.values():  # each subject once as moving, once as fixed, and the cycle closes
        assert sorted(m for m, _ in cycle) == sorted(f for _, f in cycle)
        assert all(cycle[i][1] == cycle[(i + 1) % len(cycle)][0] for i in range(len(cycle)))
    assert gap.cycle_pairs(["a-1", "a-2", "b-1"]) == [("a-1", "a-2")]
    ids = [f"d-{i:02d}" for i in range(10)]
    assert [m for m, _ in gap.cycle_pairs(ids)] == ["d-00", "d-02", "d-04", "d-06", "d-08"]


def test_train_val_gap_table_gains_over_the_first_checkpoint(tmp_path):
    """train_val_gap.py table: per dataset, each checkpoint's Dice on both pair sets and its gain over the first."""
    gap = brains3d_script("train_val_gap")
    for which, values in (("train", (0.30, 0.50, 0.56)), ("val", (0.31, 0.48, 0.49))):
        (tmp_path / which).mkdir()
        rows = [f"ds,{name},{n},{dice}" for name, dice, n in zip(("identity", "first", "second"), values, (3, 3, 3))]
        (tmp_path / which / "summary_per_dataset.csv").write_text("dataset,variant,n_pairs,dice_mean\n" + "\n".join(rows))
    text = gap.gap_table(str(tmp_path / "train"), str(tmp_path / "val"))
    assert "ds: 3 training pairs (Dice 0.3000 unregistered), 3 validation pairs (0.3100 unregistered)" in text
    assert "training 0.5600 (+0.0600)  validation 0.4900 (+0.0100)" in text
    assert "training 0.5000 (+0.0000)  validation 0.4800 (+0.0000)" in text


def test_distill_curves_rows_per_run_and_the_teacher_cache(tmp_path, monkeypatch, capsys):
    """distill_curves.py: one row per run with its validation Dice every 200 steps ('-' where a run has none); the
    teacher cache summarised per dataset, and without a cache a line naming curves-to-15k.txt, never "0 pairs"."""
    import json

    curves = brains3d_script("distill_curves")
    runs, teacher = tmp_path / "runs", tmp_path / "teacher"
    for name, rows in (("long", [(200, 0.61), (300, ""), (400, 0.625)]), ("short", [(200, 0.5)])):
        (runs / name).mkdir(parents=True)
        (runs / name / "epochs.csv").write_text(
            "step,val_dice\n" + "".join(f"{step},{dice}\n" for step, dice in rows))
    monkeypatch.setattr(curves, "RUNS", runs)
    monkeypatch.setattr(curves, "TEACHER", teacher)
    assert curves.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"no teacher fields in {teacher}") and "curves-to-15k.txt" in lines[0]
    assert lines[3].split() == ["run", "200", "400"]
    assert lines[4].split() == ["long", "0.610", "0.625"] and lines[5].split() == ["short", "0.500", "-"]
    teacher.mkdir()
    for i, seconds in enumerate((4.0, 6.0)):
        info = {"fixed": f"lpba40-S0{i}", "seconds": seconds}
        np.savez(teacher / f"pair{i}.npz", info_json=np.array(json.dumps(info)))
    assert curves.main() == 0
    out = capsys.readouterr().out
    assert out.startswith(f"teacher fields in {teacher}: 2 training pairs")
    assert "lpba40          2 pairs, refinement   5.0 s per pair (median)" in out
