"""Training data: neurite-OASIS (real 2D slices), the seed study's one-hot format, generic CSV / folder
lists, splits and pairs, preprocessing, and the pair datasets."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeepRegAblationLib.imageio import ImageData
from DeepRegAblationTrainingLib import data
from DeepRegAblationTrainingLib.augment import Augment


def write_nifti(path, array_kji, spacing=(1.0, 1.0, 1.0)):
    """Write a (K, J, I) array as NIfTI (RAS, given (i, j, k) spacing)."""
    array_ijk = np.asarray(array_kji).transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(array_ijk, np.diag(list(spacing) + [1.0])), str(path))
    return path


def write_nrrd(path, array_kji):
    sitk.WriteImage(sitk.GetImageFromArray(np.asarray(array_kji)), str(path))
    return path


# --------------------------------------------------------------------------- real neurite-OASIS 2D
def test_oasis_2d_real_subjects_shapes_and_labels(oasis_2d_dir):
    subjects = data.find_oasis_subjects(oasis_2d_dir, ndim=2, labels="seg4")
    assert len(subjects) == 248
    assert len({s.id for s in subjects}) == 248
    assert all(s.image.name == "slice_norm.nii.gz" and s.labels.name == "slice_seg4.nii.gz" for s in subjects)
    for subject in (subjects[0], subjects[-1]):
        header_shape = nib.load(str(subject.image)).shape
        assert header_shape[:2] == (160, 192)  # the dataset's 160 x 192 slices (nibabel i, j order)
        sample = data.Preprocess(ndim=2).load(subject)
        # tensor order (J, I): rows along j (192), columns along i (160); 1 mm, already divisible by 16
        assert tuple(sample["image"].shape) == (1, 192, 160)
        assert sample["spacing_mm"] == (1.0, 1.0)
        assert sample["labels"].dtype == torch.int64
        values = set(sample["labels"].unique().tolist())
        assert values <= {0, 1, 2, 3, 4} and len(values) == 5
        assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
        # labels are the file's integers, voxel for voxel (no interpolation at unchanged spacing)
        raw = np.asarray(nib.load(str(subject.labels)).dataobj)[:, :, 0].T
        assert np.array_equal(sample["labels"][0].numpy(), raw.astype(np.int64))
    seg24 = data.find_oasis_subjects(oasis_2d_dir, ndim=2, labels="seg24")
    labels24 = data.Preprocess(ndim=2).load(seg24[0])["labels"]
    assert int(labels24.max()) > 4 and int(labels24.max()) <= 24
    with pytest.raises(ValueError, match="seg35"):
        data.find_oasis_subjects(oasis_2d_dir, ndim=2, labels="seg35")


def test_oasis_2d_real_split_roundtrip_and_pairs(oasis_2d_dir, tmp_path):
    subjects = data.find_oasis_subjects(oasis_2d_dir, ndim=2)
    train, val = data.split_subjects(subjects, val_fraction=0.2, seed=4)
    assert len(val) == round(248 * 0.2) and len(train) + len(val) == 248
    assert not {s.id for s in train} & {s.id for s in val}
    again = data.split_subjects(subjects, val_fraction=0.2, seed=4)
    other = data.split_subjects(subjects, val_fraction=0.2, seed=5)
    assert [s.id for s in again[1]] == [s.id for s in val]
    assert [s.id for s in other[1]] != [s.id for s in val]
    path = data.save_split(tmp_path / "split.json", train, val)
    loaded_train, loaded_val = data.load_split(path)
    assert [s.to_dict() for s in loaded_train] == [s.to_dict() for s in train]
    assert [s.to_dict() for s in loaded_val] == [s.to_dict() for s in val]
    payload = json.loads(path.read_text())
    assert payload["val"][0]["id"] == val[0].id
    # a hand-written split of bare ids resolves against the subject list
    (tmp_path / "ids.json").write_text(json.dumps({"train": [s.id for s in train], "val": [s.id for s in val]}))
    by_id = data.load_split(tmp_path / "ids.json", subjects)
    assert [s.image for s in by_id[1]] == [s.image for s in val]
    pairs = data.fixed_pairs(val, 10, seed=1)
    assert len(set(pairs)) == 10 and all(m != f for m, f in pairs)
    assert data.load_pairs(data.save_pairs(tmp_path / "pairs.json", pairs)) == pairs
    dataset = data.FixedPairDataset(val, pairs, data.Preprocess(ndim=2))
    item = dataset[3]
    assert item["pair_id"] == f"{pairs[3][0]}->{pairs[3][1]}"
    assert item["moving"].shape == item["fixed"].shape == item["moving_labels"].shape == (1, 192, 160)


# --------------------------------------------------------------------------- missing / bad files
def test_missing_files_are_listed_by_name(tmp_path):
    root = data.write_toy_oasis2d(tmp_path / "oasis", n_subjects=4)
    (root / "OASIS_TOY_0001" / "slice_seg4.nii.gz").unlink()
    (root / "OASIS_TOY_0003" / "slice_norm.nii.gz").unlink()
    with pytest.raises(ValueError) as info:
        data.find_oasis_subjects(root, ndim=2, labels="seg4")
    message = str(info.value)
    assert "2 file(s) missing" in message
    assert "OASIS_TOY_0001/slice_seg4.nii.gz" in message and "OASIS_TOY_0003/slice_norm.nii.gz" in message
    # images alone are enough without labels... except the one whose image is gone
    with pytest.raises(ValueError, match="OASIS_TOY_0003/slice_norm.nii.gz"):
        data.find_oasis_subjects(root, ndim=2, labels=None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.find_oasis_subjects(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no neurite-OASIS"):
        (tmp_path / "empty").mkdir()
        data.find_oasis_subjects(tmp_path / "empty")


def test_shape_mismatch_corrupt_file_and_empty_dataset(tmp_path):
    image = write_nifti(tmp_path / "a.nii.gz", np.random.rand(1, 32, 32).astype(np.float32))
    labels = write_nifti(tmp_path / "a_labels.nii.gz", np.zeros((1, 32, 30), dtype=np.uint8))
    with pytest.raises(ValueError, match="a_labels.nii.gz"):
        data.Preprocess(ndim=2).load(data.Subject("a", image, labels))
    corrupt = tmp_path / "b.nii.gz"
    corrupt.write_bytes(b"this is not a NIfTI file at all" * 10)
    with pytest.raises(ValueError, match="b.nii.gz"):
        data.Preprocess(ndim=2).load(data.Subject("b", corrupt))
    bad_npy = tmp_path / "c_seg4_onehot.npy"
    bad_npy.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="c_seg4_onehot.npy"):
        data.read_volume(bad_npy, "labels")
    float_labels = write_nifti(tmp_path / "d_seg.nii.gz", np.full((1, 32, 32), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="non-integer"):
        data.Preprocess(ndim=2).load(data.Subject("d", image, float_labels))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.find_generic_subjects(tmp_path / "empty")
    (tmp_path / "header_only.csv").write_text("image,labels\n")
    with pytest.raises(ValueError, match="lists no images"):
        data.find_generic_subjects(tmp_path / "header_only.csv")
    with pytest.raises(ValueError, match="empty"):
        data.PairDataset([], data.Preprocess(ndim=2))
    with pytest.raises(ValueError, match="2D model needs single-slice"):
        data.Preprocess(ndim=2).apply(ImageData(np.zeros((4, 32, 32), np.float32), np.eye(4)))


# --------------------------------------------------------------------------- seed study format
def make_seed_study(tmp_path, n=3, shape=(16, 16, 16)):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n + 1):
        labels = rng.integers(0, 5, size=shape)
        one_hot = np.stack([(labels == c) for c in range(5)]).astype(np.uint8)
        folder = tmp_path / "scans" / f"OASIS_OAS1_{k:04d}_MR1"
        folder.mkdir(parents=True)
        np.save(folder / "seg4_onehot.npy", one_hot)
        paths.append((folder, labels))
    return paths


def test_seed_study_format(tmp_path):
    entries = make_seed_study(tmp_path)
    template_folder, template_labels = entries[0]
    listing = tmp_path / "train_npy.txt"
    lines = [
        str(entries[1][0] / "seg4_onehot.npy"),  # absolute file
        "scans/OASIS_OAS1_0002_MR1",  # relative folder
        "# a comment",
        str(entries[3][0] / "seg4_onehot.npy"),
        str(template_folder / "seg4_onehot.npy"),  # the template is dropped from the list
    ]
    listing.write_text("\n".join(lines) + "\n")
    subjects, template = data.load_seed_study_list(listing, template_folder / "seg4_onehot.npy")
    assert [s.id for s in subjects] == ["OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1", "OASIS_OAS1_0003_MR1"]
    assert template.id == "OASIS_OAS1_0000_MR1"
    sample = data.Preprocess(ndim=3).load(subjects[1])
    assert sample["labels"].shape == (1, 16, 16, 16)
    assert np.array_equal(sample["labels"][0].numpy(), entries[2][1])  # argmax of the one-hot
    rendered = data.render_label_image(entries[2][1], 5)
    assert np.allclose(sample["image"][0].numpy() * rendered.max(), rendered, atol=1e-6)
    dataset = data.PairDataset(subjects, data.Preprocess(ndim=3), mode="scan_to_atlas", atlas=template, pairs_per_epoch=3)
    item = dataset[0]
    assert item["pair_id"].endswith("->OASIS_OAS1_0000_MR1")
    assert np.array_equal(item["fixed_labels"][0].numpy(), template_labels)
    # named one-hot files (OASIS_..._seg4_onehot.npy) give the subject id from the file name
    named = tmp_path / "OASIS_OAS1_0406_MR1_seg4_onehot.npy"
    np.save(named, np.load(entries[1][0] / "seg4_onehot.npy"))
    (tmp_path / "named.txt").write_text(f"{named}\n{entries[2][0]}\n")
    subjects2, _ = data.load_seed_study_list(tmp_path / "named.txt", template_folder)
    assert subjects2[0].id == "OASIS_OAS1_0406_MR1"
    (tmp_path / "missing.txt").write_text("scans/nobody/seg4_onehot.npy\n")
    with pytest.raises(ValueError, match="nobody/seg4_onehot.npy"):
        data.load_seed_study_list(tmp_path / "missing.txt", template_folder)


# --------------------------------------------------------------------------- generic lists
def test_generic_folder_and_csv(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    image = rng.random((1, 32, 32)).astype(np.float32)
    write_nifti(folder / "a.nii.gz", image)
    write_nifti(folder / "a_labels.nii.gz", (image > 0.5).astype(np.uint8))
    write_nrrd(folder / "b.nrrd", image[0])
    write_nrrd(folder / "b_seg.nrrd", (image[0] > 0.3).astype(np.uint8))
    write_nifti(folder / "c.nii.gz", image)
    (folder / "notes.txt").write_text("not an image")
    subjects = data.find_generic_subjects(folder)
    assert [(s.id, s.labels.name if s.labels else None) for s in subjects] == [
        ("a", "a_labels.nii.gz"), ("b", "b_seg.nrrd"), ("c", None)
    ]
    pre = data.Preprocess(ndim=2)
    a, b = pre.load(subjects[0]), pre.load(subjects[1])
    assert a["image"].shape == b["image"].shape == (1, 32, 32)
    assert torch.equal(a["labels"][0], torch.from_numpy((image[0] > 0.5).astype(np.int64)))
    assert torch.equal(b["labels"][0], torch.from_numpy((image[0] > 0.3).astype(np.int64)))
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("id,image,labels\nfirst,images/a.nii.gz,images/a_labels.nii.gz\nsecond,images/c.nii.gz,\n")
    listed = data.find_generic_subjects(csv_path)
    assert [s.id for s in listed] == ["first", "second"]
    assert listed[0].labels == folder / "a_labels.nii.gz" and listed[1].labels is None
    (tmp_path / "bad.csv").write_text("image\nimages/zzz.nii.gz\nimages/a.nii.gz\nimages/yyy.nii.gz\n")
    with pytest.raises(ValueError, match="zzz.nii.gz.*yyy.nii.gz"):
        data.find_generic_subjects(tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("path\nimages/a.nii.gz\n")
    with pytest.raises(ValueError, match="'image' column"):
        data.find_generic_subjects(tmp_path / "nocol.csv")


# --------------------------------------------------------------------------- preprocessing
def test_reorient_to_ras_keeps_physical_positions():
    rng = np.random.default_rng(2)
    array = rng.random((6, 7, 8)).astype(np.float32)  # (K, J, I)
    # i -> -x (L), j -> +z (S), k -> -y (P): an oblique-free LSP-like grid, 2 x 1 x 3 mm
    matrix = np.array([[0.0, 0, -2, 10], [0, 0, 0, 5], [0, 1, 0, -3], [0, 0, 0, 1]])
    matrix[:3, :3] = np.array([[-2.0, 0, 0], [0, 0, -3.0], [0, 1.0, 0]])
    image = ImageData(array, matrix)
    ras = data.reorient_to_ras(image)
    direction = ras.ijk_to_ras[:3, :3]
    assert np.allclose(direction, np.diag(np.abs(np.diag(direction))))  # axis-aligned, positive
    assert np.all(np.diag(direction) > 0)
    for kji in [(0, 0, 0), (5, 6, 7), (2, 3, 4)]:
        ijk = np.array(kji[::-1] + (1,), dtype=float)
        point = matrix @ ijk
        new_ijk = np.linalg.solve(ras.ijk_to_ras, point)[:3].round().astype(int)
        assert ras.array[new_ijk[2], new_ijk[1], new_ijk[0]] == array[kji]


def test_preprocess_resamples_and_pads_to_the_divisor():
    rng = np.random.default_rng(3)
    array = rng.random((20, 24, 30)).astype(np.float32) * 500
    image = ImageData(array, np.diag([2.0, 2.0, 2.0, 1.0]))
    out = data.Preprocess(spacing_mm=4.0, ndim=3).apply(image)
    assert out["spacing_mm"] == (4.0, 4.0, 4.0)
    assert tuple(out["image"].shape) == (1, 16, 16, 16)  # extent 40 x 48 x 60 mm at 4 mm -> 10, 12, 15 -> 16
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    fixed_shape = data.Preprocess(shape=(32, 32, 32)).apply(image)
    assert tuple(fixed_shape["image"].shape) == (1, 32, 32, 32)
    # unchanged spacing: the voxels are copied (normalised), not interpolated
    same = data.Preprocess(ndim=3, normalize=False).apply(image)
    assert tuple(same["image"].shape) == (1, 32, 32, 32)
    assert any(np.allclose(same["image"][0].numpy()[k:k + 20, j:j + 24, i:i + 30], array)
               for k in range(13) for j in range(9) for i in range(3))
    with pytest.raises(ValueError, match="divisible by 16"):
        data.Preprocess(shape=(30, 32))
    desc = data.Preprocess(spacing_mm=4.0).describe([4.0, 4.0, 4.0], [16, 16, 16])
    assert desc["spacing_mm"] == [4.0, 4.0, 4.0] and desc["shape"] == [16, 16, 16]
    assert desc["normalization"]["method"] == "percentile"


# --------------------------------------------------------------------------- datasets
def test_pair_dataset_is_a_function_of_seed_epoch_index(tmp_path):
    root = data.write_toy_oasis2d(tmp_path / "toy", n_subjects=5)
    subjects = data.find_oasis_subjects(root, ndim=2)
    pre = data.Preprocess(ndim=2)
    first = data.PairDataset(subjects, pre, augment=Augment(), pairs_per_epoch=6, seed=1)
    second = data.PairDataset(subjects, pre, augment=Augment(), pairs_per_epoch=6, seed=1)
    second.set_epoch(2)
    second.set_epoch(0)  # going back gives the same items: nothing depends on history
    for index in (0, 4):
        a, b = first[index], second[index]
        assert a["pair_id"] == b["pair_id"]
        assert torch.equal(a["moving"], b["moving"]) and torch.equal(a["fixed_labels"], b["fixed_labels"])
        moving_id, fixed_id = a["pair_id"].split("->")
        assert moving_id != fixed_id
    ids_epoch0 = [first.pair_ids(i) for i in range(6)]
    first.set_epoch(1)
    assert [first.pair_ids(i) for i in range(6)] != ids_epoch0
    # every subject is visited once in the first n items of an epoch
    assert sorted(first.pair_ids(i)[0] for i in range(5)) == sorted(s.id for s in subjects)
    atlas = data.PairDataset(subjects[1:], pre, mode="atlas_to_scan", atlas=subjects[0])
    assert atlas[0]["pair_id"].startswith(subjects[0].id + "->")
    batch = data.collate_pairs([first[0], first[1]])
    assert batch["moving"].shape == (2, 1, 32, 32) and len(batch["pair_id"]) == 2


def test_mirror_sample_keeps_the_augmentation_field_true():
    """Mirroring an augmented sample mirrors its field too: the mirrored original warped by the mirrored field is the
    mirrored augmented image, in 2D and 3D; the sample itself is not changed."""
    from DeepRegAblationLib import fields

    generator = torch.Generator().manual_seed(3)
    for shape in ((32, 32), (16, 24, 20)):
        image = torch.rand((1, *shape), generator=generator)
        labels = (image > 0.5).to(torch.int16)
        original = {"image": image, "labels": labels, "spacing_mm": [1.0] * len(shape), "dataset": "toy"}
        augmented = data.augment_sample(original, Augment(max_disp_mm=3.0, rotation_deg=8.0, gamma=(1.0, 1.0),
                                                          brightness=0.0), generator)
        before = augmented["disp_vox"].clone()
        mirrored, mirrored_original = data.mirror_sample(augmented), data.mirror_sample(original)
        assert torch.equal(augmented["disp_vox"], before)  # a copy
        assert torch.equal(mirrored["image"], torch.flip(augmented["image"], dims=(-1,)))
        assert torch.equal(mirrored["labels"], torch.flip(augmented["labels"], dims=(-1,)))
        rewarped = fields.warp(mirrored_original["image"][None], mirrored["disp_vox"][None], padding="zeros")[0]
        assert torch.allclose(rewarped, mirrored["image"], atol=1e-4)
        wrong = torch.flip(augmented["disp_vox"], dims=(-1,))  # reversed but not negated: not the same warp
        rewrong = fields.warp(mirrored_original["image"][None], wrong[None], padding="zeros")[0]
        assert not torch.allclose(rewrong, mirrored["image"], atol=1e-2)


def test_pair_dataset_mirrors_both_images_or_neither(tmp_path):
    root = data.write_toy_oasis2d(tmp_path / "toy", n_subjects=4)
    subjects = data.find_oasis_subjects(root, ndim=2)
    pre = data.Preprocess(ndim=2)
    plain = data.PairDataset(subjects, pre, pairs_per_epoch=8, seed=2)
    always = data.PairDataset(subjects, pre, pairs_per_epoch=8, seed=2, mirror=1.0)
    half = data.PairDataset(subjects, pre, pairs_per_epoch=8, seed=2, mirror=0.5)
    flipped = 0
    for index in range(8):
        a, b, c = plain[index], always[index], half[index]
        assert a["pair_id"] == b["pair_id"] == c["pair_id"]
        for key in ("moving", "fixed", "moving_labels", "fixed_labels"):
            assert torch.equal(b[key], torch.flip(a[key], dims=(-1,)))
        mirrored = torch.equal(c["moving"], b["moving"]) and not torch.equal(c["moving"], a["moving"])
        assert torch.equal(c["fixed"], b["fixed"] if mirrored else a["fixed"])  # both or neither
        flipped += mirrored
    assert 0 < flipped < 8
    with pytest.raises(ValueError, match="mirror must be a probability"):
        data.PairDataset(subjects, pre, mirror=1.5)


def test_train_data_spec_mirror():
    from DeepRegAblationTrainingLib.training.config import train_data_spec

    assert "mirror" not in train_data_spec("oasis2d:somewhere")
    assert train_data_spec("brains3d:somewhere", mirror=0.5)["mirror"] == 0.5
    with pytest.raises(ValueError, match="not to synthetic pairs"):
        train_data_spec("oasis2d:somewhere", synthetic=True, mirror=0.5)
    with pytest.raises(ValueError, match="probability"):
        train_data_spec("oasis2d:somewhere", mirror=-0.1)


def test_synthetic_dataset_from_arrays_carries_disp_true():
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    blob = np.exp(-((yy - 15) ** 2 + (xx - 17) ** 2) / 60.0).astype(np.float32)[None]
    dataset = data.SyntheticPairDataset([{"image": blob, "labels": (blob > 0.5).astype(np.int16), "id": "blob"}],
                                        data.Preprocess(ndim=2), Augment(max_disp_mm=3.0), n=4, seed=0)
    item = dataset[2]
    assert item["disp_true_vox"].shape == (2, 32, 32)
    assert item["moving_labels"].dtype == torch.int64
    assert torch.equal(dataset[2]["moving"], item["moving"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["moving"], item["moving"])


def test_mni_template_from_the_nilearn_wheel():
    pytest.importorskip("nilearn")
    template = data.load_mni_template(ndim=2)
    assert template["image"].array.shape == (1, 189, 197)  # coronal slice: (1, S, R)
    assert set(np.unique(template["labels"].array).tolist()) == {0, 1, 2}
    sample = data.Preprocess(spacing_mm=4.0, ndim=2).apply(template["image"], template["labels"])
    assert sample["image"].shape[1:] == (48, 64) and sample["spacing_mm"] == (4.0, 4.0)


def test_parse_data_argument():
    assert data.parse_data_argument("oasis2d:/x/y") == {"kind": "oasis2d", "path": "/x/y"}
    assert data.parse_data_argument("seed:/p.txt,/t.npy") == {"kind": "seed", "path": "/p.txt", "template": "/t.npy"}
    assert data.parse_data_argument("mni-synthetic") == {"kind": "mni-synthetic"}
    with pytest.raises(ValueError, match="oasis2d"):
        data.parse_data_argument("hdf5:/x")
    with pytest.raises(ValueError, match="template"):
        data.parse_data_argument("seed:/p.txt")


def test_oasis_3d_layout_is_reoriented_to_ras(tmp_path):
    """aligned_norm / aligned_seg35 volumes stored LIA like neurite-OASIS: reoriented to RAS, labels follow."""
    rng = np.random.default_rng(4)
    lia = np.array([[-1.0, 0, 0, 8], [0, 0, 1, -8], [0, -1.0, 0, 8], [0, 0, 0, 1]])
    for n in range(2):
        folder = tmp_path / f"OASIS_OAS1_000{n}_MR1"
        folder.mkdir()
        image = rng.random((16, 32, 48)).astype(np.float32)  # nibabel (i, j, k)
        labels = (image * 35).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, lia), str(folder / "aligned_norm.nii.gz"))
        nib.save(nib.Nifti1Image(labels, lia), str(folder / "aligned_seg35.nii.gz"))
    subjects = data.find_oasis_subjects(tmp_path, ndim=3, labels="seg35")
    assert [s.labels.name for s in subjects] == ["aligned_seg35.nii.gz"] * 2
    sample = data.Preprocess(ndim=3, normalize=False).load(subjects[0])
    # RAS (K, J, I) = (S, A, R): S from -j (32), A from k (48), R from -i (16)
    assert tuple(sample["image"].shape) == (1, 32, 48, 16)
    raw = np.asarray(nib.load(str(subjects[0].image)).dataobj)
    expected = raw[::-1, ::-1, :].transpose(1, 2, 0)  # (R, S, A) -> (S, A, R)
    assert np.allclose(sample["image"][0].numpy(), expected)
    raw_labels = np.asarray(nib.load(str(subjects[0].labels)).dataobj)
    assert np.array_equal(sample["labels"][0].numpy(), raw_labels[::-1, ::-1, :].transpose(1, 2, 0))
    with pytest.raises(ValueError, match="seg24"):
        data.find_oasis_subjects(tmp_path, ndim=3, labels="seg24")


def test_ixi_folder_with_dlmuse_partners(ixi_dir):
    subjects = data.find_generic_subjects(ixi_dir)
    assert len(subjects) == 5 and all(s.labels is not None and "_DLMUSE" in s.labels.name for s in subjects)
    sample = data.Preprocess(ndim=3).load(subjects[0])
    assert sample["spacing_mm"] == (2.0, 2.0, 2.0)
    assert all(n % 16 == 0 for n in sample["image"].shape[1:])
    assert sample["labels"].dtype == torch.int64 and int(sample["labels"].max()) > 50


def test_build_data_writes_and_reuses_the_split(tmp_path):
    root = data.write_toy_oasis2d(tmp_path / "toy", n_subjects=8)
    spec = {"kind": "oasis2d", "path": str(root), "split": str(tmp_path / "split.json"), "val_pairs": 3,
            "val_fraction": 0.25}
    with pytest.warns(UserWarning, match="3 validation pairs requested but 2 validation subject"):
        first = data.build_data(spec, seed=0, pairs_per_epoch=4, out_dir=tmp_path / "run")
    assert (tmp_path / "split.json").is_file() and (tmp_path / "run" / "val_pairs.json").is_file()
    with pytest.warns(UserWarning):
        second = data.build_data(spec, seed=9, pairs_per_epoch=4)  # another seed: the saved split still wins
    assert second.split["val"] == first.split["val"] and len(first.split["val"]) == 2
    assert len(first.val) == 2  # two validation subjects give two ordered pairs (3 were asked for)
    assert len(first.train) == 4 and first.ndim == 2
    assert first.split["val_pairs"] == [list(p) for p in data.load_pairs(tmp_path / "run" / "val_pairs.json")]


def test_data_package_reexports_every_public_name_of_its_modules(tmp_path):
    """``from DeepRegAblationTrainingLib.data import X`` works for the public names of every module of the package;
    the subject store is public (the affine pretraining keeps its validation scans in one)."""
    import importlib

    for name in ("subjects", "splits", "reading", "preprocess", "datasets", "mni", "specs", "toy"):
        module = importlib.import_module(f"DeepRegAblationTrainingLib.data.{name}")
        for public in module.__all__:
            assert getattr(data, public) is getattr(module, public), (name, public)
            assert public in data.__all__, (name, public)
    root = data.write_toy_oasis2d(tmp_path / "toy", n_subjects=2)
    subjects = data.find_oasis_subjects(root, ndim=2)
    store = data.SubjectStore(subjects, data.Preprocess(ndim=2), cache=True)
    first = store.get(subjects[0].id)
    assert store.get(subjects[0].id) is first and first["image"].shape == (1, 32, 32) and first["dataset"] is None
    with pytest.raises(ValueError, match="unknown subject id 'nobody'"):
        store.get("nobody")


# --------------------------------------------------------------------------- synthetic heads (issue 21)
def _ball(shape, centre, radii):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return (((grid - np.reshape(centre, (3, 1, 1, 1))) / np.reshape(radii, (3, 1, 1, 1))) ** 2).sum(0) <= 1.0


def _head_and_brain(shape=(32, 32, 32)):
    """A head (brain of intensity 0.6 inside a skull shell of 0.9, the brain labelled) and a stripped brain (smaller,
    off-centre, intensity 0.3, two labels, background 0), as arrays."""
    head_brain = _ball(shape, (16, 16, 16), (9, 10, 8))
    head = np.where(head_brain, 0.6, 0.0) + np.where(_ball(shape, (16, 16, 16), (13, 14, 12)) & ~_ball(shape, (16, 16, 16), (11, 12, 10)), 0.9, 0.0)
    brain_mask = _ball(shape, (12, 14, 18), (5, 6, 4))
    brain = np.where(brain_mask, 0.3, 0.0)
    labels = np.where(brain_mask, np.where(np.arange(shape[0])[:, None, None] < 12, 1, 2), 0)
    return head, head_brain.astype(np.int64), brain, labels


def _sample(image, labels, dataset):
    return {"image": torch.tensor(image, dtype=torch.float32)[None], "labels": torch.tensor(labels)[None],
            "spacing_mm": (4.0, 4.0, 4.0), "ijk_to_ras": torch.eye(4), "dataset": dataset}


def test_synthetic_head_places_the_brain_in_the_skull():
    from DeepRegAblationTrainingLib.data.heads import synthetic_head

    head, head_labels, brain, labels = _head_and_brain()
    out = synthetic_head(_sample(brain, labels, "stripped"), _sample(head, head_labels, "ixi"))
    image, placed = out["image"][0].numpy(), out["labels"][0].numpy()
    assert out["dataset"] == "stripped" and out["image"].shape == (1, 32, 32, 32)
    outside = ~_ball((32, 32, 32), (16, 16, 16), (11, 12, 10))  # the skull and the air: the head's, untouched
    assert np.array_equal(image[outside], head[outside].astype(np.float32))
    coords = np.argwhere(placed > 0)
    assert np.allclose(coords.mean(0), (16, 16, 16), atol=0.6)  # moved onto the head's brain
    assert np.allclose(coords.std(0), np.argwhere(head_labels > 0).std(0), rtol=0.15)  # and scaled to it
    assert set(np.unique(placed)) == {0, 1, 2}
    assert abs(np.median(image[placed > 0]) - 0.6) < 0.03  # intensities scaled to the head's brain
    assert image[(head_labels > 0) & (placed == 0)].max() < 0.6  # where the placed brain is not: dark, or its edge
    with pytest.raises(ValueError, match="no label map"):
        synthetic_head(_sample(brain, labels, "stripped"), dict(_sample(head, head_labels, "ixi"), labels=None))
    with pytest.raises(ValueError, match="no brain to place"):
        synthetic_head(_sample(brain * 0, labels, "stripped"), _sample(head, head_labels, "ixi"))


def test_pair_dataset_places_stripped_brains_in_training_heads(tmp_path):
    head, head_labels, brain, labels = _head_and_brain()
    subjects = []
    for name, image, label_map, dataset in (("h1", head, head_labels, "ixi"), ("h2", np.roll(head, 1, 0), np.roll(head_labels, 1, 0), "ixi"),
                                            ("b1", brain, labels, "stripped"), ("b2", np.roll(brain, 2, 1), np.roll(labels, 2, 1), "stripped")):
        subjects.append(data.Subject(name, write_nifti(tmp_path / f"{name}.nii.gz", image.astype(np.float32)),
                                     write_nifti(tmp_path / f"{name}_seg.nii.gz", label_map.astype(np.int16)), dataset))
    pre = data.Preprocess(ndim=3)
    kwargs = dict(pairs_per_epoch=4, seed=1, dataset_weights={"stripped": 1.0}, cache=True)
    plain, headed = data.PairDataset(subjects, pre, **kwargs), data.PairDataset(subjects, pre, heads=1.0, **kwargs)
    assert headed.head_ids == ["h1", "h2"]
    for index in range(4):
        a, b = plain[index], headed[index]
        assert a["pair_id"] == b["pair_id"] and a["pair_id"].startswith("b")
        for key in ("moving", "fixed"):
            brainless = (a[f"{key}_labels"] == 0) & (b[f"{key}_labels"] == 0)
            assert float(a[key][brainless].max()) < 0.05 < float(b[key][brainless].max())  # a skull around it now
        assert b["moving_labels"].max() > 0 and b["fixed_labels"].max() > 0
    with pytest.raises(ValueError, match="dataset 'ixi' with labels"):
        data.PairDataset(subjects[2:], pre, heads=0.5, **kwargs)
    with pytest.raises(ValueError, match="heads must be a probability"):
        data.PairDataset(subjects, pre, heads=2.0, **kwargs)


def test_train_data_spec_synthetic_heads():
    from DeepRegAblationTrainingLib.training.config import train_data_spec

    assert "heads" not in train_data_spec("brains3d:somewhere")
    assert train_data_spec("brains3d:somewhere", heads=0.5)["heads"] == 0.5
    with pytest.raises(ValueError, match="needs pairs of 3D brain scans"):
        train_data_spec("oasis2d:somewhere", heads=0.5)
    with pytest.raises(ValueError, match="probability"):
        train_data_spec("brains3d:somewhere", heads=1.5)
