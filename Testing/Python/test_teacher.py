"""Teacher fields for distillation: the mapping onto the model grids, the cache and its refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from DeepRegAblationLib.imageio import ImageData, write_image
from DeepRegAblationLib.registration.refine import RefineSchedule
from DeepRegAblationTrainingLib.training import teacher
from DeepRegAblationTrainingLib.data import Preprocess, Subject

TINY_SCHEDULE = RefineSchedule("custom", (8.0,), (8.0,), 3, 3)


def _grid(origin_ras, spacing=4.0):
    matrix = np.diag([spacing, spacing, spacing, 1.0])
    matrix[:3, 3] = origin_ras
    return matrix


def test_mapping_between_model_grids_is_in_moving_grid_voxels():
    """q(p) = p + (12, 4, 0) mm; the moving grid lies 8 mm further right: i moves by (12 - 8) / 4 = 1, j by 1."""
    shape = (6, 5, 4)
    fixed_grid, moving_grid = _grid((0.0, 0.0, 0.0)), _grid((8.0, 0.0, 0.0))
    affine = np.eye(4)
    affine[:3, 3] = (12.0, 0.0, 0.0)
    deform = torch.zeros((3, 3, 3, 3))
    deform[1] = 4.0  # A(p + u): u = 4 mm along A
    disp = teacher.mapping_on_model_grids(affine, deform, _grid((-20.0, -20.0, -20.0), 20.0), fixed_grid, moving_grid, shape)
    assert disp.shape == (3,) + shape
    np.testing.assert_allclose(disp[0], 0.0, atol=1e-5)  # k (S)
    np.testing.assert_allclose(disp[1], 1.0, atol=1e-5)  # j (A)
    np.testing.assert_allclose(disp[2], 1.0, atol=1e-5)  # i (R)


def _blob_image(shift_mm=(0.0, 0.0, 0.0), size=28, spacing=2.0, seed=0):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(size) * spacing for _ in range(3)], indexing="ij")
    centre = size * spacing / 2
    r2 = (k - centre) ** 2 / 1.2 + (j - centre) ** 2 + (i - centre) ** 2 / 0.8
    array = (np.exp(-r2 / 150.0) * 100 + (r2 < 100) * 50 + rng.random((size,) * 3)).astype(np.float32)
    matrix = np.diag([spacing] * 3 + [1.0])
    matrix[:3, 3] = shift_mm
    return ImageData(array, matrix)


@pytest.fixture
def pair_folder(tmp_path):
    subjects = []
    for index, shift in enumerate(((0.0, 0.0, 0.0), (10.0, -6.0, 4.0), (-4.0, 2.0, 0.0))):
        path = write_image(tmp_path / f"s{index}.nii.gz", _blob_image(shift, seed=index))
        subjects.append(Subject(id=f"lpba40-S{index}", image=path, labels=None, dataset="lpba40"))
    return tmp_path, subjects


def _source(subjects, schedule=TINY_SCHEDULE):
    return teacher.TeacherSource(subjects, Preprocess(spacing_mm=[4.0], shape=[16, 16, 16], center="com", ndim=3), schedule)


def test_a_translated_copy_needs_no_teacher_displacement(pair_folder):
    """Both model grids are centred on each image's centre of mass: a shifted copy maps voxel to voxel."""
    _, subjects = pair_folder
    source = _source(subjects)
    disp, info = source.compute("lpba40-S1", "lpba40-S0")
    assert disp.shape == (3, 16, 16, 16) and info["seconds"] > 0
    assert float(np.abs(disp).max()) < 0.35  # voxels of 4 mm


def test_cache_reuses_valid_files_and_recomputes_stale_ones(pair_folder):
    folder, subjects = pair_folder
    pairs = teacher.teacher_pairs(subjects, 2)
    assert len(pairs) == 2 and all(m != f for m, f in pairs)
    assert teacher.teacher_pairs(subjects, 4)[:2] == pairs  # a larger cache extends the same list
    cache = folder / "teacher"
    assert teacher.build_teacher_cache(_source(subjects), pairs, cache) == {"reused": 0, "computed": 2, "recomputed": 0}
    assert teacher.build_teacher_cache(_source(subjects), pairs, cache) == {"reused": 2, "computed": 0, "recomputed": 0}
    other = RefineSchedule("custom", (8.0,), (8.0,), 4, 4)
    messages = []
    counts = teacher.build_teacher_cache(_source(subjects, other), pairs, cache, lambda d, n, m: messages.append(m))
    assert counts == {"reused": 0, "computed": 0, "recomputed": 2}
    assert any("refinement schedule" in m for m in messages)


def test_a_teacher_field_of_another_pair_or_a_damaged_file_is_refused_by_name(pair_folder):
    folder, subjects = pair_folder
    source = _source(subjects)
    pairs = [("lpba40-S1", "lpba40-S0")]
    teacher.build_teacher_cache(source, pairs, folder / "t")
    path = teacher.teacher_path(folder / "t", *pairs[0])
    assert teacher.load_teacher(path, source.fingerprint(*pairs[0])).shape == (3, 16, 16, 16)
    with pytest.raises(teacher.TeacherMismatch, match="another moving image file"):
        teacher.load_teacher(path, source.fingerprint("lpba40-S2", "lpba40-S0"))
    with pytest.raises(teacher.TeacherMismatch, match="fixed model grid"):
        expected = source.fingerprint(*pairs[0])
        expected["fixed_grid"] = (np.asarray(expected["fixed_grid"]) + np.eye(4) * 0.01).tolist()
        teacher.load_teacher(path, expected)
    bigger = _source(subjects)
    bigger.preprocess = Preprocess(spacing_mm=[4.0], shape=[16, 16, 32], center="com", ndim=3)
    with pytest.raises(teacher.TeacherMismatch, match="model grid shape"):
        teacher.load_teacher(path, bigger.fingerprint(*pairs[0]))
    path.write_bytes(path.read_bytes()[:100])  # cut short by a crash
    with pytest.raises(teacher.TeacherMismatch, match="cannot be read"):
        teacher.load_teacher(path, source.fingerprint(*pairs[0]))
    assert teacher.build_teacher_cache(source, pairs, folder / "t")["recomputed"] == 1


def test_augmented_target_follows_both_augmentations():
    """y = x + target(x) satisfies y + a_m(y) = x + a_f(x) + t(x + a_f(x)) inside the grid."""
    from DeepRegAblationLib import fields
    from DeepRegAblationTrainingLib.augment import Augment, random_smooth_field, seeded_generator

    shape = (20, 24, 20)
    augment = Augment(max_disp_mm=6.0, control_spacing_vox=6.0, rotation_deg=5.0, translation_vox=1.5)
    a_f = augment.spatial_field(shape, (4.0, 4.0, 4.0), seeded_generator(1))[None]
    a_m = augment.spatial_field(shape, (4.0, 4.0, 4.0), seeded_generator(2))[None]
    t = random_smooth_field(shape, 2.0, 6.0, seeded_generator(3))[None]
    target = teacher.augmented_target(t, a_f, a_m)
    lhs = target + fields.warp(a_m, target)  # y - x + a_m(y)
    rhs = fields.compose(t, a_f)  # a_f(x) + t(x + a_f(x))
    interior = (slice(None), slice(None)) + tuple(slice(4, n - 4) for n in shape)
    assert float((lhs - rhs)[interior].abs().max()) < 0.05
    assert float((target - t)[interior].abs().max()) > 0.5  # the augmentations do change the target


# --------------------------------------------------------------------------- distillation in training
def _brain_bundle(tmp_path, augment=True):
    from test_brain_data import make_dataset

    from DeepRegAblationTrainingLib.data import build_data

    folder = make_dataset(tmp_path / "lpba40", "lpba40")
    spec = {"kind": "lpba40", "path": str(folder), "spacing_mm": [8.0], "shape": [16, 16, 16],
            "val_per_dataset": {"lpba40": 1}, "augment": augment}
    return spec, build_data(spec, seed=0, pairs_per_epoch=4)


def _teachers(bundle, folder, pairs):
    source = teacher.TeacherSource(bundle.train.subjects, bundle.preprocess, TINY_SCHEDULE)
    teacher.build_teacher_cache(source, pairs, folder)
    return source


def test_distillation_pairs_carry_the_teacher_field_through_the_augmentation(tmp_path):
    spec, bundle = _brain_bundle(tmp_path)
    ids = sorted(s.id for s in bundle.train.subjects)
    _teachers(bundle, tmp_path / "t", [(ids[0], ids[1]), (ids[1], ids[2])])
    pairs = teacher.DistillationPairs(bundle.train, tmp_path / "t", fraction=1.0, schedule=TINY_SCHEDULE)
    assert sorted(pairs.pairs) == sorted([(ids[0], ids[1]), (ids[1], ids[2])]) and len(pairs) == len(bundle.train)
    item = pairs[0]
    moving_id, fixed_id = item["pair_id"].split("->")
    stored = teacher.load_teacher(teacher.teacher_path(tmp_path / "t", moving_id, fixed_id), pairs.expected(moving_id, fixed_id))
    assert item["teacher_disp_vox"].shape == (3, 16, 16, 16) and "moving_labels" in item
    assert not torch.allclose(item["teacher_disp_vox"], torch.from_numpy(stored))  # the augmentation moved it
    # the same item again (pure function of seed, epoch, index), and without augmentation the stored field itself
    torch.testing.assert_close(pairs[0]["teacher_disp_vox"], item["teacher_disp_vox"])
    _, plain = _brain_bundle(tmp_path / "plain", augment=False)
    plain_pairs = teacher.DistillationPairs(plain.train, tmp_path / "t", fraction=1.0, schedule=TINY_SCHEDULE)
    unaugmented = plain_pairs.teacher_item(0, moving_id, fixed_id)
    np.testing.assert_array_equal(unaugmented["teacher_disp_vox"].numpy(), stored)
    none = teacher.DistillationPairs(bundle.train, tmp_path / "t", fraction=0.0, schedule=TINY_SCHEDULE)
    assert "teacher_disp_vox" not in none[0]


def test_distillation_refuses_validation_subjects_and_stale_fields(tmp_path):
    spec, bundle = _brain_bundle(tmp_path)
    train_ids = sorted(s.id for s in bundle.train.subjects)
    val_id = bundle.split["val"][0]["id"]
    source = teacher.TeacherSource(bundle.train.subjects + [Subject.from_dict(bundle.split["val"][0])],
                                   bundle.preprocess, TINY_SCHEDULE)
    teacher.build_teacher_cache(source, [(val_id, train_ids[0])], tmp_path / "leak")
    with pytest.raises(ValueError, match="not training subjects.*" + val_id):
        teacher.DistillationPairs(bundle.train, tmp_path / "leak", schedule=TINY_SCHEDULE)
    _teachers(bundle, tmp_path / "t", [(train_ids[0], train_ids[1])])
    with pytest.raises(teacher.TeacherMismatch, match="refinement schedule"):
        teacher.DistillationPairs(bundle.train, tmp_path / "t", schedule="recommended")
    with pytest.raises(FileNotFoundError, match="no <moving>__<fixed>.npz"):
        (tmp_path / "empty").mkdir()
        teacher.DistillationPairs(bundle.train, tmp_path / "empty", schedule=TINY_SCHEDULE)


def test_training_with_distillation_logs_the_term_and_resumes(tmp_path, monkeypatch):
    from DeepRegAblationTrainingLib.training import TrainConfig, train
    from DeepRegAblationTrainingLib.training import teacher as teacher_module

    spec, bundle = _brain_bundle(tmp_path)
    ids = sorted(s.id for s in bundle.train.subjects)
    _teachers(bundle, tmp_path / "t", [(ids[0], ids[1]), (ids[2], ids[0])])
    record = teacher.schedule_record(TINY_SCHEDULE)  # the run expects the recommended schedule's fields
    monkeypatch.setattr(teacher_module, "schedule_record", lambda schedule: record)
    config = dict(variant="baseline", data=spec, steps=4, steps_per_epoch=2, out_dir=str(tmp_path / "run"), device="cpu",
                  seg_weight=1.0, distill_dir=str(tmp_path / "t"), distill_weight=0.5, distill_fraction=1.0,
                  log_tensorboard=False, progress_bar=False, checkpoint_every=0)
    train(TrainConfig(**config))
    header = (tmp_path / "run" / "steps.csv").read_text().splitlines()[0].split(",")
    assert "distill" in header
    with pytest.raises(ValueError, match="distill_weight"):
        train(TrainConfig(**dict(config, steps=6, resume=True, distill_weight=1.0)))
    with pytest.raises(ValueError, match="distillation needs both"):
        TrainConfig(**dict(config, distill_weight=0.0)).validate()


def test_teacher_command_builds_a_resumable_cache_of_training_pairs_only(tmp_path, capsys):
    from test_brain_data import make_dataset

    from DeepRegAblationTrainingLib import cli

    folder = make_dataset(tmp_path / "lpba40", "lpba40")
    split = tmp_path / "split.json"
    split.write_text('{"train": ["lpba40-S01", "lpba40-S02", "lpba40-S03"], "val": ["lpba40-S04"]}')
    args = ["teacher", "--data", f"lpba40:{folder}", "--split", str(split), "--pairs-per-dataset", "2", "--threads", "1",
            "--out", str(tmp_path / "t")]
    assert cli.main(args) == 0
    assert "2 computed, 0 recomputed, 0 reused" in capsys.readouterr().out
    val = {entry if isinstance(entry, str) else entry["id"] for entry in __import__("json").loads(split.read_text())["val"]}
    files = teacher.teacher_files(tmp_path / "t")
    assert len(files) == 2 and not any(m in val or f in val for m, f, _ in files)
    assert cli.main(args) == 0
    assert "0 computed, 0 recomputed, 2 reused" in capsys.readouterr().out


def test_teacher_pairs_keep_the_dataset_weights(tmp_path):
    """Two datasets weighted 1 : 3 draw their teacher pairs in that ratio, however many pairs each has."""
    from test_brain_data import make_dataset

    from DeepRegAblationTrainingLib.data import build_data

    make_dataset(tmp_path / "data" / "lpba40", "lpba40")
    make_dataset(tmp_path / "data" / "ibsr18", "ibsr18")
    spec = {"kind": "mix", "parts": [{"kind": "lpba40", "path": str(tmp_path / "data" / "lpba40"), "weight": 1.0},
                                     {"kind": "ibsr18", "path": str(tmp_path / "data" / "ibsr18"), "weight": 3.0}],
            "spacing_mm": [8.0], "shape": [16, 16, 16], "val_per_dataset": {"lpba40": 1, "ibsr18": 1}}
    bundle = build_data(spec, seed=0, pairs_per_epoch=400)
    lpba = sorted(s.id for s in bundle.train.subjects if s.dataset == "lpba40")
    ibsr = sorted(s.id for s in bundle.train.subjects if s.dataset == "ibsr18")
    pairs = [(lpba[0], lpba[1]), (lpba[1], lpba[0]), (lpba[2], lpba[0]), (ibsr[0], ibsr[1])]
    _teachers(bundle, tmp_path / "t", pairs)
    distill = teacher.DistillationPairs(bundle.train, tmp_path / "t", schedule=TINY_SCHEDULE)
    counts = {"lpba40": 0, "ibsr18": 0}
    for index in range(200):
        item = distill[index]
        assert "teacher_disp_vox" in item and item["pair_id"] in {f"{m}->{f}" for m, f in pairs}
        counts["ibsr18" if "ibsr18" in item["pair_id"] else "lpba40"] += 1
    assert 0.62 < counts["ibsr18"] / 200 < 0.88  # 3 : 1, although lpba40 has three teacher pairs and ibsr18 one
    assert distill.by_dataset["ibsr18"] == [(ibsr[0], ibsr[1])]
