"""Off-screen VTK snapshots of a registration: displacement glyphs, Jacobian heatmap, checkerboards.

Everything is drawn on one slice of the FIXED grid (where :class:`RegistrationResult` lives):
the middle slice across the voxel axis closest to superior-inferior (an axial slice for a
usual head scan; the only slice of a single-slice 2D image). The slice is shown in physical
proportions (mm), radiological convention: patient left on screen right, anterior (or
superior) up.

The colour definitions used here are also the ones the scene adapter gives Slicer
(``scene/display.py``), so a snapshot and the Slicer views agree:

- Jacobian determinant: :data:`JACOBIAN_RANGE` = (-1, 3), centred at 1 (white), blue for
  contraction and red for expansion, symmetric in ``log(detJ)`` (full colour at 1/3 and 3),
  and every ``detJ <= 0`` (folding) in :data:`FOLDED_RGB`, a green that no other entry uses.
- Displacement magnitude: blue - cyan - yellow - red from 0 to the longest arrow, ``max |u|``
  over the field (:func:`arrows.longest_arrow_mm`), in the snapshot and in Slicer alike.

The glyph snapshot draws what Slicer's transform display draws (:mod:`.arrows`): the transform to
world of the result's grid transform, ``v(x) = T^-1(x) - x``, not the stored ``u``: each arrow starts
at a point of the moving image and points to where that point goes when the moving image is
registered to the fixed one.

Rendering uses a real VTK render window with ``SetOffScreenRendering(1)``. On a Linux machine
without an X display, VTK's default X window would fail first; if ``VTK_DEFAULT_OPENGL_WINDOW``
is not set, it is set to ``vtkEGLRenderWindow`` (headless EGL, e.g. Mesa) before the first
window is created.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, NamedTuple, Sequence, Tuple, Union

import numpy as np

from .. import geometry, resampling
from ..imageio import intensity_window, normalize_intensity
from .arrows import displayed_displacement_ras_mm, longest_arrow_mm

if TYPE_CHECKING:  # pragma: no cover
    from ..imageio import ImageData
    from ..registration.result import RegistrationResult

__all__ = [
    "JACOBIAN_RANGE", "JACOBIAN_TABLE_SIZE", "FOLDED_RGB", "SNAPSHOT_NAMES", "TITLE_HEIGHT", "jacobian_colors",
    "jacobian_lookup_table", "magnitude_color_points", "magnitude_lookup_table", "SliceView", "GlyphSamples",
    "glyph_samples", "render_glyphs",
    "render_jacobian", "checkerboard", "render_checkerboard", "write_snapshots",
]

PathLike = Union[str, Path]

JACOBIAN_RANGE: Tuple[float, float] = (-1.0, 3.0)  # detJ mapped across the colour table; centre 1
JACOBIAN_TABLE_SIZE = 256  # 64 entries per unit of detJ: entries 0..63 are detJ < 0
FOLDED_RGB: Tuple[float, float, float] = (0.1, 0.95, 0.1)
_CONTRACTION_RGB = np.array([0.13, 0.25, 0.75])
_EXPANSION_RGB = np.array([0.75, 0.05, 0.10])
_FULL_COLOUR_RATIO = 3.0  # |log detJ| = log 3 gives the full colour

# displacement magnitude ramp, bright on dark and on grey: (fraction of the top value, r, g, b)
_MAGNITUDE_POINTS = (
    (0.00, 0.25, 0.45, 1.00),
    (0.33, 0.10, 0.85, 0.85),
    (0.66, 0.95, 0.90, 0.15),
    (1.00, 1.00, 0.20, 0.10),
)

SNAPSHOT_NAMES = ("glyphs.png", "jacobian.png", "checkerboard.png")


# --------------------------------------------------------------------------- colours (shared with scene/display.py)
def jacobian_colors(size: int = JACOBIAN_TABLE_SIZE) -> np.ndarray:
    """RGB colours ``(size, 3)`` in [0, 1] of the Jacobian table spanning :data:`JACOBIAN_RANGE`.

    Entry ``t`` covers ``detJ`` in ``[lo + t w, lo + (t + 1) w)`` with ``w = (hi - lo) / size``
    (how VTK lookup tables and Slicer's window/level index a table). Entries whose interval
    lies below 0 are :data:`FOLDED_RGB`; the entry containing 1 is white.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    low, high = JACOBIAN_RANGE
    width = (high - low) / size
    centres = low + (np.arange(size) + 0.5) * width
    strength = np.clip(np.abs(np.log(np.maximum(centres, 1e-6))) / np.log(_FULL_COLOUR_RATIO), 0.0, 1.0)
    target = np.where((centres < 1.0)[:, None], _CONTRACTION_RGB[None], _EXPANSION_RGB[None])
    colors = (1.0 - strength[:, None]) * 1.0 + strength[:, None] * target
    colors[low + (np.arange(size) + 1) * width <= 0.0] = FOLDED_RGB
    return colors


def jacobian_lookup_table(size: int = JACOBIAN_TABLE_SIZE):
    """``vtkLookupTable`` of :func:`jacobian_colors` with range :data:`JACOBIAN_RANGE` (clamped)."""
    from vtkmodules.vtkCommonCore import vtkLookupTable

    colors = jacobian_colors(size)
    table = vtkLookupTable()
    table.SetNumberOfTableValues(size)
    for index, (r, g, b) in enumerate(colors):
        table.SetTableValue(index, float(r), float(g), float(b), 1.0)
    table.SetTableRange(*JACOBIAN_RANGE)
    table.SetBelowRangeColor(*FOLDED_RGB, 1.0)
    table.UseBelowRangeColorOn()
    return table


def magnitude_color_points(max_mm: float) -> List[Tuple[float, float, float, float]]:
    """Colour ramp for displacement magnitude: ``[(mm, r, g, b), ...]`` from 0 to ``max_mm``."""
    max_mm = float(max_mm) if np.isfinite(max_mm) and max_mm > 0 else 1.0
    return [(fraction * max_mm, r, g, b) for fraction, r, g, b in _MAGNITUDE_POINTS]


def magnitude_lookup_table(max_mm: float, size: int = 256):
    """``vtkLookupTable`` sampling :func:`magnitude_color_points` over ``[0, max_mm]``."""
    from vtkmodules.vtkCommonCore import vtkLookupTable
    from vtkmodules.vtkRenderingCore import vtkColorTransferFunction

    points = magnitude_color_points(max_mm)
    ramp = vtkColorTransferFunction()
    for value, r, g, b in points:
        ramp.AddRGBPoint(value, r, g, b)
    top = points[-1][0]
    table = vtkLookupTable()
    table.SetNumberOfTableValues(size)
    for index in range(size):
        r, g, b = ramp.GetColor(top * index / (size - 1))
        table.SetTableValue(index, r, g, b, 1.0)
    table.SetTableRange(0.0, top)
    return table


# --------------------------------------------------------------------------- slice geometry
class SliceView:
    """One slice of a ``(K, J, I)`` grid, oriented for display.

    Attributes:
        axis: tensor axis (0 = K, 1 = J, 2 = I) across the slice; ``index``: its position.
        row_axis, col_axis: tensor axes shown along screen y (rows) and screen x (columns).
        row_flip, col_flip: whether those axes are reversed on screen.
        row_spacing_mm, col_spacing_mm: pixel size on screen.
        row_dir_ras, col_dir_ras: ``(3,)`` unit RAS vectors of screen up and screen right.
    """

    def __init__(self, ijk_to_ras: np.ndarray, shape: Sequence[int]):
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be a volume shape (K, J, I), got {shape}")
        direction_ijk = geometry.direction_from_matrix(ijk_to_ras)  # columns i, j, k
        spacing_ijk = geometry.spacing_from_matrix(ijk_to_ras)
        direction = direction_ijk[:, ::-1]  # columns in tensor order k, j, i
        spacing = spacing_ijk[::-1]
        singleton = [a for a in range(3) if shape[a] == 1]
        if singleton:
            self.axis = singleton[0]
        else:  # the axis closest to superior-inferior: an axial slice
            self.axis = int(np.argmax(np.abs(direction[2])))
        self.index = shape[self.axis] // 2
        in_plane = [a for a in range(3) if a != self.axis]
        # screen x: the in-plane axis closest to right-left; screen y: the other one
        self.col_axis = max(in_plane, key=lambda a: abs(direction[0, a]))
        self.row_axis = [a for a in in_plane if a != self.col_axis][0]
        col_dir = direction[:, self.col_axis]
        row_dir = direction[:, self.row_axis]
        self.col_flip = bool(col_dir[0] > 0)  # screen right = patient left (radiological)
        up_component = row_dir[1] if abs(row_dir[1]) >= abs(row_dir[2]) else row_dir[2]
        self.row_flip = bool(up_component < 0)  # screen up = anterior / superior
        self.col_dir_ras = -col_dir if self.col_flip else col_dir
        self.row_dir_ras = -row_dir if self.row_flip else row_dir
        self.col_spacing_mm = float(spacing[self.col_axis])
        self.row_spacing_mm = float(spacing[self.row_axis])
        self.shape = shape

    def extract(self, volume: np.ndarray) -> np.ndarray:
        """The slice of ``volume`` (``(K, J, I)`` or ``(K, J, I, C)``) as ``(rows, cols[, C])``,
        row 0 at the bottom of the screen."""
        volume = np.asarray(volume)
        if tuple(volume.shape[:3]) != self.shape:
            raise ValueError(f"volume shape {volume.shape} does not match the slice grid {self.shape}")
        plane = np.take(volume, self.index, axis=self.axis)
        remaining = [a for a in range(3) if a != self.axis]
        order = [remaining.index(self.row_axis), remaining.index(self.col_axis)]
        plane = np.moveaxis(plane, order, [0, 1])
        if self.row_flip:
            plane = plane[::-1]
        if self.col_flip:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)

    def points_ras(self, rows: np.ndarray, cols: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
        """``(N, 3)`` RAS mm of the slice pixels ``(rows[n], cols[n])`` (row 0 at the bottom of the screen) on the
        grid ``ijk_to_ras`` this view was made for."""
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        kji = np.empty(rows.shape + (3,), dtype=np.float64)
        kji[..., self.axis] = self.index
        kji[..., self.row_axis] = self.shape[self.row_axis] - 1 - rows if self.row_flip else rows
        kji[..., self.col_axis] = self.shape[self.col_axis] - 1 - cols if self.col_flip else cols
        return geometry.voxel_to_ras(kji[..., ::-1], ijk_to_ras)

    @property
    def size_mm(self) -> Tuple[float, float]:
        """Screen extent (width, height) in mm from the first to the last pixel centre."""
        return (
            (self.shape[self.col_axis] - 1) * self.col_spacing_mm,
            (self.shape[self.row_axis] - 1) * self.row_spacing_mm,
        )

    def describe(self) -> str:
        names = ("k", "j", "i")
        return f"slice {names[self.axis]}={self.index}"


# --------------------------------------------------------------------------- VTK helpers
def _init_vtk_rendering() -> None:
    """Load VTK's OpenGL and FreeType factories BEFORE any renderer, mapper or actor is made.

    Objects created before ``vtkRenderingOpenGL2`` is imported are the abstract base classes and
    render nothing (a black image). Also picks the headless EGL window when there is no display.
    """
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text and colour-bar labels)
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (OpenGL renderer, mappers, window)


def _image_data(plane: np.ndarray, spacing_xy: Tuple[float, float], z: float = 0.0):
    """``vtkImageData`` of a ``(rows, cols)`` or ``(rows, cols, C)`` plane; pixel (0, 0) at the origin."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    plane = np.ascontiguousarray(plane)
    rows, cols = plane.shape[:2]
    components = 1 if plane.ndim == 2 else plane.shape[2]
    image = vtkImageData()
    image.SetDimensions(cols, rows, 1)
    image.SetSpacing(spacing_xy[0], spacing_xy[1], 1.0)
    image.SetOrigin(0.0, 0.0, z)
    values = numpy_support.numpy_to_vtk(plane.reshape(rows * cols, components), deep=True)
    image.GetPointData().SetScalars(values)
    return image


def _image_actor(plane: np.ndarray, spacing_xy: Tuple[float, float], lookup_table, interpolate: bool):
    """Image actor of a scalar plane coloured by ``lookup_table``."""
    from vtkmodules.vtkImagingCore import vtkImageMapToColors
    from vtkmodules.vtkRenderingCore import vtkImageActor

    mapper = vtkImageMapToColors()
    mapper.SetInputData(_image_data(plane.astype(np.float32), spacing_xy))
    mapper.SetLookupTable(lookup_table)
    mapper.SetOutputFormatToRGB()
    mapper.Update()
    actor = vtkImageActor()
    actor.GetMapper().SetInputConnection(mapper.GetOutputPort())
    actor.SetInterpolate(bool(interpolate))
    return actor


def _grey_table(low: float = 0.0, high: float = 1.0):
    from vtkmodules.vtkCommonCore import vtkLookupTable

    table = vtkLookupTable()
    table.SetNumberOfTableValues(256)
    table.SetTableRange(low, high)
    table.SetSaturationRange(0.0, 0.0)
    table.SetHueRange(0.0, 0.0)
    table.SetValueRange(0.0, 1.0)
    table.Build()
    return table


def _text_actor(text: str, position: Tuple[float, float], size: int = 18):
    from vtkmodules.vtkRenderingCore import vtkTextActor

    actor = vtkTextActor()
    actor.SetInput(text)
    actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    actor.GetPositionCoordinate().SetValue(*position)
    prop = actor.GetTextProperty()
    prop.SetFontSize(size)
    prop.SetColor(1.0, 1.0, 1.0)
    prop.SetBold(True)
    return actor


TITLE_HEIGHT = 0.07
"""Fraction of a snapshot's height kept above the images for the title line (titles never cover the image)."""


def _title_panel(text: str, x0: float = 0.0, x1: float = 1.0) -> "_Panel":
    """A strip of the window above the image panels that holds ``text``."""
    panel = _Panel((x0, 1.0 - TITLE_HEIGHT, x1, 1.0), (1.0, 1.0))
    panel.renderer.AddViewProp(_text_actor(text, (0.01, 0.3), 16))
    return panel


def _scalar_bar(lookup_table, title: str, labels: int = 5):
    from vtkmodules.vtkRenderingAnnotation import vtkScalarBarActor

    bar = vtkScalarBarActor()
    bar.SetLookupTable(lookup_table)
    bar.SetTitle(title)
    bar.SetNumberOfLabels(labels)
    bar.SetLabelFormat("%.2g")
    bar.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    bar.GetPositionCoordinate().SetValue(0.86, 0.1)
    bar.SetWidth(0.12)
    bar.SetHeight(0.8)
    bar.SetUnconstrainedFontSize(True)
    for prop in (bar.GetTitleTextProperty(), bar.GetLabelTextProperty()):
        prop.SetColor(1.0, 1.0, 1.0)
        prop.SetFontSize(16)
        prop.SetShadow(False)
        prop.SetItalic(False)
    return bar


class _Panel:
    """A renderer showing one plane, and how to frame it.

    The plane's pixel centres run from (0, 0) to ``size_mm`` (vtkImageActor draws pixel centre
    to pixel centre); ``bar_fraction`` of the viewport's width on the right is kept for a colour bar.
    """

    def __init__(self, viewport: Tuple[float, float, float, float], size_mm: Tuple[float, float],
                 bar_fraction: float = 0.0):
        from vtkmodules.vtkRenderingCore import vtkRenderer

        self.renderer = vtkRenderer()
        self.renderer.SetViewport(*viewport)
        self.renderer.SetBackground(0.08, 0.08, 0.1)
        self.size_mm = (max(float(size_mm[0]), 1e-3), max(float(size_mm[1]), 1e-3))
        self.bar_fraction = float(bar_fraction)

    def frame(self, window_size: Tuple[int, int], margin: float = 1.08) -> None:
        """Point a parallel camera at the plane so it fills the viewport left of the colour bar."""
        xmin, ymin, xmax, ymax = self.renderer.GetViewport()
        view_w = (xmax - xmin) * window_size[0]
        view_h = (ymax - ymin) * window_size[1]
        usable_w = view_w * (1.0 - self.bar_fraction)
        width, height = self.size_mm[0] * margin, self.size_mm[1] * margin
        half_height = max(height, width * view_h / usable_w) / 2.0
        visible_w = 2.0 * half_height * view_w / view_h
        cx = self.size_mm[0] / 2.0 + visible_w * self.bar_fraction / 2.0
        cy = self.size_mm[1] / 2.0
        camera = self.renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        camera.SetFocalPoint(cx, cy, 0.0)
        camera.SetPosition(cx, cy, 1000.0)
        camera.SetViewUp(0.0, 1.0, 0.0)
        camera.SetParallelScale(half_height)
        camera.SetClippingRange(1.0, 2000.0)


def _render_to_png(panels: Sequence[_Panel], size: Tuple[int, int], path: Path) -> Path:
    """Render ``panels`` off screen into a ``size`` (width, height) window and write ``path``."""
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import vtkRenderWindow, vtkWindowToImageFilter

    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(int(size[0]), int(size[1]))
    window.SetMultiSamples(0)
    for panel in panels:
        window.AddRenderer(panel.renderer)
        panel.frame(size)
    window.Render()
    grabber = vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.ReadFrontBufferOff()
    grabber.Update()
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grabber.GetOutputPort())
    writer.Write()
    window.Finalize()
    return path


# --------------------------------------------------------------------------- the three snapshots
def _check_inputs(fixed: "ImageData", moving: "ImageData", result: "RegistrationResult") -> None:
    shape = tuple(np.shape(fixed.array))
    if len(shape) != 3:
        raise ValueError(f"fixed.array must be (K, J, I), got shape {shape}")
    if len(np.shape(moving.array)) != 3:
        raise ValueError(f"moving.array must be (K, J, I), got shape {np.shape(moving.array)}")
    for name in ("warped", "jacobian"):
        if tuple(np.shape(getattr(result, name))) != shape:
            raise ValueError(f"result.{name} shape {np.shape(getattr(result, name))} differs from fixed {shape}")
    if tuple(np.shape(result.disp_ras_mm)) != shape + (3,):
        raise ValueError(f"result.disp_ras_mm must be {shape + (3,)}, got {np.shape(result.disp_ras_mm)}")


def _background_plane(view: SliceView, volume: np.ndarray, scratch: bool = False) -> np.ndarray:
    """The slice of ``volume`` mapped to [0, 1] with the volume's robust (1-99 %) window (only the slice is
    normalised: the same values, without a normalised copy of the volume). ``scratch``: ``volume`` is a temporary
    the window may reorder in place (no copy)."""
    plane = view.extract(volume)
    return normalize_intensity(plane, window=intensity_window(volume, overwrite_input=scratch))


class GlyphSamples(NamedTuple):
    """The arrows of a glyph snapshot, one entry per arrow (``N`` arrows on a regular pixel lattice).

    ``rows`` / ``cols``: ``(N,)`` pixel indices of the slice (row 0 at the bottom); ``u_x`` / ``u_y``:
    ``(N,)`` in-plane components along screen right / screen up (mm) of the arrow Slicer draws there
    (:func:`arrows.displayed_displacement_ras_mm`); ``magnitude``: ``(N,)`` its full 3D length in mm (Slicer
    colours by it too); ``spacing_mm``: the distance between neighbouring arrows (the smaller pixel size
    times the stride).
    """

    rows: np.ndarray
    cols: np.ndarray
    u_x: np.ndarray
    u_y: np.ndarray
    magnitude: np.ndarray
    spacing_mm: float


def glyph_samples(view: SliceView, ijk_to_ras: np.ndarray, disp_ras_mm: np.ndarray,
                  arrows_across: int) -> GlyphSamples:
    """Arrows on every ``stride``-th pixel of the slice, about ``arrows_across`` along its longer side: at each,
    the arrow Slicer's transform display draws for the grid transform of ``disp_ras_mm`` (``(K, J, I, 3)`` on
    ``ijk_to_ras``), projected on the slice as Slicer projects it."""
    rows, cols = (view.shape[view.row_axis], view.shape[view.col_axis])
    stride = max(1, int(round(max(rows, cols) / float(arrows_across))))
    r_idx, c_idx = np.meshgrid(
        np.arange(stride // 2, rows, stride), np.arange(stride // 2, cols, stride), indexing="ij"
    )
    r_idx, c_idx = r_idx.ravel(), c_idx.ravel()
    drawn = displayed_displacement_ras_mm(view.points_ras(r_idx, c_idx, ijk_to_ras), disp_ras_mm, ijk_to_ras)
    return GlyphSamples(
        rows=r_idx, cols=c_idx, u_x=drawn @ view.col_dir_ras, u_y=drawn @ view.row_dir_ras,
        magnitude=np.linalg.norm(drawn, axis=-1), spacing_mm=stride * min(view.col_spacing_mm, view.row_spacing_mm),
    )


def _arrow_scale(samples: GlyphSamples) -> float:
    """Arrow length per mm of displacement: the 95th-percentile in-plane arrow spans 0.9 arrow spacings."""
    in_plane = np.hypot(samples.u_x, samples.u_y)
    typical = float(np.percentile(in_plane, 95)) if in_plane.size else 0.0
    return 0.9 * samples.spacing_mm / typical if typical > 1e-9 else 1.0


def _glyph_points(view: SliceView, samples: GlyphSamples):
    """``vtkPolyData``: one point per arrow in screen mm (z = 1, above the image), the in-plane
    displacement as its vectors and |u| as its scalars."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    r_idx, c_idx = samples.rows, samples.cols
    points = vtkPoints()
    xy = np.stack([(c_idx + 0.0) * view.col_spacing_mm, (r_idx + 0.0) * view.row_spacing_mm,
                   np.full(r_idx.shape, 1.0)], axis=-1)
    points.SetData(numpy_support.numpy_to_vtk(xy, deep=True))
    polydata = vtkPolyData()
    polydata.SetPoints(points)
    vectors = numpy_support.numpy_to_vtk(
        np.stack([samples.u_x, samples.u_y, np.zeros(r_idx.shape)], axis=-1), deep=True)
    vectors.SetName("displacement_in_plane_mm")
    scalars = numpy_support.numpy_to_vtk(samples.magnitude.astype(np.float64), deep=True)
    scalars.SetName("displacement_magnitude_mm")
    polydata.GetPointData().SetVectors(vectors)
    polydata.GetPointData().SetScalars(scalars)
    return polydata


def _arrows_actor(polydata, scale: float, lookup_table):
    """The arrows (2D outlines starting at their point, length ``scale`` x |u_in_plane|) coloured by |u|."""
    from vtkmodules.vtkFiltersCore import vtkGlyph3D
    from vtkmodules.vtkFiltersSources import vtkGlyphSource2D
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    arrow = vtkGlyphSource2D()
    arrow.SetGlyphTypeToArrow()
    arrow.FilledOff()
    arrow.SetCenter(0.5, 0.0, 0.0)  # the arrow starts at the voxel and points along u
    glyphs = vtkGlyph3D()
    glyphs.SetInputData(polydata)
    glyphs.SetSourceConnection(arrow.GetOutputPort())
    glyphs.SetVectorModeToUseVector()
    glyphs.SetScaleModeToScaleByVector()
    glyphs.SetScaleFactor(scale)
    glyphs.SetColorModeToColorByScalar()
    glyphs.OrientOn()
    glyphs.SetInputArrayToProcess(0, 0, 0, 0, "displacement_magnitude_mm")
    glyphs.SetInputArrayToProcess(1, 0, 0, 0, "displacement_in_plane_mm")
    mapper = vtkPolyDataMapper()
    mapper.SetInputConnection(glyphs.GetOutputPort())
    mapper.SetLookupTable(lookup_table)
    mapper.SetScalarRange(*lookup_table.GetTableRange())
    mapper.ScalarVisibilityOn()
    arrows = vtkActor()
    arrows.SetMapper(mapper)
    arrows.GetProperty().SetLineWidth(2.0)
    return arrows


def render_glyphs(path: PathLike, fixed: "ImageData", result: "RegistrationResult",
                  size: Tuple[int, int] = (900, 800), arrows_across: int = 24) -> Path:
    """``glyphs.png``: the fixed slice with the arrows Slicer draws (:func:`glyph_samples`: each arrow starts
    at a point of the moving image and points to where that point goes when the moving image is registered
    to the fixed one), coloured by their length (mm).

    Arrows sit on every ``stride``-th pixel (about ``arrows_across`` along the longer side);
    the arrow length is the in-plane displacement scaled so the 95th-percentile arrow spans
    0.9 arrow spacings (the scale is written on the image). Colour: full 3D length, ramp
    from 0 to the longest arrow (``max |u|`` over the whole field), as in Slicer.
    """
    _init_vtk_rendering()
    view = SliceView(result.fixed_ijk_to_ras, np.shape(fixed.array))
    background = _background_plane(view, fixed.array)
    samples = glyph_samples(view, result.fixed_ijk_to_ras, result.disp_ras_mm, arrows_across)
    scale = _arrow_scale(samples)
    max_mm = longest_arrow_mm(result.disp_ras_mm)
    table = magnitude_lookup_table(max_mm)
    arrows = _arrows_actor(_glyph_points(view, samples), scale, table)

    panel = _Panel((0.0, 0.0, 1.0, 1.0 - TITLE_HEIGHT), view.size_mm, bar_fraction=0.16)
    renderer = panel.renderer
    renderer.AddActor(_image_actor(background, (view.col_spacing_mm, view.row_spacing_mm), _grey_table(), True))
    renderer.AddActor(arrows)
    renderer.AddViewProp(_scalar_bar(table, "|u| mm"))
    title = _title_panel(f"{result.variant}: moving -> registered, {view.describe()}; max {max_mm:.2f} mm; "
                         f"arrows x{scale:.2g}")
    return _render_to_png([panel, title], size, Path(path))


def render_jacobian(path: PathLike, fixed: "ImageData", result: "RegistrationResult",
                    size: Tuple[int, int] = (900, 800)) -> Path:
    """``jacobian.png``: detJ on the fixed slice, diverging at 1, folded voxels green and outlined."""
    _init_vtk_rendering()
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkGlyph3D
    from vtkmodules.vtkFiltersSources import vtkGlyphSource2D
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    view = SliceView(result.fixed_ijk_to_ras, np.shape(fixed.array))
    jacobian = view.extract(result.jacobian).astype(np.float64)
    table = jacobian_lookup_table()
    panel = _Panel((0.0, 0.0, 1.0, 1.0 - TITLE_HEIGHT), view.size_mm, bar_fraction=0.16)
    renderer = panel.renderer
    renderer.AddActor(_image_actor(jacobian, (view.col_spacing_mm, view.row_spacing_mm), table, False))

    folded_rows, folded_cols = np.nonzero(jacobian <= 0.0)
    if folded_rows.size:  # outline every folded pixel so isolated ones stand out
        points = vtkPoints()
        xy = np.stack([folded_cols * view.col_spacing_mm, folded_rows * view.row_spacing_mm,
                       np.full(folded_rows.shape, 1.0)], axis=-1).astype(np.float64)
        points.SetData(numpy_support.numpy_to_vtk(xy, deep=True))
        polydata = vtkPolyData()
        polydata.SetPoints(points)
        square = vtkGlyphSource2D()
        square.SetGlyphTypeToSquare()
        square.FilledOff()
        square.SetScale(1.0)
        glyphs = vtkGlyph3D()
        glyphs.SetInputData(polydata)
        glyphs.SetSourceConnection(square.GetOutputPort())
        glyphs.SetScaleModeToDataScalingOff()
        glyphs.SetScaleFactor(min(view.col_spacing_mm, view.row_spacing_mm))
        glyphs.OrientOff()
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(glyphs.GetOutputPort())
        mapper.ScalarVisibilityOff()
        outline = vtkActor()
        outline.SetMapper(mapper)
        outline.GetProperty().SetColor(0.0, 0.0, 0.0)
        outline.GetProperty().SetLineWidth(1.5)
        renderer.AddActor(outline)

    folded_pct = 100.0 * float(np.mean(np.asarray(result.jacobian) <= 0.0))
    renderer.AddViewProp(_scalar_bar(table, "det J", labels=5))
    title = _title_panel(f"{result.variant}: Jacobian determinant, {view.describe()}; folded (green) "
                         f"{folded_rows.size} px here, {folded_pct:.3g} % of volume")
    return _render_to_png([panel, title], size, Path(path))


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Interleave two same-shape 2D planes in ``tiles`` x ``tiles`` squares (``a`` at the corner)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be 2D planes of the same shape, got {a.shape} and {b.shape}")
    rows, cols = a.shape
    tile = max(1, int(np.ceil(max(rows, cols) / float(tiles))))
    r, c = np.meshgrid(np.arange(rows) // tile, np.arange(cols) // tile, indexing="ij")
    return np.where((r + c) % 2 == 0, a, b)


def render_checkerboard(path: PathLike, fixed: "ImageData", moving: "ImageData", result: "RegistrationResult",
                        size: Tuple[int, int] = (1600, 800)) -> Path:
    """``checkerboard.png``: fixed vs moving resampled on the fixed grid (before, left) and
    fixed vs warped (after, right), each image in its own robust intensity window."""
    _init_vtk_rendering()
    shape = tuple(np.shape(fixed.array))
    view = SliceView(result.fixed_ijk_to_ras, shape)
    fixed_plane = _background_plane(view, fixed.array)  # before the resampled moving volume exists: one at a time
    moving_on_fixed = resampling.resample_to_grid(moving.array, moving.ijk_to_ras, result.fixed_ijk_to_ras, shape)
    before = checkerboard(fixed_plane, _background_plane(view, moving_on_fixed, scratch=True))
    del moving_on_fixed
    after = checkerboard(fixed_plane, _background_plane(view, result.warped))
    panels = []
    for column, (plane, title) in enumerate(((before, "before: fixed | moving"),
                                              (after, f"after ({result.variant}): fixed | warped"))):
        panel = _Panel((0.5 * column, 0.0, 0.5 * column + 0.5, 1.0 - TITLE_HEIGHT), view.size_mm)
        panel.renderer.AddActor(_image_actor(plane, (view.col_spacing_mm, view.row_spacing_mm), _grey_table(), True))
        panels += [panel, _title_panel(f"{title}, {view.describe()}", 0.5 * column, 0.5 * column + 0.5)]
    return _render_to_png(panels, size, Path(path))


def write_snapshots(out_dir: PathLike, fixed: "ImageData", moving: "ImageData",
                    result: "RegistrationResult") -> List[Path]:
    """Write ``glyphs.png``, ``jacobian.png`` and ``checkerboard.png`` into ``out_dir``.

    Args:
        fixed: the fixed image (its grid is ``result``'s grid).
        moving: the moving image on its own grid (resampled for the "before" checkerboard).
        result: a :class:`RegistrationResult` (``disp_ras_mm``, ``jacobian``, ``warped``).

    Returns:
        The three paths, in that order.
    """
    _check_inputs(fixed, moving, result)
    if not np.allclose(np.asarray(fixed.ijk_to_ras), np.asarray(result.fixed_ijk_to_ras), atol=1e-6):
        raise ValueError("fixed.ijk_to_ras differs from result.fixed_ijk_to_ras: the result is on another grid")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        render_glyphs(out_dir / SNAPSHOT_NAMES[0], fixed, result),
        render_jacobian(out_dir / SNAPSHOT_NAMES[1], fixed, result),
        render_checkerboard(out_dir / SNAPSHOT_NAMES[2], fixed, moving, result),
    ]
