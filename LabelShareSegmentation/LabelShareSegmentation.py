"""LabelShare Segmentation: segment a volume with one task of a label-sharing model, in the background.

The thin Qt shell: module description, widget wiring, the parameter node, and the self-test. Everything with logic
in it is in ``LabelShareSegmentationLib`` (the segmentation logic), in ``LabelShareLib`` (what both LabelShare
modules use: geometry, segments, background jobs and the worker they share, the model store, settings,
dependencies; both without Qt, tested on slicer-core) and in the engine ``labelshare``.

Scripting (Slicer's Python console; blocking, returns a new segmentation node)::

    logic = slicer.util.getModuleLogic("LabelShareSegmentation")   # the module's logic (opens its widget)
    # or, without the widget, as Slicer's scripted-module template intends:
    # import LabelShareSegmentation; logic = LabelShareSegmentation.LabelShareSegmentationLogic()
    node = logic.segment(volumeNode, "acdc", model=None, device="auto")
    logic.segment(volumeNode, "acdc", outputSegmentation=node)   # updates node; edited segments kept in a copy
    logic.stop()

Every logic instance uses the background worker both modules share (``LabelShareLib.shared_worker``).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

import LabelShareLib
from LabelShareLib import (SEGMENTATION, DependencyInstaller, JobState, ProcessJob, Settings, default_store,
                           default_worker, device_choice, engine_command, ensure_dependencies, mirroring_refused,
                           model_info, model_title, models_in, skip_message, task_labels)
from LabelShareSegmentationLib import (LARGEST_COMPONENT, EditsKept, InferenceConfig, SegmentationLogic, input_notes,
                                       input_warning, why_not_ready)

POLL_INTERVAL_MS = 100


class LabelShareSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LabelShare Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LabelShare developers (LabelShare)"]
        self.parent.helpText = _(
            "Segments a volume (or a 2D image loaded as a single-slice volume) with one task of a LabelShare model: "
            "one network trained on several datasets by label sharing. Pick the volume, the model and the task, "
            "then Apply; the segments appear beside the volume, named after the task's labels. "
            "See LabelShare's Slicer guide (docs/slicer.md) for the tutorial and troubleshooting.")
        self.parent.acknowledgementText = _(
            "Label sharing: Anand et al., Label Sharing Incremental Learning Framework for Independent Multi-Label "
            "Segmentation Tasks, MICCAI 2024 ADSMI workshop (arXiv:2411.11105).")


@parameterNodeWrapper
class LabelShareSegmentationParameterNode:
    """What the scene remembers; preferences that hold across scenes (models folder, device) are in QSettings.

    inputVolume - the volume to segment (a colour volume is segmented as its luminance).
    outputSegmentation - the node whose task segments are replaced (an explicit choice); none: a new node.
    model - the model folder; empty: the bundled model.
    task - the task of the model whose labels are segmented.
    largestComponentLabels - of which labels only the largest connected part is kept: model (the labels the model
        chose on its validation cases), all or none (``labelshare segment --largest-component``; a new name, so that
        the true/false of scenes saved before is not read as a choice).
    mirror - average with the left-right mirrored prediction for tasks that are not lateralised (test-time
        augmentation, ``labelshare segment --tta``; about twice the time for those tasks).
    showUncertainty - also import the uncertainty map (``labelshare segment --uncertainty``) and show it in colour
        over the image.
    The defaults are those of the engine's configuration (labelshare.core.config.InferenceConfig).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    task: str = ""
    largestComponentLabels: Annotated[str, Choice(list(LARGEST_COMPONENT))] = InferenceConfig.largest_component
    mirror: bool = InferenceConfig.mirror
    showUncertainty: bool = False


class LabelShareSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []  # engine ModelSummary of every model in the model list
        self._modelInfo = None  # LabelShareLib.ModelInfo of the selected model (its card)
        self._job = None
        self._logLinesShown = 0
        self._updating = False  # refilling a combo box: its index changes are not the user's choice
        self._dependenciesMissing = []
        self._modelStore = None
        self.settings = Settings()
        self.shared = default_worker()

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LabelShareSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._mirrorToolTip = self.ui.mirrorCheckBox.toolTip
        self.logic = LabelShareSegmentationLogic()

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.addModelFolderButton.connect("clicked(bool)", self.onAddModelFolder)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskSelected)
        self.ui.showAllVersionsCheckBox.checked = self.settings.show_all_versions
        self.ui.showAllVersionsCheckBox.connect("toggled(bool)", self.onShowAllVersions)

        self.ui.deviceComboBox.currentText = device_choice(self.settings.device)  # older settings: GPU, CPU
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceSelected)
        self.ui.modelsFolderPathLineEdit.currentPath = self.settings.models_folder
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelsFolderChanged)

        # new model versions (LabelShare Training publishes them) appear without reopening the module
        self._modelStore = default_store()
        self._modelStore.changed.subscribe(self.onModelStoreChanged)
        # LabelShare Training's jobs in the background worker both modules share are shown here
        self.shared.changed.subscribe(self.onWorkerChanged)

        self.initializeParameterNode()
        self.refreshModels()

    def onReload(self) -> None:
        reloadLib()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Module closed or Slicer exits: stop the timer, cancel this module's job and free the shared worker
        (LabelShare Training's job in it goes on), stop listening to the store."""
        self.timer.stop()
        self.logic.stop()
        self.shared.changed.unsubscribe(self.onWorkerChanged)
        if self._modelStore is not None:
            self._modelStore.changed.unsubscribe(self.onModelStoreChanged)
            self._modelStore = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """The scene is closing: this module's running job would import into a scene that is going away, so it is
        cancelled (LabelShare Training's job in the shared worker is not touched)."""
        self.logic.stop()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: LabelShareSegmentationParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with a "SlicerParameterName" property in the .ui are bound to the parameter of that name
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    # -- models and tasks -------------------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        """Fill the model list (the model store is light: it works before the engine's packages are installed)
        and say which of those packages are missing. Of each model only its newest version is listed, unless "All
        versions" is checked (or the scene chose an older one); a model chosen in LabelShare Training ("Use this
        model") becomes the scene's choice."""
        missing = self._dependenciesMissing = DependencyInstaller.missing()
        self.ui.dependenciesStatusLabel.text = (_("missing: {packages}").format(
            packages=", ".join(r.name for r in missing)) if missing else _("installed"))
        chosen = self._modelStore.take_chosen() if self._modelStore is not None else None
        if chosen is not None and self._parameterNode:
            self._parameterNode.model = str(chosen)
        self._updating = True
        self.ui.modelComboBox.clear()
        self._models = self.settings.models(keep=[self._parameterNode.model if self._parameterNode else ""])
        for summary in self._models:
            self.ui.modelComboBox.addItem(model_title(summary), str(summary.path))
        if not self._models:
            self.ui.modelStatusLabel.text = _("No model found: add a model folder.")
        self._updating = False
        wanted = self._parameterNode.model if self._parameterNode else ""
        index = self.ui.modelComboBox.findData(wanted) if wanted else 0
        self.ui.modelComboBox.setCurrentIndex(max(index, 0) if self._models else -1)
        self.onModelSelected(self.ui.modelComboBox.currentIndex)

    def selectedModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self._models[index] if 0 <= index < len(self._models) else None

    def onModelSelected(self, index: int) -> None:
        if self._updating:
            return
        summary = self.selectedModel()
        if self._parameterNode and summary is not None and self._parameterNode.model != str(summary.path):
            if self._job is None or self._job.state.finished:
                self.logic.stop()  # another model: free the worker's memory, unless LabelShare Training uses it
            self._parameterNode.model = str(summary.path)
        self._modelInfo = model_info(summary.path) if summary is not None and summary.valid else None
        self.ui.modelInfoLabel.text = self._modelInfo.describe() if self._modelInfo is not None else ""
        if summary is not None and not summary.valid:
            self.ui.modelStatusLabel.text = summary.reason
        elif summary is not None and self._dependenciesMissing:
            self.ui.modelStatusLabel.text = _("LabelShare needs PyTorch and a few Python packages: click Apply or "
                                              "Install (Advanced) to install them.")
        elif summary is not None:
            self.ui.modelStatusLabel.text = ""
        # Refilling selects the first task; the task the parameter node remembers is restored before the handler
        # sees any change (Testing/test_slicer_shell_handlers.py).
        self._updating = True
        self.ui.taskComboBox.clear()
        for task in summary.tasks if summary is not None and summary.valid else []:
            self.ui.taskComboBox.addItem(task)
        if self._parameterNode and self._parameterNode.task:
            self.ui.taskComboBox.currentText = self._parameterNode.task
        self._updating = False
        self.onTaskSelected(self.ui.taskComboBox.currentIndex)

    def onTaskSelected(self, index: int) -> None:
        if self._updating:
            return
        summary, task = self.selectedModel(), self.ui.taskComboBox.currentText
        if self._parameterNode and task and self._parameterNode.task != task:
            self._parameterNode.task = task
        mirrorRefused = ""
        if summary is not None and summary.valid and task:
            labels = task_labels(summary.path, task)
            self.ui.taskLabelsLabel.text = _("Labels: {labels}").format(
                labels=", ".join(f"{label.id} {label.name}" for label in labels))
            mirrorRefused = mirroring_refused(summary.path, task)
        else:
            self.ui.taskLabelsLabel.text = ""
        # a lateralised task is never mirrored (the engine refuses it): the box says so instead of failing at Apply
        self.ui.mirrorCheckBox.enabled = not mirrorRefused
        self.ui.mirrorCheckBox.toolTip = mirrorRefused or self._mirrorToolTip
        info = self.selectedTaskInfo()
        self.ui.taskInfoLabel.text = info.describe() if info is not None else ""
        self._checkCanApply()

    def selectedTaskInfo(self):
        """What the selected task is for (LabelShareLib.TaskInfo, from the model's card), or None."""
        return self._modelInfo.tasks.get(self.ui.taskComboBox.currentText) if self._modelInfo is not None else None

    def onShowAllVersions(self, show: bool) -> None:
        self.settings.show_all_versions = show
        self.refreshModels()

    def onAddModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Add a LabelShare model folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("This folder cannot be used as a model:"), waitCursor=True):
            models = models_in(folder)  # raises with the reason: missing files, checksum mismatch, no model inside
            self.settings.add_model_folder(folder)  # LabelShare Training lists it too
            self._parameterNode.model = str(models[-1].path)  # the newest (models_in: oldest first)
            self.refreshModels()

    def onModelStoreChanged(self, model=None) -> None:
        """The model store announced a change (LabelShare Training published ``model``, or chose it with "Use this
        model"): list it (and take the choice)."""
        self.refreshModels()

    def onWorkerChanged(self, use=None) -> None:
        """A job of either module started or ended in the shared worker: show LabelShare Training's (the timer
        keeps its progress current) and say why Apply waits."""
        if self.shared.busy:
            self.timer.start()
        self._checkCanApply()

    def onModelsFolderChanged(self, path: str) -> None:
        self.settings.models_folder = path
        self.refreshModels()

    def onDeviceSelected(self, index: int) -> None:
        self.settings.device = self.ui.deviceComboBox.currentText

    def onInstallDependencies(self) -> None:
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing LabelShare's Python packages failed."),
                                                 waitCursor=True):
                self.logic.ensureDependencies()
        finally:
            self.refreshModels()  # what is installed now, also after a partial install

    # -- apply / cancel ---------------------------------------------------------------------------------------------
    def _running(self) -> bool:
        return self._job is not None and not self._job.state.finished

    def _checkCanApply(self, caller=None, event=None) -> None:
        blocked = self.shared.blocked_reason(SEGMENTATION)  # LabelShare Training's job: what, and where
        self.ui.workerStatusLabel.text = blocked
        self.ui.workerStatusLabel.visible = bool(blocked)
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        self.ui.inputNoteLabel.text = "\n".join(input_notes(volume, self.selectedTaskInfo()))
        if self._running():
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation (the scene is left as it was).")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        if self._dependenciesMissing:
            reason = ""  # Apply installs them first
        elif self._parameterNode is None:
            reason = _("No parameter node.")
        else:
            reason = why_not_ready(volume, self.selectedModel(), self._parameterNode.task, blocked)
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Segment the volume with the selected task.")

    def onApplyButton(self) -> None:
        if self._running():
            self._job.cancel()
            self.onPoll()
            return
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start."), waitCursor=True):
            if self._dependenciesMissing:
                self.logic.ensureDependencies()
                self.refreshModels()  # the model list stays empty until the engine's packages are there
            parameters = self._parameterNode
            reason = why_not_ready(parameters.inputVolume, self.selectedModel(), parameters.task,
                                   self.shared.blocked_reason(SEGMENTATION))
            if reason:
                raise ValueError(reason)
            try:
                job = self.logic.start(parameters.inputVolume, parameters.task, model=parameters.model or None,
                                       outputSegmentation=parameters.outputSegmentation,
                                       confirmReplace=askReplaceEditedSegments,
                                       uncertaintyMap=parameters.showUncertainty,
                                       device=self.ui.deviceComboBox.currentText,
                                       largest_component=parameters.largestComponentLabels,
                                       mirror=parameters.mirror and self.ui.mirrorCheckBox.enabled)
            except EditsKept as kept:
                slicer.util.showStatusMessage(str(kept)[0].upper() + str(kept)[1:] + ".", 5000)
                return
            self.ui.logTextEdit.clear()
            self.ui.inputWarningLabel.text = ""
            self._logLinesShown = 0
            self._job = job
            self.ui.progressBar.visible = True
            self.timer.start()
        self.onPoll()

    def onPoll(self) -> None:
        """Timer tick: take in the job's progress (never blocks), show it, import on the main thread when done."""
        job = self._job
        if job is None or job.state.finished:  # LabelShare Training's job: only its line is shown
            self._checkCanApply()
            if not self.shared.busy:
                self.timer.stop()
            return
        state = job.poll()
        self.ui.progressBar.value = int(100 * job.fraction)
        self.ui.progressBar.setFormat(job.status_text)
        for line in job.log_lines_after(self._logLinesShown):
            self.ui.logTextEdit.appendPlainText(line)
        self._logLinesShown = job.lines_added
        if state.finished:
            self.timer.stop()
            if state == JobState.DONE:  # the output choice stays as it was: "Create new" makes a new node next time
                logging.info(f"LabelShare: {job.result.GetName()} segmented in {job.elapsed_s:.1f} s")
                self.ui.inputWarningLabel.text = input_warning(job.result)  # beside the segments it is about
                if job.notes:
                    slicer.util.showStatusMessage(" ".join(job.notes), 10000)
            elif state == JobState.FAILED:
                slicer.util.errorDisplay(_("Segmentation failed: {reason}").format(reason=job.error),
                                         detailedText="\n".join(job.log))
        self._checkCanApply()


def askReplaceEditedSegments(node, task: str, editedNames: list[str]) -> bool:
    """Apply into a segmentation whose task segments were edited since they were made: replace them (they are kept
    in a hidden copy beside it) or keep the edits (nothing runs)."""
    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(_("Edited segments"))
    box.setText(_("You edited {segments} in '{node}' since LabelShare made them. Apply replaces the segments of task "
                  "{task}.").format(segments=", ".join(f"'{name}'" for name in editedNames), node=node.GetName(),
                                    task=task))
    box.setInformativeText(_("Replaced segments are kept in a hidden segmentation '{node} (replaced …)' beside it "
                             "(Data module). To keep your work where it is, choose \"Create new segmentation\" as "
                             "the output.").format(node=node.GetName()))
    replace = box.addButton(_("Replace (keep a copy)"), qt.QMessageBox.AcceptRole)
    box.addButton(_("Keep my edits"), qt.QMessageBox.RejectRole)
    box.exec_()
    return box.clickedButton() == replace


class LabelShareSegmentationLogic(ScriptedLoadableModuleLogic):
    """The module's logic, for the widget and for scripts (see the module docstring): the parameter node and the
    first-run dependency install around :class:`LabelShareSegmentationLib.SegmentationLogic`. Any number of
    instances may exist; they share the one background worker."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.segmentation = SegmentationLogic()

    def getParameterNode(self):
        return LabelShareSegmentationParameterNode(super().getParameterNode())

    def ensureDependencies(self) -> None:
        """Install torch (PyTorch extension) and the engine's packages if missing; asks the user once first.
        Raises in testing mode instead (Slicer's test machines install nothing)."""
        ensure_dependencies()

    def start(self, volumeNode, task: str, model: str | None = None, outputSegmentation=None, confirmReplace=None,
              uncertaintyMap: bool = False, **options):
        """Start segmenting in the background; returns the job (poll it, or ``wait()``). ``confirmReplace(node,
        task, editedNames)`` is asked before segments edited since their import are replaced."""
        return self.segmentation.start(volumeNode, task, model, outputSegmentation, confirm_replace=confirmReplace,
                                       uncertainty_map=uncertaintyMap, **options)

    def segment(self, volumeNode, task: str, model: str | None = None, outputSegmentation=None,
                uncertaintyMap: bool = False, **options):
        """Segment and wait (console and scripts); returns the segmentation node, raises with the reason.

        :param volumeNode: scalar volume (3D, or 2D as a single slice); a colour volume is segmented as its
            luminance.
        :param task: a task of the model, e.g. ``"acdc"``.
        :param model: model folder; None: the bundled model.
        :param outputSegmentation: a segmentation node whose task segments are replaced (segments edited since
            they were imported are kept in a hidden copy beside it); None: a new node.
        :param uncertaintyMap: also import where the model is unsure, as a volume shown in colour over the image
            (``LabelShareSegmentationLib.uncertainty_node(node)``); the input check's warning about the volume, if
            any, is ``LabelShareSegmentationLib.input_warning(node)``.
        :param options: the engine's segmentation options by name, the others at their defaults
            (labelshare.core.config.SegmentConfig): ``device`` (``"auto"``, ``"cuda"``, also ``"gpu"`` or ``"cuda:N"``,
            or ``"cpu"``), ``mirror`` (test-time mirroring for tasks that are not lateralised, about twice the time
            for them), ``largest_component`` (``"model"``, ``"all"`` or ``"none"``), ``batch_size``.
        """
        self.ensureDependencies()
        return self.segmentation.segment(volumeNode, task, model, outputSegmentation, uncertainty_map=uncertaintyMap,
                                         **options)

    def segmentMany(self, volumeNodes, task: str, model: str | None = None, **options):
        """Segment several volumes in one warm background worker (one model load); returns their new segmentation
        nodes in order. A volume that fails does not stop the others; the error at the end names each one."""
        self.ensureDependencies()
        return self.segmentation.segment_many(volumeNodes, task, model, **options)

    def stop(self) -> None:
        """Cancel this module's segmentation and free the background worker's memory (unless LabelShare Training
        is using it)."""
        self.segmentation.stop()


class LabelShareSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test for a real Slicer (Developer mode: Reload and Test, or ctest): the widget's Apply button, then a
    tiny model trained on synthetic tasks segments through the console API. Installs nothing: without the engine's
    packages the console test is skipped with a message (Slicer's test machines run in testing mode)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = DependencyInstaller.missing()
        self.setUp()
        self.test_widget_explains_why_apply_is_disabled()
        if missing:
            self.delayDisplay(skip_message("test_console_api_segments_a_synthetic_volume", missing))
            return
        self.setUp()
        self.test_console_api_segments_a_synthetic_volume()

    def _tinyModel(self) -> Path:
        """A model trained for a few steps on synthetic tasks, by the engine in child processes (as LabelShare
        Training trains): Slicer's own process never imports torch or trains."""
        from labelshare.core import synthetic  # light: writes the tasks' files
        root = Path(slicer.util.tempDirectory("LabelShareSelfTest"))
        tasks = [argument for name, path in synthetic.write_tasks(root / "tasks", cases=6).items()
                 for argument in ("--task", f"{name}={path}")]
        for arguments in (["labelspace", "build", *tasks, "--output", str(root / "labelspace.json")],
                          ["train", "--labelspace", str(root / "labelspace.json"), *tasks, "--out", str(root / "model"),
                           "--batch-size", "6", "--epochs", "1", "--steps-per-epoch", "4", "--device", "cpu"]):
            ProcessJob(engine_command(*arguments, "--progress", "json")).result_or_raise(timeout=900)
        return root / "model"

    def test_console_api_segments_a_synthetic_volume(self):
        self.delayDisplay("Training a tiny model on synthetic tasks")
        model = self._tinyModel()
        import SimpleITK as sitk
        case = sorted((model.parent / "tasks" / "phantom3d" / "imagesTr").iterdir())[0]
        volume = LabelShareLib.image_to_volume(sitk.ReadImage(str(case)), slicer.mrmlScene, "phantom")
        self.delayDisplay('Segmenting through slicer.util.getModuleLogic("LabelShareSegmentation")')
        logic = slicer.util.getModuleLogic("LabelShareSegmentation")
        node = logic.segment(volume, "phantom3d", model=str(model), device="cpu")
        segmentation = node.GetSegmentation()
        self.assertEqual(node.GetName(), "phantom phantom3d")
        self.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
                         ["body", "organ", "lesion"])
        self.assertFalse(segmentation.GetNthSegment(0).GetNameAutoGenerated())
        again = LabelShareSegmentationLogic().segment(volume, "phantom3d", model=str(model), device="cpu",
                                                      outputSegmentation=node)  # a script's own logic instance
        self.assertIs(again, node)
        self.assertEqual(segmentation.GetNumberOfSegments(), 3)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)),
                         hierarchy.GetItemParent(hierarchy.GetItemByDataNode(volume)))
        logic.stop()
        self.delayDisplay("Console API test passed")

    def test_widget_explains_why_apply_is_disabled(self):
        slicer.util.selectModule("LabelShareSegmentation")
        widget = slicer.modules.LabelShareSegmentationWidget
        widget.refreshModels()
        widget._parameterNode.inputVolume = None
        if DependencyInstaller.missing():  # Apply installs them first; the Advanced section names them
            self.assertTrue(widget.ui.applyButton.enabled)
            self.assertTrue(widget.ui.dependenciesStatusLabel.text.startswith("missing: "))
        else:
            self.assertFalse(widget.ui.applyButton.enabled)
            self.assertEqual(widget.ui.applyButton.toolTip, "Select an input volume.")
        self.delayDisplay("Widget test passed")


# The Lib packages this module ships, each module after the ones it imports; the package itself last.
LIB_MODULES = {
    "LabelShareLib": ("signals", "application", "volumes", "segments", "jobs", "store", "model_info", "shared_worker",
                      "settings", "dependencies"),
    "LabelShareSegmentationLib": ("logic",),
}


def reloadLib() -> None:
    """Developer reload of the Lib packages (``importlib``: ``imp`` is gone in Python 3.12), leaves first;
    LabelShareLib before LabelShareSegmentationLib, which imports it."""
    for package, modules in LIB_MODULES.items():
        for name in [f"{package}.{module}" for module in modules] + [package]:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
