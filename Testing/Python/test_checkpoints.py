"""Checkpoints: atomic save, weights_only load, identical outputs, clear errors."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from DeepRegAblationLib.models import checkpoints
from DeepRegAblationLib.models.checkpoints import FORMAT, load_checkpoint, load_model, save_checkpoint
from DeepRegAblationLib.models.network import RegistrationModel, build_model


class _NotATensor:
    """An arbitrary object: ``weights_only`` loading must refuse to unpickle it."""


def _trained_like(variant: str = "affine_enhanced", ndim: int = 2, **arch) -> RegistrationModel:
    """A model whose weights are all away from their initial values (so a load is really tested)."""
    torch.manual_seed(3)
    model = build_model(variant, ndim, **arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _pair(shape=(64, 64)):
    g = torch.Generator().manual_seed(7)
    return torch.rand(1, 1, *shape, generator=g), torch.rand(1, 1, *shape, generator=g)


def test_round_trip_weights_only_and_identical_outputs(tmp_path: Path):
    model = _trained_like("affine_enhanced", 2, diffeomorphic=True, int_steps=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    moving, fixed = _pair()
    out = model(moving, fixed)
    ((out["warped"] - fixed) ** 2).mean().backward()
    opt.step()
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    numpy_next, python_next = np.random.random(), random.random()
    path = tmp_path / "runs" / "model.pt"  # parent created on save
    saved = save_checkpoint(
        path,
        model,
        opt,
        epoch=12,
        preprocessing={"spacing_mm": (1.0, 1.0), "shape": np.array([64, 64]), "normalization": "minmax"},
        rng_state={"torch": torch_state, "numpy": numpy_state, "python": python_state},
        split={"train": ["OASIS_0001", "OASIS_0002"], "val": ["OASIS_0003"]},
        best_ncc=np.float32(0.25),
        data_dir=tmp_path / "data",
    )
    assert saved == path and path.is_file()

    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT == "deepreg-ablation/1"
    assert raw["model_config"] == model.config()
    assert raw["epoch"] == 12
    assert raw["preprocessing"]["spacing_mm"] == [1.0, 1.0]
    assert torch.equal(raw["preprocessing"]["shape"], torch.tensor([64, 64]))
    assert raw["split"]["val"] == ["OASIS_0003"]
    assert isinstance(raw["best_ncc"], float) and raw["best_ncc"] == pytest.approx(0.25)
    assert raw["data_dir"] == str(tmp_path / "data")
    assert torch.equal(raw["rng_state"]["torch"], torch_state)
    np_state = raw["rng_state"]["numpy"]  # tuple -> list, array -> tensor; restorable
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    assert np.random.random() == numpy_next
    py_state = raw["rng_state"]["python"]
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
    assert random.random() == python_next

    loaded = load_model(path)
    assert isinstance(loaded, RegistrationModel) and not loaded.training
    assert loaded.config() == model.config()
    model.eval()
    ref, got = model(moving, fixed), loaded(moving, fixed)
    assert set(ref) == set(got)
    for key in ref:
        assert torch.equal(ref[key], got[key]), key

    # optimizer state resumes
    ckpt = load_checkpoint(path)
    opt2 = torch.optim.Adam(loaded.parameters(), lr=3e-4)
    opt2.load_state_dict(ckpt["optimizer_state"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_load_model_with_device_and_ndim_check(tmp_path: Path):
    model = _trained_like("baseline", 2)
    path = save_checkpoint(tmp_path / "m.pt", model)
    assert load_model(path, ndim=2, device="cpu").ndim == 2
    with pytest.raises(ValueError, match=r"saved for a 2D model.*not 3D"):
        load_model(path, ndim=3)


def test_atomic_write_leaves_no_temp_file_and_replaces(tmp_path: Path):
    first = _trained_like("baseline", 2)
    second = _trained_like("regloss", 2)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, first, epoch=1)
    save_checkpoint(path, second, epoch=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
    assert load_checkpoint(path)["epoch"] == 2
    if os.name == "posix":
        umask = os.umask(0o022)
        os.umask(umask)
        fresh = save_checkpoint(tmp_path / "fresh.pt", second)
        assert (fresh.stat().st_mode & 0o777) == (0o666 & ~umask)  # not mkstemp's 0600
    assert load_model(path).variant.id == "regloss"


def test_interrupted_save_keeps_the_old_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _trained_like("baseline", 2), epoch=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _trained_like("regloss", 2), epoch=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


@pytest.mark.parametrize("stage", ["torch.save", "fsync"])
def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, stage):
    """A write error (OSError ENOSPC) while the new checkpoint is written or flushed: the error
    reaches the caller, the previous checkpoint is intact and loads, no temporary file is left."""
    import errno

    path = tmp_path / "last.pt"
    save_checkpoint(path, _trained_like("baseline", 2), epoch=1)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if stage == "torch.save":
        def partial_save(obj, handle, *args, **kwargs):
            handle.write(b"half a checkpoint")
            disk_full()

        monkeypatch.setattr(checkpoints.torch, "save", partial_save)
    else:
        monkeypatch.setattr(checkpoints.os, "fsync", disk_full)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _trained_like("regloss", 2), epoch=2)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1 and load_model(path).variant.id == "baseline"


def test_checkpoint_of_another_architecture_gives_a_clear_error(tmp_path: Path):
    small = _trained_like("baseline", 2, enc_features=(8, 16), dec_features=(16, 16, 8))
    path = save_checkpoint(tmp_path / "small.pt", small)
    ckpt = load_checkpoint(path)
    # loading into a model of another architecture (e.g. resuming with another config)
    for other in (build_model("baseline", 2), build_model("affine_basic", 2, enc_features=(8, 16), dec_features=(16, 16, 8))):
        with pytest.raises(ValueError) as err:
            checkpoints.load_model_state(other, ckpt, source=f"checkpoint {path}")
        message = str(err.value)
        assert f"checkpoint {path} was saved for architecture [baseline 2D affine=False" in message
        assert "enc_features=[8, 16]" in message
        assert f"not [{other.variant.id} 2D affine={other.variant.affine}" in message
    # same architecture, other training fields: loads (fine-tune baseline weights as regloss)
    regloss = build_model("regloss", 2, enc_features=(8, 16), dec_features=(16, 16, 8))
    checkpoints.load_model_state(regloss, ckpt)
    assert all(torch.equal(a, b) for a, b in zip(regloss.state_dict().values(), small.state_dict().values()))

    # a file whose weights do not fit the architecture it records
    ckpt["model_config"] = build_model("baseline", 2).config()
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, str(edited))
    with pytest.raises(ValueError, match=r"edited.pt holds weights that do not fit the architecture it records.*size mismatch"):
        load_model(edited)


def test_missing_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FileNotFoundError, match=str(missing).replace("\\", "\\\\")):
        load_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_model(missing)


def test_not_our_checkpoint_or_corrupt_file_raises_value_error(tmp_path: Path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(garbage)

    good = save_checkpoint(tmp_path / "good.pt", _trained_like("baseline", 2))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-4000])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_checkpoint(truncated)

    plain = tmp_path / "plain_state_dict.pt"
    torch.save(build_model("baseline", 2).state_dict(), str(plain))
    with pytest.raises(ValueError, match="not a DeepRegAblation checkpoint"):
        load_model(plain)

    future = tmp_path / "future.pt"
    ckpt = torch.load(str(good), weights_only=True)
    ckpt["format"] = "deepreg-ablation/9"
    torch.save(ckpt, str(future))
    with pytest.raises(ValueError, match="deepreg-ablation/9"):
        load_checkpoint(future)

    pickled = tmp_path / "pickled_object.pt"
    torch.save({"format": FORMAT, "payload": _NotATensor()}, str(pickled))
    with pytest.raises(ValueError, match="pickled_object.pt"):  # weights_only refuses arbitrary objects
        load_checkpoint(pickled)


def test_unsafe_or_reserved_extra_entries_are_refused(tmp_path: Path):
    model = build_model("baseline", 2)
    with pytest.raises(ValueError, match=r"callback"):
        save_checkpoint(tmp_path / "a.pt", model, callback=object())
    with pytest.raises(ValueError, match=r"config\['fn'\]"):
        save_checkpoint(tmp_path / "b.pt", model, config={"fn": len})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.pt", model, model_state={})
    with pytest.raises(ValueError, match="RegistrationModel"):
        save_checkpoint(tmp_path / "d.pt", torch.nn.Linear(2, 2))
    assert not any(tmp_path.iterdir())


def test_load_model_from_a_variant_id_builds_an_untrained_model():
    torch.manual_seed(0)
    model = load_model("affine_basic", ndim=3)
    assert model.ndim == 3 and model.variant.id == "affine_basic" and model.affine is not None
    with pytest.raises(ValueError, match="ndim"):
        load_model("baseline")


def test_ship_checkpoint_keeps_the_model_and_drops_the_resume_state(tmp_path):
    from DeepRegAblationLib.models.checkpoints import ship_checkpoint

    torch.manual_seed(3)
    model = build_model("affine_basic", 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))["warped"].mean().backward()
    optimizer.step()
    source = save_checkpoint(tmp_path / "run" / "epoch_0003.pt", model, optimizer, global_step=300,
                             rng_state={"torch": torch.get_rng_state()}, preprocessing={"spacing_mm": [4.0, 4.0]})
    shipped = ship_checkpoint(source, tmp_path / "affine_basic.pt")
    ckpt = torch.load(shipped, weights_only=True)
    assert "optimizer_state" not in ckpt and "rng_state" not in ckpt
    assert ckpt["preprocessing"] == {"spacing_mm": [4.0, 4.0]} and ckpt["global_step"] == 300
    assert ckpt["shipped_from"] == {"path": str(source), "global_step": 300}
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt["model_state"][key], value), key
    assert shipped.stat().st_size < 0.5 * source.stat().st_size


def test_ship_checkpoint_averages_several_checkpoints_of_a_run(tmp_path):
    from DeepRegAblationLib.models.checkpoints import ship_checkpoint

    models, sources = [], []
    for step, seed in ((100, 1), (200, 2), (300, 3)):
        torch.manual_seed(seed)
        model = build_model("affine_basic", 2)
        models.append(model)
        sources.append(save_checkpoint(tmp_path / "run" / f"epoch_{step // 100:04d}.pt", model,
                                       torch.optim.Adam(model.parameters()), global_step=step, epoch=step // 100))
    shipped = ship_checkpoint(sources, tmp_path / "affine_basic.pt")
    ckpt = load_checkpoint(shipped)
    assert "optimizer_state" not in ckpt
    assert ckpt["shipped_from"] == {"paths": [str(s) for s in sources], "global_steps": [100, 200, 300]}
    assert ckpt["global_step"] == 300 and ckpt["epoch"] == 3  # the other entries: the last checkpoint's
    for key, value in ckpt["model_state"].items():
        expected = sum(m.state_dict()[key].double() for m in models) / 3
        assert torch.allclose(value.double(), expected, atol=1e-6), key
    averaged = load_model(shipped)  # loads as a model of the same variant
    assert isinstance(averaged, RegistrationModel) and averaged.config() == models[-1].config()


def test_ship_checkpoint_refuses_to_average_different_architectures(tmp_path):
    from DeepRegAblationLib.models.checkpoints import ship_checkpoint

    first = save_checkpoint(tmp_path / "a.pt", build_model("affine_basic", 2))
    second = save_checkpoint(tmp_path / "b.pt", build_model("baseline", 2))
    with pytest.raises(ValueError, match="a.pt was saved for architecture"):
        ship_checkpoint([first, second], tmp_path / "out.pt")
    with pytest.raises(ValueError, match="no source checkpoint"):
        ship_checkpoint([], tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_with_passes_script_runs_the_same_weights_as_a_cascade(tmp_path):
    """scripts/brains3d/with_passes.py (issue 21, the cascade at inference only): same weights and entries, the
    passes changed; the copy computes what a model built with those passes and the same weights computes."""
    from _scripts import brains3d_script

    with_passes = brains3d_script("with_passes")
    model = _trained_like("affine_enhanced", 2)
    source = save_checkpoint(tmp_path / "one.pt", model, preprocessing={"spacing_mm": [4.0, 4.0]})
    with_passes.main(str(source), str(tmp_path / "two.pt"), 2, 3)
    ckpt = load_checkpoint(tmp_path / "two.pt")
    assert ckpt["model_config"]["arch"]["deform_passes"] == 2 and ckpt["model_config"]["arch"]["affine_passes"] == 3
    assert ckpt["preprocessing"] == {"spacing_mm": [4.0, 4.0]}
    assert ckpt["shipped_from"] == {"path": str(source), "deform_passes": 2, "affine_passes": 3}
    two = load_model(tmp_path / "two.pt")
    expected = _trained_like("affine_enhanced", 2, deform_passes=2, affine_passes=3)
    moving, fixed = _pair((32, 32))
    with torch.no_grad():
        assert torch.allclose(two(moving, fixed)["disp_vox"], expected(moving, fixed)["disp_vox"])
        assert not torch.allclose(two(moving, fixed)["disp_vox"], model(moving, fixed)["disp_vox"])
