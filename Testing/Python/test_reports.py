"""reports/: ablation summary statistics, Markdown/CSV report, figures, sweep report."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from DeepRegAblationLib.models import network as networks
from DeepRegAblationTrainingLib import evaluation, reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(n_pairs: int = 12, seed: int = 0):
    """Per-pair rows of four variants: regloss clearly better Dice, affine_basic equal to baseline."""
    rng = np.random.default_rng(seed)
    base_dice = rng.uniform(0.6, 0.7, n_pairs)
    base_fold = rng.uniform(1.0, 3.0, n_pairs)
    offsets = {"baseline": 0.0, "regloss": 0.05, "affine_basic": 0.0, "affine_enhanced": -0.01}
    rows = []
    for variant, off in offsets.items():
        noise = 0.0 if off == 0.0 else rng.normal(0, 0.005, n_pairs)
        for i in range(n_pairs):
            rows.append({
                "variant": variant,
                "checkpoint": f"{variant}.pt",
                "pair_id": f"p{i}",
                "dice": float(base_dice[i] + off + (noise[i] if off else 0.0)),
                "folding_pct": float(base_fold[i] * (0.1 if off > 0 else 1.0)),
                "mse": float(0.01 + rng.uniform(0, 1e-3)),
                "mean_disp_mm": float(1.0 + off + rng.uniform(0, 0.1)),
                "tre_true_mm": math.nan,
            })
    return rows


def test_summarize_ablation_statistics():
    rows = _rows()
    summary = reports.summarize_ablation(rows, baseline="baseline")
    assert [e["variant"] for e in summary] == ["baseline", "regloss", "affine_basic", "affine_enhanced"]
    by = {e["variant"]: e for e in summary}
    base_mean = np.mean([r["dice"] for r in rows if r["variant"] == "baseline"])
    reg_mean = np.mean([r["dice"] for r in rows if r["variant"] == "regloss"])
    assert by["baseline"]["dice_mean"] == pytest.approx(base_mean)
    assert by["regloss"]["dice_rel_change"] == pytest.approx((reg_mean - base_mean) / base_mean)
    assert math.isnan(by["baseline"]["dice_p"])
    # 12 pairs all improved: exact two-sided Wilcoxon p = 2 / 2**12
    assert by["regloss"]["dice_p"] == pytest.approx(2.0 / 2**12)
    assert by["affine_basic"]["dice_p"] == 1.0  # identical values
    for metric in ("dice", "folding_pct", "mse"):
        p = np.array([by[v][f"{metric}_p"] for v in ("regloss", "affine_basic", "affine_enhanced")])
        q = np.array([by[v][f"{metric}_q"] for v in ("regloss", "affine_basic", "affine_enhanced")])
        assert np.all((p >= 0) & (p <= 1)) and np.all(q >= p - 1e-15) and np.all(q <= 1)
        order = np.argsort(p)
        assert np.all(np.diff(q[order]) >= -1e-15)
    assert "tre_true_mm_mean" not in by["baseline"]  # all-NaN metrics are left out
    with pytest.raises(ValueError, match="baseline"):
        reports.summarize_ablation(rows, baseline="nope")


def test_pairing_is_by_pair_id_not_order():
    rows = _rows(n_pairs=8)
    shuffled = [r for r in rows if r["variant"] == "baseline"][::-1] + [r for r in rows if r["variant"] != "baseline"]
    a = {e["variant"]: e for e in reports.summarize_ablation(rows)}
    b = {e["variant"]: e for e in reports.summarize_ablation(shuffled)}
    assert b["affine_basic"]["dice_p"] == 1.0
    assert a["regloss"]["dice_p"] == pytest.approx(b["regloss"]["dice_p"])


def _example():
    model = networks.build_model("baseline", ndim=2)
    with torch.no_grad():
        model.flow.conv.weight.zero_()
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    img = torch.exp(-((yy - 16) ** 2 + (xx - 14) ** 2) / 40.0)
    item = {"moving": img[None], "fixed": torch.roll(img, 2, 1)[None], "spacing_mm": torch.ones(2), "pair_id": "x"}
    # a field that folds in the middle, to exercise the fold contour
    pred = evaluation.predict_pair(model, item)
    pred.disp_vox = np.stack([np.zeros((32, 32)), 3.0 * np.sin(np.arange(32) / 2.0)[None].repeat(32, 0)]).astype(np.float32)
    from DeepRegAblationLib import fields

    pred.jacobian = fields.jacobian_determinant(torch.from_numpy(pred.disp_vox)[None])[0].numpy()
    return pred


def _write_log(path, n=40, scale=1.0):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "epoch", "loss", "similarity", "val_dice"])
        for s in range(n):
            w.writerow([s, s // 10, scale * math.exp(-s / 10), 0.5 * math.exp(-s / 10), (0.5 + s / 100) if s % 10 == 9 else ""])
    return path


def test_write_ablation_report(tmp_path):
    rows = _rows()
    logs = {v: _write_log(tmp_path / f"{v}.csv", scale=1 + i) for i, v in enumerate(["baseline", "regloss"])}
    example = _example()
    assert (example.jacobian <= 0).any()  # the figure outlines the folds
    paths = reports.write_ablation_report(
        tmp_path / "out", rows, baseline="baseline", command="deepreg-ablation ablation --steps 2",
        setup={"data": "synthetic"}, training_logs=logs, examples={"baseline": example, "regloss": example},
        notes=["Budget: 2 steps."],
    )
    for key in ("report", "summary", "training_curves", "accuracy_vs_folding", "examples"):
        assert paths[key].is_file(), key
    for key in ("training_curves", "accuracy_vs_folding", "examples"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    with open(paths["summary"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["variant"] for r in table] == ["baseline", "regloss", "affine_basic", "affine_enhanced"]
    for r in table[1:]:
        p, q = float(r["dice_p"]), float(r["dice_q"])
        assert 0 <= p <= q <= 1
    text = paths["report"].read_text()
    assert "deepreg-ablation ablation --steps 2" in text and "Budget: 2 steps." in text
    assert text.count("| regloss |") == 4  # two metric groups, each a results table and a p/q table
    assert "figures/examples.png" in text
    for line in text.splitlines():  # every table row has as many cells as its header (a "|" in a label is escaped)
        if line.startswith("| variant | n |"):
            n_cells = line.replace("\\|", "").count("|")
        elif line.startswith("| regloss |") and "p=" not in line and "/" not in line:
            assert line.replace("\\|", "").count("|") == n_cells


def test_deformation_grid_follows_the_field():
    from matplotlib.figure import Figure

    disp = np.zeros((2, 16, 16))
    disp[1] += 2.5  # columns shifted by +2.5
    ax = Figure().add_subplot(1, 1, 1)
    reports.draw_deformation_grid(ax, disp, step=4)
    xs = np.concatenate([line.get_xdata() for line in ax.lines])
    ys = np.concatenate([line.get_ydata() for line in ax.lines])
    assert xs.min() == pytest.approx(2.5) and xs.max() == pytest.approx(15 + 2.5)
    assert ys.min() == pytest.approx(0.0) and ys.max() == pytest.approx(15.0)
    with pytest.raises(ValueError, match="disp_vox"):
        reports.draw_deformation_grid(ax, np.zeros((3, 4, 4, 4)))


def test_parse_reference_and_sweep_report(tmp_path):
    ref = reports.parse_reference("l2:0.001:folding_pct=4.1,l2:0.001:mse=0.00222,bending:0.01:mse=0.003")
    assert ref[("l2", 0.001)] == {"folding_pct": 4.1, "mse": 0.00222}
    with pytest.raises(ValueError, match="TYPE:LAMBDA:METRIC=VALUE"):
        reports.parse_reference("l2=4")
    rng = np.random.default_rng(0)
    runs, rows = [], []
    for reg_type, lam in [("l2", 0.001), ("l2", 0.01), ("l2", 0.1), ("l1", 0.01), ("bending", 0.01)]:
        vid = f"{reg_type}_{lam:g}"
        runs.append({"variant": vid, "reg_type": reg_type, "lambda": lam})
        for i in range(5):
            rows.append({"variant": vid, "pair_id": f"p{i}", "dice": 0.7 - lam + rng.normal(0, 0.01),
                         "folding_pct": 1.0 / (1 + 100 * lam), "mse": 0.002 + lam / 10})
    identity = [{"variant": "identity", "pair_id": f"p{i}", "mse": 0.01, "dice": 0.5, "folding_pct": 0.0} for i in range(5)]
    paths = reports.write_sweep_report(tmp_path, rows, runs, reference=reports.BUILTIN_SWEEP_REFERENCE,
                                       reference_source="test", command="deepreg-ablation sweep", identity_rows=identity)
    assert paths["sweep_curves"].read_bytes()[:8] == PNG_MAGIC
    with open(paths["summary"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 5
    assert float(table[0]["ref_folding_pct"]) == 4.1 and float(table[1]["ref_mse"]) == 0.00296
    assert table[3]["ref_folding_pct"] == ""  # no reference for l1
    assert float(table[0]["folding_pct_mean"]) == pytest.approx(1.0 / 1.1)
    assert float(table[0]["mse_vs_identity"]) == pytest.approx((0.002 + 0.0001 - 0.01) / 0.01)
    text = paths["report"].read_text()
    assert "ref. MSE" in text and "| l2 | 0.001 | 5 |" in text and "MSE vs no registration" in text


def test_pair_dataset_parses_the_brain_pair_ids():
    assert reports.pair_dataset("lpba40-S05->lpba40-S18") == "lpba40"
    assert reports.pair_dataset("miccai2012-1000_3->miccai2012-1017_3") == "miccai2012"
    assert reports.pair_dataset("ixi-IXI002-Guys-0828-T1->ixi-IXI012-HH-1211-T1") == "ixi"
    assert reports.pair_dataset("lpba40-S05->ibsr18-IBSR_01") == reports.MIXED_DATASETS
    for not_brain in ("OASIS_OAS1_0001_MR1->OASIS_OAS1_0002_MR1", "p3", "lpba40->lpba40", "oasis-1->oasis-2", ""):
        assert reports.pair_dataset(not_brain) is None, not_brain


def _dataset_rows():
    """baseline / regloss on 6 lpba40, 7 miccai2012 and 2 ixi pairs (+ identity), with known differences."""
    rng = np.random.default_rng(3)
    pairs = ([("lpba40", f"lpba40-S{i:02d}->lpba40-S{i + 10:02d}") for i in range(6)]
             + [("miccai2012", f"miccai2012-10{i:02d}_3->miccai2012-11{i:02d}_3") for i in range(7)]
             + [("ixi", f"ixi-IXI00{i}-T1->ixi-IXI01{i}-T1") for i in range(2)])
    # regloss: Dice +0.05 on every lpba40 pair, -0.02 on every miccai2012 pair; folding / 2 everywhere
    dice_shift = {"lpba40": 0.05, "miccai2012": -0.02, "ixi": 0.01}
    rows = []
    for variant in ("identity", "baseline", "regloss"):
        for k, (dataset, pid) in enumerate(pairs):
            base_dice = 0.5 + 0.02 * k
            dice = base_dice - 0.1 if variant == "identity" else base_dice + (dice_shift[dataset] if variant == "regloss" else 0.0)
            fold = 0.0 if variant == "identity" else (2.0 + 0.1 * k) * (0.5 if variant == "regloss" else 1.0)
            rows.append({"variant": variant, "pair_id": pid, "dice": dice, "hd95_mm": 3.0 + rng.uniform(0, 1),
                         "folding_pct": fold, "sdlogj": 0.1 * fold, "mse": 0.01, "tre_true_mm": math.nan})
    return rows, pairs


def test_per_dataset_summary_means_counts_and_tests():
    rows, pairs = _dataset_rows()
    groups = reports.rows_by_dataset(rows)
    assert list(groups) == ["miccai2012", "lpba40", "ixi"]  # data.DATASET_LAYOUTS order
    summary = reports.summarize_per_dataset(rows, baseline="baseline")
    by = {(e["dataset"], e["variant"]): e for e in summary}
    assert set(by) == {(d, v) for d in ("miccai2012", "lpba40", "ixi") for v in ("identity", "baseline", "regloss")}
    for dataset, n in (("lpba40", 6), ("miccai2012", 7), ("ixi", 2)):
        expected = [0.5 + 0.02 * k for k, (d, _) in enumerate(pairs) if d == dataset]
        assert by[(dataset, "baseline")]["n_pairs"] == n
        assert by[(dataset, "baseline")]["dice_mean"] == pytest.approx(np.mean(expected))
        assert by[(dataset, "baseline")]["dice_std"] == pytest.approx(np.std(expected, ddof=1))
        fold = [2.0 + 0.1 * k for k, (d, _) in enumerate(pairs) if d == dataset]
        assert by[(dataset, "regloss")]["folding_pct_mean"] == pytest.approx(0.5 * np.mean(fold))
        assert by[(dataset, "regloss")]["sdlogj_mean"] == pytest.approx(0.05 * np.mean(fold))
        assert "mse_mean" not in by[(dataset, "regloss")]  # Dice, HD95, folding, SDlogJ only
    # every lpba40 pair better (exact two-sided Wilcoxon p = 2 / 2**6), every miccai2012 pair worse (2 / 2**7)
    assert by[("lpba40", "regloss")]["dice_p"] == pytest.approx(2.0 / 2**6)
    assert by[("miccai2012", "regloss")]["dice_p"] == pytest.approx(2.0 / 2**7)
    assert by[("lpba40", "regloss")]["dice_rel_change"] > 0 > by[("miccai2012", "regloss")]["dice_rel_change"]
    # 2 ixi pairs: no tests
    assert math.isnan(by[("ixi", "regloss")]["dice_p"]) and math.isnan(by[("ixi", "regloss")]["dice_q"])
    assert math.isnan(by[("lpba40", "identity")]["dice_p"])  # the reference row is never tested
    # one dataset only, or ids of no known dataset: no per-dataset summary
    assert reports.summarize_per_dataset([r for r in rows if r["pair_id"].startswith("lpba40")]) == []
    assert reports.summarize_per_dataset(_rows()) == []


def test_ablation_report_has_a_per_dataset_section(tmp_path):
    rows, _ = _dataset_rows()
    paths = reports.write_ablation_report(tmp_path / "multi", rows, baseline="baseline", command="deepreg-ablation ablation")
    text = paths["report"].read_text()
    assert "## Per dataset" in text
    section = text[text.index("## Per dataset"):text.index("Per-pair values")]
    assert [ln for ln in section.splitlines() if ln.startswith("### ")] == [
        "### miccai2012: 7 pairs", "### lpba40: 6 pairs", "### ixi: 2 pairs"]
    lpba = section[section.index("### lpba40"):section.index("### ixi")]
    assert "| regloss | 6 |" in lpba and "| p / q vs baseline | Dice | HD95 (mm) | folding (% det<=0) | SDlogJ |" in lpba
    assert "↑ 0.0312 / " in lpba  # Dice up on all 6 pairs, p = 2 / 64
    ixi = section[section.index("### ixi"):]
    assert "p / q vs" not in ixi and "No paired tests: fewer than 5 pairs." in ixi
    with open(paths["summary_per_dataset"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["dataset"], r["variant"]) for r in table][:3] == [("miccai2012", "identity"), ("miccai2012", "baseline"),
                                                                  ("miccai2012", "regloss")]
    assert len(table) == 9 and float(table[1]["n_pairs"]) == 7
    # single-dataset rows: no section, no file
    single = reports.write_ablation_report(tmp_path / "single", _rows(), baseline="baseline")
    assert "## Per dataset" not in single["report"].read_text() and "summary_per_dataset" not in single
    assert not (tmp_path / "single" / "summary_per_dataset.csv").exists()


def test_sweep_report_states_the_chosen_multiplier(tmp_path):
    runs, rows = [], []
    folding = {0.5: 2.0, 1.0: 0.7, 2.0: 0.3, 5.0: 0.05}  # smallest M below 0.5 %: 2
    for m, fold in folding.items():
        vid = f"regloss_x{m:g}"
        runs.append({"variant": vid, "reg_type": "regloss (constant)", "lambda": m})
        for i in range(4):
            rows.append({"variant": vid, "pair_id": f"p{i}", "dice": 0.8 - 0.01 * m, "folding_pct": fold + 0.01 * i, "mse": 0.01})
    paths = reports.write_sweep_report(tmp_path / "a", rows, runs, param_label="M", folding_target=0.5)
    text = paths["report"].read_text()
    assert "## Chosen M" in text and "**M = 2**" in text and "| regloss (constant) | **2** (chosen) | 4 |" in text
    assert "| type | M | n |" in text and "0.33 % on the worst pair" in text
    with open(paths["summary"], newline="") as fh:
        assert [r["chosen"] for r in csv.DictReader(fh)] == ["False", "False", "True", "False"]
    assert reports.choose_smallest_below(reports.summarize_sweep(rows, runs), 0.01) is None
    none = reports.write_sweep_report(tmp_path / "b", rows, runs, param_label="M", folding_target=0.01)
    assert "No M of this sweep keeps the mean folding below 0.01 %" in none["report"].read_text()
    first = reports.write_sweep_report(tmp_path / "c", rows, runs, param_label="M", folding_target=5.0)
    assert "**M = 0.5**" in first["report"].read_text() and "extend the sweep downwards" in first["report"].read_text()
    with pytest.raises(ValueError, match="folding_target"):
        reports.write_sweep_report(tmp_path / "d", rows, runs, folding_target=0.0)


def _design_rows(n_pairs: int = 10):
    """A 2 x 2 design where only the affine stage moves Dice (+0.05 on every pair) and only the regularisers
    move folding (x 0.1); regloss's second file (``regloss@late/x``) must not be picked over the first."""
    rng = np.random.default_rng(3)
    dice = rng.uniform(0.5, 0.6, n_pairs)
    fold = rng.uniform(1.0, 2.0, n_pairs)
    design = {"identity": (0.0, 0.0, 0.0), "baseline": (0.0, 1.0, 0.0), "regloss@early/x": (0.0, 0.1, 0.0),
              "regloss@late/x": (0.3, 0.1, 0.0), "affine_basic": (0.05, 1.0, 0.0), "affine_enhanced": (0.05, 0.1, 1e-3)}
    return [{"variant": label, "pair_id": f"p{i}", "dice": float(dice[i] + d + jitter * i),
             "folding_pct": float(fold[i] * f), "hd95_mm": math.nan}
            for label, (d, f, jitter) in design.items() for i in range(n_pairs)]


def test_component_contrasts_of_the_two_by_two_design():
    from DeepRegAblationTrainingLib.reports import components

    contrasts = {c["name"]: c for c in components.component_contrasts(_design_rows())}
    assert list(contrasts) == [name for name, _, _ in components.CONTRASTS]
    affine = contrasts["affine stage, with regularisers"]
    assert (affine["with"], affine["without"]) == ("affine_enhanced", "regloss@early/x")
    assert affine["dice_diff"] == pytest.approx(0.05 + 1e-3 * 4.5)
    assert affine["dice_p"] == pytest.approx(2.0 / 2**10)  # all 10 pairs better: exact two-sided p
    assert contrasts["affine stage, without regularisers"]["folding_pct_p"] == 1.0  # folding unchanged
    assert contrasts["regularisers, without affine stage"]["dice_p"] == 1.0  # Dice unchanged
    assert contrasts["regularisers, with affine stage"]["folding_pct_diff"] < 0
    assert all(c["dice_q"] >= c["dice_p"] for c in contrasts.values())
    assert math.isnan(affine["hd95_mm_diff"]) and affine["hd95_mm_n"] == 0
    md = "\n".join(components.component_markdown(list(contrasts.values()), ["dice", "folding_pct"]))
    assert "| affine stage, with regularisers | `affine_enhanced` - `regloss@early/x` | +0.0545 (p" in md
    without_one = [r for r in _design_rows() if r["variant"] != "affine_basic"]
    assert components.component_contrasts(without_one) == [] and components.component_markdown([]) == []


def test_ablation_report_has_the_component_section_only_for_the_full_design(tmp_path):
    paths = reports.write_ablation_report(tmp_path / "full", _design_rows(), baseline="baseline")
    assert "## What each component buys" in paths["report"].read_text() and paths["components"].is_file()
    two = [r for r in _design_rows() if r["variant"] in ("baseline", "affine_basic")]
    paths = reports.write_ablation_report(tmp_path / "two", two, baseline="baseline")
    assert "components" not in paths and "What each component buys" not in paths["report"].read_text()
