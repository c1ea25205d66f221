"""Classical registration and the peers, with the same outputs as our models: the back-ends of the quality benchmark.

Every method's transform is a mapping of fixed RAS points to moving RAS points,
``q(p) = A (p + u_def(p))``, assembled into a ``RegistrationResult`` by
``inference.result_from_mapping`` (what ``inference.register`` does for our models): ONE
interpolation of the ORIGINAL moving image (linear) and labels (nearest neighbour) at ``q(p)`` on
the full-resolution fixed grid, the Jacobian of the total field, and the metrics.

Method ids, labels and packages: :mod:`.methods`.

- ``identity`` (:func:`identity_register`): no registration;
- ``sitk_affine``, ``sitk_demons``, ``ants_affine``, ``ants_syn`` (:func:`classical_register`):
  SimpleITK affine (+ diffeomorphic demons), ANTs affine / SyN through antspyx;
- ``elastix``, ``fireants`` (:func:`peer_register`, optional peers, ``methods.PEER_METHODS``): itk-elastix
  with its default affine + B-spline maps, FireANTs with the settings of its LPBA40 script.

The images are given to every method as robust-normalised intensities on their own grids. Runtime
(``metrics["runtime_s"]``) is the registration alone, from images in memory to the full-resolution
field, warped image and warped labels.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from DeepRegAblationLib import geometry
from DeepRegAblationLib.imageio import ImageData, as_image, itk_image_from_array, normalize_intensity
from DeepRegAblationLib.registration.result import RegistrationResult
from DeepRegAblationLib.registration.mapping import result_from_mapping

from .methods import CLASSICAL_CHOICES, PEER_METHODS, PEER_PACKAGES

__all__ = [
    "FIREANTS_AFFINE", "FIREANTS_GREEDY",
    "AFFINE_SHRINK", "AFFINE_SIGMAS_VOX", "AFFINE_SAMPLING", "AFFINE_ITERATIONS", "AFFINE_MIN_STEP", "AFFINE_SEED",
    "DEMONS_SHRINK", "DEMONS_ITERATIONS", "DEMONS_SIGMA_VOX", "MIN_LEVEL_SIZE", "ants_available", "set_threads",
    "classical_methods", "peer_status", "peer_register", "identity_register", "classical_register",
]

PathLike = Union[str, Path]

# SimpleITK settings (see :func:`classical_register`)
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

