"""The four ablation variants: exact ids, reference weights, differ only in the component under study."""
from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from DeepRegAblationLib.models import variants
from DeepRegAblationLib.models.variants import REFERENCE_REGULARIZERS, VARIANTS, VariantSpec, get_variant

IDS = ("baseline", "regloss", "affine_basic", "affine_enhanced")


def test_exactly_the_four_variants():
    assert set(VARIANTS) == set(IDS)
    for vid, spec in VARIANTS.items():
        assert spec.id == vid
        assert spec.similarity == "lncc"
        assert spec.schedule == "reference"
        assert spec.description


def test_reference_regularizer_weights():
    assert dict(REFERENCE_REGULARIZERS) == {
        "grad_l2": 0.01,
        "displacement_hinge": 0.01,
        "local_rigidity": 0.005,
        "jacobian_penalty": 0.1,
        "bending_energy": 0.005,
    }
    assert dict(VARIANTS["regloss"].regularizers) == REFERENCE_REGULARIZERS
    assert dict(VARIANTS["affine_enhanced"].regularizers) == REFERENCE_REGULARIZERS
    assert dict(VARIANTS["baseline"].regularizers) == {}
    assert dict(VARIANTS["affine_basic"].regularizers) == {}
    assert [v.regularized for v in (VARIANTS[i] for i in IDS)] == [False, True, False, True]


def test_affine_flag_and_learning_rate():
    assert [VARIANTS[i].affine for i in IDS] == [False, False, True, True]
    assert [VARIANTS[i].lr for i in IDS] == [1e-3, 1e-3, 3e-4, 3e-4]


def _differing_fields(a: VariantSpec, b: VariantSpec):
    return {f.name for f in dataclasses.fields(VariantSpec) if getattr(a, f.name) != getattr(b, f.name)}


@pytest.mark.parametrize(
    "a, b, allowed",
    [
        ("baseline", "regloss", {"regularizers"}),
        ("affine_basic", "affine_enhanced", {"regularizers"}),
        ("baseline", "affine_basic", {"affine", "lr"}),
        ("regloss", "affine_enhanced", {"affine", "lr"}),
    ],
)
def test_variants_differ_only_in_the_component_under_study(a, b, allowed):
    diff = _differing_fields(VARIANTS[a], VARIANTS[b]) - {"id", "description"}
    assert diff == allowed


def test_module_docstring_documents_the_table():
    doc = variants.__doc__
    for vid in IDS:
        assert f"``{vid}``" in doc
    assert "ONLY" in doc and "affine stage is the only architectural difference" in doc


def test_to_dict_from_dict_round_trip_is_json_safe():
    for spec in VARIANTS.values():
        d = spec.to_dict()
        text = json.dumps(d)
        back = VariantSpec.from_dict(json.loads(text))
        assert back == spec
        assert type(back.regularizers) is type(spec.regularizers)
        assert type(d["regularizers"]) is dict


def test_from_dict_rejects_unknown_and_missing_fields():
    d = VARIANTS["regloss"].to_dict()
    d["tanh_cap"] = 0.3
    with pytest.raises(ValueError, match="tanh_cap"):
        VariantSpec.from_dict(d)
    with pytest.raises(ValueError, match="id"):
        VariantSpec.from_dict({"affine": True})


def test_get_variant_lookup_overrides_and_errors():
    assert get_variant("baseline") is VARIANTS["baseline"]
    spec = VARIANTS["affine_basic"]
    assert get_variant(spec) is spec
    assert get_variant(spec.to_dict()) == spec
    tuned = get_variant("regloss", lr=5e-4, regularizers={"grad_l2": 0.02})
    assert tuned.lr == 5e-4 and dict(tuned.regularizers) == {"grad_l2": 0.02}
    assert VARIANTS["regloss"].lr == 1e-3  # the registry entry is untouched
    with pytest.raises(ValueError) as err:
        get_variant("affine_plus")
    for vid in IDS:
        assert vid in str(err.value)
    with pytest.raises(ValueError, match="learning_rate"):
        get_variant("baseline", learning_rate=1.0)
    with pytest.raises(ValueError):
        get_variant(42)


def test_default_lr_follows_the_affine_stage():
    assert VariantSpec(id="x").lr == 1e-3
    assert VariantSpec(id="y", affine=True).lr == 3e-4
    assert VariantSpec(id="z", affine=True, lr=1e-2).lr == 1e-2


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(regularizers={"grad_l2": -0.1}),
        dict(regularizers={"grad_l2": float("nan")}),
        dict(schedule="cosine"),
        dict(lr=0.0),
        dict(affine="yes"),
        dict(similarity=""),
    ],
)
def test_invalid_specs_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        VariantSpec(id="bad", **kwargs)


def test_specs_are_immutable_hashable_and_picklable():
    spec = VARIANTS["affine_enhanced"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.regularizers["grad_l2"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.regularizers.update(grad_l2=1.0)
    assert spec.regularizers["grad_l2"] == 0.01
    assert hash(spec) == hash(VariantSpec.from_dict(spec.to_dict()))
    assert len({VARIANTS[i] for i in IDS}) == 4
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec
    assert dataclasses.asdict(spec)["regularizers"] == REFERENCE_REGULARIZERS
    # the caller's dict is copied, not aliased
    weights = {"grad_l2": 0.5}
    own = VariantSpec(id="own", regularizers=weights)
    weights["grad_l2"] = 9.0
    assert own.regularizers["grad_l2"] == 0.5


def test_regularizer_and_similarity_names_exist_in_losses():
    losses = pytest.importorskip("DeepRegAblationLib.losses")
    for spec in VARIANTS.values():
        assert spec.similarity in losses.SIMILARITIES
        assert set(spec.regularizers) <= set(losses.REGULARIZERS)
