"""LabelShare Training: collect corrected cases into task folders, add tasks to a model, train it in the background.

The thin Qt shell: module description, widget wiring, the parameter node and the self-test; the annotation queue's
section and the dialogs are in ``LabelShareTrainingWidgets``. Everything with logic in it is in
``LabelShareTrainingLib`` (no Qt, tested on slicer-core), in the shared ``LabelShareLib`` (volumes, segments,
background jobs and the worker both modules share, the model store, settings, dependencies; it ships with
LabelShareSegmentation) and in the engine ``labelshare``. This module never imports LabelShareSegmentation's
module: a published version reaches its model list through the model store's change notification.

Scripting (Slicer's Python console; blocking)::

    logic = slicer.util.getModuleLogic("LabelShareTraining")   # the module's logic (opens its widget)
    # or, without the widget: import LabelShareTraining; logic = LabelShareTraining.LabelShareTrainingLogic()
    logic.addCase(volumeNode, segmentationNode, "liver")                  # case name; raises with the reason
    outcome = logic.train("liver", model="/path/abdomen-v2", budget="quick", device="auto")
    outcome.state, outcome.model, outcome.report                          # "published", new version, forgetting
"""

from __future__ import annotations

import importlib
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

from LabelShareLib import (DEFAULT_DEVICE, DEVICES, DependencyInstaller, Settings, default_store, ensure_dependencies,
                           model_title, skip_message)
from LabelShareTrainingLib import (BUDGETS, DEFAULT_BUDGET, DuplicateCaseError, TrainingLogic, UnmatchedSegmentsError,
                                   default_workspace, parse_label_text, why_cannot_add_case)
from LabelShareTrainingWidgets import (AnnotationQueueWidget, TrainingRunWidget, askDuplicate, askSegmentChoices,
                                       showErrorAndContinue)

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
            "See LabelShare's Slicer guide (docs/slicer.md) for the tutorial.")
        self.parent.acknowledgementText = _(
            "Label sharing: Anand et al., Label Sharing Incremental Learning Framework for Independent Multi-Label "
            "Segmentation Tasks, MICCAI 2024 ADSMI workshop (arXiv:2411.11105).")


@parameterNodeWrapper
class LabelShareTrainingParameterNode:
    """What the scene remembers; the workspace folder and automatic training are preferences (LabelShareLib.Settings).

    inputVolume, inputSegmentation - the case to add.
    model - the model to extend (a folder); empty: train a first model (the newest version is preselected).
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
        self._updating = False
        self._dependenciesMissing = True  # until refreshAll has looked
        self.settings = Settings()
        self.queue = None  # the annotation queue's section (AnnotationQueueWidget), made in setup
        self.runs = None  # the Train section (TrainingRunWidget), made in setup

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LabelShareTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LabelShareTrainingLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskSelected)
        self.ui.newTaskButton.connect("clicked(bool)", self.onNewTask)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.openCaseButton.connect("clicked(bool)", self.onOpenCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.casesTableWidget.connect("itemSelectionChanged()", self.updateButtons)
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModel)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.workspacePathLineEdit.connect("currentPathChanged(QString)", self.onWorkspaceChanged)
        self.createSections()

        self.initializeParameterNode()
        self.refreshAll()

    def createSections(self) -> None:
        """The annotation queue's and the Train section's widget classes, on this module's widgets."""
        self.queue = AnnotationQueueWidget(self.ui, self.settings, lambda: self.logic.training.workspace,
                                           self.selection, lambda: self._parameterNode)
        self.runs = TrainingRunWidget(self.ui, self.logic, self.settings, self.selection, lambda: self._parameterNode,
                                      onPublished=lambda model: self.refreshModels(select=str(model)),
                                      onEnded=self.refreshCases)

    def selection(self) -> tuple:
        """(the selected task row or None, the selected model folder or '': a first model)."""
        return self.selectedEntry(), self.selectedModel()

    def onReload(self) -> None:
        reloadLib()
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Module closed or Slicer exits: a running training run saves a resumable checkpoint and stops; the queue's
        job is cancelled and the shared worker let go (LabelShare Segmentation's job in it goes on)."""
        for section in (self.runs, self.queue):
            if section is not None:
                section.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshAll()
        if not self._dependenciesMissing:
            self.runs.resumePolling()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """Training reads only files, so a run goes on when the scene closes (so does a ranking); the GUI lets go
        of the scene."""
        self.queue.onSceneStartClose()
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
        training.models_dir = Path(self.settings.models_folder)  # LabelShare Segmentation may have changed it
        self.ui.modelsFolderLabel.text = self.settings.models_folder
        wasBlocked = self.ui.workspacePathLineEdit.blockSignals(True)
        self.ui.workspacePathLineEdit.currentPath = str(training.workspace)
        self.ui.workspacePathLineEdit.blockSignals(wasBlocked)
        self.refreshModels()
        self.runs.refreshUnfinishedRuns()
        self.queue.refresh()

    def refreshModels(self, select: str | None = None) -> None:
        """Every usable version (older ones too: to roll back), from the model list both modules share (bundled
        models, the models folder, folders added in LabelShare Segmentation); preselected: ``select``, else the
        scene's choice, else the newest version (the list's first)."""
        self._updating = True
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("(none: train a first model)"), NO_MODEL)
        self._models = [summary for summary in self.settings.models(all_versions=True) if summary.valid]
        for summary in self._models:
            self.ui.modelComboBox.addItem(model_title(summary), str(summary.path))
        wanted = select if select is not None else (self._parameterNode.model if self._parameterNode else "")
        if not wanted and self._models:
            wanted = str(self._models[0].path)  # the newest version of the first lineage (the bundled model)
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
                    choices = askSegmentChoices(error.mapping, list(entry.labels), choices)
                    if choices is None:
                        return
                except DuplicateCaseError as error:
                    duplicate = askDuplicate(error)
                    if duplicate is None:
                        return
            message = _("Added case '{case}' to task '{task}'.").format(case=export.case_name, task=entry.name)
            if export.mapping.missing:
                message += " " + _("Missing labels (recorded): {labels}.").format(
                    labels=", ".join(export.mapping.missing))
            for (winner, loser), count in export.overlaps.items():
                message += " " + _("{count} voxels of '{loser}' overlapped '{winner}' and were given to '{winner}' "
                                   "(the smaller structure).").format(count=count, loser=loser, winner=winner)
            if self.queue.caseAdded(parameters.inputVolume):
                message += " " + _("Marked done in the annotation queue.")
            self.ui.casesSummaryLabel.toolTip = message
            slicer.util.showStatusMessage(message, 5000)
            self.refreshTasks(select=entry.name)
            self.runs.maybeTrainAutomatically()

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
        self.settings.training_workspace = path
        self.logic.training.workspace = Path(path).expanduser()
        self.refreshTasks()
        self.queue.workspaceChanged()

    # -- buttons ----------------------------------------------------------------------------------------------------
    def updateButtons(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._dependenciesMissing:
            return
        entry = self.selectedEntry()
        addReason = why_cannot_add_case(self._parameterNode.inputVolume, self._parameterNode.inputSegmentation, entry)
        self.ui.addCaseButton.enabled = not addReason
        self.ui.addCaseButton.toolTip = addReason or _("Add the volume and its segmentation as a case of the task.")
        self.ui.openCaseButton.enabled = self.ui.removeCaseButton.enabled = self.selectedCase() is not None
        self.runs.updateButtons()
        self.ui.useModelButton.enabled = bool(self.selectedModel())
        self.queue.updateButtons()

    def onUseModel(self) -> None:
        """Make the selected version LabelShare Segmentation's model (also to roll back to an older version), through
        the model store both modules share."""
        default_store().choose(self.selectedModel())
        slicer.util.showStatusMessage(_("LabelShare Segmentation now uses {model}.").format(
            model=Path(self.selectedModel()).name), 5000)

    def onInstallDependencies(self) -> None:
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing LabelShare's Python packages failed."),
                                                 waitCursor=True):
                ensure_dependencies()
        finally:
            self.refreshAll()  # what is installed now, also after a partial install


class LabelShareTrainingLogic(ScriptedLoadableModuleLogic):
    """The module's logic, for the widget and for scripts (see the module docstring): the parameter node and the
    first-run dependency install around :class:`LabelShareTrainingLib.TrainingLogic` (made on first use, from the
    user's settings). Instances may coexist: one training run at a time is kept by the training lock."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._training = None

    @property
    def training(self) -> TrainingLogic:
        """The Lib logic; its workspace is the user's setting (default: ``tasks`` in the LabelShare home)."""
        if self._training is None:
            settings = Settings()
            self._training = TrainingLogic(workspace=settings.training_workspace or str(default_workspace()),
                                           models_dir=settings.models_folder)
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
        ensure_dependencies()
        return self.training.add_case(task, volumeNode, segmentationNode, model, choices, duplicate).case_name

    def train(self, task: str, model: str | None = None, budget: str = DEFAULT_BUDGET,
              device: str = DEFAULT_DEVICE):
        """Train and wait (console and scripts); returns the outcome (``state``, ``model``, ``report``)."""
        ensure_dependencies()
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
        from labelshare.core import synthetic
        from LabelShareLib import engine_command, image_to_volume, import_task_segments
        from LabelShareTrainingLib.cases import CollectionLabel

        source = synthetic.write_task(root / "source", "phantom3d", 4)
        # tiny budget for the training commands: the engine takes the last value of a repeated option
        training = TrainingLogic(workspace=root / "workspace", models_dir=root / "models",
                                 engine=lambda *arguments: engine_command(*arguments, *(
                                     ("--epochs", "1", "--steps-per-epoch", "3") if arguments[0] == "train" else ())))
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


# The packages this module ships, each module after the ones it imports; the package itself last.
LIB_MODULES = {
    "LabelShareTrainingLib": ("annotation_queue", "matching", "lock", "runs", "cases", "logic"),
    "LabelShareTrainingWidgets": ("dialogs", "annotation_queue", "training_run"),
}


def reloadLib() -> None:
    """Developer reload of the module's packages (``importlib``: ``imp`` is gone in Python 3.12), leaves first. The
    shared LabelShareLib belongs to LabelShareSegmentation and is reloaded with it."""
    for package, modules in LIB_MODULES.items():
        for name in [f"{package}.{module}" for module in modules] + [package]:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
