"""Train the 3D models on a machine that has a GPU but not the data (the lent device of issue 21).

The device machine receives the repository and nothing beside it (64 MiB at most), so ``../shared/data`` (165 MB of
NIfTI) cannot travel. What training reads of it is small: each subject's model-grid tensors (4 mm, 48 x 64 x 48).
This script carries exactly those:

``pack FILE`` (here, with the data): every subject of ``brains3d:../shared/data`` through the training's own
    preprocessing (``Preprocess.load`` of the 3D brain spec: RAS, percentile window, 4 mm grid on the centre of mass),
    saved compressed, with the list of the data folder's file names (image float32 exact, labels int16).
``train FILE -- TRAIN ARGS`` (there): makes ``../shared/data`` of empty files with those names (when it is absent),
    so that the subjects are found by the usual code, then runs ``deepreg-ablation train TRAIN ARGS`` with
    ``Preprocess.load`` answering from the pack and the file check (which reads every file) skipped. Nothing else
    changes: the same split, pairs, augmentation, losses and checkpoints as a run on the data itself.
``check FILE`` (here): every packed subject equals a fresh ``Preprocess.load`` of its files (bit for bit).

usage (from the repository root): .venv/bin/python scripts/brains3d/gpu_pack.py pack .gpu/brains3d_4mm.npz
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "DeepRegAblation"), str(ROOT / "DeepRegAblationTraining")]

DATA = ROOT.parent / "shared" / "data"
SPEC = "brains3d:../shared/data"


def _brain_data():
    """The subjects and the Preprocess of the training's 3D brain spec (as data.specs.build_data makes them; a run
    whose Preprocess differs from the pack's is refused by ``train``)."""
    from DeepRegAblationTrainingLib.data import specs

    spec = specs.parse_data_argument(SPEC.replace("../shared/data", str(DATA)))
    subjects = [s for part in specs.brain_parts(spec) for s in specs.find_dataset_subjects(part["kind"], part["path"])]
    preprocess = specs.Preprocess(spacing_mm=[specs.BRAIN_SPACING_MM], shape=specs.brain_grid_shape(specs.BRAIN_SPACING_MM),
                                  divisor=16, ndim=3, center="com")
    return subjects, preprocess


def pack(out):
    subjects, preprocess = _brain_data()
    arrays, manifest = {}, {"preprocess": preprocess.to_dict(), "subjects": {}, "files": []}
    for folder in sorted({s.image.parent for s in subjects}):
        manifest["files"] += [str(p.relative_to(DATA)) for p in sorted(folder.iterdir()) if p.is_file()]
    for s in subjects:
        sample = preprocess.load(s)
        arrays[s.id + "/image"] = sample["image"].numpy()
        if sample["labels"] is not None:
            labels = sample["labels"].numpy()
            assert labels.min() >= np.iinfo(np.int16).min and labels.max() <= np.iinfo(np.int16).max, s.id
            arrays[s.id + "/labels"] = labels.astype(np.int16)
        manifest["subjects"][s.id] = {"spacing_mm": list(sample["spacing_mm"]), "ijk_to_ras": np.asarray(sample["ijk_to_ras"]).tolist()}
        print(s.id, tuple(sample["image"].shape), flush=True)
    arrays["manifest"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"{out}: {len(subjects)} subjects, {Path(out).stat().st_size / 2**20:.1f} MiB")


def load_pack(path):
    import torch

    with np.load(path) as z:
        manifest = json.loads(bytes(z["manifest"]).decode())
        samples = {}
        for sid, meta in manifest["subjects"].items():
            labels = z[sid + "/labels"].astype(np.int64) if sid + "/labels" in z.files else None
            samples[sid] = {
                "image": torch.from_numpy(z[sid + "/image"]),
                "labels": None if labels is None else torch.from_numpy(labels),
                "spacing_mm": tuple(meta["spacing_mm"]),
                "ijk_to_ras": np.asarray(meta["ijk_to_ras"], dtype=np.float64),
            }
    return manifest, samples


def check(path):
    import torch

    manifest, samples = load_pack(path)
    subjects, preprocess = _brain_data()
    assert preprocess.to_dict() == manifest["preprocess"], "the pack was made with another preprocessing"
    for s in subjects:
        fresh, packed = preprocess.load(s), samples[s.id]
        assert torch.equal(fresh["image"], packed["image"]), s.id
        assert (fresh["labels"] is None) == (packed["labels"] is None), s.id
        assert fresh["labels"] is None or torch.equal(fresh["labels"], packed["labels"]), s.id
        assert tuple(fresh["spacing_mm"]) == packed["spacing_mm"], s.id
        assert np.array_equal(np.asarray(fresh["ijk_to_ras"], dtype=np.float64), packed["ijk_to_ras"]), s.id
    print(f"{path}: all {len(subjects)} subjects equal a fresh preprocessing")


def train(path, argv):
    from DeepRegAblationTrainingLib import cli
    from DeepRegAblationTrainingLib.data import preprocess as preprocess_module, specs

    manifest, samples = load_pack(path)
    if not DATA.exists():
        for name in manifest["files"]:
            (DATA / name).parent.mkdir(parents=True, exist_ok=True)
            (DATA / name).touch()

    def load(self, subject):
        if self.to_dict() != manifest["preprocess"]:
            raise ValueError(f"{path} holds {manifest['preprocess']}, this run asks for {self.to_dict()}")
        sample = samples[subject.id]
        return dict(sample, labels=sample["labels"])

    preprocess_module.Preprocess.load = load
    specs.check_subject_files = lambda subjects, where, threads=None: None
    return cli.main(["train"] + list(argv))


if __name__ == "__main__":
    verb, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 2 else (None, [])
    if verb == "pack":
        pack(args[0])
    elif verb == "check":
        check(args[0])
    elif verb == "train" and len(args) >= 2 and args[1] == "--":
        sys.exit(train(args[0], args[2:]))
    else:
        sys.exit(__doc__)
