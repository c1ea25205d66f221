"""Inputs outside what the models know (issue 24, item 4): a warning in the command's output, in metrics.json and
in the panel's status log, before the user trusts the numbers.

The MNI152 template of the nilearn wheel at 3 mm is the brain; against it: a 20 mm slab of itself (the issue's
case), its inverted contrast, a non-brain image (a textured 150 mm box), its upper half only (partial
coverage, which the network stretches over the whole brain) and itself 100 mm aside without initial alignment
(little overlap after alignment). Its own known deformation (the demo's pair) raises nothing. The thresholds were measured on
the validation data (scripts/brains3d/input_thresholds.py, docs/results/input-thresholds/thresholds.md).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from _registration_helpers import smooth_volume
from DeepRegAblationLib import panel
from DeepRegAblationLib.imageio import ImageData, write_image
from DeepRegAblationLib.models.resolve import resolve_models
from DeepRegAblationLib.registration import input_warnings as checks
from DeepRegAblationLib.registration import register
from DeepRegAblationTrainingLib import cli

pytest.importorskip("nilearn")


@pytest.fixture(scope="module")
def brain():
    from DeepRegAblationTrainingLib.experiments.demo import load_mni

    template, labels = load_mni(3.0)
    return template, labels


@pytest.fixture(scope="module")
def model():
    return resolve_models(None, ["affine_enhanced"], 3)["affine_enhanced"].model


def _slab(template: ImageData, thickness_mm: float = 20.0) -> ImageData:
    """``thickness_mm`` of axial slices through the middle of the brain, on their own grid."""
    slices = max(2, int(round(thickness_mm / template.spacing_kji[0])))
    k0 = template.shape[0] // 2 - slices // 2
    grid = template.ijk_to_ras.copy()
    grid[:3, 3] += template.ijk_to_ras[:3, 2] * k0
    return ImageData(template.array[k0:k0 + slices].copy(), grid, "slab")


def _inverted(template: ImageData) -> ImageData:
    return template.with_array(template.array.max() - template.array, "inverted")


def _box(template: ImageData) -> ImageData:
    """Not a brain: a 150 mm box of smooth random texture, centred on the template."""
    shape = (50, 50, 50)
    grid = np.diag([3.0, 3.0, 3.0, 1.0])
    centre = template.ijk_to_ras @ np.append((np.array(template.shape[::-1]) - 1) / 2.0, 1.0)
    grid[:3, 3] = centre[:3] - 3.0 * (np.array(shape) - 1) / 2.0
    return ImageData(smooth_volume(shape, 7, sigma=1.5), grid, "box")


def _shifted(template: ImageData, offset_mm: float = 100.0) -> ImageData:
    grid = template.ijk_to_ras.copy()
    grid[0, 3] += offset_mm
    return ImageData(template.array, grid, "shifted")


def _upper_part(template: ImageData) -> ImageData:
    """Only the top half of the brain (its content spans about 65 mm: no field-of-view warning)."""
    k0 = int(template.shape[0] * 0.5)
    grid = template.ijk_to_ras.copy()
    grid[:3, 3] += template.ijk_to_ras[:3, 2] * k0
    return ImageData(template.array[k0:].copy(), grid, "upper part")


def _register(fixed, moving, model, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = register(fixed, moving, model, device="cpu", **options)
    return result, [str(w.message) for w in caught if issubclass(w.category, checks.InputWarning)]


@pytest.mark.parametrize("case, make, options, phrase", [
    ("slab", _slab, {}, "content spans only"),
    ("inverted", _inverted, {}, "inverted contrast"),
    ("not-a-brain", _box, {}, "not a head surrounded by air"),
    ("partial", _upper_part, {}, "covers only part of the other"),
    ("little-overlap", _shifted, {"initial_alignment": "none"}, "covers the fixed one less than in any validation pair"),
])
def test_an_input_outside_what_the_models_know_is_named(brain, model, case, make, options, phrase):
    template, _ = brain
    result, raised = _register(template, make(template), model, **options)
    assert any(phrase in w for w in result.warnings), result.warnings
    assert len(raised) == len(result.warnings) and all(r.startswith("affine_enhanced: ") for r in raised)


def test_the_demo_pair_raises_nothing(brain, model):
    from DeepRegAblationTrainingLib.experiments.demo import make_moving

    template, labels = brain
    fixed, moving, _, _ = make_moving(template, labels, 8.0, 0)
    result, raised = _register(fixed, moving, model)
    assert result.warnings == [] and raised == []


def test_the_slab_warns_in_the_output_metrics_json_and_the_panel_log(brain, tmp_path, capsys):
    """The issue's row: a 20-slice slab registered to a whole brain gave exit 0 and meaningless numbers silently."""
    template, _ = brain
    fixed = write_image(tmp_path / "brain.nii.gz", template)
    slab = write_image(tmp_path / "slab.nii.gz", _slab(template))
    out = tmp_path / "out"
    code = cli.main(["register", "--fixed", str(fixed), "--moving", str(slab), "--variant", "affine_enhanced",
                     "--device", "cpu", "--no-scene", "--save-npz", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    output = (captured.out + captured.err).splitlines()
    lines = [line for line in output if line.startswith("warning: affine_enhanced: ")]
    assert any("content spans only" in line for line in lines), output
    record = json.loads((out / "metrics.json").read_text())[0]
    assert any("content spans only" in w for w in record["warnings"])
    logged = []
    job = panel.RegistrationJob(fixed_volume=None, moving_volume=None, work_dir=tmp_path, out_dir=out,
                                variant_ids=["affine_enhanced"], reuse=True, metrics_table=None, on_log=logged.append,
                                on_progress=lambda f, m: None, on_finished=lambda outcome: None)
    for line in output:
        job.handle_line(line)
    assert any("content spans only" in w for w in job.warning_lines) and len(job.warning_lines) == len(set(job.warning_lines))
    assert any(line.startswith("warning: affine_enhanced:") and "content spans only" in line for line in logged)
    results = panel.load_results(out, ["affine_enhanced"])
    outcome = panel.RegistrationOutcome.done(None, results, {}, None)
    assert any("warning:" in line and "content spans only" in line for line in outcome.summaryLines())
