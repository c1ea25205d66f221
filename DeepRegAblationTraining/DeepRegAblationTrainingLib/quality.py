"""Registration quality of the four variants beside classical registration, on real image pairs.

Every method registers the same ordered pairs (moving -> fixed) through the same final steps, so
that the numbers differ only by the transform each method found:

- the transform is a mapping of fixed RAS points to moving RAS points, ``q(p) = A (p + u_def(p))``;
- every result is assembled by ``inference.result_from_mapping`` (what ``inference.register``
  does for our models): ONE interpolation of the ORIGINAL moving image (linear) and labels
  (nearest neighbour) at ``q(p)`` on the full-resolution fixed grid, the Jacobian of the total
  field, and ``metrics.registration_metrics`` on intensities normalised by robust percentiles:
  mean Dice over the labels present in both maps, mean HD95 (mm), folding % (``det J <= 0``,
  raw), SDlogJ.

Methods (row ids; :data:`METHOD_NOTES` holds the text the report prints):

- ``identity``, ``sitk_affine``, ``sitk_demons``, ``ants_affine``, ``ants_syn`` (classical);
- ``com`` (with ``initial_alignments`` holding ``"com"``): the centre-of-mass translation alone;
- ``elastix``, ``fireants`` (optional peers, :data:`PEER_METHODS`): itk-elastix with its default affine
  + B-spline maps, FireANTs with the settings of its LPBA40 script; skipped when not installed;
- our variants: ``inference.register`` with the shipped 3D model
  ``Resources/Models/3d/<variant>.pt`` when present, else an untrained network (flagged), with and
  without instance refinement (``refine``: schedules such as ``recommended`` / ``thorough``).

Runtime is the registration alone, from images in memory to the full-resolution field, warped
image and warped labels (metrics excluded): ``metrics["runtime_s"]``, split for our rows into the
network part (``network_s``: resampling, network, full-resolution field, warping) and ``refine_s``.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from DeepRegAblationLib import geometry
from DeepRegAblationLib.imageio import ImageData, as_image, itk_image_from_array, normalize_intensity, read_image
from DeepRegAblationLib.inference import RegistrationResult, result_from_mapping

PathLike = Union[str, Path]
Progress = Optional[Callable[[str], None]]

CLASSICAL_CHOICES = ("auto", "ants", "sitk", "all", "syn", "affine")
"""``--classical``: ``auto`` = ANTs when ``antspyx`` is importable, else SimpleITK; ``all`` = both;
``syn`` = ANTs SyN alone (no affine-only row)."""
CLASSICAL_METHODS = {
    "identity": "identity (no registration)",
    "sitk_affine": "SimpleITK affine (Mattes MI)",
    "sitk_demons": "SimpleITK affine + diffeomorphic demons",
    "ants_affine": "ANTs affine (antspyx)",
    "ants_syn": "ANTs SyN (antspyx)",
}
"""Classical method id -> row label."""
COM_LABEL = "centre-of-mass translation only"
"""Row label of the ``com`` reference row (``quality_table(initial_alignments=[..., "com"])``)."""
METHOD_NOTES = {
    "identity": "no registration: the images' own physical alignment.",
    "com": "the translation that takes the fixed image's intensity centre of mass onto the moving image's "
           "(`inference.center_of_mass_alignment`, 1-99 percentile normalised intensities as weights): the "
           "initial alignment of the rows \"after centre-of-mass alignment\".",
    "sitk_affine": "SimpleITK affine, Mattes mutual information (32 bins, 25 % random samples, fixed seed), "
                   "regular-step gradient descent, physical-shift scales, centred (moments) initialisation, "
                   "two resolution levels (shrink 4 and 2, smoothing sigmas 2 and 1 voxels).",
    "sitk_demons": "`sitk_affine`, then SimpleITK diffeomorphic demons on the affinely resampled, "
                   "histogram-matched moving image: three resolution levels (shrink 4, 2, 1; 50, 30, 10 "
                   "iterations; Gaussian field smoothing of 1.5 voxels of each level).",
    "ants_affine": "ANTs through antspyx, `ants.registration(type_of_transform=\"Affine\")` with its defaults.",
    "ants_syn": "ANTs through antspyx, `ants.registration(type_of_transform=\"SyN\")` with its defaults "
                "(rigid + affine initialisation included); the transform is the composed displacement field "
                "that antsApplyTransforms writes on the fixed grid.",
    "ours": "`inference.register` (model grid, network, full-resolution field) with the shipped 3D model "
            "`Resources/Models/3d/<variant>.pt`, or an untrained network where none is shipped.",
    "refine": "Refined rows add `inference.refine` (instance optimisation on the pair: affine at 8 and 4 mm, then a "
              "stationary velocity field at 8, 4 and 2 mm but never the image's own resolution for `recommended`, "
              "down to 1 mm / full resolution for `thorough`; LNCC + diffusion + folding penalty, Adam, early stop).",
    "elastix": "elastix through itk-elastix with its default `affine` then `bspline` parameter maps (the engine of "
               "SlicerElastix); the total mapping is transformix's deformation field on the fixed grid.",
    "fireants": "FireANTs on the CPU: moments (centre of mass) initialisation, affine (scales 8/4/2/1, 100/50/25/20 "
                "iterations, CC window 5, Adam lr 3e-4) and greedy deformable registration (scales 4/2/1, 200/100/50 "
                "iterations, CC window 7, gradient smoothing 2, warp smoothing 0.5, Adam lr 0.5): the settings of its "
                "LPBA40 script.",
}
"""Method id (and ``"ours"`` for the variants) -> one-sentence description for reports."""
QUALITY_COLUMNS = (
    "dataset", "fixed", "moving", "method", "label", "kind", "model", "seen_in_training",
    "dice", "hd95_mm", "folding_pct", "sdlogj", "runtime_s", "network_s", "refine_s",
)  # fmt: skip
"""Keys of every row of :func:`quality_table`: ``runtime_s`` = ``network_s`` (everything but the
refinement: resampling, network, full-resolution field and warping; the whole registration for the
other methods) + ``refine_s``."""
SUMMARY_METRICS = ("dice", "hd95_mm", "folding_pct", "sdlogj", "runtime_s", "network_s", "refine_s")

# SimpleITK settings (see the module docstring)
AFFINE_SHRINK = (4, 2)
AFFINE_SIGMAS_VOX = (2.0, 1.0)
AFFINE_SAMPLING = 0.25
AFFINE_ITERATIONS = 200
AFFINE_MIN_STEP = 1e-3
AFFINE_SEED = 1
"""Seed of the metric's random samples (SimpleITK reads 0 as "seed from the wall clock")."""
DEMONS_SHRINK = (4, 2, 1)
DEMONS_ITERATIONS = (50, 30, 10)
DEMONS_SIGMA_VOX = 1.5
MIN_LEVEL_SIZE = 8
"""A resolution level is skipped when it would leave fewer voxels than this along an axis."""


# --------------------------------------------------------------------------- helpers
def ants_available() -> bool:
    """Whether ``antspyx`` (``import ants``) is importable."""
    try:
        import ants  # noqa: F401
    except ImportError:
        return False
    return True


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` CPU threads in torch, SimpleITK and the ITK inside antspyx (``None``: leave the defaults).

    antspyx reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` when its ITK first runs a filter: call
    this before the first ANTs registration of the process.
    """
    if not threads:
        return
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(int(threads))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))


def _import_ants():
    try:
        import ants
    except ImportError:
        raise ValueError("method='ants' needs the antspyx package (pip install antspyx); use method='sitk'") from None
    return ants


def classical_methods(choice: str = "auto") -> List[str]:
    """Classical method ids for a ``--classical`` choice: identity, then affine-only and deformable rows."""
    if choice not in CLASSICAL_CHOICES:
        raise ValueError(f"classical must be one of {list(CLASSICAL_CHOICES)}, got {choice!r}")
    if choice in ("syn", "affine"):  # one ANTs method alone (the 3D models' bar is ANTs affine)
        if not ants_available():
            raise ValueError(f"classical={choice!r} needs the antspyx package (pip install antspyx)")
        return ["identity", "ants_syn" if choice == "syn" else "ants_affine"]
    if choice == "auto":
        choice = "ants" if ants_available() else "sitk"
    if choice == "ants" and not ants_available():
        raise ValueError("classical='ants' needs the antspyx package (pip install antspyx); use 'sitk' or 'auto'")
    families = {"sitk": ["sitk"], "ants": ["ants"], "all": ["sitk"] + (["ants"] if ants_available() else [])}[choice]
    methods = ["identity"]
    for family in families:
        methods += [f"{family}_affine", "sitk_demons" if family == "sitk" else "ants_syn"]
    return methods


def _read_inputs(fixed, moving, fixed_labels, moving_labels) -> Tuple[ImageData, ImageData, Any, Any]:
    """The four inputs of a non-network method (paths are read, label maps as labels), checked:
    3D, not constant, overlapping. ``ValueError`` naming the input otherwise."""
    from DeepRegAblationLib.imageio import validate_image

    fixed, moving = as_image(fixed, "fixed"), as_image(moving, "moving")
    fixed_labels = as_image(fixed_labels, "fixed_labels", "labels")
    moving_labels = as_image(moving_labels, "moving_labels", "labels")
    named = ((fixed, "fixed"), (moving, "moving"), (fixed_labels, "fixed_labels"), (moving_labels, "moving_labels"))
    for image, name in named:
        if image is not None:
            validate_image(image, name)
    for image, name in ((fixed, "fixed"), (moving, "moving")):
        if image.is_2d or min(image.shape) < 4:
            raise ValueError(
                f"{name} must be a 3D volume with at least 4 voxels per axis for classical registration, "
                f"got shape {image.shape}"
            )
        if float(np.max(image.array)) == float(np.min(image.array)):
            raise ValueError(f"{name} is constant (shape {image.shape}): nothing to register")
    geometry.check_overlap(fixed, moving)
    return fixed, moving, fixed_labels, moving_labels


def _affine_lps_matrix(transform) -> np.ndarray:
    """The ``(4, 4)`` matrix of an affine SimpleITK transform (any type or composite), LPS points."""
    probes = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100], [37, -53, 71]], dtype=np.float64)
    mapped = np.array([transform.TransformPoint([float(v) for v in p]) for p in probes])
    linear = (mapped[1:4] - mapped[0]).T / 100.0
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = mapped[0]
    if not np.allclose(linear @ probes[4] + mapped[0], mapped[4], atol=1e-4):
        raise RuntimeError("the SimpleITK transform expected to be affine is not")
    return matrix


def _field_lps_to_ras(field_lps: np.ndarray) -> np.ndarray:
    """``(K, J, I, 3)`` LPS vectors -> RAS vectors (x and y negated)."""
    return field_lps * np.array([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------- SimpleITK
def _levels(shape: Sequence[int], shrinks: Sequence[int], settings: Sequence[Any]) -> List[Tuple[int, Any]]:
    """``(shrink, setting)`` of the resolution levels that leave >= ``MIN_LEVEL_SIZE`` voxels per axis.

    When none does, one full-resolution level with the last setting.
    """
    kept = [(int(s), v) for s, v in zip(shrinks, settings) if min(shape) // s >= MIN_LEVEL_SIZE]
    return kept or [(1, settings[-1])]


def _sitk_affine(fixed_itk, moving_itk, seed: int = AFFINE_SEED):
    """Multi-resolution affine (Mattes MI), centred (moments) initialisation -> SimpleITK transform."""
    import SimpleITK as sitk

    levels = _levels(fixed_itk.GetSize(), AFFINE_SHRINK, AFFINE_SIGMAS_VOX)
    initial = sitk.CenteredTransformInitializer(
        fixed_itk, moving_itk, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(AFFINE_SAMPLING, int(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=AFFINE_MIN_STEP, numberOfIterations=AFFINE_ITERATIONS,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([shrink for shrink, _ in levels])
    method.SetSmoothingSigmasPerLevel([sigma if shrink > 1 else 0.0 for shrink, sigma in levels])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed_itk, moving_itk)


def _downsample(image, shrink: int):
    """Gaussian anti-aliasing (sigma = shrink/2 voxels) and integer shrinking."""
    import SimpleITK as sitk

    if shrink == 1:
        return image
    sigma_mm = 0.5 * shrink * min(image.GetSpacing())
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, sigma_mm), [int(shrink)] * image.GetDimension())


def _sitk_demons(fixed_itk, moving_on_fixed_itk) -> np.ndarray:
    """Multi-resolution diffeomorphic demons of two images on the same grid.

    Returns the displacement ``(K, J, I, 3)`` LPS mm on the fixed grid: fixed point ``p`` ->
    point ``p + u(p)`` of the (affinely resampled) moving image.
    """
    import SimpleITK as sitk

    moving_matched = sitk.HistogramMatching(moving_on_fixed_itk, fixed_itk, 256, 7, True)
    field = None
    for shrink, n_iter in _levels(fixed_itk.GetSize(), DEMONS_SHRINK, DEMONS_ITERATIONS):
        fixed_level = _downsample(fixed_itk, shrink)
        moving_level = _downsample(moving_matched, shrink)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(n_iter))
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(DEMONS_SIGMA_VOX)
        if field is None:
            field = demons.Execute(fixed_level, moving_level)
        else:
            start = sitk.Resample(field, fixed_level, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
            field = demons.Execute(fixed_level, moving_level, start)
    field = sitk.Resample(field, fixed_itk, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
    return sitk.GetArrayFromImage(field).astype(np.float64)


def _run_sitk(fixed_itk, moving_itk, deformable: bool, timings: Dict[str, float]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """-> ``(affine_lps (4, 4), deform_lps (K, J, I, 3) or None)``."""
    import SimpleITK as sitk

    t0 = time.perf_counter()
    affine_tx = _sitk_affine(fixed_itk, moving_itk)
    timings["affine"] = time.perf_counter() - t0
    affine_lps = _affine_lps_matrix(affine_tx)
    if not deformable:
        return affine_lps, None
    t0 = time.perf_counter()
    moving_on_fixed = sitk.Resample(moving_itk, fixed_itk, affine_tx, sitk.sitkLinear, 0.0)
    deform_lps = _sitk_demons(fixed_itk, moving_on_fixed)
    timings["deformable"] = time.perf_counter() - t0
    return affine_lps, deform_lps


# --------------------------------------------------------------------------- ANTs
def _run_ants(fixed_itk, moving_itk, deformable: bool, timings: Dict[str, float]) -> Tuple[np.ndarray, np.ndarray]:
    """-> ``(affine_lps (4, 4), total displacement (K, J, I, 3) LPS mm on the fixed grid)``."""
    import SimpleITK as sitk

    ants = _import_ants()
    fixed_ants, moving_ants = ants.from_sitk(fixed_itk), ants.from_sitk(moving_itk)
    with tempfile.TemporaryDirectory(prefix="deepreg-ants-") as tmp:
        t0 = time.perf_counter()
        reg = ants.registration(fixed_ants, moving_ants, type_of_transform="SyN" if deformable else "Affine",
                                outprefix=str(Path(tmp) / "reg_"))
        timings["registration"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        composed = ants.apply_transforms(fixed_ants, moving_ants, reg["fwdtransforms"], compose=str(Path(tmp) / "total_"))
        if composed is None:
            raise RuntimeError("antsApplyTransforms did not write the composed displacement field")
        total_lps = sitk.GetArrayFromImage(sitk.ReadImage(composed)).astype(np.float64)
        matrices = [p for p in reg["fwdtransforms"] if str(p).endswith(".mat")]
        affine_lps = _affine_lps_matrix(sitk.ReadTransform(matrices[0])) if matrices else np.eye(4)
        timings["field"] = time.perf_counter() - t0
    return affine_lps, total_lps


# --------------------------------------------------------------------------- peers: elastix and FireANTs
PEER_METHODS = {
    "elastix": "elastix affine + B-spline (itk-elastix)",
    "fireants": "FireANTs affine + greedy (fireants)",
}
"""Optional peers (row id -> label); each runs only when its package imports (:func:`peer_status`)."""
PEER_PACKAGES = {"elastix": ("itk", "itk-elastix"), "fireants": ("fireants", "fireants")}
FIREANTS_AFFINE = ([8, 4, 2, 1], [100, 50, 25, 20])
"""FireANTs affine scales and iterations (its LPBA40 script), after a centre-of-mass moments initialisation."""
FIREANTS_GREEDY = ([4, 2, 1], [200, 100, 50])
"""FireANTs greedy deformable scales and iterations (its LPBA40 script: cc window 7, gradient smoothing 2,
warp smoothing 0.5, Adam lr 0.5)."""


def peer_status(method: str) -> Optional[str]:
    """``None`` when the peer ``method`` can run here, else why not (a sentence for the report)."""
    module, package = PEER_PACKAGES[method]
    try:
        imported = __import__(module)
        if method == "elastix" and not hasattr(imported, "elastix_registration_method"):
            return f"{PEER_METHODS[method]} skipped: the itk package here has no elastix (pip install {package})"
    except Exception as exc:  # ImportError, or a broken install of an optional package
        return f"{PEER_METHODS[method]} skipped: `import {module}` failed ({type(exc).__name__}: {exc}); pip install {package}"
    return None


def _itk_from_sitk(image, keep: List[np.ndarray]):
    """An ITK Python image with the pixels and geometry of a SimpleITK image (float32); its pixel array is
    appended to ``keep``, which the caller holds while ITK uses the image."""
    import itk
    import SimpleITK as sitk

    keep.append(np.ascontiguousarray(sitk.GetArrayFromImage(image), dtype=np.float32))
    out = itk.image_from_array(keep[-1])
    out.SetSpacing([float(v) for v in image.GetSpacing()])
    out.SetOrigin([float(v) for v in image.GetOrigin()])
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)))
    return out


def _run_elastix(fixed_itk, moving_itk, threads: Optional[int], timings: Dict[str, float]) -> np.ndarray:
    """elastix with its default affine then B-spline parameter maps -> total displacement (K, J, I, 3) LPS mm."""
    import itk

    arrays: List[np.ndarray] = []
    fixed_image, moving_image = _itk_from_sitk(fixed_itk, arrays), _itk_from_sitk(moving_itk, arrays)
    parameters = itk.ParameterObject.New()
    for name in ("affine", "bspline"):
        parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
    t0 = time.perf_counter()
    method = itk.ElastixRegistrationMethod.New(fixed_image, moving_image)
    method.SetParameterObject(parameters)
    method.SetLogToConsole(False)
    if threads:  # (the filter's SetNumberOfThreads crashed itk-elastix 0.25 with the B-spline map here)
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    method.UpdateLargestPossibleRegion()
    timings["registration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deepreg-transformix-") as tmp:  # transformix writes its field file there
        field = itk.transformix_deformation_field(moving_image, method.GetTransformParameterObject(), output_directory=tmp)
    timings["field"] = time.perf_counter() - t0
    return np.asarray(itk.GetArrayFromImage(field), dtype=np.float64)


def _run_fireants(fixed_itk, moving_itk, timings: Dict[str, float]) -> np.ndarray:
    """FireANTs (CPU): moments (centre of mass), affine, greedy deformable -> total displacement LPS mm."""
    import logging

    os.environ.setdefault("TQDM_DISABLE", "1")  # its per-iteration progress bars
    logging.getLogger("fireants").setLevel(logging.WARNING)
    from fireants.io import BatchedImages, Image
    from fireants.registration.affine import AffineRegistration
    from fireants.registration.greedy import GreedyRegistration
    from fireants.registration.moments import MomentsRegistration

    fixed_images = BatchedImages([Image(fixed_itk, device="cpu")])
    moving_images = BatchedImages([Image(moving_itk, device="cpu")])
    t0 = time.perf_counter()
    moments = MomentsRegistration(1, fixed_images, moving_images, moments=1, transl_mode="com")
    moments.optimize()
    affine = AffineRegistration(*FIREANTS_AFFINE, fixed_images, moving_images, loss_type="cc", optimizer="Adam",
                                optimizer_lr=3e-4, cc_kernel_size=5, init_rigid=moments.get_affine_init())
    affine.optimize()
    timings["affine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    greedy = GreedyRegistration(*FIREANTS_GREEDY, fixed_images, moving_images, loss_type="cc", cc_kernel_size=7,
                                deformation_type="compositive", smooth_grad_sigma=2, smooth_warp_sigma=0.5,
                                optimizer="adam", optimizer_lr=0.5, init_affine=affine.get_affine_matrix().detach())
    greedy.optimize()
    timings["deformable"] = time.perf_counter() - t0
    with torch.no_grad():
        coords = greedy.get_warped_coordinates(fixed_images, moving_images)[0].double()  # (K, J, I, 3) xyz in [-1, 1]
        to_physical = moving_images.images[0].torch2phy[0].double()
        moved = coords @ to_physical[:3, :3].T + to_physical[:3, 3]  # moving LPS points
        fixed_to_physical = fixed_images.images[0].torch2phy[0].double()
        shape = coords.shape[:3]
        axes = [torch.linspace(-1.0, 1.0, int(n), dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
                for n in shape]
        k, j, i = torch.meshgrid(*axes, indexing="ij")
        grid = torch.stack([i, j, k], dim=-1)
        points = grid @ fixed_to_physical[:3, :3].T + fixed_to_physical[:3, 3]
    return (moved - points).numpy()


def peer_register(
    fixed: Union[ImageData, PathLike],
    moving: Union[ImageData, PathLike],
    fixed_labels: Union[ImageData, PathLike, None] = None,
    moving_labels: Union[ImageData, PathLike, None] = None,
    method: str = "elastix",
    threads: Optional[int] = None,
) -> RegistrationResult:
    """Register with a peer (``"elastix"`` or ``"fireants"``, :data:`PEER_METHODS`); same outputs as the others.

    The images are given to the peer as the classical methods get them (robust-normalised intensities,
    their own grids); its total mapping becomes the result (``affine_ras`` is the identity: the whole
    mapping is in the field). ``ValueError`` naming the package when it is not installed.
    """
    if method not in PEER_METHODS:
        raise ValueError(f"method must be one of {list(PEER_METHODS)}, got {method!r}")
    status = peer_status(method)
    if status is not None:
        raise ValueError(status)
    t_start = time.perf_counter()
    fixed, moving, fixed_labels, moving_labels = _read_inputs(fixed, moving, fixed_labels, moving_labels)
    set_threads(threads)
    timings: Dict[str, float] = {}
    fixed_itk = itk_image_from_array(normalize_intensity(fixed.array), fixed.ijk_to_ras)
    moving_itk = itk_image_from_array(normalize_intensity(moving.array), moving.ijk_to_ras)
    if method == "elastix":
        total_lps = _run_elastix(fixed_itk, moving_itk, threads, timings)
    else:
        total_lps = _run_fireants(fixed_itk, moving_itk, timings)
    return result_from_mapping(method, fixed, moving, np.eye(4), _field_lps_to_ras(total_lps), fixed_labels,
                               moving_labels, timings, t_start)


# --------------------------------------------------------------------------- common result
def identity_register(
    fixed: Union[ImageData, PathLike],
    moving: Union[ImageData, PathLike],
    fixed_labels: Union[ImageData, PathLike, None] = None,
    moving_labels: Union[ImageData, PathLike, None] = None,
) -> RegistrationResult:
    """No registration: ``q(p) = p`` (the images' own physical alignment), same outputs as the others."""
    t_start = time.perf_counter()
    fixed, moving, fixed_labels, moving_labels = _read_inputs(fixed, moving, fixed_labels, moving_labels)
    return result_from_mapping("identity", fixed, moving, np.eye(4), np.zeros(tuple(fixed.shape) + (3,)),
                               fixed_labels, moving_labels, {}, t_start)


def classical_register(
    fixed: Union[ImageData, PathLike],
    moving: Union[ImageData, PathLike],
    fixed_labels: Union[ImageData, PathLike, None] = None,
    moving_labels: Union[ImageData, PathLike, None] = None,
    method: str = "auto",
    transform: str = "deformable",
    threads: Optional[int] = None,
) -> RegistrationResult:
    """Classical registration of ``moving`` to ``fixed`` (3D), results on the full-resolution fixed grid.

    Args:
        fixed, moving: 3D scalar images (``ImageData`` or paths), overlapping in physical space.
        fixed_labels, moving_labels: optional integer label maps (warped by nearest neighbour; Dice).
        method: ``"ants"`` (``antspyx``: SyN, or Affine), ``"sitk"`` (SimpleITK: affine, then
            diffeomorphic demons) or ``"auto"`` (ANTs when importable, else SimpleITK).
        transform: ``"deformable"`` (affine + deformable) or ``"affine"`` (the affine stage only).
        threads: CPU threads (:func:`set_threads`); ``None`` leaves the defaults.

    Returns:
        a :class:`RegistrationResult` whose ``variant`` is the method id (``sitk_affine``,
        ``sitk_demons``, ``ants_affine``, ``ants_syn``), with ``timings`` per stage and
        ``metrics["runtime_s"]`` (registration, field, warping and metrics).
    """
    if method not in ("auto", "ants", "sitk"):
        raise ValueError(f"method must be 'auto', 'ants' or 'sitk', got {method!r}")
    if transform not in ("deformable", "affine"):
        raise ValueError(f"transform must be 'deformable' or 'affine', got {transform!r}")
    t_start = time.perf_counter()
    fixed, moving, fixed_labels, moving_labels = _read_inputs(fixed, moving, fixed_labels, moving_labels)
    if method == "auto":
        method = "ants" if ants_available() else "sitk"
    deformable = transform == "deformable"
    set_threads(threads)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    fixed_itk = itk_image_from_array(normalize_intensity(fixed.array), fixed.ijk_to_ras)
    moving_itk = itk_image_from_array(normalize_intensity(moving.array), moving.ijk_to_ras)
    timings["prepare"] = time.perf_counter() - t0
    if method == "sitk":
        affine_lps, deform_lps = _run_sitk(fixed_itk, moving_itk, deformable, timings)
        affine_ras = geometry.transform_lps_to_ras(affine_lps)
        deform_ras = torch.zeros((3,) + tuple(fixed.shape)) if deform_lps is None else torch.from_numpy(
            np.moveaxis(_field_lps_to_ras(deform_lps).astype(np.float32), -1, 0))
        disp_ras = geometry.affine_after_displacement(affine_ras, deform_ras, fixed.ijk_to_ras)
        variant = "sitk_demons" if deformable else "sitk_affine"
    else:
        affine_lps, total_lps = _run_ants(fixed_itk, moving_itk, deformable, timings)
        affine_ras = geometry.transform_lps_to_ras(affine_lps)
        disp_ras = _field_lps_to_ras(total_lps)
        variant = "ants_syn" if deformable else "ants_affine"
    return result_from_mapping(variant, fixed, moving, affine_ras, disp_ras, fixed_labels, moving_labels, timings, t_start)


# --------------------------------------------------------------------------- pairs and table
def dataset_pairs(subjects: Sequence[Any], pairs: Union[str, int] = "cycle") -> List[Tuple[Any, Any]]:
    """Ordered ``(fixed, moving)`` subject pairs.

    ``"cycle"``: each subject is fixed once with the next one as moving (``n`` pairs, the last
    subject's moving is the first); ``"all"``: every ordered pair (``n (n - 1)``); an integer
    ``N``: the first ``N`` pairs of the cycle.
    """
    subjects = list(subjects)
    if len(subjects) < 2:
        raise ValueError(f"need at least 2 subjects for pairs, got {len(subjects)}")
    cycle = [(subjects[i], subjects[(i + 1) % len(subjects)]) for i in range(len(subjects))]
    if pairs == "cycle":
        return cycle
    if pairs == "all":
        return [(f, m) for f in subjects for m in subjects if f is not m]
    try:
        count = int(pairs)
    except (TypeError, ValueError):
        raise ValueError(f"pairs must be 'cycle', 'all' or a positive integer, got {pairs!r}") from None
    if count < 1:
        raise ValueError(f"pairs must be a positive integer, got {count}")
    return cycle[:count]


def _training_ids(checkpoint: dict) -> Optional[set]:
    """Subject ids the checkpoint's model was trained on (``data_split["train"]``), or ``None``."""
    split = checkpoint.get("data_split") or checkpoint.get("split")
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        return None
    ids = set()
    for entry in split["train"]:
        ids.add(str(entry.get("id")) if isinstance(entry, dict) else str(entry))
    return ids


def load_variant_models(variants: Sequence[str], ndim: int = 3, untrained: bool = False) -> Dict[str, Dict[str, Any]]:
    """``{name: {"model", "source", "path", "train_ids"}}`` for entries ``<variant id>`` or ``<name>=<checkpoint>``.

    A variant id gets the shipped weights (``inference.shipped_model_path``; ``source`` ``"shipped"``)
    when present and not ``untrained``, else an untrained network seeded with 0 (``"untrained"``);
    ``<name>=<checkpoint>`` loads that checkpoint under its own row name (``"checkpoint"``; e.g. the
    runs of a regulariser sweep beside the shipped models).
    """
    import torch
    from DeepRegAblationLib import checkpoints, inference

    out = {}
    for entry in variants:
        name, _, given = (part.strip() for part in str(entry).partition("="))
        if given and not Path(given).is_file():
            raise ValueError(f"variant {name!r}: checkpoint file not found: {given}")
        path = Path(given) if given else (None if untrained else inference.shipped_model_path(name, ndim))
        if path is None:
            torch.manual_seed(0)
            model, _, _ = inference.load_registration_model(name, ndim)
            out[name] = {"model": model, "source": "untrained", "path": None, "train_ids": None}
        else:
            model, _, _ = inference.load_registration_model(path, ndim)
            train_ids = _training_ids(checkpoints.load_checkpoint(path))
            out[name] = {"model": model, "source": "checkpoint" if given else "shipped", "path": str(path),
                         "train_ids": train_ids}
    return out


def _row(fixed_id: str, moving_id: str, method: str, label: str, kind: str, model: str,
         seen: Optional[bool], result: RegistrationResult, dataset: str = "") -> Dict[str, Any]:
    metrics = result.metrics
    runtime = float(metrics["runtime_s"])  # the registration, metrics excluded (``metrics_s``)
    refine_s = float(result.timings.get("refine", 0.0))
    row = {"dataset": dataset, "fixed": fixed_id, "moving": moving_id, "method": method, "label": label,
           "kind": kind, "model": model, "seen_in_training": seen}
    for key in ("dice", "hd95_mm", "folding_pct", "sdlogj"):
        row[key] = float(metrics.get(key, float("nan")))
    row["runtime_s"] = runtime
    row["network_s"] = runtime - refine_s
    row["refine_s"] = refine_s
    return row


def refine_schedules(refine: Union[int, str, Sequence[Union[int, str]], None]) -> List[Union[int, str]]:
    """The refinement schedules of :func:`quality_table`'s rows (``0`` / ``"off"`` first: the plain network)."""
    from DeepRegAblationLib.inference import refine_schedule

    values = list(refine) if isinstance(refine, (list, tuple)) else [refine]
    out: List[Union[int, str]] = [0]
    for value in values:
        schedule = str(value).split("@")[0]  # "thorough@affine_enhanced": that variant only
        if refine_schedule(schedule) is not None and value not in out:  # ValueError for a bad value
            out.append(int(value) if str(value).strip().isdigit() else str(value))
    return out


def _schedule_for(schedule: Union[int, str], variant: str) -> Optional[Union[int, str]]:
    """The schedule to run for ``variant`` (``None`` when ``schedule`` is ``<name>@<other variants>``)."""
    if isinstance(schedule, str) and "@" in schedule:
        name, only = schedule.split("@", 1)
        if variant not in only.split("+"):
            return None
        return int(name) if name.strip().isdigit() else name
    return schedule


def _refine_names(schedule: Union[int, str]) -> Tuple[str, str]:
    """``(method suffix, label suffix)`` of a refinement schedule."""
    if isinstance(schedule, int):
        return f"+refine{schedule}", f" + {schedule} refinement steps"
    return f"+refine-{schedule}", f" + {schedule} refinement"


def quality_table(
    pairs: Sequence[Tuple[Any, Any]],
    variants: Sequence[str],
    methods: Sequence[str],
    device: str = "cpu",
    threads: Optional[int] = None,
    progress: Progress = None,
    untrained: bool = False,
    refine: Union[int, str, Sequence[Union[int, str]]] = 0,
    initial_alignments: Sequence[str] = ("none",),
    dataset: str = "",
) -> List[Dict[str, Any]]:
    """Register every pair with every variant and classical method; one row per (pair, method).

    Args:
        pairs: ``(fixed, moving)`` subjects, each with ``id``, ``image`` and ``labels`` (paths;
            ``data.Subject``), e.g. from :func:`dataset_pairs`.
        variants: our variant ids (shipped 3D models, or untrained networks where none is shipped),
            or ``<name>=<checkpoint file>`` (:func:`load_variant_models`).
        methods: classical method ids (keys of :data:`CLASSICAL_METHODS`), e.g. :func:`classical_methods`,
            and peers (keys of :data:`PEER_METHODS`: ``elastix``, ``fireants``; see :func:`peer_status`).
        device: device of our models (``inference.register``).
        threads: torch and ITK threads (``None``: leave the defaults).
        progress: ``progress(message)`` after each registration.
        untrained: run untrained networks even where a model is shipped (tests the pipeline only).
        refine: refinement schedule(s) (``inference.register(refine=...)``): each variant also gets a
            row ``<variant>+refine<N>`` (an iteration count) or ``<variant>+refine-<name>``
            (``recommended``, ``thorough``) per schedule; ``0`` / ``"off"``: none;
            ``"<name>@<variant>[+<variant>]"`` runs that schedule for those variants only.
        dataset: the dataset name written in every row.
        initial_alignments: ``inference.register``'s ``initial_alignment`` values to run our variants
            with (rows ``<variant>`` for ``"none"``, ``<variant>+com`` for ``"com"``); with ``"com"`` a
            reference row ``com`` gives the centre-of-mass translation alone.

    Returns:
        rows with the keys :data:`QUALITY_COLUMNS`: ``kind`` is ``"reference"`` (identity),
        ``"classical"`` or ``"ours"``; ``model`` is the weights file, ``"untrained"`` or the
        classical package; ``seen_in_training`` tells whether both subjects of the pair were
        training subjects of the shipped model (``None``: unknown or not applicable).
    """
    from DeepRegAblationLib.inference import center_of_mass_alignment, register

    unknown = [m for m in methods if m not in CLASSICAL_METHODS and m not in PEER_METHODS]
    if unknown:
        raise ValueError(f"methods: unknown id(s) {unknown}; choose from {list(CLASSICAL_METHODS) + list(PEER_METHODS)}")
    schedules = refine_schedules(refine)
    set_threads(threads)
    models = load_variant_models(variants, 3, untrained)
    rows: List[Dict[str, Any]] = []
    report = progress or (lambda message: None)
    for fixed_subject, moving_subject in pairs:
        fixed = read_image(fixed_subject.image, "fixed image")
        moving = read_image(moving_subject.image, "moving image")
        fixed_labels, moving_labels = (
            read_image(subject.labels, f"{role} labels", "labels") if getattr(subject, "labels", None) else None
            for subject, role in ((fixed_subject, "fixed"), (moving_subject, "moving"))
        )
        for image, labels, subject in ((fixed, fixed_labels, fixed_subject), (moving, moving_labels, moving_subject)):
            if labels is not None:  # a label map may have its own grid, but it must cover its image
                geometry.check_overlap(image, labels, f"image {subject.image}", f"labels {subject.labels}")
        ids = (str(fixed_subject.id), str(moving_subject.id))
        for method in methods:
            if method == "identity":
                result = identity_register(fixed, moving, fixed_labels, moving_labels)
                kind, model = "reference", "-"
            elif method in PEER_METHODS:
                result = peer_register(fixed, moving, fixed_labels, moving_labels, method=method, threads=threads)
                kind, model = "peer", PEER_PACKAGES[method][1]
            else:
                family, stage = method.split("_", 1)
                result = classical_register(fixed, moving, fixed_labels, moving_labels, method=family,
                                            transform="affine" if stage == "affine" else "deformable", threads=threads)
                kind, model = "classical", "antspyx" if family == "ants" else "SimpleITK"
            label = PEER_METHODS[method] if method in PEER_METHODS else CLASSICAL_METHODS[method]
            rows.append(_row(*ids, method, label, kind, model, None, result, dataset))
            report(f"{ids[1]} -> {ids[0]} {method}: dice {rows[-1]['dice']:.3f} ({rows[-1]['runtime_s']:.1f} s)")
        if "com" in initial_alignments:
            t0 = time.perf_counter()
            shift = center_of_mass_alignment(fixed, moving)
            disp = np.broadcast_to(shift[:3, 3].astype(np.float32), tuple(fixed.shape) + (3,))
            result = result_from_mapping("com", fixed, moving, shift, disp, fixed_labels, moving_labels, {}, t0)
            rows.append(_row(*ids, "com", COM_LABEL, "reference", "-", None, result, dataset))
        for variant, entry in models.items():
            seen = None if entry["train_ids"] is None else all(i in entry["train_ids"] for i in ids)
            model = {"shipped": Path(entry["path"] or "").name, "checkpoint": entry["path"]}.get(entry["source"], "untrained")
            for alignment in initial_alignments:
                for schedule in schedules:
                    schedule = _schedule_for(schedule, variant)
                    if schedule is None:
                        continue
                    result = register(fixed, moving, model=entry["model"], fixed_labels=fixed_labels,
                                      moving_labels=moving_labels, device=device, refine=schedule,
                                      initial_alignment=alignment)
                    method_suffix, label_suffix = _refine_names(schedule) if schedule else ("", "")
                    method = variant + ("+com" if alignment == "com" else "") + method_suffix
                    label = (f"{variant} ({entry['source']})"
                             + (" after centre-of-mass alignment" if alignment == "com" else "") + label_suffix)
                    rows.append(_row(*ids, method, label, "ours", model, seen, result, dataset))
                    report(f"{ids[1]} -> {ids[0]} {method}: dice {rows[-1]['dice']:.3f} ({rows[-1]['runtime_s']:.1f} s)")
    return rows


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std


def summarize_quality(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per method (in the order of first appearance): ``n_pairs`` and ``<metric>_mean`` / ``<metric>_std``
    (sample standard deviation over pairs, NaN for one pair) of :data:`SUMMARY_METRICS`."""
    order: List[str] = []
    for row in rows:
        if row["method"] not in order:
            order.append(row["method"])
    summary = []
    for method in order:
        mrows = [r for r in rows if r["method"] == method]
        entry = {"method": method, "label": mrows[0]["label"], "kind": mrows[0]["kind"], "model": mrows[0]["model"],
                 "n_pairs": len(mrows)}
        seen = {r["seen_in_training"] for r in mrows}
        entry["seen_in_training"] = seen.pop() if len(seen) == 1 else "some"
        for key in SUMMARY_METRICS:
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([float(r[key]) for r in mrows])
        summary.append(entry)
    return summary


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _seen_text(entry: Dict[str, Any]) -> str:
    if entry["kind"] != "ours" or entry["model"] == "untrained":
        return "-"
    return {True: "yes", False: "no", None: "unknown", "some": "some"}[entry["seen_in_training"]]


def markdown_quality(rows: Sequence[Dict[str, Any]], data_description: str, setup: str = "") -> str:
    """The "Registration quality" Markdown section: setup, summary table (mean ± std over pairs), pairs."""
    summary = summarize_quality(rows)
    pairs = []
    for row in rows:
        pair = (row["moving"], row["fixed"])
        if pair not in pairs:
            pairs.append(pair)
    seen_values = {s["seen_in_training"] for s in summary if s["kind"] == "ours"}
    out = [
        "## Registration quality on IXI", "",
        f"Data: {data_description}. {len(pairs)} ordered pairs (moving -> fixed): "
        + ", ".join(f"{m} -> {f}" for m, f in pairs) + ".", "",
    ]
    if setup:
        out += [setup, ""]
    out += ["Methods:", ""]
    for s in summary:
        if s["kind"] != "ours":
            out.append(f"- `{s['method']}`: {METHOD_NOTES[s['method']]}")
    if any(s["kind"] == "ours" for s in summary):
        out.append(f"- our variants: {METHOD_NOTES['ours']}")
    out.append("")
    out += [
        "Every method goes through the same final steps: its transform (fixed point -> moving point) is "
        "applied by one interpolation of the original moving image and labels (nearest neighbour) on the "
        "fixed grid; Dice is the mean over the DLMUSE labels present in both maps, HD95 the mean over those "
        "labels (mm), folding the % of voxels with det J <= 0, SDlogJ the standard deviation of log det J. "
        "Runtime: the registration from images in memory to the full-resolution field and warped "
        "image/labels, metrics excluded. Values are mean ± sample standard deviation over the pairs.", "",
        "| method | weights / package | pairs seen in training | Dice | HD95 (mm) | folding (%) | SDlogJ | runtime (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        out.append(
            f"| {s['label']} | {s['model']} | {_seen_text(s)} | {_pm(s['dice_mean'], s['dice_std'], 3)} | "
            f"{_pm(s['hd95_mm_mean'], s['hd95_mm_std'], 2)} | {_pm(s['folding_pct_mean'], s['folding_pct_std'], 3)} | "
            f"{_pm(s['sdlogj_mean'], s['sdlogj_std'], 3)} | {_pm(s['runtime_s_mean'], s['runtime_s_std'], 1)} |"
        )
    out.append("")
    if any(s["kind"] == "ours" and s["model"] == "untrained" for s in summary):
        out += ["Rows labelled \"(untrained)\" ran a randomly initialised network because no 3D model is "
                "shipped for that variant: they measure the pipeline's runtime, not the method's accuracy.", ""]
    if True in seen_values or "some" in seen_values:
        out += ["Caution: the subjects of these pairs were training subjects of the shipped 3D models "
                "(their checkpoints' data split): our rows are training-set numbers, the classical rows are not "
                "trained at all.", ""]
    elif None in seen_values and any(s["kind"] == "ours" and s["model"] != "untrained" for s in summary):
        out += ["The shipped checkpoints do not record their training subjects: whether these pairs were seen "
                "in training is unknown here (see the model cards).", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- per-dataset report with ratios
def _summary_by_method(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {s["method"]: s for s in summarize_quality(rows)}


def _pick(summary: Dict[str, Dict[str, Any]], prefix: str, suffix: str) -> Optional[Dict[str, Any]]:
    """The summary entry whose method starts with ``prefix`` and ends with ``suffix`` (first found)."""
    for method, entry in summary.items():
        if method.startswith(prefix) and method.endswith(suffix):
            return entry
    return None


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return "-"
    return f"{a / b:.2f}"


def _delta(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a - b:+.3f}"


def goal_lines(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The issue's goals per dataset, met or missed, from the rows of one dataset."""
    summary = _summary_by_method(rows)
    syn, fireants = summary.get("ants_syn"), summary.get("fireants")
    recommended = _pick(summary, "affine_enhanced", "+refine-recommended")
    thorough = _pick(summary, "affine_enhanced", "+refine-thorough")
    out = []
    if recommended and syn:
        dice_ok = recommended["dice_mean"] >= syn["dice_mean"]
        fold_ok = recommended["folding_pct_mean"] < 0.1
        time_ok = recommended["runtime_s_mean"] <= syn["runtime_s_mean"] / 3.0
        out.append(
            f"- `affine_enhanced` + recommended refinement against ANTs SyN: Dice {recommended['dice_mean']:.3f} vs "
            f"{syn['dice_mean']:.3f} ({'met' if dice_ok else 'missed'}), folding {recommended['folding_pct_mean']:.3f} % "
            f"({'met' if fold_ok else 'missed'}: < 0.1 %), time {recommended['runtime_s_mean']:.1f} s = "
            f"{recommended['runtime_s_mean'] / syn['runtime_s_mean']:.2f} x SyN's {syn['runtime_s_mean']:.1f} s "
            f"({'met' if time_ok else 'missed'}: <= 0.33)."
        )
    if thorough and fireants:
        dice_ok = thorough["dice_mean"] >= fireants["dice_mean"]
        time_ok = thorough["runtime_s_mean"] <= fireants["runtime_s_mean"]
        out.append(
            f"- `affine_enhanced` + thorough refinement against FireANTs: Dice {thorough['dice_mean']:.3f} vs "
            f"{fireants['dice_mean']:.3f} ({'met' if dice_ok else 'missed'}), time {thorough['runtime_s_mean']:.1f} s vs "
            f"{fireants['runtime_s_mean']:.1f} s ({'met' if time_ok else 'missed'})."
        )
    return out


def markdown_quality_datasets(rows: Sequence[Dict[str, Any]], setup: str = "", notes: Sequence[str] = ()) -> str:
    """Per dataset: the pairs, a table (mean over pairs) with the ratios to ANTs SyN, elastix and FireANTs
    on the same pairs, and the goals. ``notes``: lines such as skipped peers."""
    datasets: List[str] = []
    for row in rows:
        if row["dataset"] not in datasets:
            datasets.append(row["dataset"])
    out = ["## Registration quality per dataset", ""]
    if setup:
        out += [setup, ""]
    out += list(notes) + ([""] if notes else [])
    methods_seen = {r["method"] for r in rows}
    out += ["Methods:", ""]
    for method in list(CLASSICAL_METHODS) + ["com"]:
        if method in methods_seen:
            out.append(f"- `{method}`: {METHOD_NOTES[method]}")
    for method in PEER_METHODS:
        if method in methods_seen:
            out.append(f"- `{method}`: {METHOD_NOTES[method]}")
    if any(r["kind"] == "ours" for r in rows):
        out.append(f"- our variants: {METHOD_NOTES['ours']} {METHOD_NOTES['refine']}")
    out += ["", "Every method ends the same way (one interpolation of the original moving image and labels on the "
            "fixed grid); Dice is the mean over the labels present in both maps, folding the % of voxels with "
            "det J <= 0. Time: the registration from images in memory to the full-resolution field and warped "
            "image/labels, metrics excluded; for our rows network (resampling, network, full-resolution field, "
            "warping) + refinement. Ratios compare the mean times on the same pairs (time / SyN < 1: faster), "
            "Dice differences the mean Dice.", ""]
    for dataset in datasets:
        drows = [r for r in rows if r["dataset"] == dataset]
        pairs = []
        for row in drows:
            if (row["moving"], row["fixed"]) not in pairs:
                pairs.append((row["moving"], row["fixed"]))
        summary = _summary_by_method(drows)
        syn, elastix, fireants = summary.get("ants_syn"), summary.get("elastix"), summary.get("fireants")
        seen = {r["seen_in_training"] for r in drows if r["kind"] == "ours" and r["model"] != "untrained"}
        seen_text = {frozenset([False]): "no pair (no subject of these pairs is a training subject of our models)",
                     frozenset([True]): "every pair", frozenset(): "not applicable (no trained model)"}.get(
            frozenset(seen), "some pairs or unknown")
        out += [f"### {dataset}", "", f"{len(pairs)} validation pair(s) (moving -> fixed): "
                + ", ".join(f"{m} -> {f}" for m, f in pairs) + f". Seen in training: {seen_text}.", ""]
        out += ["| method | Dice | HD95 (mm) | folding (%) | time (s) | network + refine (s) | Dice - SyN | time / SyN "
                "| Dice - elastix | time / elastix | time / FireANTs |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for entry in summary.values():
            split_time = (f"{entry['network_s_mean']:.1f} + {entry['refine_s_mean']:.1f}" if entry["kind"] == "ours"
                          else "-")
            out.append(
                f"| {entry['label']} | {_pm(entry['dice_mean'], entry['dice_std'], 3)} | "
                f"{_pm(entry['hd95_mm_mean'], float('nan'), 2)} | {entry['folding_pct_mean']:.3f} | "
                f"{entry['runtime_s_mean']:.1f} | {split_time} | "
                f"{_delta(entry['dice_mean'], syn and syn['dice_mean'])} | "
                f"{_ratio(entry['runtime_s_mean'], syn and syn['runtime_s_mean'])} | "
                f"{_delta(entry['dice_mean'], elastix and elastix['dice_mean'])} | "
                f"{_ratio(entry['runtime_s_mean'], elastix and elastix['runtime_s_mean'])} | "
                f"{_ratio(entry['runtime_s_mean'], fireants and fireants['runtime_s_mean'])} |"
            )
        goals = goal_lines(drows)
        out += [""] + (["Goals:", ""] + goals + [""] if goals else [])
    return "\n".join(out)
