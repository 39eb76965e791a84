"""LabelShare Training: collect corrected cases into task folders, add tasks to a model, train it in the background.

The thin Qt shell: module description, widget wiring, dialogs, the parameter node and the self-test. Everything
with logic in it is in ``LabelShareTrainingLib`` (no Qt, tested on slicer-core), in the shared ``LabelShareLib``
(volumes, segments, background jobs, the model store, dependencies; it ships with LabelShareSegmentation) and in
the engine ``labelshare``. A published version reaches LabelShareSegmentation's model list through the model
store's change notification, not through that module's widget.

Console API (blocking)::

    logic = slicer.modules.labelsharetraining.logic()
    logic.addCase(volumeNode, segmentationNode, "liver")                  # case name; raises with the reason
    outcome = logic.train("liver", model="/path/abdomen-v2", budget="quick", device="auto")
    outcome.state, outcome.model, outcome.report                          # "published", new version, forgetting
"""

from __future__ import annotations

import importlib
import logging
import sys
from contextlib import contextmanager
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

import LabelShareSegmentation
from LabelShareLib import (DEFAULT_DEVICE, DEVICES, DependencyInstaller, available_models, model_title, skip_message,
                           user_models_dir)
from LabelShareLib.jobs import JobState
from LabelShareTrainingLib import (BUDGETS, DEFAULT_BUDGET, AnnotationQueue, AnnotationQueueLogic, DuplicateCaseError,
                                   TrainingLogic, UnmatchedSegmentsError, default_workspace, parse_label_text,
                                   why_cannot_add_case, why_cannot_rank, why_cannot_train, why_no_next_case)

SETTINGS_WORKSPACE = "LabelShare/TrainingWorkspace"
SETTINGS_AUTO_TRAIN = "LabelShare/TrainAutomaticallyAfterCases"  # 0: off (the default)
SETTINGS_QUEUE_FOLDER = "LabelShare/AnnotationQueueFolder"
POLL_INTERVAL_MS = 200
STOP_ON_EXIT_S = 15  # closing Slicer: time the engine gets to save a resumable checkpoint (it needs a few seconds)
NO_MODEL = ""  # model combo data of "no model: train a first model"


class LabelShareTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LabelShare Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["LabelShareSegmentation"]
        self.parent.contributors = ["LabelShare developers (LabelShare)"]
        self.parent.helpText = _(
            "Collects corrected segmentations as cases of a task (an nnU-Net folder in your workspace) and teaches "
            "them to a LabelShare model in the background: a new task is added to the model, an existing task is "
            "updated. Every run writes a new model version; older versions stay selectable. "
            "See the README of the LabelShare extension for the tutorial.")
        self.parent.acknowledgementText = _(
            "Label sharing: Anand et al., Label Sharing Incremental Learning Framework for Independent Multi-Label "
            "Segmentation Tasks, MICCAI 2024 ADSMI workshop (arXiv:2411.11105).")
        slicer.app.connect("startupCompleted()", registerConsoleApi)


_logic = None


def moduleLogic() -> LabelShareTrainingLogic:
    """The one logic of the module, shared by the widget and the console API (one training run at a time)."""
    global _logic
    if _logic is None:
        _logic = LabelShareTrainingLogic()
    return _logic


def registerConsoleApi() -> None:
    """Make ``slicer.modules.labelsharetraining.logic().train(...)`` work (see LabelShareSegmentation)."""
    cppLogic = slicer.modules.labelsharetraining.logic()
    cppLogic.addCase = moduleLogic().addCase
    cppLogic.train = moduleLogic().train
    cppLogic.stop = moduleLogic().stop


def modelsFolder() -> str:
    """The models folder of LabelShareSegmentation's settings: new versions go where its model list looks."""
    return qt.QSettings().value(LabelShareSegmentation.SETTINGS_MODELS_FOLDER, "") or str(user_models_dir())


@parameterNodeWrapper
class LabelShareTrainingParameterNode:
    """What the scene remembers; the workspace folder and automatic training are preferences in QSettings.

    inputVolume, inputSegmentation - the case to add.
    model - the model to extend (a folder); empty: train a first model.
    task - the task the cases belong to.
    budget - training budget preset; device - auto, cuda or cpu.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    task: str = ""
    budget: Annotated[str, Choice(list(BUDGETS))] = DEFAULT_BUDGET
    device: Annotated[str, Choice(list(DEVICES))] = DEFAULT_DEVICE


class LabelShareTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []
        self._entries = []
        self._cases = []
        self._unfinished = []
        self._logLinesShown = 0
        self._costKey, self._costText = None, ""
        self._updating = False
        self._dependenciesMissing = True  # until refreshAll has looked
        self._queueLogic = None
        self._queueJob = None  # the running ranking or "Next case" segmentation
        self._queueJobKind = ""  # "rank" or "next"
        self._queueFolder = ""  # the folder of unlabelled images (a preference in QSettings)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LabelShareTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = moduleLogic()

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskSelected)
        self.ui.newTaskButton.connect("clicked(bool)", self.onNewTask)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.openCaseButton.connect("clicked(bool)", self.onOpenCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.casesTableWidget.connect("itemSelectionChanged()", self.updateButtons)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.discardRunButton.connect("clicked(bool)", self.onDiscardRun)
        self.ui.unfinishedRunComboBox.connect("currentIndexChanged(int)", self.updateButtons)
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModel)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.rankButton.connect("clicked(bool)", self.onRank)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.queueTimer = qt.QTimer()
        self.queueTimer.setInterval(POLL_INTERVAL_MS)
        self.queueTimer.connect("timeout()", self.onQueuePoll)

        settings = qt.QSettings()
        self.ui.workspacePathLineEdit.connect("currentPathChanged(QString)", self.onWorkspaceChanged)
        autoTrainAfter = int(settings.value(SETTINGS_AUTO_TRAIN, 0) or 0)
        self.ui.autoTrainCheckBox.checked = autoTrainAfter > 0
        self.ui.autoTrainCasesSpinBox.value = autoTrainAfter or 5
        self.ui.autoTrainCheckBox.connect("toggled(bool)", self.onAutoTrainChanged)
        self.ui.autoTrainCasesSpinBox.connect("valueChanged(int)", self.onAutoTrainChanged)
        self._queueFolder = settings.value(SETTINGS_QUEUE_FOLDER, "") or ""
        self.ui.queueFolderPathLineEdit.currentPath = self._queueFolder
        self.ui.queueFolderPathLineEdit.connect("currentPathChanged(QString)", self.onQueueFolderChanged)

        registerConsoleApi()
        self.initializeParameterNode()
        self.refreshAll()

    def onReload(self) -> None:
        reloadLib()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Module closed or Slicer exits: a running job saves a resumable checkpoint and stops (nothing is published
        half-written; the run can be resumed next time)."""
        self.timer.stop()
        if self._queueJob is not None:  # its worker belongs to LabelShare Segmentation, which stops it on exit
            self.queueTimer.stop()
        if self.logic.running:
            self.stopTrainingOnExit()
        self.removeObservers()

    def stopTrainingOnExit(self) -> None:
        """Give the engine up to STOP_ON_EXIT_S to save its checkpoint, with a progress dialog: Slicer is closing,
        and a silent wait would look like a hang."""
        dialog = slicer.util.createProgressDialog(
            windowTitle=_("LabelShare Training"), maximum=STOP_ON_EXIT_S,
            labelText=_("Stopping training: saving a checkpoint to resume it later…"))

        def showWait(secondsLeft: float) -> None:
            dialog.value = int(STOP_ON_EXIT_S - secondsLeft)  # whole seconds waited
            slicer.app.processEvents()

        try:
            self.logic.stop(waitS=STOP_ON_EXIT_S, onWait=showWait)
        finally:
            dialog.close()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshAll()
        if not self._dependenciesMissing and self.logic.training.running:
            self.timer.start()  # a run started from the console or before the module was left

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """Training reads only files, so a run goes on when the scene closes; the GUI lets go of the scene."""
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
        if not self._parameterNode.inputSegmentation:
            self._parameterNode.inputSegmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, inputParameterNode: LabelShareTrainingParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with a "SlicerParameterName" property in the .ui are bound to the parameter of that name
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    # -- models, tasks, cases ---------------------------------------------------------------------------------------
    def refreshAll(self) -> None:
        missing = DependencyInstaller.missing()
        self._dependenciesMissing = bool(missing)
        self.ui.dependenciesStatusLabel.text = (_("LabelShare needs PyTorch and a few Python packages (missing: "
                                                  "{packages}).").format(packages=", ".join(r.name for r in missing))
                                                if missing else "")
        self.ui.installDependenciesButton.visible = bool(missing)
        for section in (self.ui.taskCollapsibleButton, self.ui.queueCollapsibleButton, self.ui.casesCollapsibleButton,
                        self.ui.trainCollapsibleButton):
            section.enabled = not missing
        if missing:
            self.updateButtons()
            return
        training = self.logic.training
        training.models_dir = Path(modelsFolder())  # LabelShareSegmentation's setting may have changed
        self.ui.modelsFolderLabel.text = modelsFolder()
        wasBlocked = self.ui.workspacePathLineEdit.blockSignals(True)
        self.ui.workspacePathLineEdit.currentPath = str(training.workspace)
        self.ui.workspacePathLineEdit.blockSignals(wasBlocked)
        self.refreshModels()
        self.refreshUnfinishedRuns()
        self.refreshQueue()

    def refreshModels(self, select: str | None = None) -> None:
        self._updating = True
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("(none: train a first model)"), NO_MODEL)
        self._models = [summary for summary in available_models(modelsFolder()) if summary.valid]
        for summary in self._models:
            self.ui.modelComboBox.addItem(model_title(summary), str(summary.path))
        wanted = select if select is not None else (self._parameterNode.model if self._parameterNode else "")
        if not wanted and self._models:
            wanted = str(self._models[-1].path)  # the newest version
        self.ui.modelComboBox.setCurrentIndex(max(self.ui.modelComboBox.findData(wanted), 0))
        self._updating = False  # the handler runs once, for the restored choice
        self.onModelSelected(self.ui.modelComboBox.currentIndex)

    def selectedModel(self) -> str:
        return self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex) or NO_MODEL

    def onModelSelected(self, index: int) -> None:
        if self._updating:
            return
        if self._parameterNode and self._parameterNode.model != self.selectedModel():
            self._parameterNode.model = self.selectedModel()
        self.refreshTasks()

    def refreshTasks(self, select: str | None = None) -> None:
        self._entries = []
        with showErrorAndContinue(_("The task list could not be read.")):
            self._entries = self.logic.training.task_entries(self.selectedModel() or None)
        self._updating = True
        self.ui.taskComboBox.clear()
        for entry in self._entries:
            suffix = _(" (in the model)") if entry.in_model else ""
            self.ui.taskComboBox.addItem(f"{entry.name}{suffix}", entry.name)
        wanted = select or (self._parameterNode.task if self._parameterNode else "")
        self.ui.taskComboBox.setCurrentIndex(max(self.ui.taskComboBox.findData(wanted), 0))
        self._updating = False
        self.onTaskSelected(self.ui.taskComboBox.currentIndex)

    def selectedEntry(self):
        index = self.ui.taskComboBox.currentIndex
        return self._entries[index] if 0 <= index < len(self._entries) else None

    def onTaskSelected(self, index: int) -> None:
        if self._updating:
            return
        entry = self.selectedEntry()
        if self._parameterNode and entry is not None and self._parameterNode.task != entry.name:
            self._parameterNode.task = entry.name
        if entry is None:
            self.ui.taskInfoLabel.text = _("No task yet: create one with New task…")
        elif not entry.valid:
            self.ui.taskInfoLabel.text = entry.reason
        else:
            self.ui.taskInfoLabel.text = _("Labels: {labels}").format(
                labels=", ".join(f"{labelId} {name}" for name, labelId in entry.labels.items()))
            if entry.in_model and entry.folder is None:
                self.ui.taskInfoLabel.text += "\n" + _(
                    "No folder in the workspace yet: the first case starts it from the folder the model was trained "
                    "on when the model records it, else empty (then an update trains this task on the collected "
                    "cases only; put the task's folder into the workspace to include its cases).")
        self.refreshCases()

    def refreshCases(self) -> None:
        entry = self.selectedEntry()
        self._cases = []
        if entry is not None and entry.valid:
            with showErrorAndContinue(_("The cases of the task could not be listed.")):
                self._cases = self.logic.training.cases(entry.name)
        table = self.ui.casesTableWidget
        table.setRowCount(len(self._cases))
        for row, case in enumerate(self._cases):
            voxels = ", ".join(f"{name} {count}" for name, count in case.label_voxels.items())
            cells = (case.name, voxels, ", ".join(case.missing_labels), case.added or _("(before)"))
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(case.source or text)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        newCases = self.logic.training.new_cases_since_training(entry.name) if entry is not None and entry.valid \
            else 0
        self.ui.casesSummaryLabel.text = _("{cases} cases, {new} new since the last training").format(
            cases=len(self._cases), new=newCases)
        self.updateButtons()

    def onNewTask(self) -> None:
        name = qt.QInputDialog.getText(slicer.util.mainWindow(), _("New task"),
                                       _("Task name (letters, digits, '_', '.', '-'):"))
        if not name:
            return
        labels = qt.QInputDialog.getText(
            slicer.util.mainWindow(), _("New task"),
            _("Label names, separated by commas (ids 1, 2, … in this order),\nor with ids: liver=1, tumour=2"))
        if not labels:
            return
        with slicer.util.tryWithErrorDisplay(_("The task could not be created."), waitCursor=True):
            self.logic.training.create_task(name.strip(), parse_label_text(labels))
            self.refreshTasks(select=name.strip())

    def onAddCase(self) -> None:
        entry, parameters = self.selectedEntry(), self._parameterNode
        choices, duplicate = None, "refuse"
        with slicer.util.tryWithErrorDisplay(_("The case could not be added."), waitCursor=True):
            while True:
                try:
                    export = self.logic.training.add_case(entry.name, parameters.inputVolume,
                                                          parameters.inputSegmentation, self.selectedModel() or None,
                                                          choices, duplicate)
                    break
                except UnmatchedSegmentsError as error:
                    choices = self.askSegmentChoices(error.mapping, list(entry.labels), choices)
                    if choices is None:
                        return
                except DuplicateCaseError as error:
                    duplicate = self.askDuplicate(error)
                    if duplicate is None:
                        return
            message = _("Added case '{case}' to task '{task}'.").format(case=export.case_name, task=entry.name)
            if export.mapping.missing:
                message += " " + _("Missing labels (recorded): {labels}.").format(
                    labels=", ".join(export.mapping.missing))
            for (winner, loser), count in export.overlaps.items():
                message += " " + _("{count} voxels of '{loser}' overlapped '{winner}' and were given to '{winner}' "
                                   "(the smaller structure).").format(count=count, loser=loser, winner=winner)
            if self._queueLogic is not None and self._queueLogic.case_added(parameters.inputVolume) is not None:
                message += " " + _("Marked done in the annotation queue.")
                self.refreshQueue()
            self.ui.casesSummaryLabel.toolTip = message
            slicer.util.showStatusMessage(message, 5000)
            self.refreshTasks(select=entry.name)
            self.maybeTrainAutomatically()

    def askSegmentChoices(self, mapping, labels: list[str], previous: dict | None) -> dict | None:
        """For every segment that matches no label: which label it is, or skip it; None when cancelled."""
        dialog = qt.QDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(_("Segments without a matching label"))
        form = qt.QFormLayout(dialog)
        form.addRow(qt.QLabel(_("These segments match no label of the task. Map each to a label or skip it.")))
        combos = {}
        for segment in mapping.unmatched:
            combo = qt.QComboBox()
            combo.addItems([_("(skip this segment)")] + labels)
            form.addRow(segment, combo)
            combos[segment] = combo
        buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttons.connect("accepted()", dialog.accept)
        buttons.connect("rejected()", dialog.reject)
        form.addRow(buttons)
        if not dialog.exec_():
            return None
        chosen = dict(previous or {})
        for segment, combo in combos.items():
            chosen[segment] = labels[combo.currentIndex - 1] if combo.currentIndex > 0 else None
        return chosen

    def askDuplicate(self, error) -> str | None:
        """The same image is already collected: "replace", "keep" (both), or None (cancel)."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle(_("Case already collected"))
        box.setText(str(error))
        box.setInformativeText(_("Replace moves the old case to the task's trash folder; nothing is deleted."))
        replace = box.addButton(_("Replace the old case"), qt.QMessageBox.AcceptRole)
        keep = box.addButton(_("Keep both"), qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        clicked = box.clickedButton()
        if clicked == replace:
            return "replace"
        return "keep" if clicked == keep else None

    def selectedCase(self):
        row = self.ui.casesTableWidget.currentRow()
        return self._cases[row] if 0 <= row < len(self._cases) else None

    def onOpenCase(self) -> None:
        entry, case = self.selectedEntry(), self.selectedCase()
        with slicer.util.tryWithErrorDisplay(_("The case could not be opened."), waitCursor=True):
            volume, segmentation = self.logic.training.open_case(entry.name, case.name)
            self._parameterNode.inputVolume = volume
            self._parameterNode.inputSegmentation = segmentation
            slicer.util.setSliceViewerLayers(background=volume, fit=True)

    def onRemoveCase(self) -> None:
        entry, case = self.selectedEntry(), self.selectedCase()
        if not slicer.util.confirmOkCancelDisplay(
                _("Remove case '{case}' from task '{task}'? It is moved to the task's trash folder, not deleted.")
                .format(case=case.name, task=entry.name)):
            return
        with slicer.util.tryWithErrorDisplay(_("The case could not be removed."), waitCursor=True):
            self.logic.training.remove_case(entry.name, case.name)
            self.refreshTasks(select=entry.name)

    def onWorkspaceChanged(self, path: str) -> None:
        qt.QSettings().setValue(SETTINGS_WORKSPACE, path)
        self.logic.training.workspace = Path(path).expanduser()
        self._queueLogic = None  # the queue file is in the workspace
        self.refreshTasks()
        self.refreshQueue()

    def onAutoTrainChanged(self, *args) -> None:
        after = self.ui.autoTrainCasesSpinBox.value if self.ui.autoTrainCheckBox.checked else 0
        qt.QSettings().setValue(SETTINGS_AUTO_TRAIN, after)

    def maybeTrainAutomatically(self) -> None:
        after = int(qt.QSettings().value(SETTINGS_AUTO_TRAIN, 0) or 0)
        entry = self.selectedEntry()
        if entry is not None and self.logic.training.should_train_automatically(entry.name, after) \
                and not why_cannot_train(entry, False, self.logic.training.lock.holder()):
            slicer.util.showStatusMessage(_("{count} new cases: training starts automatically.").format(count=after))
            self.startRun(self.logic.training.plan(entry.name, self.selectedModel() or None,
                                                   self._parameterNode.budget, self._parameterNode.device))

    # -- annotation queue -------------------------------------------------------------------------------------------
    @staticmethod
    def segmentationLogic():
        """LabelShare Segmentation's logic: its warm worker ranks and segments for the queue."""
        return LabelShareSegmentation.moduleLogic().segmentation

    @property
    def queueLogic(self) -> AnnotationQueueLogic:
        if self._queueLogic is None:
            self._queueLogic = AnnotationQueueLogic(AnnotationQueue.in_workspace(self.logic.training.workspace),
                                                    self.segmentationLogic())
        return self._queueLogic

    def refreshQueue(self) -> None:
        entries = []
        with showErrorAndContinue(_("The annotation queue could not be read.")):
            entries = self.queueLogic.queue.entries  # a damaged queue file: the error, then an empty queue
        table = self.ui.queueTableWidget
        table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            voxels = ", ".join(f"{name} {count}" for name, count in entry.voxels.items())
            for column, text in enumerate((entry.case, f"{entry.score:.4f}", voxels, _("done") if entry.done else "")):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(entry.source)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        state = self._queueLogic.queue.state if entries else None
        done, total = self._queueLogic.queue.counts() if entries else (0, 0)
        self.ui.queueSummaryLabel.text = _("{done} of {total} done; task {task}, ranked {when} by {score} with "
                                           "{model}.").format(done=done, total=total, task=state.task,
                                                              when=state.ranked, score=state.score,
                                                              model=Path(state.model).name) if state else ""
        self.updateButtons()

    def onQueueFolderChanged(self, path: str) -> None:
        qt.QSettings().setValue(SETTINGS_QUEUE_FOLDER, path)
        self._queueFolder = path
        self.updateButtons()

    def onRank(self) -> None:
        if self._queueJob is not None:
            self._queueJob.cancel()
            self.onQueuePoll()
            return
        with slicer.util.tryWithErrorDisplay(_("Ranking could not start."), waitCursor=True):
            LabelShareSegmentation.moduleLogic().ensureDependencies()
            self.startQueueJob("rank", self.queueLogic.start_rank(
                self._queueFolder, self.selectedEntry().name, self.selectedModel(),
                device=self._parameterNode.device))

    def onNextCase(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The next case could not be loaded."), waitCursor=True):
            LabelShareSegmentation.moduleLogic().ensureDependencies()
            entry, volume, job = self.queueLogic.start_next(device=self._parameterNode.device)
            self._parameterNode.inputVolume = volume
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            self.startQueueJob("next", job)

    def startQueueJob(self, kind: str, job) -> None:
        self._queueJob, self._queueJobKind = job, kind
        self.queueTimer.start()
        self.onQueuePoll()

    def onQueuePoll(self) -> None:
        """Timer tick of the ranking or "Next case" job (never blocks)."""
        job = self._queueJob
        if job is None:
            return
        state = job.poll()
        self.ui.queueProgressBar.value = int(100 * job.fraction)
        self.ui.queueProgressBar.setFormat(job.status_text)
        if state.finished:
            self.queueTimer.stop()
            self._queueJob = None
            if state == JobState.FAILED:
                slicer.util.errorDisplay(_("The annotation queue's job failed: {reason}").format(reason=job.error))
            elif state == JobState.DONE and self._queueJobKind == "next":  # the model's masks, to correct
                self._parameterNode.inputSegmentation = job.result
            self.refreshQueue()
        self.updateButtons()

    # -- training ---------------------------------------------------------------------------------------------------
    def updateButtons(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._dependenciesMissing:
            return
        entry, training = self.selectedEntry(), self.logic.training
        running = training.running
        addReason = why_cannot_add_case(self._parameterNode.inputVolume, self._parameterNode.inputSegmentation, entry)
        self.ui.addCaseButton.enabled = not addReason
        self.ui.addCaseButton.toolTip = addReason or _("Add the volume and its segmentation as a case of the task.")
        self.ui.openCaseButton.enabled = self.ui.removeCaseButton.enabled = self.selectedCase() is not None
        trainReason = why_cannot_train(entry, running, None if running else training.lock.holder())
        self.ui.trainButton.enabled = not trainReason
        if running:
            self.ui.trainButton.text = _("Stop")
            self.ui.trainButton.toolTip = _("Stop training: the previous model stays as it is; the run can be resumed.")
        else:
            if not self.selectedModel():
                self.ui.trainButton.text = _("Train a first model")
            else:
                self.ui.trainButton.text = _("Update") if entry is not None and entry.in_model else _("Train")
            self.ui.trainButton.toolTip = trainReason or _(
                "Train in the background; a new model version is written.\nBudget: {cost}").format(
                cost=self.trainingCost(entry))
        run = self.selectedUnfinishedRun()
        self.ui.resumeButton.enabled = run is not None and not running
        self.ui.resumeButton.text = _("Publish anyway") if run is not None and run.state() == "refused" \
            else _("Resume")
        self.ui.discardRunButton.enabled = run is not None and not running
        self.ui.useModelButton.enabled = bool(self.selectedModel())
        queueBusy = self._queueJob is not None
        workerBusy = self.segmentationLogic().job is not None and not self.segmentationLogic().job.state.finished
        rankReason = why_cannot_rank(entry, self.selectedModel(), self._queueFolder, workerBusy and not queueBusy)
        self.ui.rankButton.enabled = queueBusy or not rankReason
        self.ui.rankButton.text = _("Cancel") if queueBusy else _("Rank")
        self.ui.rankButton.toolTip = _("Stop the ranking or segmentation (the background worker is stopped).") \
            if queueBusy else rankReason or _("Score every image by the model's uncertainty, most uncertain first.")
        queue = self._queueLogic.queue if self._queueLogic is not None else None  # refreshQueue reads it
        nextReason = why_no_next_case(queue, workerBusy)
        self.ui.nextCaseButton.enabled = not nextReason
        self.ui.nextCaseButton.toolTip = nextReason or _("Load and segment: {case}").format(
            case=queue.next_case().case)

    def trainingCost(self, entry) -> str:
        """The budget of the run Train would start and its time estimate, read again only when the task, its case
        count, the model or the budget changed."""
        key = (entry.name, entry.cases, self.selectedModel(), self._parameterNode.budget)
        if self._costKey != key:
            self._costText = self.logic.training.cost(entry.name, self.selectedModel() or None, key[3])
            self._costKey = key
        return self._costText

    def onTrainButton(self) -> None:
        training = self.logic.training
        if training.running:
            if slicer.util.confirmYesNoDisplay(_("Stop training? The previous model stays as it is, and the run can "
                                                 "be resumed later.")):
                training.stop()
                self.onPoll()
            return
        entry, parameters = self.selectedEntry(), self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            self.startRun(training.plan(entry.name, self.selectedModel() or None, parameters.budget,
                                        parameters.device))

    def startRun(self, request, how: str = "start") -> None:
        """Start a run in the background: ``start`` it, ``resume`` a stopped one, or ``publish`` a refused one."""
        training = self.logic.training
        self.ui.logTextEdit.clear()
        self.ui.forgettingTableWidget.setRowCount(0)
        self.ui.resultLabel.text = request.description
        self._logLinesShown = 0
        {"start": training.start, "resume": training.resume, "publish": training.publish_anyway}[how](request)
        self.timer.start()
        self.onPoll()

    def onPoll(self) -> None:
        """Timer tick: take in the run's progress (never blocks) and show it; act on the outcome when it ends."""
        training = self.logic.training
        job = training.job
        if job is None:
            return
        state = training.poll()
        self.ui.progressBar.value = int(100 * job.fraction)
        self.ui.progressBar.setFormat(job.status_text)
        self.ui.trainingStatusLabel.text = training.progress.summary()
        for line in job.log_lines_after(self._logLinesShown):
            self.ui.logTextEdit.appendPlainText(line)
        self._logLinesShown = job.lines_added
        if state.finished:
            self.timer.stop()
            self.showOutcome(training.outcome)
        self.updateButtons()

    def showOutcome(self, outcome) -> None:
        self.showForgettingReport(outcome.report)
        if outcome.state == "published":
            self.ui.resultLabel.text = _("New model version {name} is ready; LabelShare Segmentation lists it.").format(
                name=outcome.model.name)
            self.refreshModels(select=str(outcome.model))  # the training logic has told the model store
        elif outcome.state == "refused":
            self.ui.resultLabel.text = _("Not published: the new version forgets too much (see the table). "
                                         "The previous model stays in use.")
            self.refreshUnfinishedRuns()
            decision = self.askRefusedDecision(outcome)
            if decision == "keep":
                self.logic.training.discard(outcome.request)
                self.refreshUnfinishedRuns()
            elif decision == "publish":
                with showErrorAndContinue(_("The version could not be published.")):
                    self.startRun(outcome.request, "publish")
                return
        elif outcome.state == "stopped":
            self.ui.resultLabel.text = _("Stopped. The previous model is unchanged; the run can be resumed.") \
                if outcome.resumable else _("Stopped before anything was trained.")
            self.refreshUnfinishedRuns()
        else:
            self.ui.resultLabel.text = _("Training failed: {reason}").format(reason=outcome.message)
            slicer.util.errorDisplay(_("Training failed: {reason}").format(reason=outcome.message),
                                     detailedText="\n".join(self.logic.training.job.log))
            self.refreshUnfinishedRuns()
        self.refreshCases()

    def askRefusedDecision(self, outcome) -> str | None:
        """The regression gate refused the new version: "keep" the old model, "publish" anyway, or None (later)."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle(_("New version not published"))
        box.setText(_("The new version loses too much on tasks the model already knew (see the forgetting report). "
                      "The old model stays in use."))
        box.setDetailedText(outcome.message)
        keep = box.addButton(_("Keep the old model"), qt.QMessageBox.AcceptRole)
        publish = box.addButton(_("Publish anyway"), qt.QMessageBox.DestructiveRole)
        box.addButton(_("Decide later"), qt.QMessageBox.RejectRole)
        box.exec_()
        clicked = box.clickedButton()
        if clicked == keep:
            return "keep"
        return "publish" if clicked == publish else None

    def showForgettingReport(self, report) -> None:
        table = self.ui.forgettingTableWidget
        rows = report.table() if report is not None else []
        table.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for column, text in enumerate(cells):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()
        self.ui.forgettingCollapsibleButton.collapsed = not rows

    def refreshUnfinishedRuns(self) -> None:
        self._unfinished = self.logic.training.unfinished_runs()
        combo = self.ui.unfinishedRunComboBox
        combo.clear()
        for run in self._unfinished:
            state = _("refused by the regression gate") if run.state() == "refused" else _("stopped")
            combo.addItem(f"{run.description} ({state})")
        self.ui.unfinishedRunsCollapsibleButton.collapsed = not self._unfinished
        self.updateButtons()

    def selectedUnfinishedRun(self):
        index = self.ui.unfinishedRunComboBox.currentIndex
        return self._unfinished[index] if 0 <= index < len(self._unfinished) else None

    def onResume(self) -> None:
        run = self.selectedUnfinishedRun()
        with slicer.util.tryWithErrorDisplay(_("The run could not be continued."), waitCursor=True):
            self.startRun(run, "publish" if run.state() == "refused" else "resume")

    def onDiscardRun(self) -> None:
        run = self.selectedUnfinishedRun()
        if not slicer.util.confirmOkCancelDisplay(_("Discard the unfinished run '{run}'? Its partial training is "
                                                    "deleted; published model versions are not touched.")
                                                  .format(run=run.description)):
            return
        with slicer.util.tryWithErrorDisplay(_("The run could not be discarded."), waitCursor=True):
            self.logic.training.discard(run)
            self.refreshUnfinishedRuns()

    def onUseModel(self) -> None:
        """Make the selected version LabelShareSegmentation's model (also to roll back to an older version): its
        parameter node says which model it uses, and the model store's notification makes its list show it."""
        LabelShareSegmentation.moduleLogic().getParameterNode().model = self.selectedModel()
        self.logic.training.store.changed.notify(Path(self.selectedModel()))
        slicer.util.showStatusMessage(_("LabelShare Segmentation now uses {model}.").format(
            model=Path(self.selectedModel()).name), 5000)

    def onInstallDependencies(self) -> None:
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing LabelShare's Python packages failed."),
                                                 waitCursor=True):
                LabelShareSegmentation.moduleLogic().ensureDependencies()
        finally:
            self.refreshAll()  # what is installed now, also after a partial install


@contextmanager
def showErrorAndContinue(message: str):
    """``slicer.util.tryWithErrorDisplay`` (wait cursor, the error shown with its details) for steps after which
    the module must go on: that function re-raises, and a task folder that cannot be read would abort the
    module's setup. The error ends here; the step's result stays empty."""
    try:
        with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
            yield
    except Exception as error:  # already shown to the user; also in the log, which testing mode keeps
        logging.warning(f"LabelShare: {message} {error}")


class LabelShareTrainingLogic(ScriptedLoadableModuleLogic):
    """Delegates to :class:`LabelShareTrainingLib.TrainingLogic` (made on first use, from the user's settings); adds
    the parameter node and the console API."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._training = None

    @property
    def training(self) -> TrainingLogic:
        """The Lib logic; its workspace is the user's setting (default: ``tasks`` in the LabelShare home)."""
        if self._training is None:
            workspace = qt.QSettings().value(SETTINGS_WORKSPACE, "") or str(default_workspace())
            self._training = TrainingLogic(workspace=workspace, models_dir=modelsFolder())
        return self._training

    def getParameterNode(self):
        return LabelShareTrainingParameterNode(super().getParameterNode())

    def addCase(self, volumeNode, segmentationNode, task: str, model: str | None = None,
                choices: dict | None = None, duplicate: str = "refuse") -> str:
        """Add a case (console and scripts); returns the case name.

        :param task: task folder in the workspace, created from the model's labels when only the model has it.
        :param choices: segment name -> label name, or None to skip, for segments whose names match no label.
        :param duplicate: "refuse", "keep" or "replace" when the image is already collected.
        """
        LabelShareSegmentation.moduleLogic().ensureDependencies()
        return self.training.add_case(task, volumeNode, segmentationNode, model, choices, duplicate).case_name

    def train(self, task: str, model: str | None = None, budget: str = DEFAULT_BUDGET,
              device: str = DEFAULT_DEVICE):
        """Train and wait (console and scripts); returns the outcome (``state``, ``model``, ``report``)."""
        LabelShareSegmentation.moduleLogic().ensureDependencies()
        return self.training.train(task, model, budget, device)

    @property
    def running(self) -> bool:
        return self._training is not None and self._training.running

    def stop(self, waitS: float | None = None, onWait=None) -> None:
        """Stop a running training run (it stays resumable); ``waitS`` blocks until it has ended (the tree is killed
        then), calling ``onWait(secondsLeft)`` meanwhile."""
        if self._training is not None:
            self._training.stop(wait_s=waitS, on_wait=onWait)


class LabelShareTrainingTest(ScriptedLoadableModuleTest):
    """Self-test for a real Slicer (Developer mode: Reload and Test, or ctest): the widget's buttons, synthetic
    cases collected from MRML nodes, then a first model trained with a tiny budget in the background. Uses a
    temporary workspace and models folder. Installs nothing: without the engine's packages the training test is
    skipped with a message (Slicer's test machines run in testing mode)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = DependencyInstaller.missing()
        self.setUp()
        self.test_widget_explains_why_buttons_are_disabled()
        self.setUp()
        self.test_collect_cases_from_volume_and_segmentation()
        if missing:
            self.delayDisplay(skip_message("test_train_a_first_model_in_the_background", missing))
            return
        self.setUp()
        self.test_train_a_first_model_in_the_background()

    def _collectPhantomCases(self, root: Path) -> TrainingLogic:
        """A workspace with task "phantom" and 4 synthetic cases added from volume and segmentation nodes."""
        import SimpleITK as sitk
        from labelshare import synthetic
        from LabelShareLib import engine_command, image_to_volume, import_task_segments
        from LabelShareTrainingLib.cases import CollectionLabel

        source = synthetic.write_task(root / "source", "phantom3d", 4)
        # tiny budget: the engine takes the last value of a repeated option
        training = TrainingLogic(workspace=root / "workspace", models_dir=root / "models",
                                 engine=lambda *arguments: engine_command(*arguments, "--epochs", "1",
                                                                          "--steps-per-epoch", "3"))
        training.create_task("phantom", ["body", "organ", "lesion"])
        labels = [CollectionLabel(1, "body", {}), CollectionLabel(2, "organ", {}), CollectionLabel(3, "lesion", {})]
        for image_file in sorted((source / "imagesTr").iterdir()):
            case = image_file.name.replace("_0000.nii.gz", "")
            volume = image_to_volume(sitk.ReadImage(str(image_file)), slicer.mrmlScene, case)
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case} labels")
            import_task_segments(segmentation, sitk.ReadImage(str(source / "labelsTr" / f"{case}.nii.gz")),
                                 "phantom", labels, reference_volume=volume)
            training.add_case("phantom", volume, segmentation)
        return training

    def test_collect_cases_from_volume_and_segmentation(self):
        self.delayDisplay("Collecting synthetic cases from volume and segmentation nodes")
        training = self._collectPhantomCases(Path(slicer.util.tempDirectory("LabelShareTrainingSelfTest")))
        cases = training.cases("phantom")
        self.assertEqual(len(cases), 4)
        self.assertTrue(all(case.label_voxels["body"] > 0 for case in cases))
        self.delayDisplay("Collect test passed")

    def test_train_a_first_model_in_the_background(self):
        training = self._collectPhantomCases(Path(slicer.util.tempDirectory("LabelShareTrainingSelfTest")))
        self.delayDisplay("Training a first model in the background")
        outcome = training.train("phantom", None, "quick", "cpu", timeout=600)
        self.assertEqual(outcome.state, "published", outcome.message)
        self.assertTrue((outcome.model / "model.safetensors").is_file())
        self.assertEqual(training.new_cases_since_training("phantom"), 0)
        self.delayDisplay("Training test passed")

    def test_widget_explains_why_buttons_are_disabled(self):
        slicer.util.selectModule("LabelShareTraining")
        widget = slicer.modules.LabelShareTrainingWidget
        widget._parameterNode.inputVolume = None
        self.assertFalse(widget.ui.addCaseButton.enabled)
        if DependencyInstaller.missing():  # every section waits for the install, which the status line offers
            self.assertTrue(widget.ui.installDependenciesButton.visible)
            self.assertTrue(widget.ui.dependenciesStatusLabel.text)
        else:
            self.assertTrue(widget.ui.addCaseButton.toolTip)
        self.delayDisplay("Widget test passed")


LIB_MODULES = ("annotation_queue", "matching", "lock", "runs", "cases", "logic")  # dependencies first


def reloadLib() -> None:
    """Developer reload of the Lib package (``importlib``: ``imp`` is gone in Python 3.12), leaves first. The shared
    LabelShareLib belongs to LabelShareSegmentation and is reloaded with it."""
    for name in [f"LabelShareTrainingLib.{module}" for module in LIB_MODULES] + ["LabelShareTrainingLib"]:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
