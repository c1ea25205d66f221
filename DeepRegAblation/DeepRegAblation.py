"""DeepRegAblation: learning-based deformable registration of brain MRI in 3D Slicer.

This file is Slicer glue only: the module text, the parameter node, the widget, a Logic that calls
the Slicer-free ``DeepRegAblationLib`` package (see docs/architecture.md), and the self-tests.
``inference.register`` does the registration; ``scene`` turns its results into MRML nodes and writes
the inputs of a background run; ``panel`` builds that run's command line and reads its results;
``jobs`` runs it as a background process (polled here by a ``qt.QTimer``); ``options`` defines the
choices of the combo boxes.

PyTorch is never imported when the module loads: the Apply button (or ``process()``) checks it
through the PyTorch extension's ``PyTorchUtils`` and offers to install it.
"""
from __future__ import annotations

import enum
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Optional, Sequence, Union

import ctk
import qt
import vtk

import slicer
import slicer.util
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import (
    Default,
    FloatRange,
    RangeBounds,
    WithinRange,
    parameterNodeWrapper,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# What the module imports when it loads imports no torch (test_slicer_module_static.py checks it).
from DeepRegAblationLib import jobs, panel
from DeepRegAblationLib.options import (
    AlignmentChoice,
    DeviceChoice,
    RefineChoice,
    VariantChoice,
    parse_variants,
    refine_argument,
)
from DeepRegAblationLib.panel import DisplaySettings, RegistrationOutcome

TORCH_VERSION_REQUIREMENT = ">=2.0"
"""Passed to ``PyTorchUtilsLogic.installTorch``; older PyTorch is refused with a clear message."""

WARPED_FOREGROUND_OPACITY = 0.5
JOB_POLL_MSEC = 200
"""How often the background registration's output is read (``jobs.BackgroundJob.poll``)."""

#
# Choices shown in the combo boxes (stored by name in the parameter node). VariantChoice, RefineChoice,
# AlignmentChoice and DeviceChoice come from DeepRegAblationLib.options (shared with the command line).
#


class ModelSource(enum.Enum):
    shipped = "shipped"
    checkpoint = "checkpoint"

    def label(self) -> str:
        return {"shipped": "Shipped default weights", "checkpoint": "Checkpoint file or folder"}[self.value]


class OutputMode(enum.Enum):
    reuse = "reuse"
    create = "create"

    def label(self) -> str:
        return {"reuse": "Reuse previous output nodes", "create": "Create new output nodes"}[self.value]


#
# DeepRegAblation
#


class DeepRegAblation(ScriptedLoadableModule):
    """Module description shown in Slicer's Help & Acknowledgement panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DeepReg Ablation"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepRegAblation developers (independent)"]
        self.parent.helpText = """
<p>Registers a <b>moving</b> brain MRI to a <b>fixed</b> one with learned deformable registration
networks, and shows what each of four model variants did to the image.</p>

<p><b>The four variants</b> (an ablation study: each pair differs in exactly one component; the
networks are otherwise identical):</p>
<ul>
<li><b>baseline</b>: U-Net + spatial transformer, trained with image similarity (local NCC) only.</li>
<li><b>regloss</b>: the same network trained with similarity + five regularizers (L2 smoothness,
displacement-magnitude hinge, local rigidity, Jacobian folding penalty, bending energy).</li>
<li><b>affine_basic</b>: an affine stage first (a real 4x4 transform), then the same U-Net; similarity only.</li>
<li><b>affine_enhanced</b>: affine stage + U-Net, similarity + the five regularizers.</li>
</ul>
<p><b>Compare all</b> runs the four and puts them side by side in one metrics table.
<b>Refinement</b> optionally optimises the result further on this image pair (off, recommended,
thorough, or a custom number of iterations). <b>Align centres</b> translates the moving image's centre
of mass onto the fixed image's before the network runs; <i>Automatic</i> does so for 3D volumes whose
centres of mass are more than 20 mm apart or that do not overlap (heads of different subjects or
scanners), and says so in the log.</p>
<p>Inputs must not be under a parent transform: harden it first (Data module, right-click the transform).</p>

<p><b>What the shipped models know</b>: they were trained on T1-weighted MRI of brains without lesions
(healthy adults and older adults of the OASIS, LPBA40, IBSR18 and IXI datasets; the 2D models on
neurite-OASIS slices), at a coarse grid, briefly, on a CPU. On pathology (a tumour, as in the
MRBrainTumor1/2 sample data, a resection cavity, large lesions or oedema) the network tries to match tissue
that has no counterpart in the other image: expect local distortion, large or folded displacements around
the lesion (see the Jacobian heatmap) and metrics that say little there; the healthy tissue away from it is
registered as usual. Other contrasts (T2, FLAIR, CT) are outside what the models saw. For such cases,
use the result as a starting point, add Refinement, and check it visually.</p>

<p><b>Outputs</b> (one subject-hierarchy folder per variant): the warped moving volume, the affine
transform, the total displacement as a grid transform in the resampling direction (fixed point to
moving point: put the moving volume under it and it appears aligned to the fixed one), the
Jacobian-determinant volume and, with labels, the warped labels.</p>

<p><b>Reading the glyphs</b> (the arrows of the shown variant, in the slice and 3D views): each arrow starts
at a point of the moving image and points to where that point goes when the moving image is registered to
the fixed one. This is the direction Slicer draws a transform in (its transform to world: the inverse of the
stored fixed-to-moving grid transform), and the glyphs.png snapshots of the command line draw the same arrows.
Its length is the displacement in mm (times the glyph scale), its colour the length, from blue (none) to red
(the longest arrow of the field). Short, smoothly varying arrows mean a gentle deformation; long arrows, or
neighbours pointing in very different directions, mean a large or implausible one.</p>

<p><b>Reading the Jacobian heatmap</b>: the determinant of the Jacobian of the mapping is the local
volume change. White (1) = volume preserved, blue (&lt; 1) = tissue shrinks, red (&gt; 1) = tissue
expands, bright green (&le; 0) = <i>folding</i>: space is turned inside out there, which real anatomy
cannot do (colours as described at the default range -1 to 3). The table reports the folding percentage (voxels with det &le; 0) and SDlogJ (spread of the log
Jacobian: lower is smoother), next to Dice / HD95 / TRE (with labels), NCC, MSE, SSIM, the
displacement size and the runtime.</p>

<p><b>Python console</b>: <code>import DeepRegAblation;
out = DeepRegAblation.DeepRegAblationLogic().process(fixedVolume, movingVolume, variants="all")</code>
returns the output nodes and metrics (see the DeepRegAblationLogic docstring).
Training and the ablation study itself are in the DeepRegAblationTraining module
(<code>deepreg-ablation</code> command line).</p>
"""
        self.parent.acknowledgementText = """
<p>The networks follow VoxelMorph: G. Balakrishnan, A. Zhao, M. R. Sabuncu, J. Guttag, A. V. Dalca,
"VoxelMorph: A Learning Framework for Deformable Medical Image Registration",
IEEE Transactions on Medical Imaging 38(8):1788-1800, 2019.</p>
<p>The four variants reproduce the design of a published ablation study of regularization losses and
affine pre-alignment in learning-based brain MRI registration, reimplemented so that the variants
differ only in the component under study (voxel-unit displacements, no output caps, a folding
penalty with a real gradient).</p>
<p>Built on 3D Slicer, PyTorch (through the PyTorch extension), SimpleITK and NumPy.</p>
"""


#
# DeepRegAblationParameterNode
#


@parameterNodeWrapper
class DeepRegAblationParameterNode:
    """Every setting of the module panel; saved with the scene.

    fixedVolume, movingVolume - the image pair (moving is deformed onto fixed).
    fixedLabels, movingLabels - optional label maps or segmentations (Dice, HD95, TRE).
    variant - one of the four variants, or compare_all.
    modelSource, checkpointPath - shipped weights, or a checkpoint file of the chosen variant, or a folder
        of <variant>.pt checkpoints.
    device - auto / cpu / cuda.
    refineMode, refineIterationsPerLevel - instance optimisation after the network: off, recommended, thorough, or
        custom with refineIterationsPerLevel iterations per level (a new name: older scenes stored a bare count).
    initialAlignment - auto (centres of mass aligned first for 3D pairs whose centres are far apart or that
        do not overlap), com (always) or none.
    outputMode - reuse the output nodes of a previous run, or create new ones.
    showGlyphs, glyphSpacingMm, glyphScalePercent - displacement arrows in the slice views; spacing 0 =
        automatic (about 16 arrows across the image), scale in % of the automatic arrow length.
    showJacobian, jacobianOpacity, jacobianRange - Jacobian-determinant heatmap overlay; the range is
        the detJ span of the colour table (-1..3: white at 1, green for folding).
    metricsTable - the table that the last run filled.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLabels: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    movingLabels: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    variant: VariantChoice = VariantChoice.compare_all
    modelSource: ModelSource = ModelSource.shipped
    checkpointPath: str = ""
    device: DeviceChoice = DeviceChoice.auto
    refineMode: RefineChoice = RefineChoice.off
    refineIterationsPerLevel: Annotated[int, WithinRange(1, 1000)] = 50
    initialAlignment: AlignmentChoice = AlignmentChoice.auto
    outputMode: OutputMode = OutputMode.reuse
    showGlyphs: bool = True
    glyphSpacingMm: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    glyphScalePercent: Annotated[float, WithinRange(1.0, 1000.0)] = 100.0
    showJacobian: bool = False
    jacobianOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    jacobianRange: Annotated[FloatRange, RangeBounds(-2.0, 6.0), Default(FloatRange(-1.0, 3.0))]
    metricsTable: vtkMRMLTableNode


#
# DeepRegAblationWidget
#


class DeepRegAblationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, model, display, Apply/Cancel, progress, log and metrics table."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._resultNodes: Dict[str, Dict[str, Any]] = {}  # variant -> nodes of the last run (Compare all: four)
        self._shownVariant: Optional[str] = None
        self._shownNodes: Optional[Dict[str, Any]] = None
        self._shownFixedVolume = None
        self._shownDisplay: Optional[DisplaySettings] = None
        self._applyGuard = panel.StartGuard()  # a second click while the first one starts is ignored

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepRegAblation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects mrmlSceneChanged(vtkMRMLScene*) to every MRML widget's setMRMLScene.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = DeepRegAblationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointPathChanged)
        self.ui.resultsTableView.connect("selectionChanged()", self.onResultsTableSelectionChanged)
        self.ui.progressBar.setVisible(False)
        self.ui.resultsTableView.setVisible(False)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module closing: stop a running registration (its results would have nowhere to go)."""
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
        self._resultNodes = {}
        self._shownVariant = None
        self._shownNodes = None
        self._shownFixedVolume = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Create/observe the parameter node; preselect the first two scalar volumes as fixed and moving."""
        self.setParameterNode(self.logic.getParameterNode())
        parameterNode = self._parameterNode
        volumes = [
            node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if not node.IsA("vtkMRMLLabelMapVolumeNode")
        ]
        if not parameterNode.fixedVolume and volumes:
            parameterNode.fixedVolume = volumes[0]
        if not parameterNode.movingVolume:
            fixedId = parameterNode.fixedVolume.GetID() if parameterNode.fixedVolume else None
            others = [node for node in volumes if node.GetID() != fixedId]
            if others:
                parameterNode.movingVolume = others[0]

    def setParameterNode(self, inputParameterNode: Optional[DeepRegAblationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" dynamic property in the .ui.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._updateDeviceChoices()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._showMetricsTable(self._parameterNode.metricsTable)
            self._onParameterNodeModified()

    # ------------------------------------------------------------------ GUI state
    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameterNode = self._parameterNode
        if not parameterNode:
            return
        self.ui.checkpointPathLineEdit.enabled = parameterNode.modelSource is ModelSource.checkpoint
        # the browse button picks a folder of <variant>.pt for "Compare all", else a checkpoint file
        # (ctkPathLineEdit browses for files whenever Files is among its filters)
        wantFolder = parameterNode.variant is VariantChoice.compare_all
        filters = ctk.ctkPathLineEdit.Dirs if wantFolder else ctk.ctkPathLineEdit.Files
        if self.ui.checkpointPathLineEdit.filters != (filters | ctk.ctkPathLineEdit.Readable):
            self.ui.checkpointPathLineEdit.filters = filters | ctk.ctkPathLineEdit.Readable
        self.ui.refineIterationsSpinBox.enabled = parameterNode.refineMode is RefineChoice.custom
        if self.ui.checkpointPathLineEdit.currentPath != parameterNode.checkpointPath:
            wasBlocked = self.ui.checkpointPathLineEdit.blockSignals(True)
            self.ui.checkpointPathLineEdit.currentPath = parameterNode.checkpointPath
            self.ui.checkpointPathLineEdit.blockSignals(wasBlocked)
        self.ui.glyphSpacingSliderWidget.enabled = parameterNode.showGlyphs
        self.ui.glyphScaleSliderWidget.enabled = parameterNode.showGlyphs
        self.ui.jacobianOpacitySliderWidget.enabled = parameterNode.showJacobian
        self.ui.jacobianRangeWidget.enabled = parameterNode.showJacobian
        self._checkCanApply()
        self._refreshDisplay()

    def onCheckpointPathChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.checkpointPath != path:
            self._parameterNode.checkpointPath = path

    def _checkCanApply(self) -> None:
        if self._applyGuard.busy:  # starting: a parameter change meanwhile must not re-enable the button
            self.ui.applyButton.enabled = False
            return
        if self.logic.isRunning():
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the running registration; the scene is left unchanged."
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        reason = self._missingInputReason()
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or "Run the registration."

    def _missingInputReason(self) -> str:
        parameterNode = self._parameterNode
        if not parameterNode:
            return "The module is not initialized."
        if not parameterNode.fixedVolume:
            return "Select a fixed volume."
        if not parameterNode.movingVolume:
            return "Select a moving volume."
        if parameterNode.fixedVolume.GetID() == parameterNode.movingVolume.GetID():
            return "Fixed and moving volumes must be different volumes."
        if parameterNode.modelSource is ModelSource.checkpoint:
            return panel.checkpoint_problem(parameterNode.checkpointPath, parameterNode.variant.value)
        return ""

    def _setRunningState(self, running: bool) -> None:
        for section in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton):
            section.enabled = not running
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.value = 0
            self.ui.progressBar.setFormat("%p%")
        self._checkCanApply()

    def _updateDeviceChoices(self) -> None:
        """Drop the CUDA choice when PyTorch is imported and has no CUDA (never imports torch itself)."""
        if "torch" not in sys.modules:
            return
        import torch

        if torch.cuda.is_available():
            return
        if self._parameterNode and self._parameterNode.device is DeviceChoice.cuda:
            self._parameterNode.device = DeviceChoice.auto
        index = self.ui.deviceComboBox.findText(DeviceChoice.cuda.label())
        if index >= 0:
            self.ui.deviceComboBox.removeItem(index)

    # ------------------------------------------------------------------ log and progress
    def _log(self, text: str) -> None:
        self.ui.statusLog.appendPlainText(text)
        if not self.logic.isRunning():  # blocking steps (PyTorch check, writing inputs): show the line now
            slicer.app.processEvents()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * min(max(fraction, 0.0), 1.0)))
        if message:
            self.ui.progressBar.setFormat(f"%p%  {message}")

    # ------------------------------------------------------------------ Apply / Cancel
    def onApplyButton(self) -> None:
        """Apply (or Cancel). The button is disabled and the guard held before anything can process events
        (the log, the PyTorch check): a double click cannot start two runs."""
        if self._applyGuard.busy:  # the second click of a double click, delivered by the first one's events
            return
        try:
            with self._applyGuard.starting():
                self.ui.applyButton.enabled = False
                self._applyOrCancel()
        finally:
            self._checkCanApply()  # the guard is free again: Apply, or Cancel while the run goes on

    def _applyOrCancel(self) -> None:
        if self.logic.isRunning():
            self._log("Cancelling...")
            self.logic.cancel()
            return
        parameterNode = self._parameterNode
        self.ui.statusLog.clear()
        try:
            self._log("Checking PyTorch...")
            self.logic.ensurePyTorch()
            self._updateDeviceChoices()
            checkpointMode = parameterNode.modelSource is ModelSource.checkpoint
            if checkpointMode:
                self.ui.checkpointPathLineEdit.addCurrentPathToHistory()  # the settingKey history
            self.logic.startRegistration(
                parameterNode.fixedVolume,
                parameterNode.movingVolume,
                variants=parameterNode.variant.value,
                fixedLabels=parameterNode.fixedLabels,
                movingLabels=parameterNode.movingLabels,
                model=parameterNode.checkpointPath if checkpointMode else None,
                device=parameterNode.device.value,
                refine=refine_argument(parameterNode.refineMode.value, parameterNode.refineIterationsPerLevel),
                initialAlignment=parameterNode.initialAlignment.value,
                reuse=parameterNode.outputMode is OutputMode.reuse,
                metricsTable=parameterNode.metricsTable,
                onLog=self._log,
                onProgress=self._onProgress,
                onFinished=self._onRegistrationFinished,
            )
        except Exception as exc:  # shown in plain words in the panel and the application log
            self._reportError(exc)
            return
        self._setRunningState(True)

    def _onRegistrationFinished(self, outcome: "RegistrationOutcome") -> None:
        self._setRunningState(False)
        if outcome.status == "cancelled":
            self._log("Cancelled. The scene was not changed.")
            return
        if outcome.status != "done":
            self._reportError(outcome.message)
            return
        for line in outcome.summaryLines():
            self._log(line)
        if outcome.table is not None:
            self._parameterNode.metricsTable = outcome.table
            self._showMetricsTable(outcome.table)
        if outcome.nodes:
            self._resultNodes = dict(outcome.nodes)
            self._shownFixedVolume = outcome.fixedVolume
            if len(self._resultNodes) > 1:
                self._log("Click a row of the table to show that variant; every variant is in its own folder in Data.")
            self._showVariant(next(iter(self._resultNodes)), fit=True)

    def onResultsTableSelectionChanged(self) -> None:
        """A row of the metrics table chosen: show that variant (its warped volume or Jacobian and its glyphs)."""
        indexes = self.ui.resultsTableView.selectionModel().selectedIndexes()
        if not indexes or not self._resultNodes or self.logic.isRunning():
            return
        variant = str(indexes[0].sibling(indexes[0].row(), 0).data())  # column 0 of the table: the variant
        if variant in self._resultNodes and variant != self._shownVariant:
            self._showVariant(variant, fit=False)

    def _showVariant(self, variant: str, fit: bool) -> None:
        """Show one variant of the last run in the slice views, with the Display section applied to it."""
        nodes = self._resultNodes[variant]
        shownNodes = [node for node in nodes.values() if hasattr(node, "GetID")]
        if not all(slicer.mrmlScene.IsNodePresent(node) for node in shownNodes + [self._shownFixedVolume]):
            self._resultNodes.pop(variant, None)
            return
        self._shownVariant, self._shownNodes = variant, nodes
        self._shownDisplay = self._displaySettings()
        self._log(f"Showing {variant} in the slice views.")
        self.logic.showResults(self._shownFixedVolume, self._shownNodes, self._shownDisplay, fit=fit)

    def _displaySettings(self) -> DisplaySettings:
        """The Display section of the panel."""
        parameterNode = self._parameterNode
        return DisplaySettings(
            show_glyphs=parameterNode.showGlyphs,
            glyph_spacing_mm=parameterNode.glyphSpacingMm,
            glyph_scale_percent=parameterNode.glyphScalePercent,
            show_jacobian=parameterNode.showJacobian,
            jacobian_opacity=parameterNode.jacobianOpacity,
            jacobian_min=parameterNode.jacobianRange.minimum,
            jacobian_max=parameterNode.jacobianRange.maximum,
        )

    def _refreshDisplay(self) -> None:
        """Apply a changed Display section to the shown result (if its nodes still exist)."""
        if not self._shownNodes or self.logic.isRunning():
            return
        display = self._displaySettings()
        if display == self._shownDisplay:
            return
        shownNodes = [node for node in self._shownNodes.values() if hasattr(node, "GetID")]
        if not all(slicer.mrmlScene.IsNodePresent(node) for node in shownNodes + [self._shownFixedVolume]):
            self._shownNodes = None
            return
        self._shownDisplay = display
        self.logic.showResults(self._shownFixedVolume, self._shownNodes, display, fit=False)

    def _showMetricsTable(self, tableNode) -> None:
        self.ui.resultsTableView.setMRMLTableNode(tableNode)
        self.ui.resultsTableView.setVisible(tableNode is not None)

    def _reportError(self, error: Union[Exception, str]) -> None:
        message = str(error) or type(error).__name__
        self._log(f"Error: {message}")
        logging.error(f"DeepRegAblation: {message}")
        if isinstance(error, Exception) and not isinstance(error, (ValueError, RuntimeError, FileNotFoundError)):
            logging.exception("DeepRegAblation: unexpected error")


#
# DeepRegAblationLogic
#


class DeepRegAblationLogic(ScriptedLoadableModuleLogic):
    """Registration of two volumes in the scene with the DeepRegAblation variants; no GUI needed.

    **Blocking, in-process** (Python console, scripts, self-tests)::

        import DeepRegAblation
        logic = DeepRegAblation.DeepRegAblationLogic()
        out = logic.process(fixedVolume, movingVolume, variants="all",
                            fixedLabels=None, movingLabels=None, model=None, device="auto", refine=0,
                            initialAlignment="auto")
        out["nodes"]["regloss"]["warped"]          # warped moving volume (vtkMRMLScalarVolumeNode)
        out["nodes"]["regloss"]["transform"]       # grid transform, fixed point -> moving point
        out["metrics"]["regloss"]["folding_pct"]   # % of voxels with det(J) <= 0
        out["table"]                               # vtkMRMLTableNode, one row per variant

    ``process(fixedVolume, movingVolume, variants="all", fixedLabels=None, movingLabels=None,
    model=None, device="auto", refine=0, initialAlignment="auto", reuse=True, metricsTable=None,
    progress=None) -> dict``

    - fixedVolume, movingVolume: ``vtkMRMLScalarVolumeNode``; results live on the fixed grid.
      Inputs (labels included) under a parent transform are refused with a ``ValueError`` that says
      to harden it, before anything runs (the same rule on the background path).
    - variants: ``"all"``, one variant id or a list of ids
      (``baseline``, ``regloss``, ``affine_basic``, ``affine_enhanced``).
    - fixedLabels, movingLabels: optional ``vtkMRMLLabelMapVolumeNode`` or
      ``vtkMRMLSegmentationNode`` (segments matched by name) for Dice / HD95 / TRE.
    - model: ``None`` = the shipped weights of each variant (``Resources/Models/<n>d/<variant>.pt``;
      an untrained network, with a warning, where none are shipped); a folder = its
      ``<variant>.pt`` checkpoints; a checkpoint file or a ``RegistrationModel`` = run that one model
      (its own variant; ``variants`` is then not used).
    - device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    - refine: instance optimisation after the network: ``0`` (off), ``"recommended"``, ``"thorough"``
      or a number of iterations per level.
    - initialAlignment: ``"auto"`` (what the model was trained with; for a model that does not record
      it, centres of mass aligned first when far apart or not overlapping; the reason is logged),
      ``"none"`` (physical space as is) or ``"com"`` (centres of mass translated
      together first; part of the affine output).
    - reuse: overwrite the output nodes of a previous run of the same variant on the same fixed and moving
      volumes (results made from other volumes are never replaced).
    - progress: optional ``progress(fraction, message)``.

    Returns ``{"results": {variant: RegistrationResult}, "nodes": {variant: {"warped", "affine",
    "transform", "jacobian", "warped_labels" (with labels), "folder"}}, "metrics": {variant: {...}},
    "table": vtkMRMLTableNode}``. Bad input raises ``ValueError`` with a plain-words message.

    **Background** (the Apply button): ``startRegistration(...)`` takes the same inputs plus
    callbacks, writes the inputs to a temporary folder, runs
    ``PythonSlicer -m DeepRegAblationTrainingLib.cli register ... --npz-only --out <tmp>`` as a
    separate process, reports its progress lines, and only when it succeeded loads each
    ``<variant>/result.npz`` into the scene. ``cancel()`` kills the process; the scene is left as it was.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._process: Optional[jobs.BackgroundJob] = None
        self._job: Optional[panel.RegistrationJob] = None
        self._pollTimer = None
        self._startGuard = panel.StartGuard()

    def getParameterNode(self) -> DeepRegAblationParameterNode:
        return DeepRegAblationParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ PyTorch
    @staticmethod
    def ensurePyTorch():
        """Return the ``torch`` module; offer to install it (after confirmation) through PyTorchUtils.

        Raises RuntimeError in plain words when the PyTorch extension is missing, the user declines,
        or the installed PyTorch is older than ``TORCH_VERSION_REQUIREMENT``.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(
                "This module needs the 'PyTorch' extension. Install it from the Extensions Manager, "
                "restart Slicer and try again."
            ) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            logging.info("PyTorch is not installed; asking to install it.")
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
            if torch is None:
                raise RuntimeError(
                    "PyTorch is required to run the registration networks and was not installed. "
                    "Click Apply again and accept the installation, or install it in the 'PyTorch Utils' module "
                    "(Utilities category)."
                )
        import torch

        minimum = TORCH_VERSION_REQUIREMENT.lstrip(">=")
        if panel.version_tuple(torch.__version__) < panel.version_tuple(minimum):
            raise RuntimeError(
                f"PyTorch {torch.__version__} is too old (this module needs {TORCH_VERSION_REQUIREMENT}). "
                "Open the 'PyTorch Utils' module (Utilities category), click 'Uninstall PyTorch', restart Slicer, "
                "then click Apply here again: the module offers to install a recent PyTorch."
            )
        return torch

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def checkInputs(fixedVolume, movingVolume, fixedLabels=None, movingLabels=None) -> None:
        """Plain-words ValueError for missing or unusable inputs, and for inputs under a parent transform
        (``scene.check_inputs``, checked before anything runs)."""
        from DeepRegAblationLib import scene

        scene.check_inputs(fixedVolume, movingVolume, fixedLabels, movingLabels)

    # ------------------------------------------------------------------ blocking run
    def process(self, fixedVolume, movingVolume, variants: Union[str, Sequence[str]] = "all",
                fixedLabels=None, movingLabels=None, model: Any = None, device: str = "auto",
                refine: Union[int, str] = 0, initialAlignment: str = "auto", reuse: bool = True, metricsTable=None,
                progress: Optional[Callable[[float, str], None]] = None) -> Dict[str, Any]:
        """Register in this process and add the results to the scene (see the class docstring)."""
        self.ensurePyTorch()
        from DeepRegAblationLib import scene
        from DeepRegAblationLib.registration.pipeline import register

        self.checkInputs(fixedVolume, movingVolume, fixedLabels, movingLabels)
        report = progress or (lambda fraction, message: logging.info(f"DeepRegAblation {100 * fraction:.0f}% {message}"))
        initialAlignment = panel.initial_alignment_argument(initialAlignment)
        fixed = scene.image_data_from_volume_node(fixedVolume)
        moving = scene.image_data_from_volume_node(movingVolume)
        fixedLabelImage, movingLabelImage = scene.label_images(
            slicer.mrmlScene, fixedVolume, movingVolume, fixedLabels, movingLabels)
        models = panel.models_to_run(model, variants, ndim=2 if fixed.is_2d else 3)

        results = []
        for index, modelArgument in enumerate(models):
            def stepProgress(fraction: float, message: str, index=index) -> None:
                report((index + fraction) / len(models), message)

            results.append(register(
                fixed, moving, model=modelArgument, fixed_labels=fixedLabelImage, moving_labels=movingLabelImage,
                refine=refine, device=device, progress=stepProgress, initial_alignment=initialAlignment,
            ))
        outcome = self._addResultsToScene(results, fixedVolume, movingVolume, reuse, metricsTable)
        for line in outcome.summaryLines():
            logging.info(line)
        return {
            "results": {result.variant: result for result in results},
            "nodes": outcome.nodes,
            "metrics": outcome.metrics,
            "table": outcome.table,
        }

    @staticmethod
    def _addResultsToScene(results, fixedVolume, movingVolume, reuse: bool, metricsTable) -> RegistrationOutcome:
        from DeepRegAblationLib import scene

        nodes, table = scene.add_results_to_scene(slicer.mrmlScene, results, fixedVolume, movingVolume, reuse,
                                                  metricsTable)
        return RegistrationOutcome.done(fixedVolume, results, nodes, table)

    # ------------------------------------------------------------------ background run
    def isRunning(self) -> bool:
        return self._process is not None and self._process.is_running()

    def startRegistration(self, fixedVolume, movingVolume, variants: Union[str, Sequence[str]] = "all",
                          fixedLabels=None, movingLabels=None, model: Optional[str] = None,
                          device: str = "auto", refine: Union[int, str] = 0, initialAlignment: str = "auto",
                          reuse: bool = True, metricsTable=None,
                          onLog: Optional[Callable[[str], None]] = None,
                          onProgress: Optional[Callable[[float, str], None]] = None,
                          onFinished: Optional[Callable[[RegistrationOutcome], None]] = None) -> None:
        """Start the registration as a background process; returns at once.

        Arguments as in :meth:`process` (``variants``: one id or "all"; ``model``: ``None``, a checkpoint
        file of that variant, or a folder of ``<variant>.pt``). ``onLog(text)``,
        ``onProgress(fraction, message)`` and ``onFinished(RegistrationOutcome)`` are called on the
        GUI thread. Nothing is added to the scene unless the process succeeds. A start while another one is
        starting (its log lines process events) or running raises ``RuntimeError``.
        """
        if self.isRunning():
            raise RuntimeError("A registration is already running; cancel it first.")
        with self._startGuard.starting():
            self._startBackgroundRun(fixedVolume, movingVolume, variants, fixedLabels, movingLabels, model, device,
                                     refine, initialAlignment, reuse, metricsTable, onLog, onProgress, onFinished)

    def _startBackgroundRun(self, fixedVolume, movingVolume, variants, fixedLabels, movingLabels, model, device,
                            refine, initialAlignment, reuse, metricsTable, onLog, onProgress, onFinished) -> None:
        self.checkInputs(fixedVolume, movingVolume, fixedLabels, movingLabels)
        variantIds = parse_variants(variants)
        if model:
            problem = panel.checkpoint_problem(str(model), variantIds)
            if problem:
                raise ValueError(problem)
        log = onLog or (lambda text: logging.info(text))
        initialAlignment = panel.initial_alignment_argument(initialAlignment, log)
        workDir = Path(slicer.util.tempDirectory("DeepRegAblation"))
        try:
            from DeepRegAblationLib import scene

            log(f"Writing the inputs to {workDir}")
            files = scene.write_input_files(slicer.mrmlScene, workDir, fixedVolume, movingVolume, fixedLabels,
                                            movingLabels)
            outDir = workDir / "results"
            command = panel.register_command(files, outDir, variantIds, model, device, refine, initialAlignment)
            env = panel.process_environment(self.libraryPaths())
            self._job = panel.RegistrationJob(
                fixed_volume=fixedVolume, moving_volume=movingVolume, work_dir=workDir, out_dir=outDir,
                variant_ids=variantIds, reuse=reuse, metrics_table=metricsTable, on_log=log,
                on_progress=onProgress or (lambda fraction, message: None),
                on_finished=onFinished or (lambda outcome: None),
            )
            log("Running: " + " ".join(command))
            self._process = jobs.BackgroundJob(command, env, on_line=self._onProcessLine, on_exit=self._onProcessExit)
            self._pollEvery(JOB_POLL_MSEC)
        except Exception:
            self._job = None
            shutil.rmtree(workDir, ignore_errors=True)
            raise

    @staticmethod
    def libraryPaths() -> List[str]:
        """Folders holding ``DeepRegAblationLib`` and ``DeepRegAblationTrainingLib`` (for PYTHONPATH)."""
        trainingModule = getattr(slicer.modules, "deepregablationtraining", None)
        trainingDir = Path(trainingModule.path).resolve().parent if trainingModule is not None else None
        return panel.library_paths(Path(__file__).resolve().parent, trainingDir)

    def _pollEvery(self, milliseconds: int) -> None:
        """Poll the background process from the GUI thread (its callbacks then run there)."""
        if self._pollTimer is None:
            self._pollTimer = qt.QTimer()
            self._pollTimer.connect("timeout()", self._pollProcess)
        self._pollTimer.setInterval(milliseconds)
        self._pollTimer.start()

    def _pollProcess(self) -> None:
        if self._process is not None:
            self._process.poll()

    def cancel(self) -> None:
        """Stop the running registration; the scene is left unchanged."""
        if self._process is not None and self._process.is_running():
            self._process.cancel()

    def _onProcessLine(self, line: str) -> None:
        if self._job is not None:
            self._job.handle_line(line)

    def _onProcessExit(self, returnCode: int, cancelled: bool) -> None:
        self._pollTimer.stop()
        job, self._job, self._process = self._job, None, None
        if job is None:
            return
        try:
            outcome = job.ended_outcome(returnCode, cancelled) or self._loadResults(job)
        except Exception as exc:
            logging.exception("DeepRegAblation: loading the results failed")
            outcome = RegistrationOutcome(status="failed", message=f"Loading the results failed: {exc}")
        finally:
            shutil.rmtree(job.work_dir, ignore_errors=True)
        job.finish(outcome)

    def _loadResults(self, job: panel.RegistrationJob) -> RegistrationOutcome:
        results = panel.load_results(job.out_dir, job.variant_ids)
        return self._addResultsToScene(results, job.fixed_volume, job.moving_volume, job.reuse, job.metrics_table)

    # ------------------------------------------------------------------ display
    @staticmethod
    def showResults(fixedVolume, nodes: Dict[str, Any], display: DisplaySettings, fit: bool = True) -> None:
        """Slice views: fixed volume in the background, warped volume (or the Jacobian) in the foreground; the
        glyphs of this result only, with the Display settings (``scene.show_result``)."""
        from DeepRegAblationLib import scene

        scene.show_result(slicer.mrmlScene, nodes, display)
        jacobianNode = nodes.get("jacobian")
        useJacobian = display.show_jacobian and jacobianNode is not None
        foreground = jacobianNode if useJacobian else nodes.get("warped")
        composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        currentLabel = slicer.mrmlScene.GetNodeByID(composite.GetLabelVolumeID() or "") if composite else None
        slicer.util.setSliceViewerLayers(
            background=fixedVolume, foreground=foreground,
            label=scene.result_label_layer(nodes, currentLabel),
            foregroundOpacity=display.jacobian_opacity if useJacobian else WARPED_FOREGROUND_OPACITY,
            fit=fit,
        )


#
# DeepRegAblationTest
#


class DeepRegAblationTest(ScriptedLoadableModuleTest):
    """Self-tests run inside Slicer (Reload and Test, or ctest): the blocking logic on real MRI, the panel's Apply
    (a double click starts one run), Cancel and Compare all (one variant shown at a time), the panel's checks.

    On a CPU they take about a minute (MRBrainTumor1/2 subsampled to 4x coarser voxels; the shipped 3D models).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_logic_process_one_variant()
        self.setUp()
        self.test_panel_apply_double_click_and_cancel()
        self.setUp()
        self.test_panel_compare_all_shows_one_variant_at_a_time()
        self.setUp()
        self.test_widget_apply_needs_inputs()

    # -- helpers
    def _sampleVolumes(self, factor: int = 4):
        """MRBrainTumor1 (fixed) and MRBrainTumor2 (moving), subsampled by ``factor`` to keep the test fast."""
        import SampleData

        fixedFull = SampleData.downloadSample("MRBrainTumor1")
        movingFull = SampleData.downloadSample("MRBrainTumor2")
        return self._subsampled(fixedFull, factor), self._subsampled(movingFull, factor)

    @staticmethod
    def _subsampled(volume, factor: int):
        import numpy as np

        array = slicer.util.arrayFromVolume(volume)[::factor, ::factor, ::factor].astype(np.float32)
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        for row in range(3):
            for column in range(3):
                ijkToRas.SetElement(row, column, ijkToRas.GetElement(row, column) * factor)
        small = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", volume.GetName() + "_small")
        small.SetIJKToRASMatrix(ijkToRas)
        slicer.util.updateVolumeFromArray(small, array)
        small.CreateDefaultDisplayNodes()
        return small

    @staticmethod
    def _refineIterations() -> int:
        """0 with shipped baseline weights; else a few refinement steps of the untrained network."""
        from DeepRegAblationLib.models.resolve import shipped_model_path

        return 0 if shipped_model_path("baseline", 3) is not None else 5

    # -- tests
    def test_logic_process_one_variant(self):
        import numpy as np

        self.delayDisplay("Loading MRBrainTumor1/2")
        fixed, moving = self._sampleVolumes()
        logic = DeepRegAblationLogic()
        logic.ensurePyTorch()
        self.delayDisplay("Registering with the baseline variant")
        out = logic.process(fixed, moving, variants="baseline", device="cpu", refine=self._refineIterations())

        self.assertEqual(list(out["nodes"]), ["baseline"])
        nodes = out["nodes"]["baseline"]
        for key in ("warped", "transform", "jacobian"):
            self.assertIsNotNone(nodes.get(key), key)
        warped = slicer.util.arrayFromVolume(nodes["warped"])
        self.assertEqual(warped.shape, slicer.util.arrayFromVolume(fixed).shape)
        self.assertTrue(np.isfinite(warped).all())
        self.assertGreater(float(np.abs(warped).max()), 0.0)
        jacobian = slicer.util.arrayFromVolume(nodes["jacobian"])
        self.assertTrue(np.isfinite(jacobian).all())

        metrics = out["metrics"]["baseline"]
        self.assertTrue(-1.0 <= metrics["ncc"] <= 1.0)
        self.assertTrue(0.0 <= metrics["folding_pct"] <= 100.0)
        self.assertAlmostEqual(metrics["folding_pct"], 100.0 * float(np.mean(jacobian <= 0)), delta=0.5)
        self.assertTrue(math.isnan(metrics["dice"]))  # no labels given
        self.assertEqual(out["table"].GetNumberOfRows(), 1)
        self.delayDisplay("Logic test passed")

    def _panelWithInputs(self, variant: VariantChoice):
        """The module's panel with the sample pair as inputs, shipped weights, CPU, the given variant."""
        fixed, moving = self._sampleVolumes()
        slicer.util.selectModule("DeepRegAblation")
        widget = slicer.util.getModuleWidget("DeepRegAblation")
        widget.logic.ensurePyTorch()
        parameterNode = widget._parameterNode
        parameterNode.fixedVolume, parameterNode.movingVolume = fixed, moving
        parameterNode.fixedLabels = parameterNode.movingLabels = None
        parameterNode.variant = variant
        parameterNode.modelSource = ModelSource.shipped
        parameterNode.device = DeviceChoice.cpu
        parameterNode.refineMode = RefineChoice.off if self._refineIterations() == 0 else RefineChoice.custom
        parameterNode.refineIterationsPerLevel = max(1, self._refineIterations())
        return widget

    def _waitUntilFinished(self, widget, timeoutSeconds: float) -> str:
        """Process events until the panel's run ended; returns the status log."""
        deadline = time.time() + timeoutSeconds
        while widget.logic.isRunning() and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertFalse(widget.logic.isRunning(), "the background registration did not end in time")
        return widget.ui.statusLog.toPlainText()

    def test_panel_apply_double_click_and_cancel(self):
        """Apply through the panel with a second click arriving while the first one starts (its log line
        processes events): one run starts. Apply (now Cancel) again: the run stops and the scene is unchanged."""
        widget = self._panelWithInputs(VariantChoice.baseline)
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        originalLog, secondClicks = widget._log, []

        def logAndClickAgain(text: str) -> None:
            originalLog(text)
            if not secondClicks:
                secondClicks.append(text)
                widget.onApplyButton()  # the double click's second click, delivered by the events of this line

        widget._log = logAndClickAgain
        try:
            widget.onApplyButton()
        finally:
            widget._log = originalLog
        self.assertTrue(secondClicks)
        self.assertTrue(widget.logic.isRunning())
        self.assertEqual(widget.ui.statusLog.toPlainText().count("Running: "), 1)
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.onApplyButton()  # Cancel
        log = self._waitUntilFinished(widget, 60)
        self.assertIn("Cancelled. The scene was not changed.", log)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        self.delayDisplay("Apply / Cancel test passed")

    def test_panel_compare_all_shows_one_variant_at_a_time(self):
        """Compare all through the panel: four rows in the metrics table, the first variant's glyphs alone are
        visible; choosing the second row shows that variant (its glyphs alone, its warped volume in the views)."""
        widget = self._panelWithInputs(VariantChoice.compare_all)
        widget.onApplyButton()
        log = self._waitUntilFinished(widget, 600)
        self.assertIn("Finished (done)", log, log)
        table = widget._parameterNode.metricsTable
        self.assertEqual(table.GetNumberOfRows(), 4)
        variants = [table.GetCellText(row, 0) for row in range(4)]
        self.assertEqual(variants, list(parse_variants("all")))

        def visibleGlyphs():
            return [variant for variant, nodes in widget._resultNodes.items()
                    if nodes["transform"].GetDisplayNode().GetVisibility()]

        self.assertEqual(visibleGlyphs(), [variants[0]])
        widget.ui.resultsTableView.selectRow(1)
        slicer.app.processEvents()
        self.assertEqual(widget._shownVariant, variants[1])
        self.assertEqual(visibleGlyphs(), [variants[1]])
        composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        self.assertEqual(composite.GetForegroundVolumeID(), widget._resultNodes[variants[1]]["warped"].GetID())
        self.delayDisplay("Compare all test passed")

    def test_widget_apply_needs_inputs(self):
        fixed, moving = self._sampleVolumes(factor=8)
        slicer.util.selectModule("DeepRegAblation")
        widget = slicer.util.getModuleWidget("DeepRegAblation")
        parameterNode = widget._parameterNode
        parameterNode.fixedVolume = None
        parameterNode.movingVolume = None
        self.assertFalse(widget.ui.applyButton.enabled)
        parameterNode.fixedVolume = fixed
        self.assertFalse(widget.ui.applyButton.enabled)
        parameterNode.movingVolume = fixed
        self.assertFalse(widget.ui.applyButton.enabled)  # same volume twice
        parameterNode.movingVolume = moving
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        parameterNode.modelSource = ModelSource.checkpoint
        parameterNode.checkpointPath = ""
        self.assertFalse(widget.ui.applyButton.enabled)  # checkpoint chosen but no file
        parameterNode.checkpointPath = slicer.app.temporaryPath  # a folder without <variant>.pt
        self.assertFalse(widget.ui.applyButton.enabled)
        parameterNode.modelSource = ModelSource.shipped
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertEqual(widget.ui.variantComboBox.count, len(VariantChoice))
        self.assertEqual(parameterNode.initialAlignment, AlignmentChoice.auto)
        parameterNode.refineMode = RefineChoice.off
        self.assertFalse(widget.ui.refineIterationsSpinBox.enabled)
        parameterNode.refineMode = RefineChoice.custom
        self.assertTrue(widget.ui.refineIterationsSpinBox.enabled)
        # an input under a transform is refused before anything runs, with a message to harden it
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        fixed.SetAndObserveTransformNodeID(transform.GetID())
        with self.assertRaisesRegex(ValueError, "Harden the transform"):
            DeepRegAblationLogic.checkInputs(fixed, moving)
        self.delayDisplay("Widget test passed")
