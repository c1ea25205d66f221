"""The user options (DeepRegAblationLib.options) and the initial-alignment decision
(DeepRegAblationLib.registration.alignment), outside Slicer."""
from __future__ import annotations

import numpy as np
import pytest

from DeepRegAblationLib import geometry, options
from DeepRegAblationLib.imageio import ImageData
from DeepRegAblationLib.registration import alignment


def test_refine_choices_map_to_register_and_command_line_arguments():
    assert options.refine_argument("off", 30) == 0
    assert options.refine_argument("recommended") == "recommended"
    assert options.refine_argument("thorough", 5) == "thorough"
    assert options.refine_argument("custom", 30) == 30
    with pytest.raises(ValueError, match="at least 1"):
        options.refine_argument("custom", 0)
    with pytest.raises(ValueError, match="refinement choice"):
        options.refine_argument("fast")
    assert options.refine_cli_arguments(0) == []
    assert options.refine_cli_arguments("recommended") == ["--refine"]
    assert options.refine_cli_arguments("thorough") == ["--refine", "thorough"]
    assert options.refine_cli_arguments(25) == ["--refine", "25"]
    for bad in (-1, "fast"):
        with pytest.raises(ValueError, match="refine"):
            options.refine_cli_arguments(bad)


def test_parse_refine_accepts_what_register_accepts():
    for off in (None, False, 0, "off", "None", " ", "", "0", 0.0):
        assert options.parse_refine(off) == 0
    assert options.parse_refine(True) == "recommended"
    assert options.parse_refine(" Thorough ") == "thorough" and options.parse_refine("RECOMMENDED") == "recommended"
    assert options.parse_refine(7) == 7 and options.parse_refine("7") == 7 and options.parse_refine(7.0) == 7
    assert options.parse_refine(np.int64(12)) == 12 and type(options.parse_refine(np.int64(12))) is int
    with pytest.raises(ValueError, match=r"refine iterations must be >= 0, got -3"):
        options.parse_refine("-3")
    with pytest.raises(ValueError, match=r"refine iterations must be >= 0, got -1"):
        options.parse_refine(-1)
    with pytest.raises(ValueError, match=r"or a number of iterations per level, got 'fast'"):
        options.parse_refine("fast")
    for bad in (2.5, float("nan"), float("inf"), [3], np.float32(2.0), np.True_):
        with pytest.raises(ValueError, match=r"refine must be 'off', 'recommended', 'thorough' or an iteration count"):
            options.parse_refine(bad)


def test_variant_choices_name_the_four_variants():
    from DeepRegAblationLib.models.variants import VARIANTS

    assert tuple(VARIANTS) == options.VARIANT_IDS
    assert [c.value for c in options.VariantChoice] == list(options.VARIANT_IDS) + [options.ALL_VARIANTS]
    assert options.parse_variants("all") == list(options.VARIANT_IDS)
    assert options.parse_variants(["regloss", "baseline", "regloss"]) == ["regloss", "baseline"]
    for bad in ("fast", [], ["baseline", "all"]):
        with pytest.raises(ValueError, match="variants must be 'all' or ids among"):
            options.parse_variants(bad)
    for enum in (options.VariantChoice, options.RefineChoice, options.AlignmentChoice, options.DeviceChoice):
        assert all(member.label() for member in enum)
    assert options.ALIGNMENT_CHOICES == ("auto", "com", "none") and options.DEVICE_CHOICES[-1] == "cuda"


def _head(centre_ras, shape=(40, 44, 40), spacing=2.0, background: float = 0.0) -> ImageData:
    """A ball of intensity 100 (radius 20 mm) centred at ``centre_ras`` on a grid centred at the origin."""
    matrix = geometry.matrix_from_geometry([spacing] * 3, np.eye(3), -spacing * (np.asarray(shape[::-1]) - 1) / 2.0)
    points = geometry.grid_points_ras(shape, matrix)
    inside = np.linalg.norm(points - np.asarray(centre_ras), axis=-1) < 20.0
    return ImageData(np.where(inside, 100.0, background).astype(np.float32), matrix, "head")


def test_centre_distance_is_the_distance_between_the_balls():
    fixed, moving = _head([0.0, 0.0, 0.0]), _head([12.0, -9.0, 20.0])
    assert alignment.center_distance_mm(fixed, moving) == pytest.approx(np.linalg.norm([12.0, -9.0, 20.0]), abs=0.5)


@pytest.mark.parametrize("offset, expected", [
    ([6.0, 0.0, -8.0], "none"),    # 10 mm: used as they lie
    ([18.0, 0.0, -24.0], "com"),   # 30 mm apart, still overlapping
])
def test_auto_aligns_centres_only_when_far_apart(offset, expected):
    decision = alignment.decide_initial_alignment(_head([0.0, 0.0, 0.0]), _head(offset))
    assert decision.initial_alignment == expected
    distance = f"{np.linalg.norm(offset):.0f}" if expected == "com" else f"{np.linalg.norm(offset):.1f}"
    assert distance in decision.reason


def test_auto_aligns_pairs_that_do_not_overlap():
    fixed = _head([0.0, 0.0, 0.0])
    far = ImageData(fixed.array, geometry.translation_matrix([400.0, 0.0, 0.0]) @ fixed.ijk_to_ras, "far")
    decision = alignment.decide_initial_alignment(fixed, far)
    assert decision.initial_alignment == "com" and "do not overlap" in decision.reason


def test_explicit_choices_and_2d_pairs_are_not_decided():
    fixed, far = _head([0.0, 0.0, 0.0]), _head([30.0, 0.0, 0.0])
    assert alignment.decide_initial_alignment(fixed, far, "none").initial_alignment == "none"
    assert alignment.decide_initial_alignment(fixed, fixed, "com").initial_alignment == "com"
    flat = ImageData(fixed.array[20:21], fixed.ijk_to_ras, "slice")
    assert alignment.decide_initial_alignment(flat, flat.with_array(np.roll(flat.array, 15, axis=2))).initial_alignment == "none"
    empty = fixed.with_array(np.zeros_like(fixed.array))
    assert alignment.decide_initial_alignment(fixed, empty).initial_alignment == "none"
    with pytest.raises(ValueError, match="alignment choice"):
        alignment.decide_initial_alignment(fixed, fixed, "always")


def test_real_ixi_heads_of_different_subjects(ixi_dir):
    """The shared IXI heads lie in their scanners' coordinates: the decision follows their centres,
    which scipy's centre of mass (an independent computation) locates."""
    from scipy import ndimage

    from DeepRegAblationLib.imageio import normalize_intensity, read_image

    heads = sorted(ixi_dir.glob("*-T1_ds.nii.gz"))[:3]
    images = [read_image(path) for path in heads]
    for fixed, moving in ((images[0], images[1]), (images[1], images[2])):
        centres = [geometry.voxel_to_ras(np.asarray(ndimage.center_of_mass(normalize_intensity(im.array)))[::-1],
                                         im.ijk_to_ras) for im in (fixed, moving)]
        distance = float(np.linalg.norm(centres[1] - centres[0]))
        decision = alignment.decide_initial_alignment(fixed, moving)
        assert alignment.center_distance_mm(fixed, moving) == pytest.approx(distance, abs=1e-3)
        assert decision.initial_alignment == ("com" if distance > alignment.COM_DISTANCE_MM else "none"), decision.reason
