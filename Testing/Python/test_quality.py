"""Registration-quality benchmark: classical registration (SimpleITK path), the quality table and
the `bench --quality` command, on synthetic 32^3 blob volumes with a known shift, and one real
IXI pair (skipped without ../shared data)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from DeepRegAblationLib import geometry, resampling
from DeepRegAblationLib.imageio import ImageData, read_image, write_image
from DeepRegAblationLib.models.resolve import training_ids
from DeepRegAblationTrainingLib import cli
from DeepRegAblationTrainingLib.benchmarks import classical, quality
from DeepRegAblationTrainingLib.reports import quality as quality_report
from DeepRegAblationTrainingLib.data import Subject

# an oblique-free but flipped, anisotropic-origin grid (LPS-like axes) so that RAS/LPS and axis
# order conventions are exercised
IJK_TO_RAS = np.array([[-2.0, 0, 0, 30.0], [0, -2.0, 0, 25.0], [0, 0, 2.0, -31.0], [0, 0, 0, 1]])
SHAPE = (32, 32, 32)
BLOBS = [  # centre offset from the grid centre (RAS mm), radii (mm), intensity
    ((0.0, 0.0, 0.0), (22.0, 18.0, 20.0), 0.4),   # "head": label 1
    ((-8.0, 4.0, 3.0), (7.0, 6.0, 6.0), 1.0),     # label 2
    ((9.0, -5.0, -4.0), (6.0, 8.0, 5.0), 0.7),    # label 3
    ((2.0, 9.0, -9.0), (5.0, 5.0, 7.0), 0.15),    # label 4
]


def _phantom(shift_ras=(0.0, 0.0, 0.0), bend_mm: float = 0.0):
    """Smooth blob image and labels on IJK_TO_RAS; content moved by ``shift_ras`` plus a smooth bend.

    The content at the grid centre moves to ``centre + shift_ras + (0, 0, bend_mm)``.
    """
    points = geometry.grid_points_ras(SHAPE, IJK_TO_RAS)
    centre = geometry.voxel_to_ras((np.array(SHAPE[::-1]) - 1) / 2.0, IJK_TO_RAS)
    x = points - centre - np.asarray(shift_ras)
    if bend_mm:
        x = x - bend_mm * np.stack([np.sin(x[..., 2] / 12.0), np.zeros_like(x[..., 0]), np.cos(x[..., 0] / 15.0)], -1)
    image = np.zeros(SHAPE, np.float32)
    labels = np.zeros(SHAPE, np.int16)
    for label, (offset, radii, value) in enumerate(BLOBS, start=1):
        r2 = np.sum(((x - np.asarray(offset)) / np.asarray(radii)) ** 2, axis=-1)
        inside = r2 <= 1.0
        image = np.where(inside, value, image) + 0.05 * value * np.exp(-r2)
        labels[inside] = label
    image = ndimage.gaussian_filter(image, 1.0)
    return ImageData(image.astype(np.float32), IJK_TO_RAS, "img"), ImageData(labels, IJK_TO_RAS, "lab")


SHIFT_RAS = (6.0, -4.0, 4.0)
BEND_MM = 4.0
CENTRE_DISP_RAS = np.array(SHIFT_RAS) + (0.0, 0.0, BEND_MM)


@pytest.fixture(scope="module")
def pair():
    fixed, fixed_labels = _phantom()
    moving, moving_labels = _phantom(SHIFT_RAS, bend_mm=BEND_MM)
    return fixed, moving, fixed_labels, moving_labels


def test_sitk_classical_beats_identity_and_recovers_the_shift(pair):
    fixed, moving, fixed_labels, moving_labels = pair
    identity = classical.identity_register(fixed, moving, fixed_labels, moving_labels)
    affine = classical.classical_register(fixed, moving, fixed_labels, moving_labels, method="sitk", transform="affine",
                                        threads=1)
    demons = classical.classical_register(fixed, moving, fixed_labels, moving_labels, method="sitk", threads=1)
    assert identity.variant == "identity" and affine.variant == "sitk_affine" and demons.variant == "sitk_demons"
    assert np.all(identity.disp_ras_mm == 0) and identity.metrics["folding_pct"] == 0.0
    d_id, d_aff, d_def = (r.metrics["dice"] for r in (identity, affine, demons))
    assert d_aff > d_id + 0.4, (d_id, d_aff)
    assert d_def > d_aff + 0.04, (d_aff, d_def)
    assert demons.metrics["folding_pct"] < 0.5
    # the transform maps fixed points to moving points: the centre content moved by CENTRE_DISP_RAS
    centre = tuple(n // 2 for n in SHAPE)
    centre_ras = geometry.voxel_to_ras(np.array(centre[::-1], float), IJK_TO_RAS)
    assert np.allclose(geometry.apply_affine(centre_ras, affine.affine_ras) - centre_ras, CENTRE_DISP_RAS, atol=2.5)
    assert np.allclose(demons.disp_ras_mm[centre], CENTRE_DISP_RAS, atol=1.5)
    # outputs on the fixed grid; the warped labels are the moving labels' values
    assert demons.warped.shape == SHAPE and demons.jacobian.shape == SHAPE and demons.disp_ras_mm.shape == SHAPE + (3,)
    assert set(np.unique(demons.warped_labels)) <= set(np.unique(moving_labels.array))
    # total = affine o (identity + deformable part)
    points = geometry.grid_points_ras(SHAPE, IJK_TO_RAS)
    recomposed = geometry.apply_affine(points + demons.deform_disp_ras_mm, demons.affine_ras) - points
    assert np.allclose(recomposed, demons.disp_ras_mm, atol=1e-3)
    assert demons.metrics["runtime_s"] > demons.timings["metrics"] > 0


def test_classical_register_rejects_bad_input(pair):
    fixed, moving, fixed_labels, moving_labels = pair
    with pytest.raises(ValueError, match="method"):
        classical.classical_register(fixed, moving, method="elastix")
    with pytest.raises(ValueError, match="transform"):
        classical.classical_register(fixed, moving, method="sitk", transform="bspline")
    flat = ImageData(np.ones((1, 32, 32), np.float32), np.eye(4), "slice")
    with pytest.raises(ValueError, match="3D volume"):
        classical.classical_register(flat, flat, method="sitk")
    far = ImageData(moving.array, IJK_TO_RAS @ np.array([[1, 0, 0, 500.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    with pytest.raises(ValueError, match="overlap"):
        classical.classical_register(fixed, far, method="sitk")
    with pytest.raises(ValueError, match="classical"):
        classical.classical_methods("elastix")


def test_classical_method_choice():
    methods = classical.classical_methods("sitk")
    assert methods == ["identity", "sitk_affine", "sitk_demons"]
    auto = classical.classical_methods("auto")
    assert auto[0] == "identity" and len(auto) == 3
    assert auto[1] == ("ants_affine" if classical.ants_available() else "sitk_affine")
    for choice, method in (("affine", "ants_affine"), ("syn", "ants_syn")):  # one ANTs method alone
        if classical.ants_available():
            assert classical.classical_methods(choice) == ["identity", method]
        else:
            with pytest.raises(ValueError, match="antspyx"):
                classical.classical_methods(choice)


def test_dataset_pairs():
    subjects = [Subject(f"s{i}", f"s{i}.nii.gz", None) for i in range(4)]
    cycle = quality.dataset_pairs(subjects)
    assert [(f.id, m.id) for f, m in cycle] == [("s0", "s1"), ("s1", "s2"), ("s2", "s3"), ("s3", "s0")]
    assert len(quality.dataset_pairs(subjects, "all")) == 12
    assert len(quality.dataset_pairs(subjects, 2)) == 2
    with pytest.raises(ValueError, match="pairs"):
        quality.dataset_pairs(subjects, "some")
    with pytest.raises(ValueError, match="2 subjects"):
        quality.dataset_pairs(subjects[:1])


def test_training_ids_from_a_checkpoint_split():
    checkpoint = {"data_split": {"kind": "mni-ixi", "train": [{"id": "MNI152", "image": "t.nii.gz"}, {"id": "IXI012"}]}}
    assert training_ids(checkpoint) == {"MNI152", "IXI012"}
    assert training_ids({"model_state": {}}) is None


def _write_subjects(folder, n=2):
    subjects = []
    for i in range(n):
        image, labels = _phantom(SHIFT_RAS if i % 2 else (0.0, 0.0, 0.0), bend_mm=BEND_MM * (i % 2))
        image_path = write_image(folder / f"sub{i}.nii.gz", image)
        label_path = write_image(folder / f"sub{i}_labels.nii.gz", labels)
        subjects.append(Subject(f"sub{i}", image_path, label_path))
    return subjects


def test_quality_table_rows_and_summary(tmp_path):
    subjects = _write_subjects(tmp_path)
    pairs = quality.dataset_pairs(subjects)  # 2 ordered pairs
    rows = quality.quality_table(pairs, ["baseline"], ["identity", "sitk_affine"], threads=1, untrained=True)
    assert len(rows) == 2 * 3
    assert all(tuple(row) == quality.QUALITY_COLUMNS for row in rows)
    by = {(r["fixed"], r["method"]): r for r in rows}
    for fixed_id in ("sub0", "sub1"):
        assert by[(fixed_id, "sitk_affine")]["dice"] > by[(fixed_id, "identity")]["dice"] + 0.2
        ours = by[(fixed_id, "baseline")]
        assert ours["kind"] == "ours" and ours["model"] == "untrained" and "untrained" in ours["label"]
        assert ours["seen_in_training"] is None and ours["runtime_s"] > 0
        assert 0.0 <= ours["dice"] <= 1.0 and ours["folding_pct"] >= 0.0
    summary = quality.summarize_quality(rows)
    assert [s["method"] for s in summary] == ["identity", "sitk_affine", "baseline"]
    affine = summary[1]
    values = [r["dice"] for r in rows if r["method"] == "sitk_affine"]
    assert affine["n_pairs"] == 2 and math.isclose(affine["dice_mean"], np.mean(values))
    assert math.isclose(affine["dice_std"], np.std(values, ddof=1))
    text = quality_report.markdown_quality(rows, "two phantoms")
    assert "## Registration quality on IXI" in text and "sub1 -> sub0" in text and "sub0 -> sub1" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 and table[-1].startswith("| baseline (untrained) | untrained | - |")
    assert f"{affine['dice_mean']:.3f} ± {affine['dice_std']:.3f}" in text


def test_quality_table_runs_a_named_checkpoint_beside_the_variants(tmp_path):
    """``NAME=CHECKPOINT`` (e.g. a sweep's runs): that file's weights, under its own row name."""
    import torch
    from DeepRegAblationLib.models.checkpoints import save_checkpoint
    from DeepRegAblationLib.models.network import build_model

    torch.manual_seed(5)
    path = save_checkpoint(tmp_path / "runs" / "epoch_0001.pt", build_model("baseline", 3))
    pairs = quality.dataset_pairs(_write_subjects(tmp_path), 1)
    rows = quality.quality_table(pairs, ["baseline", f"baseline_m4={path}"], [], threads=1, untrained=True)
    assert [r["method"] for r in rows] == ["baseline", "baseline_m4"]
    untrained, named = rows
    assert named["model"] == str(path) and named["label"] == "baseline_m4 (checkpoint)"
    assert untrained["model"] == "untrained"
    assert named["dice"] != untrained["dice"] or named["sdlogj"] != untrained["sdlogj"]  # other weights
    with pytest.raises(ValueError, match="checkpoint file not found: .*missing.pt"):
        quality.quality_table(pairs, [f"x={tmp_path / 'missing.pt'}"], [], threads=1)


def test_bench_quality_command_writes_the_section(tmp_path, capsys):
    _write_subjects(tmp_path / "heads")
    report = tmp_path / "out" / "bench.md"
    status = cli.main(["bench", "--quality", "--ixi", str(tmp_path / "heads"), "--classical", "sitk",
                       "--variants", "", "--pairs", "1", "--threads", "1", "--report", str(report)])
    assert status == 0
    text = report.read_text()
    assert text.startswith("# Benchmarks") and "## Registration quality on IXI" in text
    assert "Produced by `deepreg-ablation bench" in text and "Training:" not in text
    assert "SimpleITK affine + diffeomorphic demons" in text and "identity (no registration)" in text
    rows = json.loads(report.with_suffix(".quality.json").read_text())
    assert {r["method"] for r in rows} == {"identity", "sitk_affine", "sitk_demons"} and len(rows) == 3
    assert not report.with_suffix(".json").exists()  # no speed cases ran
    assert cli.main(["bench", "--quality", "--ixi", str(tmp_path / "missing"), "--report", str(report)]) == 2
    assert "--ixi" in capsys.readouterr().err
    assert cli.main(["bench", "--train", "--variants", "baseline,x=m.pt", "--report", str(report)]) == 2
    assert "NAME=CHECKPOINT entries (x=m.pt) are for --quality and --refinement only" in capsys.readouterr().err


def test_refinement_takes_a_checkpoint_as_its_variant():
    """``bench --refinement --variants NAME=CHECKPOINT`` measures an unshipped file (the first entry is the model)."""
    from argparse import Namespace

    from DeepRegAblationTrainingLib.benchmarks.suite import parse_variants

    args = Namespace(train=False, infer=False, quality=False, refinement=True, memory=False, device="cpu",
                     variants="affine_enhanced=runs/x/average_41-50.pt,baseline")
    assert parse_variants(args) == ["affine_enhanced=runs/x/average_41-50.pt", "baseline"]
    with pytest.raises(ValueError, match="unknown id"):
        parse_variants(Namespace(**dict(vars(args), variants="nonsense")))


def test_real_ixi_pair_classical_improves_dice(ixi_dir):
    """One real IXI pair at 4 mm (downsampled for speed): affine and demons beat no registration."""
    from DeepRegAblationTrainingLib.data import find_generic_subjects

    subjects = find_generic_subjects(ixi_dir)[:2]
    images = []
    for subject in subjects:
        image, labels = read_image(subject.image), read_image(subject.labels)
        grid = image.ijk_to_ras.copy()
        grid[:3, :3] *= 2.0  # 2 mm -> 4 mm, same origin and axes
        shape = tuple(n // 2 for n in image.shape)
        images.append((
            ImageData(resampling.resample_to_grid(image.array, image.ijk_to_ras, grid, shape), grid, subject.id),
            ImageData(resampling.resample_to_grid(labels.array, labels.ijk_to_ras, grid, shape, mode="nearest"), grid),
        ))
    (fixed, fixed_labels), (moving, moving_labels) = images
    identity = classical.identity_register(fixed, moving, fixed_labels, moving_labels)
    demons = classical.classical_register(fixed, moving, fixed_labels, moving_labels, method="sitk", threads=1)
    assert int(fixed_labels.array.max()) > 50  # many DLMUSE labels
    assert demons.metrics["dice"] > identity.metrics["dice"] + 0.2, (identity.metrics["dice"], demons.metrics["dice"])
    assert demons.metrics["folding_pct"] < 1.0
    scale = np.linalg.det(demons.affine_ras[:3, :3])
    assert 0.6 < scale < 1.6  # heads of adults: no wild affine


@pytest.mark.skipif(not classical.ants_available(), reason="antspyx (optional) is not installed")
def test_ants_syn_on_the_phantom(pair):
    fixed, moving, fixed_labels, moving_labels = pair
    identity = classical.identity_register(fixed, moving, fixed_labels, moving_labels)
    syn = classical.classical_register(fixed, moving, fixed_labels, moving_labels, method="ants", threads=1)
    assert syn.variant == "ants_syn"
    assert syn.metrics["dice"] > identity.metrics["dice"] + 0.4
    centre = tuple(n // 2 for n in SHAPE)
    assert np.allclose(syn.disp_ras_mm[centre], CENTRE_DISP_RAS, atol=1.5)


def test_quality_table_refinement_rows(tmp_path):
    subjects = _write_subjects(tmp_path)
    pairs = quality.dataset_pairs(subjects, 1)
    rows = quality.quality_table(pairs, ["baseline"], ["identity"], threads=1, untrained=True, refine=3)
    assert [r["method"] for r in rows] == ["identity", "baseline", "baseline+refine3"]
    plain, refined = rows[1], rows[2]
    assert refined["label"] == "baseline (untrained) + 3 refinement steps" and refined["kind"] == "ours"
    assert refined["sdlogj"] != plain["sdlogj"]  # the refinement changed the field
    assert refined["refine_s"] > 0 and plain["refine_s"] == 0  # (no comparison of wall times: the machine is shared)


def test_quality_table_center_of_mass_rows(tmp_path):
    subjects = _write_subjects(tmp_path)
    pairs = quality.dataset_pairs(subjects, 1)
    rows = quality.quality_table(pairs, ["baseline"], ["identity"], threads=1, untrained=True,
                                 initial_alignments=("none", "com"))
    by = {r["method"]: r for r in rows}
    assert list(by) == ["identity", "com", "baseline", "baseline+com"]
    assert by["baseline+com"]["label"] == "baseline (untrained) after centre-of-mass alignment"
    assert by["com"]["kind"] == "reference" and by["com"]["label"] == quality.COM_LABEL
    assert by["com"]["dice"] > by["identity"]["dice"]  # the phantoms are shifted against each other
    text = quality_report.markdown_quality(rows, "two phantoms")
    assert quality.COM_LABEL in text and "intensity centre of mass" in text


def test_quality_table_schedules_and_time_split(tmp_path):
    subjects = _write_subjects(tmp_path)
    pairs = quality.dataset_pairs(subjects, 1)
    rows = quality.quality_table(pairs, ["baseline", "regloss"], ["identity"], threads=1, untrained=True,
                                 refine=["recommended", "2@regloss"], dataset="phantoms")
    assert [r["method"] for r in rows] == ["identity", "baseline", "baseline+refine-recommended", "regloss",
                                           "regloss+refine-recommended", "regloss+refine2"]
    for row in rows:
        assert row["dataset"] == "phantoms"
        assert row["runtime_s"] == pytest.approx(row["network_s"] + row["refine_s"])
    refined = rows[2]
    assert refined["label"] == "baseline (untrained) + recommended refinement" and refined["refine_s"] > 0
    assert rows[1]["refine_s"] == 0.0 and refined["dice"] > rows[1]["dice"]  # the phantoms are shifted
    with pytest.raises(ValueError, match="refine"):
        quality.refine_schedules(["fast"])


def test_peer_status_and_missing_peer(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fireants(name, *args, **kwargs):
        if name.startswith("fireants"):
            raise ImportError("No module named 'fireants'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fireants)
    status = classical.peer_status("fireants")
    assert status is not None and "skipped" in status and "pip install fireants" in status
    with pytest.raises(ValueError, match="fireants"):
        classical.peer_register(None, None, method="fireants")
    with pytest.raises(ValueError, match="method"):
        classical.peer_register(None, None, method="greedy")


def test_markdown_per_dataset_ratios_and_goals():
    def row(method, kind, dice, runtime, refine_s=0.0, folding=0.0):
        return {"dataset": "ixi", "fixed": "a", "moving": "b", "method": method, "label": method, "kind": kind,
                "model": "-", "seen_in_training": None, "dice": dice, "hd95_mm": 3.0, "folding_pct": folding,
                "sdlogj": 0.1, "runtime_s": runtime, "network_s": runtime - refine_s, "refine_s": refine_s}

    rows = [row("ants_syn", "classical", 0.57, 30.0), row("elastix", "peer", 0.60, 60.0),
            row("fireants", "peer", 0.66, 90.0), row("affine_enhanced+com+refine-recommended", "ours", 0.61, 9.0, 7.0),
            row("affine_enhanced+com+refine-thorough", "ours", 0.65, 40.0, 38.0, folding=0.2)]
    text = quality_report.markdown_quality_datasets(rows, "setup line", ["Note: a peer skipped."])
    assert "### ixi" in text and "setup line" in text and "Note: a peer skipped." in text
    assert "Seen in training: some pairs or unknown." in text  # seen_in_training None: not known
    unseen = [dict(r, seen_in_training=False) for r in rows]
    assert "Seen in training: no pair" in quality_report.markdown_quality_datasets(unseen, "setup line", [])
    line = next(l for l in text.splitlines() if l.startswith("| affine_enhanced+com+refine-recommended"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == "2.0 + 7.0" and cells[6] == "+0.040" and cells[7] == "0.30" and cells[9] == "0.15"
    goals = quality_report.goal_lines(rows)
    assert "Dice 0.610 vs 0.570 (met)" in goals[0] and "0.30 x SyN" in goals[0] and "(met: <= 0.33)" in goals[0]
    assert "Dice 0.650 vs 0.660 (missed)" in goals[1] and "40.0 s vs 90.0 s (met)" in goals[1]


def test_bench_quality_per_dataset_from_a_split(tmp_path):
    folder = tmp_path / "data" / "ixi-t1-2mm"
    for i in range(3):
        image, labels = _phantom(SHIFT_RAS if i % 2 else (0.0, 0.0, 0.0), bend_mm=BEND_MM * (i % 2))
        write_image(folder / f"s{i}_ds.nii.gz", image)
        write_image(folder / f"s{i}_ds_DLMUSE.nii.gz", labels)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["ixi-s2"], "val": ["ixi-s0", "ixi-s1"]}))
    report = tmp_path / "out" / "bench.md"
    status = cli.main(["bench", "--quality", "--datasets", "ixi", "--data-root", str(tmp_path / "data"),
                       "--split", str(split), "--classical", "sitk", "--variants", "baseline", "--refine", "2",
                       "--peers", "--pairs", "1", "--threads", "1", "--report", str(report)])
    assert status == 0
    text = report.read_text()
    assert "### ixi" in text and "ixi-s1 -> ixi-s0" in text and "time / SyN" in text and "load average" in text
    rows = json.loads(report.with_suffix(".quality.json").read_text())
    assert {r["dataset"] for r in rows} == {"ixi"} and "baseline+refine2" in {r["method"] for r in rows}
    assert cli.main(["bench", "--quality", "--datasets", "nope", "--report", str(report)]) == 2


def test_labelled_validation_subjects_keeps_the_split_order_and_drops_unlabelled_and_training_ones(tmp_path):
    """One helper picks the pairs' subjects for bench --quality, bench --refinement and the brains3d scripts."""
    from DeepRegAblationTrainingLib.benchmarks.suite import labelled_validation_subjects

    folder = tmp_path / "ixi-t1-2mm"
    image, labels = _phantom((0.0, 0.0, 0.0))
    for i in range(4):
        write_image(folder / f"s{i}_ds.nii.gz", image)
        if i != 2:  # s2 has no label map
            write_image(folder / f"s{i}_ds_DLMUSE.nii.gz", labels)
    chosen = labelled_validation_subjects("ixi", tmp_path, {"ixi-s0", "ixi-s2", "ixi-s3"})
    assert [s.id for s in chosen] == ["ixi-s0", "ixi-s3"]
