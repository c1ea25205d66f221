"""The 3D brain datasets (MICCAI 2012, LPBA40, IBSR18, IXI): layouts, mixed specs with weights,
the per-dataset split, pairs within a dataset, labels only within a dataset, centre-of-mass grids,
and the affine-stage pretraining."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from DeepRegAblationLib import fields, geometry
from DeepRegAblationLib.imageio import ImageData
from DeepRegAblationTrainingLib import data
from DeepRegAblationTrainingLib.training import affine_pretrain

from conftest import SHARED_DATA

LAYOUT_STEMS = {"miccai2012": ["1000", "1001", "1002", "1003"], "lpba40": ["S01", "S02", "S03", "S04"],
                "ibsr18": ["IBSR_01", "IBSR_02", "IBSR_03", "IBSR_04"], "ixi": ["IXI1-HH-1-T1", "IXI2-HH-2-T1", "IXI3-HH-3-T1"]}


def _blob(shape, centre, radius, value=1.0):
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    inside = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2
    return np.where(inside, value, 0.0)


def _write(path, array_kji, spacing=2.0, origin=(0.0, 0.0, 0.0)):
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(np.asarray(array_kji).transpose(2, 1, 0), affine), str(path))


def make_dataset(folder, kind, n=None, unlabelled=()):
    """A tiny folder in ``kind``'s layout: brains as blobs with two labels, at random positions."""
    folder.mkdir(parents=True, exist_ok=True)
    image_suffix, label_suffix = data.DATASET_LAYOUTS[kind]
    rng = np.random.default_rng(len(kind))
    for stem in LAYOUT_STEMS[kind][:n]:
        centre = (16 + rng.integers(-3, 4), 16 + rng.integers(-3, 4), 16 + rng.integers(-3, 4))
        image = _blob((32, 32, 32), centre, 9) * (100 + rng.integers(0, 50)) + rng.random((32, 32, 32))
        labels = (_blob((32, 32, 32), centre, 9) + _blob((32, 32, 32), centre, 4)).astype(np.int16) * (20 if kind == "lpba40" else 1)
        _write(folder / f"{stem}{image_suffix}", image.astype(np.float32), origin=(rng.integers(-30, 30), 0, 0))
        if stem not in unlabelled:
            _write(folder / f"{stem}{label_suffix}", labels, origin=(0, 0, 0))
    return folder


@pytest.fixture
def brains(tmp_path):
    root = tmp_path / "data"
    make_dataset(root / "miccai2012-oasis", "miccai2012")
    make_dataset(root / "lpba40", "lpba40")
    make_dataset(root / "ibsr18", "ibsr18", unlabelled=("IBSR_02",))
    make_dataset(root / "ixi-t1-2mm", "ixi")
    return root


def test_dataset_layouts_ids_and_labels(brains):
    lpba = data.find_dataset_subjects("lpba40", brains / "lpba40")
    assert [s.id for s in lpba] == ["lpba40-S01", "lpba40-S02", "lpba40-S03", "lpba40-S04"]
    assert all(s.dataset == "lpba40" and s.labels.name.endswith(".structure.label.nii.gz") for s in lpba)
    ibsr = {s.id: s for s in data.find_dataset_subjects("ibsr18", brains / "ibsr18")}
    assert len(ibsr) == 4 and ibsr["ibsr18-IBSR_02"].labels is None  # label files are not subjects
    assert data.Subject.from_dict(lpba[0].to_dict()) == lpba[0]
    with pytest.raises(ValueError, match=r"no miccai2012 scans .* found in .*lpba40"):
        data.find_dataset_subjects("miccai2012", brains / "lpba40")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.find_dataset_subjects("lpba40", brains / "nowhere")


def test_parse_mixed_specs_with_weights():
    assert data.parse_data_argument("lpba40:/a") == {"kind": "mix", "parts": [{"kind": "lpba40", "path": "/a", "weight": 1.0}]}
    spec = data.parse_data_argument("miccai2012:/m@2+ibsr18:/i@0.5")
    assert spec["parts"] == [{"kind": "miccai2012", "path": "/m", "weight": 2.0}, {"kind": "ibsr18", "path": "/i", "weight": 0.5}]
    assert data.parse_data_argument("brains3d:/shared/data") == {"kind": "brains3d", "path": "/shared/data"}
    assert [p["kind"] for p in data.brain_parts({"kind": "brains3d", "path": "/x"})] == ["miccai2012", "lpba40", "ibsr18", "ixi"]
    for bad in ("lpba40:/a@x", "oasis2d:/a+lpba40:/b", "lpba40:/a@-1", "mix:/a"):
        with pytest.raises(ValueError, match="--data"):
            data.parse_data_argument(bad)


def test_split_by_dataset_holds_labelled_subjects_out_and_pairs_stay_within_a_dataset(brains, tmp_path):
    subjects = [s for kind, folder in data.DATASET_FOLDERS.items() for s in data.find_dataset_subjects(kind, brains / folder)]
    train, val = data.split_by_dataset(subjects, {"lpba40": 2, "ibsr18": 1, "ixi": 1}, seed=3)
    assert {s.id for s in train} | {s.id for s in val} == {s.id for s in subjects}
    assert sorted(s.dataset for s in val) == ["ibsr18", "ixi", "lpba40", "lpba40"]
    assert all(s.labels is not None for s in val)
    pairs = data.dataset_cycle_pairs(val)
    assert len(pairs) == 1 and all(m.startswith("lpba40") and f.startswith("lpba40") for m, f in pairs)
    with pytest.raises(ValueError, match="ibsr18: 4 validation subjects requested but it has 3 labelled"):
        data.split_by_dataset(subjects, {"ibsr18": 4})
    # the saved split holds ids only and is reused whatever the seed
    spec = {"kind": "brains3d", "path": str(brains), "split": str(tmp_path / "split.json"),
            "val_per_dataset": {"miccai2012": 2, "lpba40": 2, "ibsr18": 1, "ixi": 1}, "spacing_mm": [4.0], "shape": [16, 16, 16]}
    first = data.build_data(spec, seed=1)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert all(isinstance(i, str) for i in saved["train"] + saved["val"])
    again = data.build_data(spec, seed=9)
    assert again.split["val"] == first.split["val"] and again.split["val_pairs"] == first.split["val_pairs"]
    ds = first.train
    ids = {s.id: s.dataset for s in ds.subjects}
    for index in range(40):
        moving, fixed = ds.pair_ids(index)
        assert moving != fixed and ids[moving] == ids[fixed]
    # weights: a dataset with weight 0 is never drawn
    spec0 = dict(spec, kind="mix", parts=[{"kind": "lpba40", "path": str(brains / "lpba40"), "weight": 0.0},
                                          {"kind": "miccai2012", "path": str(brains / "miccai2012-oasis"), "weight": 1.0}])
    mixed = data.build_data(spec0, seed=1).train
    assert all(mixed.pair_ids(i)[0].startswith("miccai2012") for i in range(30))


def test_a_mix_of_the_four_folders_is_brains3d_with_other_weights(brains, tmp_path):
    """The IXI-weight arm of issue 21 (distill_eval.sh ixi) trains on such a mix: only the draw weights may differ."""
    common = {"split": str(tmp_path / "split.json"), "val_per_dataset": {"miccai2012": 2, "lpba40": 2, "ibsr18": 1, "ixi": 1},
              "spacing_mm": [4.0], "shape": [16, 16, 16]}
    whole = data.build_data(dict(common, **data.parse_data_argument(f"brains3d:{brains}")), seed=1)
    text = "+".join(f"{kind}:{brains / folder}@1" for kind, folder in data.DATASET_FOLDERS.items())
    mixed = data.build_data(dict(common, **data.parse_data_argument(text)), seed=1)
    assert whole.split["val_pairs"]
    for key in ("train", "val", "val_pairs"):
        assert mixed.split[key] == whole.split[key]
    assert mixed.preprocess.to_dict() == whole.preprocess.to_dict() and mixed.train.groups == whole.train.groups
    names = sorted(whole.train.groups)
    assert dict(zip(names, whole.train.group_weights)) == pytest.approx(
        {n: data.BRAIN_WEIGHTS[n] / sum(data.BRAIN_WEIGHTS.values()) for n in names})
    assert mixed.train.group_weights == pytest.approx([1 / len(names)] * len(names))


def test_labels_belong_to_their_dataset_and_are_compacted():
    labels_a = torch.tensor([[0, 20, 40, 182]])
    labels_b = torch.tensor([[0, 40, 40, 21]])
    a = {"image": torch.rand(1, 4), "labels": labels_a, "spacing_mm": (1.0,), "dataset": "lpba40"}
    b = {"image": torch.rand(1, 4), "labels": labels_b, "spacing_mm": (1.0,), "dataset": "lpba40"}
    item = data.make_pair_item(a, b, "a->b", compact_labels=True)
    assert item["moving_labels"].tolist() == [[0, 1, 3, 4]] and item["fixed_labels"].tolist() == [[0, 3, 3, 2]]
    other = dict(b, dataset="ibsr18")
    assert "moving_labels" not in data.make_pair_item(a, other, "a->c")  # different label sets: image similarity only
    # the fixed image's labelled voxels (all structures, before renumbering) travel with every pair, across datasets too
    assert item["fixed_foreground"].tolist() == [[0, 1, 1, 1]] and item["fixed_foreground"].dtype == torch.uint8
    assert data.make_pair_item(a, other, "a->c")["fixed_foreground"].tolist() == [[0, 1, 1, 1]]
    assert "fixed_foreground" not in data.make_pair_item(other, dict(a, labels=None), "c->a")
    # at most max_labels structures keep a number, the rest join the background
    many = torch.arange(0, 50)[None]
    m, f = data.compact_label_pair(many, many.flip(-1), max_labels=5, generator=torch.Generator().manual_seed(0))
    assert set(m.unique().tolist()) == set(range(6)) and int((m > 0).sum()) == 5
    assert torch.equal(m, f.flip(-1))  # the same structure gets the same number in both maps


def test_com_centred_grid_aligns_brains_by_their_centres(brains):
    subjects = data.find_dataset_subjects("lpba40", brains / "lpba40")
    prep = data.Preprocess(spacing_mm=[2.0], shape=[16, 16, 16], ndim=3, center="com")
    for s in subjects[:2]:
        out = prep.load(s)
        image = out["image"][0].numpy()
        com_vox = np.array([np.sum(np.arange(16)[:, None, None] * image), np.sum(np.arange(16)[None, :, None] * image),
                            np.sum(np.arange(16)[None, None, :] * image)]) / image.sum()
        assert np.allclose(com_vox, 7.5, atol=0.6)  # the brain's centre of mass is the grid centre
    described = prep.describe([2.0, 2.0, 2.0], [16, 16, 16])
    assert described["center"] == "com" and described["initial_alignment"] == "com"
    with pytest.raises(ValueError, match="center"):
        data.Preprocess(center="middle")


def test_model_grid_for_centres_on_a_given_point():
    image = ImageData(np.zeros((20, 30, 40), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), "x")
    grid, shape = geometry.model_grid_for(image, [4.0, 4.0, 4.0], [8, 8, 8], center_ras=[10.0, 20.0, 30.0])
    centre = geometry.voxel_to_ras(np.array([3.5, 3.5, 3.5]), grid)
    assert np.allclose(centre, [10.0, 20.0, 30.0])
    default, _ = geometry.model_grid_for(image, [4.0, 4.0, 4.0], [8, 8, 8])
    assert np.allclose(geometry.voxel_to_ras(np.array([3.5, 3.5, 3.5]), default), [39.0, 29.0, 19.0])


def test_random_affines_and_point_error():
    g = torch.Generator().manual_seed(0)
    shape, spacing = (16, 20, 24), (2.0, 2.0, 2.0)
    for _ in range(5):
        matrix = affine_pretrain.random_affine_vox(shape, spacing, g, rotation_deg=10, scale=0.1, shear=0.05, translation_mm=8)
        linear = matrix[:3, :3]
        assert 0.6 < float(torch.det(linear)) < 1.5
        centre = torch.tensor([7.5, 9.5, 11.5, 1.0])
        assert float(((matrix @ centre)[:3] - centre[:3]).abs().max()) * 2.0 <= 8.0 + 1e-4  # translation in mm
    assert float(affine_pretrain.affine_point_error_mm(matrix[None], matrix[None], shape, spacing)[0]) == 0.0
    shift = torch.eye(4)
    shift[0, 3] = 1.5  # 1.5 voxels = 3 mm along k
    assert float(affine_pretrain.affine_point_error_mm(shift[None], torch.eye(4)[None], shape, spacing)[0]) == pytest.approx(9.0)


def test_affine_pretraining_resumes_to_the_same_weights_and_gives_an_init_checkpoint(brains, tmp_path):
    spec = {"kind": "mix", "parts": [{"kind": "lpba40", "path": str(brains / "lpba40"), "weight": 1.0},
                                     {"kind": "miccai2012", "path": str(brains / "miccai2012-oasis"), "weight": 1.0}],
            "val_per_dataset": {"lpba40": 1, "miccai2012": 0}, "spacing_mm": [4.0], "shape": [16, 16, 16]}
    whole = affine_pretrain.pretrain_affine(spec, str(tmp_path / "whole"), steps=4, checkpoint_every=2, seed=2)
    half = affine_pretrain.pretrain_affine(spec, str(tmp_path / "part"), steps=2, checkpoint_every=2, seed=2)
    resumed = affine_pretrain.pretrain_affine(spec, str(tmp_path / "part"), steps=4, checkpoint_every=2, seed=2, resume=True)
    assert half["steps"] == 2 and resumed["val_rms_mm"] == pytest.approx(whole["val_rms_mm"], rel=1e-5)
    from DeepRegAblationLib.models.checkpoints import load_checkpoint
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key in a["model_state"]:
        assert torch.allclose(a["model_state"][key], b["model_state"][key], atol=1e-6), key
    assert a["model_config"]["variant"]["id"] == "affine_basic" and a["preprocessing"]["center"] == "com"
    assert whole["identity_val_rms_mm"] > 0
    # the checkpoint initialises an affine variant through --init-from
    from DeepRegAblationLib.models.network import build_model
    from DeepRegAblationTrainingLib.training.transfer import init_from_checkpoint
    init_from_checkpoint(build_model("affine_enhanced", 3), tmp_path / "whole" / "last.pt")


@pytest.mark.skipif(not (SHARED_DATA / "lpba40").is_dir(), reason="real 3D brain data not found in ../shared/data")
def test_shipped_split_holds_validation_subjects_of_every_dataset_out():
    from conftest import REPO_ROOT

    split = json.loads((REPO_ROOT / "DeepRegAblation/Resources/Models/3d/split.json").read_text())
    val, train = set(split["val"]), set(split["train"])
    assert not val & train
    counts = {k: sum(v.startswith(k + "-") for v in val) for k in data.DATASET_LAYOUTS}
    assert counts["miccai2012"] >= 5 and counts["lpba40"] >= 5 and counts["ibsr18"] >= 5 and counts["ixi"] >= 1
    subjects = {s.id for k, f in data.DATASET_FOLDERS.items() for s in data.find_dataset_subjects(k, SHARED_DATA / f)}
    assert val | train == subjects


def test_register_follows_the_checkpoints_initial_alignment_and_grid_centre(tmp_path):
    """A model trained on COM-centred grids is run the same way: COM alignment and a grid on the fixed COM."""
    from DeepRegAblationLib.models.checkpoints import save_checkpoint
    from DeepRegAblationLib.registration.pipeline import register
    from DeepRegAblationLib.models.network import build_model

    fixed = ImageData((_blob((24, 24, 24), (12, 12, 12), 6) * 100).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), "fixed")
    moved = np.diag([2.0, 2.0, 2.0, 1.0])
    moved[:3, 3] = [100.0, -20.0, 10.0]  # 100 mm away: no overlap in physical space
    moving = ImageData(fixed.array.copy(), moved, "moving")
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("baseline", 3), preprocessing={
        "spacing_mm": [4.0, 4.0, 4.0], "shape": [16, 16, 16], "orientation": "RAS", "center": "com", "initial_alignment": "com"})
    result = register(fixed, moving, model=str(ckpt), device="cpu")
    assert np.allclose(result.affine_ras[:3, 3], [100.0, -20.0, 10.0], atol=1e-3)
    with pytest.raises(ValueError, match="do not overlap"):
        register(fixed, moving, model=str(ckpt), device="cpu", initial_alignment="none")


def test_synthetic_affine_pairs_are_in_the_registration_direction():
    """The target matrix maps fixed voxels to moving voxels: warping the moving image through it gives the fixed one."""
    from DeepRegAblationTrainingLib.augment import Augment

    scan = torch.from_numpy(_blob((24, 28, 20), (12, 14, 10), 7).astype(np.float32) + _blob((24, 28, 20), (9, 10, 8), 3))[None]
    scan = torch.nn.functional.avg_pool3d(scan[None], 3, 1, 1)[0]  # smooth, so interpolation is nearly exact
    pair = affine_pretrain.synthetic_affine_pair(
        scan, (2.0, 2.0, 2.0), torch.Generator().manual_seed(5), Augment(gamma=(1.0, 1.0), brightness=0.0),
        dict(affine_pretrain.DEFAULT_RANGES),
    )
    assert not torch.allclose(pair["matrix_vox"], torch.eye(4), atol=0.05)
    warped = fields.warp(pair["moving"][None], fields.affine_to_disp(pair["matrix_vox"][None], scan.shape[1:]), padding="zeros")[0]
    inverse = fields.warp(pair["moving"][None], fields.affine_to_disp(torch.linalg.inv(pair["matrix_vox"])[None], scan.shape[1:]), padding="zeros")[0]
    assert float((warped - pair["fixed"]).abs().mean()) < 0.2 * float((inverse - pair["fixed"]).abs().mean())


def test_a_brain_run_resumes_from_its_own_split_file(brains, tmp_path):
    """The run folder's split.json holds subject dicts (save_split); the shipped one holds ids: both load."""
    spec = {"kind": "brains3d", "path": str(brains), "val_per_dataset": {"miccai2012": 1, "lpba40": 1, "ibsr18": 1, "ixi": 0},
            "spacing_mm": [4.0], "shape": [16, 16, 16]}
    first = data.build_data(spec, seed=1, out_dir=tmp_path / "run")
    again = data.build_data(dict(spec, split=str(tmp_path / "run" / "split.json")), seed=7)
    assert [s["id"] for s in again.split["train"]] == [s["id"] for s in first.split["train"]]
    assert again.split["val_pairs"] == first.split["val_pairs"]
