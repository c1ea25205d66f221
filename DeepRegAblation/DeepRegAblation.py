"""DeepRegAblation: learning-based deformable registration of brain MRI in 3D Slicer.

This file is Slicer glue only (module text, widget, a thin logic, self-tests). The registration
itself lives in the Slicer-free ``DeepRegAblationLib`` package (see docs/architecture.md):
``inference.register`` does the work, ``scene`` turns its results into MRML nodes.

PyTorch is never imported when the module loads: the Apply button (or ``process()``) checks it
through the PyTorch extension's ``PyTorchUtils`` and offers to install it.
"""
from __future__ import annotations

import enum
import logging
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

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

TORCH_VERSION_REQUIREMENT = ">=2.0"
"""Passed to ``PyTorchUtilsLogic.installTorch``; older PyTorch is refused with a clear message."""

WARPED_FOREGROUND_OPACITY = 0.5
AUTO_GLYPH_SPACING_ATTRIBUTE = "DeepRegAblation.autoGlyphSpacingMm"
AUTO_GLYPH_SCALE_ATTRIBUTE = "DeepRegAblation.autoGlyphScalePercent"

#
# Choices shown in the combo boxes (stored by name in the parameter node)
#


class VariantChoice(enum.Enum):
    """The four ablation variants (ids of ``DeepRegAblationLib.variants.VARIANTS``) and "all"."""

    baseline = "baseline"
    regloss = "regloss"
    affine_basic = "affine_basic"
    affine_enhanced = "affine_enhanced"
    compare_all = "all"

    def label(self) -> str:
        return {
            "baseline": "baseline: U-Net, similarity only",
            "regloss": "regloss: U-Net + regularization losses",
            "affine_basic": "affine_basic: affine + U-Net, similarity only",
            "affine_enhanced": "affine_enhanced: affine + U-Net + regularization",
            "all": "Compare all four variants",
        }[self.value]


class ModelSource(enum.Enum):
    shipped = "shipped"
    checkpoint = "checkpoint"

    def label(self) -> str:
        return {"shipped": "Shipped default weights", "checkpoint": "Checkpoint file or folder"}[self.value]


class DeviceChoice(enum.Enum):
    """Keep ``cuda`` last: the widget removes that last combo item when PyTorch has no CUDA."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"

    def label(self) -> str:
        return {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "CUDA GPU"}[self.value]


class RefineChoice(enum.Enum):
    """Instance optimisation after the network (``DeepRegAblationLib.choices.REFINE_CHOICES``)."""

    off = "off"
    recommended = "recommended"
    thorough = "thorough"
    custom = "custom"

    def label(self) -> str:
        return {
            "off": "Off (network only, fastest)",
            "recommended": "Recommended (fast)",
            "thorough": "Thorough (slower, to full resolution)",
            "custom": "Custom iterations",
        }[self.value]


class AlignmentChoice(enum.Enum):
    """Initial alignment (``DeepRegAblationLib.choices.ALIGNMENT_CHOICES``)."""

    auto = "auto"
    com = "com"
    none = "none"

    def label(self) -> str:
        return {
            "auto": "Automatic (when the centres are far apart)",
            "com": "Always align centres of mass",
            "none": "Never (use the volumes where they lie)",
        }[self.value]


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
        self.parent.contributors = ["DeepRegAblation contributors"]
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

<p><b>Outputs</b> (one subject-hierarchy folder per variant): the warped moving volume, the affine
transform, the total displacement as a grid transform in the resampling direction (fixed point to
moving point: put the moving volume under it and it appears aligned to the fixed one), the
Jacobian-determinant volume and, with labels, the warped labels.</p>

<p><b>Reading the glyphs</b>: each arrow starts at a point of the fixed image and points to where that
point is taken from in the moving image; its length is the displacement in mm (times the glyph
scale), its colour the magnitude. Short, smoothly varying arrows mean a gentle deformation; long
arrows, or neighbours pointing in very different directions, mean a large or implausible one.</p>

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


@dataclass
class DisplaySettings:
    """How results are shown in the slice views (the Display section of the panel)."""

    showGlyphs: bool = True
    glyphSpacingMm: float = 0.0  # 0 = automatic
    glyphScalePercent: float = 100.0  # of the automatic arrow length
    showJacobian: bool = False
    jacobianOpacity: float = 0.6
    jacobianMin: float = -1.0
    jacobianMax: float = 3.0

    @classmethod
    def fromParameterNode(cls, parameterNode: DeepRegAblationParameterNode) -> "DisplaySettings":
        return cls(
            showGlyphs=parameterNode.showGlyphs,
            glyphSpacingMm=parameterNode.glyphSpacingMm,
            glyphScalePercent=parameterNode.glyphScalePercent,
            showJacobian=parameterNode.showJacobian,
            jacobianOpacity=parameterNode.jacobianOpacity,
            jacobianMin=parameterNode.jacobianRange.minimum,
            jacobianMax=parameterNode.jacobianRange.maximum,
        )


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
        self._shownNodes: Optional[Dict[str, Any]] = None
        self._shownFixedVolume = None
        self._shownDisplay: Optional[DisplaySettings] = None

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
            return DeepRegAblationLogic.checkpointProblem(parameterNode.checkpointPath, parameterNode.variant.value)
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
            from DeepRegAblationLib import choices

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
                refine=choices.refine_argument(parameterNode.refineMode.value, parameterNode.refineIterationsPerLevel),
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
            firstVariant = next(iter(outcome.nodes))
            self._log(f"Showing {firstVariant} in the slice views; every variant is in its own folder in Data.")
            self._shownNodes = outcome.nodes[firstVariant]
            self._shownFixedVolume = outcome.fixedVolume
            self._shownDisplay = DisplaySettings.fromParameterNode(self._parameterNode)
            self.logic.showResults(self._shownFixedVolume, self._shownNodes, self._shownDisplay, fit=True)

    def _refreshDisplay(self) -> None:
        """Apply a changed Display section to the shown result (if its nodes still exist)."""
        if not self._shownNodes or self.logic.isRunning():
            return
        display = DisplaySettings.fromParameterNode(self._parameterNode)
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
# Background process (runs the registration command line off the GUI thread)
#


def _killProcessTree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and its children (PythonSlicer is a launcher that starts the real Python)."""
    if proc.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session: group id == pid
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


class BackgroundProcess:
    """A command whose output lines are delivered on the GUI thread.

    A reader thread queues the process's merged stdout/stderr lines; a ``qt.QTimer`` polls the queue
    every ``POLL_MSEC`` ms, calls ``onLine(line)`` for each line and, once the process has exited and
    its output is drained, ``onExit(returnCode, cancelled)`` exactly once.
    """

    POLL_MSEC = 200

    def __init__(self, command: Sequence[str], env: Dict[str, str],
                 onLine: Callable[[str], None], onExit: Callable[[int, bool], None]) -> None:
        self.command = [str(part) for part in command]
        self.cancelled = False
        self._polling = False
        self._exited = False
        self._onLine = onLine
        self._onExit = onExit
        self._lines: "queue.Queue[str]" = queue.Queue()
        popenOptions: Dict[str, Any] = dict(
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            universal_newlines=True, encoding="utf-8", errors="replace", bufsize=1,
        )
        if os.name == "nt":
            popenOptions["creationflags"] = (
                subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
            )
        else:
            popenOptions["start_new_session"] = True
        self._proc = subprocess.Popen(self.command, **popenOptions)
        self._reader = threading.Thread(target=self._readOutput, name="DeepRegAblationOutput", daemon=True)
        self._reader.start()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MSEC)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()

    def _readOutput(self) -> None:
        for line in iter(self._proc.stdout.readline, ""):
            self._lines.put(line.rstrip("\r\n"))
        self._proc.stdout.close()

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            self._onLine(line)

    def _poll(self) -> None:
        if self._polling or self._exited:  # a callback that processes events must not re-enter
            return
        self._polling = True
        try:
            self._drain()
            if self._reader.is_alive() or self._proc.poll() is None:
                return
            self._drain()
            self._timer.stop()
            self._exited = True
        finally:
            self._polling = False
        self._onExit(self._proc.returncode, self.cancelled)

    def isRunning(self) -> bool:
        return not self._exited

    def cancel(self) -> None:
        self.cancelled = True
        _killProcessTree(self._proc)


#
# DeepRegAblationLogic
#


@dataclass
class RegistrationOutcome:
    """What a background registration ended with (given to the ``onFinished`` callback).

    status: "done", "cancelled" or "failed"; message: plain-words error when failed.
    fixedVolume: the fixed volume the results live on.
    nodes: variant -> dict of output nodes (``scene.add_registration_to_scene`` keys).
    metrics: variant -> metrics dict; table: the metrics table node.
    """

    status: str
    message: str = ""
    fixedVolume: Any = None
    nodes: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    table: Any = None

    def summaryLines(self) -> List[str]:
        return [DeepRegAblationLogic.metricsSummary(variant, values) for variant, values in self.metrics.items()]


@dataclass
class _RegistrationJob:
    fixedVolume: Any
    movingVolume: Any
    workDir: Path
    outDir: Path
    variantIds: List[str]
    reuse: bool
    metricsTable: Any
    onLog: Callable[[str], None]
    onProgress: Callable[[float, str], None]
    onFinished: Callable[[RegistrationOutcome], None]
    startTime: float = field(default_factory=time.time)
    errorLines: List[str] = field(default_factory=list)
    tailLines: List[str] = field(default_factory=list)


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
    - initialAlignment: ``"auto"`` (centres of mass aligned first when far apart or not overlapping,
      ``DeepRegAblationLib.choices.decide_initial_alignment``; the reason is logged),
      ``"none"`` (physical space as is) or ``"com"`` (centres of mass translated
      together first; part of the affine output).
    - reuse: overwrite the output nodes of a previous run of the same variant and inputs.
    - progress: optional ``progress(fraction, message)``.

    Returns ``{"results": {variant: RegistrationResult}, "nodes": {variant: {"warped", "affine",
    "transform", "jacobian", "warped_labels" (with labels), "folder"}}, "metrics": {variant: {...}},
    "table": vtkMRMLTableNode}``. Bad input raises ``ValueError`` with a plain-words message.

    **Background** (the Apply button): ``startRegistration(...)`` takes the same inputs plus
    callbacks, writes the inputs to a temporary folder, runs
    ``PythonSlicer -m DeepRegAblationTrainingLib.cli register ... --save-npz --out <tmp>`` as a
    separate process, reports its progress lines, and only when it succeeded loads each
    ``<variant>/result.npz`` into the scene. ``cancel()`` kills the process; the scene is left as it was.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._process: Optional[BackgroundProcess] = None
        self._job: Optional[_RegistrationJob] = None

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
        if DeepRegAblationLogic._versionTuple(torch.__version__) < DeepRegAblationLogic._versionTuple(minimum):
            raise RuntimeError(
                f"PyTorch {torch.__version__} is too old (this module needs {TORCH_VERSION_REQUIREMENT}). "
                "Open the 'PyTorch Utils' module (Utilities category), click 'Uninstall PyTorch', restart Slicer, "
                "then click Apply here again: the module offers to install a recent PyTorch."
            )
        return torch

    @staticmethod
    def _versionTuple(version: str) -> Tuple[int, ...]:
        numbers = re.findall(r"\d+", version.split("+")[0])[:3]
        return tuple(int(n) for n in numbers)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def variantIds(variants: Union[str, Sequence[str]]) -> List[str]:
        """``"all"`` / an id / a list of ids -> list of variant ids (ValueError naming the valid ids)."""
        from DeepRegAblationLib.variants import VARIANTS

        if isinstance(variants, str):
            ids = list(VARIANTS) if variants == "all" else [variants]
        else:
            ids = list(variants)
        unknown = [v for v in ids if v not in VARIANTS]
        if not ids or unknown:
            raise ValueError(f"variants must be 'all' or ids among {list(VARIANTS)}, got {variants!r}")
        return ids

    @classmethod
    def checkpointProblem(cls, path: str, variants: Union[str, Sequence[str]]) -> str:
        """Plain-words reason why ``path`` cannot provide the models of ``variants`` ("" if it can).

        A checkpoint file holds one variant (it must be the single chosen one; the registration checks
        that the file really holds it); a folder must hold ``<variant>.pt`` for every chosen variant.
        """
        if not path or not os.path.exists(path):
            return "Choose an existing checkpoint file or folder (or use the shipped weights)."
        ids = cls.variantIds(variants)
        if os.path.isfile(path):
            if len(ids) != 1:
                return ("A checkpoint file holds one variant: choose that variant, or give a folder of "
                        "<variant>.pt checkpoints to compare all four.")
            return ""
        missing = [f"{v}.pt" for v in ids if not os.path.isfile(os.path.join(path, f"{v}.pt"))]
        return f"The checkpoint folder lacks {', '.join(missing)}." if missing else ""

    @staticmethod
    def checkInputs(fixedVolume, movingVolume, fixedLabels=None, movingLabels=None) -> None:
        """Plain-words ValueError for missing or unusable inputs, and for inputs under a parent transform
        (the rule of ``scene.parent_transform_problem``, checked before anything runs)."""
        from DeepRegAblationLib import scene

        for node, role in ((fixedVolume, "fixed volume"), (movingVolume, "moving volume")):
            if node is None:
                raise ValueError(f"No {role} was selected.")
            if node.GetImageData() is None:
                raise ValueError(f"The {role} '{node.GetName()}' has no image data.")
            if node.GetImageData().GetNumberOfScalarComponents() != 1:
                raise ValueError(f"The {role} '{node.GetName()}' is not a scalar (single-component) image.")
        if fixedVolume.GetID() == movingVolume.GetID():
            raise ValueError("Fixed and moving volumes must be different volumes.")
        for node, role in ((fixedVolume, "fixed volume"), (movingVolume, "moving volume"),
                           (fixedLabels, "fixed labels"), (movingLabels, "moving labels")):
            problem = scene.parent_transform_problem(node, role)
            if problem:
                raise ValueError(problem)

    @staticmethod
    def resolveInitialAlignment(fixedVolume, movingVolume, choice: str,
                                log: Optional[Callable[[str], None]] = None) -> str:
        """The ``initial_alignment`` to pass to ``register`` for ``choice`` (``"auto"``, ``"com"``, ``"none"``).

        ``"auto"`` is passed on: ``register`` decides per model (what it was trained with, else
        ``choices.decide_initial_alignment``) and says why in a progress line (the status log).
        """
        from DeepRegAblationLib import choices

        if choice not in choices.ALIGNMENT_CHOICES:
            raise ValueError(f"alignment choice must be one of {choices.ALIGNMENT_CHOICES}, got {choice!r}")
        if choice == "auto":
            (log or logging.info)("Initial alignment: automatic (what the model was trained with; the centres of "
                                  "mass for the shipped 3D models)")
        return choice

    def _labelmapForLabels(self, labelsNode, referenceVolume, colorTableNode, tempNodes: list):
        """A labelmap node for ``labelsNode``: itself, or a temporary export of a segmentation.

        Segmentations are exported on the grid of ``referenceVolume``; the shared ``colorTableNode``
        gives equally named segments of the fixed and moving segmentations the same label value.
        Temporary nodes are appended to ``tempNodes`` (the caller removes them).
        """
        if labelsNode is None:
            return None
        if labelsNode.IsA("vtkMRMLLabelMapVolumeNode"):
            return labelsNode
        if not labelsNode.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(f"'{labelsNode.GetName()}' must be a label map volume or a segmentation.")
        labelmap = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLLabelMapVolumeNode", slicer.mrmlScene.GenerateUniqueName("DeepRegAblationTempLabels")
        )
        tempNodes.append(labelmap)
        segmentIds = vtk.vtkStringArray()
        labelsNode.GetSegmentation().GetSegmentIDs(segmentIds)
        if segmentIds.GetNumberOfValues() == 0:
            raise ValueError(f"The segmentation '{labelsNode.GetName()}' has no segments.")
        exported = slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
            labelsNode, segmentIds, labelmap, referenceVolume,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colorTableNode,
        )
        if not exported:
            raise ValueError(f"The segmentation '{labelsNode.GetName()}' could not be converted to a label map.")
        return labelmap

    def _labelNodes(self, fixedVolume, movingVolume, fixedLabels, movingLabels, tempNodes: list):
        """(fixedLabelmap, movingLabelmap), exporting segmentations into temporary nodes.

        Every segment name of the segmentations gets one label value (1, 2, ... in order of first
        appearance, fixed first), so that equally named segments of the fixed and the moving
        segmentation get the same value. Label map volumes are used with their own values.
        """
        if fixedLabels is None and movingLabels is None:
            return None, None
        segmentNames: List[str] = []
        for node in (fixedLabels, movingLabels):
            if node is not None and node.IsA("vtkMRMLSegmentationNode"):
                segmentation = node.GetSegmentation()
                for index in range(segmentation.GetNumberOfSegments()):
                    name = segmentation.GetNthSegment(index).GetName()
                    if name not in segmentNames:
                        segmentNames.append(name)
        colorTable = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLColorTableNode", slicer.mrmlScene.GenerateUniqueName("DeepRegAblationTempColors")
        )
        tempNodes.append(colorTable)
        colorTable.SetTypeToUser()
        colorTable.SetNumberOfColors(len(segmentNames) + 1)
        colorTable.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for labelValue, name in enumerate(segmentNames, start=1):
            colorTable.SetColor(labelValue, name, 0.5, 0.5, 0.5, 1.0)
        return (
            self._labelmapForLabels(fixedLabels, fixedVolume, colorTable, tempNodes),
            self._labelmapForLabels(movingLabels, movingVolume, colorTable, tempNodes),
        )

    @staticmethod
    def _removeNodes(nodes: list) -> None:
        for node in reversed(nodes):
            if slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)
        nodes.clear()

    @staticmethod
    def _writeVolume(volumeNode, path: Path) -> Path:
        """Write a volume for the background process (``scene.write_volume_file``: standalone storage
        node, refused under a parent transform)."""
        from DeepRegAblationLib import scene

        return scene.write_volume_file(volumeNode, path, volumeNode.GetName())

    def writeInputFiles(self, workDir: Path, fixedVolume, movingVolume,
                        fixedLabels=None, movingLabels=None) -> Dict[str, Path]:
        """Write the inputs as NRRD files in ``workDir``; returns role -> path (labels only when given)."""
        tempNodes: list = []
        try:
            fixedLabelmap, movingLabelmap = self._labelNodes(fixedVolume, movingVolume, fixedLabels, movingLabels, tempNodes)
            files = {
                "fixed": self._writeVolume(fixedVolume, workDir / "fixed.nrrd"),
                "moving": self._writeVolume(movingVolume, workDir / "moving.nrrd"),
            }
            if fixedLabelmap is not None:
                files["fixed_labels"] = self._writeVolume(fixedLabelmap, workDir / "fixed_labels.nrrd")
            if movingLabelmap is not None:
                files["moving_labels"] = self._writeVolume(movingLabelmap, workDir / "moving_labels.nrrd")
            return files
        finally:
            self._removeNodes(tempNodes)

    # ------------------------------------------------------------------ command line
    @staticmethod
    def libraryPaths() -> List[str]:
        """Folders holding ``DeepRegAblationLib`` and ``DeepRegAblationTrainingLib`` (for PYTHONPATH)."""
        here = Path(__file__).resolve().parent
        candidates = [here]
        trainingModule = getattr(slicer.modules, "deepregablationtraining", None)
        if trainingModule is not None:
            candidates.append(Path(trainingModule.path).resolve().parent)
        candidates.append(here.parent / "DeepRegAblationTraining")
        paths: List[str] = []
        for package in ("DeepRegAblationLib", "DeepRegAblationTrainingLib"):
            folder = next((c for c in candidates if (c / package / "__init__.py").is_file()), None)
            if folder is None:
                raise RuntimeError(
                    f"The {package} package of the DeepRegAblation extension was not found next to {here}; "
                    "reinstall the extension."
                )
            if str(folder) not in paths:
                paths.append(str(folder))
        return paths

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (PythonSlicer), so the process sees Slicer's packages (torch)."""
        return shutil.which("PythonSlicer") or sys.executable

    def processEnvironment(self) -> Dict[str, str]:
        env = dict(os.environ)
        previous = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(self.libraryPaths() + ([previous] if previous else []))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def registerCommand(self, files: Dict[str, Path], outDir: Path, variantIds: Sequence[str],
                        model: Optional[str], device: str, refine: Union[int, str] = 0,
                        initialAlignment: str = "none") -> List[str]:
        """The ``deepreg-ablation register`` command line for the written input files.

        ``refine``: 0, "recommended", "thorough" or iterations; ``initialAlignment``: "none" or "com"
        (an "auto" choice is resolved before, by :meth:`resolveInitialAlignment`).
        """
        from DeepRegAblationLib import choices

        return [self.pythonExecutable(), "-m", "DeepRegAblationTrainingLib.cli"] + choices.register_arguments(
            files, outDir, variantIds, model, device, refine, initialAlignment
        )

    _PROGRESS_PATTERNS = (
        re.compile(r"^\s*progress\s*[:=]?\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<percent>%?)\s*[:\-]?\s*(?P<message>.*)$", re.I),
        re.compile(r"^\s*\[\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<percent>%)\s*\]\s*(?P<message>.*)$"),
    )
    _STEP_PATTERN = re.compile(r"^\s*\[\s*(?P<index>\d+)\s*/\s*(?P<count>\d+)\s*\]\s*(?P<message>.*)$")

    @classmethod
    def parseProgressLine(cls, line: str) -> Optional[Tuple[float, str]]:
        """A progress line of the command -> ``(fraction, message)``, else ``None``.

        ``"progress 0.42 message"``, ``"progress: 42% message"`` and ``"[ 42%] message"`` give 0.42;
        ``"[2/4] regloss: registering ..."`` (step 2 of 4 starts) gives 0.25.
        """
        for pattern in cls._PROGRESS_PATTERNS:
            match = pattern.match(line)
            if match:
                value = float(match.group("value"))
                if match.group("percent") or value > 1.0:
                    value /= 100.0
                return min(max(value, 0.0), 1.0), match.group("message").strip()
        match = cls._STEP_PATTERN.match(line)
        if match and int(match.group("count")) > 0:
            fraction = (int(match.group("index")) - 1) / int(match.group("count"))
            return min(max(fraction, 0.0), 1.0), match.group("message").strip()
        return None

    # ------------------------------------------------------------------ background run
    def isRunning(self) -> bool:
        return self._process is not None and self._process.isRunning()

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
        GUI thread. Nothing is added to the scene unless the process succeeds.
        """
        if self.isRunning():
            raise RuntimeError("A registration is already running; cancel it first.")
        self.checkInputs(fixedVolume, movingVolume, fixedLabels, movingLabels)
        variantIds = self.variantIds(variants)
        if model:
            problem = self.checkpointProblem(str(model), variantIds)
            if problem:
                raise ValueError(problem)
        log = onLog or (lambda text: logging.info(text))
        initialAlignment = self.resolveInitialAlignment(fixedVolume, movingVolume, initialAlignment, log)
        workDir = Path(slicer.util.tempDirectory("DeepRegAblation"))
        try:
            log(f"Writing the inputs to {workDir}")
            files = self.writeInputFiles(workDir, fixedVolume, movingVolume, fixedLabels, movingLabels)
            outDir = workDir / "results"
            command = self.registerCommand(files, outDir, variantIds, model, device, refine, initialAlignment)
            env = self.processEnvironment()
            self._job = _RegistrationJob(
                fixedVolume=fixedVolume, movingVolume=movingVolume, workDir=workDir, outDir=outDir,
                variantIds=variantIds, reuse=reuse, metricsTable=metricsTable, onLog=log,
                onProgress=onProgress or (lambda fraction, message: None),
                onFinished=onFinished or (lambda outcome: None),
            )
            log("Running: " + " ".join(command))
            self._process = BackgroundProcess(command, env, onLine=self._onProcessLine, onExit=self._onProcessExit)
        except Exception:
            self._job = None
            shutil.rmtree(workDir, ignore_errors=True)
            raise

    def cancel(self) -> None:
        """Stop the running registration; the scene is left unchanged."""
        if self._process is not None and self._process.isRunning():
            self._process.cancel()

    def _onProcessLine(self, line: str) -> None:
        job = self._job
        if job is None or not line.strip():
            return
        progress = self.parseProgressLine(line)
        if progress is not None:
            job.onProgress(*progress)
            if progress[1]:
                job.onLog(progress[1])
            return
        if line.lstrip().lower().startswith("error:"):
            job.errorLines.append(line.strip()[len("error:"):].strip())
        job.tailLines = (job.tailLines + [line])[-20:]
        job.onLog(line)

    def _onProcessExit(self, returnCode: int, cancelled: bool) -> None:
        job, self._job, self._process = self._job, None, None
        if job is None:
            return
        try:
            if cancelled:
                outcome = RegistrationOutcome(status="cancelled")
            elif returnCode != 0:
                detail = "; ".join(job.errorLines) or "\n".join(job.tailLines[-5:]) or "no output"
                outcome = RegistrationOutcome(
                    status="failed", message=f"The registration process failed (exit status {returnCode}): {detail}"
                )
            else:
                outcome = self._loadResults(job)
        except Exception as exc:
            logging.exception("DeepRegAblation: loading the results failed")
            outcome = RegistrationOutcome(status="failed", message=f"Loading the results failed: {exc}")
        finally:
            shutil.rmtree(job.workDir, ignore_errors=True)
        elapsed = time.time() - job.startTime
        job.onLog(f"Finished ({outcome.status}) after {elapsed:.1f} s.")
        job.onFinished(outcome)

    def _loadResults(self, job: _RegistrationJob) -> RegistrationOutcome:
        from DeepRegAblationLib.inference import RegistrationResult

        resultFiles = sorted(job.outDir.glob("*/result.npz"))
        order = {variant: index for index, variant in enumerate(job.variantIds)}
        resultFiles.sort(key=lambda path: (order.get(path.parent.name, len(order)), path.parent.name))
        if not resultFiles:
            raise RuntimeError(f"The registration finished but wrote no result.npz under {job.outDir}.")
        results = [RegistrationResult.load(path) for path in resultFiles]
        return self._addResultsToScene(results, job.fixedVolume, job.movingVolume, job.reuse, job.metricsTable)

    def _addResultsToScene(self, results, fixedVolume, movingVolume, reuse: bool, metricsTable) -> RegistrationOutcome:
        from DeepRegAblationLib import scene

        outcome = RegistrationOutcome(status="done", fixedVolume=fixedVolume)
        for result in results:
            nodes = scene.add_registration_to_scene(slicer.mrmlScene, result, fixedVolume, movingVolume, reuse=reuse)
            self.rememberAutomaticGlyphs(nodes)
            outcome.nodes[result.variant] = nodes
            outcome.metrics[result.variant] = dict(result.metrics)
        tableNode = metricsTable if (reuse and metricsTable is not None) else None
        outcome.table = scene.update_metrics_table(slicer.mrmlScene, results, table_node=tableNode)
        return outcome

    # ------------------------------------------------------------------ blocking run
    def _modelsToRun(self, model: Any, variants: Union[str, Sequence[str]], ndim: int) -> List[Any]:
        """What ``inference.register(model=...)`` gets, once per registration to run.

        ``None``: the shipped weights of each variant, or (as the command line does) the untrained
        network of a variant with no shipped weights, with a warning. A folder: its ``<variant>.pt``.
        A checkpoint file or a ``RegistrationModel``: that one model.
        """
        from DeepRegAblationLib import inference

        if model is None:
            models = []
            for variant in self.variantIds(variants):
                path = inference.shipped_model_path(variant, ndim)
                if path is None:
                    logging.warning(
                        f"DeepRegAblation: no shipped {ndim}D weights for '{variant}' "
                        f"({inference.MODELS_DIR / f'{ndim}d' / f'{variant}.pt'}): using an UNTRAINED network, "
                        "close to the identity. Choose a checkpoint or train one with DeepRegAblationTraining."
                    )
                models.append(str(path) if path is not None else variant)
            return models
        if isinstance(model, (str, Path)):
            if not os.path.exists(str(model)):
                raise ValueError(f"The checkpoint file or folder does not exist: {model}")
            if os.path.isdir(str(model)):
                problem = self.checkpointProblem(str(model), variants)
                if problem:
                    raise ValueError(problem)
                return [os.path.join(str(model), f"{v}.pt") for v in self.variantIds(variants)]
            return [str(model)]
        return [model]

    def process(self, fixedVolume, movingVolume, variants: Union[str, Sequence[str]] = "all",
                fixedLabels=None, movingLabels=None, model: Any = None, device: str = "auto",
                refine: Union[int, str] = 0, initialAlignment: str = "auto", reuse: bool = True, metricsTable=None,
                progress: Optional[Callable[[float, str], None]] = None) -> Dict[str, Any]:
        """Register in this process and add the results to the scene (see the class docstring)."""
        self.ensurePyTorch()
        from DeepRegAblationLib import inference, scene

        self.checkInputs(fixedVolume, movingVolume, fixedLabels, movingLabels)
        report = progress or (lambda fraction, message: logging.info(f"DeepRegAblation {100 * fraction:.0f}% {message}"))
        initialAlignment = self.resolveInitialAlignment(fixedVolume, movingVolume, initialAlignment)
        fixed = scene.image_data_from_volume_node(fixedVolume)
        moving = scene.image_data_from_volume_node(movingVolume)
        tempNodes: list = []
        try:
            fixedLabelmap, movingLabelmap = self._labelNodes(fixedVolume, movingVolume, fixedLabels, movingLabels, tempNodes)
            fixedLabelImage = scene.image_data_from_volume_node(fixedLabelmap) if fixedLabelmap is not None else None
            movingLabelImage = scene.image_data_from_volume_node(movingLabelmap) if movingLabelmap is not None else None
        finally:
            self._removeNodes(tempNodes)

        models = self._modelsToRun(model, variants, ndim=2 if fixed.is_2d else 3)

        results = []
        for index, modelArgument in enumerate(models):
            def stepProgress(fraction: float, message: str, index=index) -> None:
                report((index + fraction) / len(models), message)

            results.append(inference.register(
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

    # ------------------------------------------------------------------ display
    @staticmethod
    def metricsSummary(variant: str, metrics: Dict[str, float]) -> str:
        """One line of the most telling metrics, skipping those that are NaN (e.g. Dice without labels)."""
        parts = []
        for key, label, unit, digits in (
            ("dice", "Dice", "", 3), ("hd95_mm", "HD95", " mm", 2), ("ncc", "NCC", "", 3),
            ("folding_pct", "folding", " %", 3), ("sdlogj", "SDlogJ", "", 3),
            ("max_disp_mm", "max displacement", " mm", 1), ("runtime_s", "runtime", " s", 1),
        ):
            value = metrics.get(key)
            if value is None or not math.isfinite(float(value)):
                continue
            parts.append(f"{label} {float(value):.{digits}f}{unit}")
        return f"{variant}: " + (", ".join(parts) if parts else "no metrics")

    @staticmethod
    def rememberAutomaticGlyphs(nodes: Dict[str, Any]) -> None:
        """Store the glyph spacing/scale that ``scene.add_registration_to_scene`` chose for this field
        (in attributes of the transform node, saved with the scene): the Display section is relative to them."""
        transformNode = nodes.get("transform")
        displayNode = transformNode.GetDisplayNode() if transformNode is not None else None
        if displayNode is not None:
            transformNode.SetAttribute(AUTO_GLYPH_SPACING_ATTRIBUTE, repr(displayNode.GetGlyphSpacingMm()))
            transformNode.SetAttribute(AUTO_GLYPH_SCALE_ATTRIBUTE, repr(displayNode.GetGlyphScalePercent()))

    @staticmethod
    def applyDisplaySettings(nodes: Dict[str, Any], display: DisplaySettings) -> None:
        """Glyphs on the displacement transform and the detJ range of the Jacobian colour table.

        Glyph spacing 0 keeps the automatic spacing; the arrow length is the automatic one times
        ``glyphScalePercent`` / 100, and grows with the spacing so that arrows keep their room.
        """
        transformNode = nodes.get("transform")
        if transformNode is not None:
            if transformNode.GetDisplayNode() is None:
                transformNode.CreateDefaultDisplayNodes()
            displayNode = transformNode.GetDisplayNode()
            autoSpacing = float(transformNode.GetAttribute(AUTO_GLYPH_SPACING_ATTRIBUTE) or displayNode.GetGlyphSpacingMm())
            autoScale = float(transformNode.GetAttribute(AUTO_GLYPH_SCALE_ATTRIBUTE) or displayNode.GetGlyphScalePercent())
            spacing = display.glyphSpacingMm if display.glyphSpacingMm > 0 else autoSpacing
            wasModifying = displayNode.StartModify()
            displayNode.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH)
            displayNode.SetGlyphSpacingMm(spacing)
            displayNode.SetGlyphScalePercent(autoScale * (spacing / autoSpacing) * display.glyphScalePercent / 100.0)
            displayNode.SetVisibility(display.showGlyphs)
            displayNode.SetVisibility2D(display.showGlyphs)
            displayNode.EndModify(wasModifying)
        jacobianNode = nodes.get("jacobian")
        if jacobianNode is not None:
            if jacobianNode.GetDisplayNode() is None:
                jacobianNode.CreateDefaultDisplayNodes()
            displayNode = jacobianNode.GetDisplayNode()
            displayNode.SetAutoWindowLevel(False)
            displayNode.SetWindowLevelMinMax(display.jacobianMin, max(display.jacobianMax, display.jacobianMin + 1e-3))

    def showResults(self, fixedVolume, nodes: Dict[str, Any], display: DisplaySettings, fit: bool = True) -> None:
        """Slice views: fixed volume in the background, warped volume (or the Jacobian) in the foreground."""
        self.applyDisplaySettings(nodes, display)
        from DeepRegAblationLib import scene

        jacobianNode = nodes.get("jacobian")
        useJacobian = display.showJacobian and jacobianNode is not None
        foreground = jacobianNode if useJacobian else nodes.get("warped")
        composite = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        currentLabel = slicer.mrmlScene.GetNodeByID(composite.GetLabelVolumeID() or "") if composite else None
        slicer.util.setSliceViewerLayers(
            background=fixedVolume, foreground=foreground,
            label=scene.result_label_layer(nodes, currentLabel),
            foregroundOpacity=display.jacobianOpacity if useJacobian else WARPED_FOREGROUND_OPACITY,
            fit=fit,
        )


#
# DeepRegAblationTest
#


class DeepRegAblationTest(ScriptedLoadableModuleTest):
    """Self-tests run inside Slicer (Reload and Test, or ctest): logic on real MRI, background run, GUI."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_logic_process_one_variant()
        self.setUp()
        self.test_background_run_and_cancel()
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
        from DeepRegAblationLib import inference

        return 0 if inference.shipped_model_path("baseline", 3) is not None else 5

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

    def test_background_run_and_cancel(self):
        fixed, moving = self._sampleVolumes()
        logic = DeepRegAblationLogic()
        logic.ensurePyTorch()
        outcomes: List[RegistrationOutcome] = []

        def waitForOutcome(timeoutSeconds: float) -> RegistrationOutcome:
            deadline = time.time() + timeoutSeconds
            while not outcomes and time.time() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertTrue(outcomes, "the background registration did not finish in time")
            return outcomes.pop()

        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        logic.startRegistration(fixed, moving, variants="baseline", device="cpu", onFinished=outcomes.append)
        self.assertTrue(logic.isRunning())
        logic.cancel()
        outcome = waitForOutcome(60)
        self.assertEqual(outcome.status, "cancelled")
        self.assertFalse(logic.isRunning())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)

        logic.startRegistration(fixed, moving, variants="baseline", device="cpu", refine=self._refineIterations(),
                                onFinished=outcomes.append)
        outcome = waitForOutcome(600)
        self.assertEqual(outcome.status, "done", outcome.message)
        self.assertIn("baseline", outcome.nodes)
        self.assertEqual(outcome.table.GetNumberOfRows(), 1)
        self.delayDisplay("Background test passed")

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
