"""models.resolve: shipped weights / a checkpoint file / a folder -> loaded models (each file read once)."""
from __future__ import annotations

import re

import pytest
import torch

from DeepRegAblationLib.models import checkpoints, resolve
from DeepRegAblationLib.models.checkpoints import load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
from DeepRegAblationLib.models.network import build_model
from DeepRegAblationLib.models.resolve import (
    LoadedModel,
    load_model_file,
    model_sources,
    resolve_model,
    resolve_models,
    shipped_model_path,
    untrained_warning,
)
from DeepRegAblationLib.options import VARIANT_IDS

SPLIT = {"train": [{"id": "OAS1_0001"}, {"id": "OAS1_0002"}], "val": [{"id": "OAS1_0003"}]}


def _checkpoint(path, variant="baseline", ndim=2, seed=0, **extra):
    torch.manual_seed(seed)
    return save_checkpoint(path, build_model(variant, ndim), **extra)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def torch_loads(monkeypatch):
    """Counts the files ``torch.load`` reads through ``checkpoints.load_checkpoint``."""
    calls = []
    real = checkpoints.torch.load

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", counting)
    return calls


@pytest.fixture
def nothing_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(resolve, "MODELS_DIR", tmp_path / "no-models")


# --------------------------------------------------------------------------- sources
def test_shipped_weights_are_found_beside_the_library():
    assert resolve.MODELS_DIR.parent.name == "Resources" and resolve.MODELS_DIR.parent.parent.name == "DeepRegAblation"
    sources = model_sources(None, list(VARIANT_IDS), 3)
    assert list(sources) == list(VARIANT_IDS)
    assert all(path == resolve.MODELS_DIR / "3d" / f"{v}.pt" and path.is_file() for v, path in sources.items())
    assert shipped_model_path("baseline", 2) == resolve.MODELS_DIR / "2d" / "baseline.pt"
    assert shipped_model_path("no_such_variant", 3) is None


def test_shipped_model_loads_with_its_checkpoint(torch_loads):
    models = resolve_models(None, ["affine_enhanced"], 3)
    loaded = models["affine_enhanced"]
    assert isinstance(loaded, LoadedModel) and loaded.source == "shipped" and loaded.trained
    assert loaded.name == loaded.variant == "affine_enhanced" and loaded.model.ndim == 3 and not loaded.model.training
    assert loaded.path == shipped_model_path("affine_enhanced", 3) and torch_loads == [str(loaded.path)]
    assert loaded.preprocessing == loaded.checkpoint["preprocessing"] and loaded.model.preprocessing == loaded.preprocessing
    assert loaded.preprocessing["initial_alignment"] == "com"
    assert _same_weights(loaded.model, load_model(loaded.path))
    assert loaded.train_ids is None or isinstance(loaded.train_ids, set)


def test_a_file_a_folder_and_their_messages(tmp_path):
    folder = tmp_path / "models"
    for index, variant in enumerate(VARIANT_IDS):
        _checkpoint(folder / f"{variant}.pt", variant, seed=index, data_split=SPLIT)
    models = resolve_models(folder, list(VARIANT_IDS), 2)
    assert list(models) == list(VARIANT_IDS)
    for variant, loaded in models.items():
        assert loaded.source == "checkpoint" and loaded.path == folder / f"{variant}.pt" and loaded.variant == variant
        assert loaded.train_ids == {"OAS1_0001", "OAS1_0002"}
    one = resolve_models(folder / "regloss.pt", ["regloss"], 2)["regloss"]
    assert _same_weights(one.model, models["regloss"].model)

    with pytest.raises(FileNotFoundError, match=re.escape(f"--model not found: {tmp_path / 'nope'}")):
        model_sources(tmp_path / "nope", ["baseline"], 2)
    (folder / "regloss.pt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"--model directory {folder} lacks the checkpoint(s) {[str(folder / 'regloss.pt')]}")):
        resolve_models(folder, list(VARIANT_IDS), 2)
    with pytest.raises(ValueError, match=re.escape(
            f"--model {folder / 'baseline.pt'} is one file, but --variant all needs a directory holding "
            "baseline.pt, regloss.pt, affine_basic.pt, affine_enhanced.pt")):
        resolve_models(folder / "baseline.pt", list(VARIANT_IDS), 2)


def test_wrong_variant_and_wrong_dimension_are_named(tmp_path):
    path = _checkpoint(tmp_path / "b.pt", "baseline", ndim=2)
    with pytest.raises(ValueError, match=re.escape(f"--model checkpoint {path} holds variant 'baseline', not 'regloss'")):
        resolve_models(path, ["regloss"], 2)
    with pytest.raises(ValueError, match=re.escape(
            f"--model checkpoint {path} is a 2D model but --fixed is a 3D image; use a 3D checkpoint")):
        resolve_models(path, ["baseline"], 3)
    path3 = _checkpoint(tmp_path / "b3.pt", "baseline", ndim=3)
    with pytest.raises(ValueError, match=re.escape(
            f"--model checkpoint {path3} is a 3D model but --fixed is a single-slice (2D) image; use a 2D checkpoint")):
        load_model_file(path3, 2, "baseline")
    with pytest.raises(ValueError, match=re.escape(f"--checkpoint checkpoint {path} holds variant 'baseline'")):
        load_model_file(path, variant="regloss", role="--checkpoint")


# --------------------------------------------------------------------------- untrained networks
def test_untrained_networks_where_nothing_is_shipped(nothing_shipped):
    seen = []
    models = resolve_models(None, ["baseline", "regloss"], 3, on_untrained=seen.append)
    assert seen == [["baseline", "regloss"]]
    for variant, loaded in models.items():
        assert loaded.source == "untrained" and not loaded.trained and loaded.path is None and loaded.checkpoint is None
        assert loaded.variant == variant and loaded.preprocessing is None and loaded.train_ids is None
    assert untrained_warning(["baseline", "regloss"], 3) == (
        "warning: no trained 3D weights for baseline, regloss (none given with --model, none shipped): those results "
        "are from an UNTRAINED network (close to the identity), not a trained model")


def test_seeded_untrained_networks_and_the_untrained_flag():
    """``seed``: torch.manual_seed before each build (the quality benchmark's untrained rows)."""
    seen = []
    models = resolve_models(None, ["baseline", "affine_basic"], 3, untrained=True, seed=0, on_untrained=seen.append)
    assert seen == [["baseline", "affine_basic"]] and all(m.source == "untrained" for m in models.values())
    for variant, loaded in models.items():
        torch.manual_seed(0)
        assert _same_weights(loaded.model, build_model(variant, 3))
    with pytest.raises(FileNotFoundError, match=r"model must be a variant id .* or a checkpoint file; not found: mystery"):
        resolve_models(None, ["mystery"], 3, untrained=True)


def test_named_checkpoint_entries(tmp_path, torch_loads):
    """``NAME=CHECKPOINT`` (the quality benchmark): that file under its own row name, beside shipped models."""
    path = _checkpoint(tmp_path / "run.pt", "regloss", ndim=3, data_split=SPLIT)
    models = resolve_models(None, ["baseline", f" sweep-0.5 = {path}"], 3)
    assert list(models) == ["baseline", "sweep-0.5"]
    named = models["sweep-0.5"]
    assert named.name == "sweep-0.5" and named.variant == "regloss" and named.source == "checkpoint"
    assert named.path == path and named.train_ids == {"OAS1_0001", "OAS1_0002"}
    assert models["baseline"].source == "shipped"
    assert len(torch_loads) == 2  # one read per file
    with pytest.raises(ValueError, match=re.escape(f"variant 'gone': checkpoint file not found: {tmp_path / 'gone.pt'}")):
        resolve_models(None, [f"gone={tmp_path / 'gone.pt'}"], 3)


# --------------------------------------------------------------------------- register()'s argument
def test_resolve_model_takes_ids_paths_and_objects(tmp_path, torch_loads):
    path = _checkpoint(tmp_path / "a.pt", "affine_basic", ndim=2, preprocessing={"spacing_mm": [1.0, 1.0]})
    loaded = resolve_model(str(path), 2)
    assert loaded.source == "checkpoint" and loaded.name == "affine_basic" and torch_loads == [str(path)]
    assert loaded.preprocessing == {"spacing_mm": [1.0, 1.0]} == loaded.model.preprocessing
    assert resolve_model(path, 3).model.ndim == 2  # the images decide: register() checks the dimension
    untrained = resolve_model("regloss", 2)
    assert untrained.source == "untrained" and untrained.model.ndim == 2 and not untrained.trained
    model = build_model("baseline", 3)
    model.preprocessing = {"orientation": "RAS"}
    obj = resolve_model(model, 2)
    assert obj.model is model and obj.source == "object" and obj.trained and obj.preprocessing == {"orientation": "RAS"}
    with pytest.raises(ValueError, match="got float"):
        resolve_model(1.5, 3)


def test_each_checkpoint_file_is_read_once(tmp_path, torch_loads):
    folder = tmp_path / "models"
    for variant in VARIANT_IDS:
        _checkpoint(folder / f"{variant}.pt", variant)
    resolve_models(folder, list(VARIANT_IDS), 2)
    assert sorted(torch_loads) == sorted(str(folder / f"{v}.pt") for v in VARIANT_IDS)
    torch_loads.clear()
    resolve_model(folder / "baseline.pt", 2)  # register()'s path (read twice before the re-layout)
    assert torch_loads == [str(folder / "baseline.pt")]


def test_model_from_checkpoint_is_load_model(tmp_path):
    path = _checkpoint(tmp_path / "m.pt", "affine_enhanced", ndim=2, seed=3)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    assert not model.training and _same_weights(model, load_model(path))
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} was saved for a 2D model")):
        model_from_checkpoint(ckpt, path, ndim=3)
