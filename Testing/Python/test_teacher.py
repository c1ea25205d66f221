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
    with pytest.raises(teacher.TeacherMismatch, match=r"s[0-9].*|moving image file"):
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
