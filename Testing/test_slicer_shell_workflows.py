"""What a user of the two modules sees, run on their real .ui widgets (shell_harness.py) with the real Lib packages,
model store and bundled models: the model's card where the model is chosen (issue 27), the shared worker seen from
both modules (issue 27), and LabelShare Training's model list and Train button (issue 26)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer

from shell_harness import (SEGMENTATION, SHELL_FOLDERS, TRAINING, segmentation_widget, settings_in, shell_module,
                           training_widget)

sys.path[:0] = [str(folder) for folder in SHELL_FOLDERS]

from labelshare.core.memory import MEMORY_DIR  # noqa: E402
from labelshare.core.modelfolder import write_manifest  # noqa: E402
from labelshare.core.paths import bundled_model_dirs, default_model_dir  # noqa: E402
from LabelShareLib.store import version_of  # noqa: E402
from LabelShareLib.jobs import WorkerJob  # noqa: E402
from LabelShareLib.shared_worker import TRAINING as TRAINING_MODULE  # noqa: E402
from LabelShareLib.shared_worker import SharedWorker  # noqa: E402
from slicer_support import slicer_scene  # noqa: E402


def combo_items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count)]


# -- LabelShare Segmentation: the model's purpose where it is chosen (issue 27 item 2) -------------------------------
def test_model_and_task_information_come_from_the_card_and_only_the_newest_version_is_listed(tmp_path):
    bundled = bundled_model_dirs()
    lineage, version = version_of(bundled[0].name)
    # an older version of the bundled model's lineage in the models folder (settings_in: tmp_path / "models")
    older = Path(shutil.copytree(bundled[0], tmp_path / "models" / f"{lineage}-v0"))
    with shell_module(SEGMENTATION) as shell:
        widget = segmentation_widget(shell, tmp_path, task="acdc", model="")
        widget._parameterNode.model = ""  # nothing chosen yet: the newest version is preselected
        widget.refreshModels()
        assert combo_items(widget.ui.modelComboBox) == [f"{bundled[0].name} (bundled) — hippocampus, acdc, "
                                                        "sunnybrook, mammo"]
        widget.ui.showAllVersionsCheckBox.checked = True  # "All versions"
        assert [item.split(" ")[0] for item in combo_items(widget.ui.modelComboBox)] == [*(b.name for b in bundled),
                                                                                        older.name]
        assert widget.settings.show_all_versions
        widget.ui.showAllVersionsCheckBox.checked = False
        assert widget.ui.modelComboBox.count == 1

        card = (bundled[0] / "README.md").read_text(encoding="utf-8")
        model_text = widget.ui.modelInfoLabel.text
        assert model_text.startswith(f"{bundled[0].name}: version {version} of {lineage}, made ")
        assert "Non-commercial use only: trained on acdc, mammo" in model_text
        assert "**Non-commercial use only:** trained on acdc, mammo" in card  # the card says the same

        widget.ui.taskComboBox.currentText = "acdc"
        task_text = widget.ui.taskInfoLabel.text
        intended = next(line for line in card.splitlines() if line.startswith("- **acdc**: cine MRI"))
        assert f"Intended input: {re.split(r'; [0-9]+ training cases', intended.split(': ', 1)[1])[0]}" in task_text
        cases = next(re.match(r"- \*\*acdc\*\*: ([0-9]+) cases; licence", line) for line in card.splitlines()
                     if re.match(r"- \*\*acdc\*\*: [0-9]+ cases; licence", line)).group(1)
        assert f"Training data: {cases} cases (acdc_cardiac); licence: CC BY-NC-SA 4.0" in task_text
        assert task_text.count("NON-COMMERCIAL USE ONLY") == 1
        for label in ("rv_cavity", "myocardium", "lv_cavity"):  # the card's validation table, to 3 decimals
            dice = next(line for line in card.splitlines() if line.startswith(f"| acdc | {label} |")).split("|")[3]
            assert f"{label} {dice.split('±')[0].strip()}" in task_text
        widget.ui.taskComboBox.currentText = "hippocampus"
        assert "NON-COMMERCIAL" not in widget.ui.taskInfoLabel.text and "CC BY-SA 4.0" in widget.ui.taskInfoLabel.text

        # a scene that chose an older version keeps it listed
        widget._parameterNode.model = str(older)
        widget.refreshModels()
        assert [item.split(" ")[0] for item in combo_items(widget.ui.modelComboBox)] == [bundled[0].name, older.name]
        assert widget.ui.modelComboBox.currentText.startswith(older.name)


def test_the_mirror_box_is_disabled_with_the_reason_for_a_lateralised_task(tmp_path, tiny_model):
    with shell_module(SEGMENTATION) as shell:
        settings = settings_in(tmp_path)
        settings.add_model_folder(tiny_model)
        widget = segmentation_widget(shell, tmp_path, task="xray2d", model=str(tiny_model), settings=settings)
        widget.refreshModels()
        widget.ui.taskComboBox.currentText = "sides3d"
        assert not widget.ui.mirrorCheckBox.enabled
        assert "task 'sides3d' is lateralised" in widget.ui.mirrorCheckBox.toolTip
        widget.ui.taskComboBox.currentText = "xray2d"
        assert widget.ui.mirrorCheckBox.enabled and widget.ui.mirrorCheckBox.toolTip == widget._mirrorToolTip


def test_a_volume_of_another_modality_is_warned_about_not_refused(tmp_path):
    with slicer_scene() as env, shell_module(SEGMENTATION) as shell:
        volume = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT 1")
        slicer.util.updateVolumeFromArray(volume, np.zeros((2, 8, 8), dtype=np.int16))
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(env.scene)
        item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
        widget = segmentation_widget(shell, tmp_path, task="acdc")
        widget._parameterNode.inputVolume = volume
        widget.refreshModels()
        assert widget.ui.inputNoteLabel.text == "", "not from DICOM: nothing to compare"
        hierarchy.SetItemAttribute(item, "DICOM.Modality", "CT")  # what Slicer's DICOM plugins record
        widget._checkCanApply()
        assert widget.ui.inputNoteLabel.text == ("'CT 1' is CT (its DICOM Modality), but task acdc was trained on "
                                                 "cine MRI (normalised, uint8) (MR): the result may be meaningless.")
        assert widget.ui.applyButton.enabled, "a warning, not a refusal"
        hierarchy.SetItemAttribute(item, "DICOM.Modality", "MR")
        widget._checkCanApply()
        assert widget.ui.inputNoteLabel.text == ""
        widget.ui.taskComboBox.currentText = "mammo"
        assert "task mammo was trained on X-ray (mammography, 8-bit grayscale) (MG)" in widget.ui.inputNoteLabel.text

        rgb = env.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "radiograph")
        slicer.util.updateVolumeFromArray(rgb, np.zeros((1, 8, 8, 3), dtype=np.uint8))
        widget._parameterNode.inputVolume = rgb  # offered in the selector (its node types), converted with a note
        widget._checkCanApply()
        assert "'radiograph' is a colour (RGB) volume: it is segmented as its luminance" in \
            widget.ui.inputNoteLabel.text and widget.ui.applyButton.enabled


# -- one worker, two modules (issue 27 item 4) ----------------------------------------------------------------------
class IdleWorker:
    """A worker process stand-in whose jobs run until they are cancelled (no process, no model)."""

    def __init__(self, device):
        self.device, self.stopped = device, 0
        self.current = None

    def submit(self, request, **job_options):
        self.current = WorkerJob(self, "r1", **job_options)
        return self.current

    def stop(self):
        self.stopped += 1
        if self.current is not None and not self.current.state.finished:
            self.current.mark_cancelled()


def test_trainings_rank_survives_segmentations_model_change_and_scene_close_and_apply_says_why(tmp_path):
    shared = SharedWorker(worker_factory=IdleWorker)
    rank = shared.submit(TRAINING_MODULE, "ranking the images of 'scans' for task acdc", "cpu", default_model_dir(),
                         {"command": "rank"})
    with slicer_scene() as env, shell_module(SEGMENTATION) as shell:
        volume = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan")
        slicer.util.updateVolumeFromArray(volume, np.zeros((2, 8, 8), dtype=np.int16))
        logic = shell.LabelShareSegmentationLogic()
        logic.segmentation = shell.SegmentationLogic(shared)
        widget = segmentation_widget(shell, tmp_path, task="acdc", logic=logic)
        widget.shared = shared
        shared.changed.subscribe(widget.onWorkerChanged)
        widget._parameterNode.inputVolume = volume
        widget.refreshModels()

        reason = ("The background worker is busy: LabelShare Training is ranking the images of 'scans' for task "
                  "acdc (preparing). Wait for it, or cancel it in LabelShare Training.")
        assert not widget.ui.workerStatusLabel.isHidden() and widget.ui.workerStatusLabel.text == reason
        assert not widget.ui.applyButton.enabled and widget.ui.applyButton.toolTip == reason

        widget.ui.showAllVersionsCheckBox.checked = True
        widget.ui.modelComboBox.setCurrentIndex(widget.ui.modelComboBox.count - 1)  # another model
        assert widget._parameterNode.model == str(bundled_model_dirs()[-1])
        widget.onSceneStartClose(None, None)  # the scene closes
        widget.cleanup()  # the module is closed
        assert not rank.state.finished and shared.worker.stopped == 0, "Training's job was not touched"

        shared.cancel(TRAINING_MODULE)  # LabelShare Training's Cancel
        assert rank.state.value == "cancelled" and not shared.busy


# -- LabelShare Training: the model list and the Train button (issue 26) --------------------------------------------
@pytest.fixture
def training_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    return tmp_path


def training_logic(tmp_path: Path):
    from LabelShareTrainingLib import TrainingLock, TrainingLogic
    return TrainingLogic(workspace=tmp_path / "workspace", models_dir=tmp_path / "models",
                         lock=TrainingLock(tmp_path / "training.lock"))


def test_training_preselects_the_newest_model_and_lists_added_folders(training_home, tiny_model, monkeypatch):
    shown = []
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, *args: shown.append(text))
    added = training_home / "shared-models" / "tiny-v2"
    shutil.copytree(tiny_model, added)
    from LabelShareLib.settings import ADDED_MODEL_FOLDERS
    with shell_module(TRAINING) as shell:
        settings = settings_in(training_home, **{ADDED_MODEL_FOLDERS: f'["{added.parent}"]'})  # "Add model folder…"
        widget = training_widget(shell, training_logic(training_home), settings)
        widget.refreshAll()
        data = [widget.ui.modelComboBox.itemData(i) for i in range(widget.ui.modelComboBox.count)]
        assert data == ["", *[str(path) for path in bundled_model_dirs()], str(added)]  # every version: rollback
        assert widget.selectedModel() == str(bundled_model_dirs()[0]) == str(default_model_dir()), "the newest"
        assert widget._parameterNode.model == str(default_model_dir())

        widget.ui.modelComboBox.setCurrentIndex(data.index(str(added)))
        widget.onUseModel()  # "Use this model" in LabelShare Segmentation
        assert shown == ["LabelShare Segmentation now uses tiny-v2."]
    with shell_module(SEGMENTATION) as shell:
        segmentation = segmentation_widget(shell, training_home, task="", settings=settings)
        segmentation.refreshModels()
        assert segmentation._parameterNode.model == str(added) and segmentation.selectedModel().path == added


def snapshot(*roots: Path) -> dict[str, tuple]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for root in roots if root.exists()
            for path in root.rglob("*")}


def test_refreshing_the_buttons_reads_no_case_and_writes_no_file(training_home, synthetic_tasks, monkeypatch):
    """Issue 26: with "(none: train a first model)" every refresh planned a first model on the GUI thread: it read
    every case and wrote a label-space file (9 s for 160 ACDC cases, again after each added case)."""
    import SimpleITK as sitk
    from labelshare.core import tasks
    from labelshare.engine import statistics
    training = training_logic(training_home)
    collection = training.create_task("blobs", ["left_blob", "right_blob"])
    source = tasks.TaskDataset.open(synthetic_tasks["sides3d"])
    for case in source.cases[:3]:
        image, _, label = source.read_case(case)
        collection.add_case(image, label, name=case.name)
    reads = []
    monkeypatch.setattr(sitk, "ReadImage", lambda *args, **kwargs: reads.append(args))
    monkeypatch.setattr(tasks, "read_image", lambda *args, **kwargs: reads.append(args))
    monkeypatch.setattr(statistics, "compute_statistics", lambda *args, **kwargs: reads.append(args))
    with shell_module(TRAINING) as shell:
        widget = training_widget(shell, training, settings_in(training_home), task="blobs")
        widget._parameterNode.model = ""
        widget.refreshAll()
        widget.ui.modelComboBox.setCurrentIndex(0)  # (none: train a first model)
        assert widget.selectedModel() == "" and widget.ui.trainButton.text == "Train a first model"
        before = snapshot(training_home / "home", training_home / "workspace", training_home / "models")
        for _ in range(5):
            widget.updateButtons()
            widget.refreshCases()
        widget._parameterNode.budget = "standard"
        widget.updateButtons()
        assert reads == [] and snapshot(training_home / "home", training_home / "workspace",
                                        training_home / "models") == before
        from LabelShareTrainingLib.runs import BUDGETS, FIRST_MODEL_EPOCHS
        steps = FIRST_MODEL_EPOCHS["standard"] * BUDGETS["standard"]["steps_per_epoch"]
        assert widget.ui.trainButton.enabled and widget.ui.trainReasonLabel.text == f"Budget: {steps} steps"


def test_why_train_cannot_start_is_a_label_not_a_tooltip(training_home, tiny_model, synthetic_tasks):
    """Issue 26: Train stayed enabled and the reason hid in the tooltip under "Budget: …"."""
    models = training_home / "models"
    shutil.copytree(tiny_model, models / "tiny-v1")
    shutil.rmtree(models / "tiny-v1" / MEMORY_DIR)  # a model without a rehearsal memory needs its tasks' folders
    write_manifest(models / "tiny-v1")
    training = training_logic(training_home)
    collection = training.create_task("blobs", ["left_blob", "right_blob"])
    from labelshare.core.tasks import TaskDataset
    source = TaskDataset.open(synthetic_tasks["sides3d"])
    image, _, label = source.read_case(source.cases[0])
    collection.add_case(image, label, name=source.cases[0].name)
    with shell_module(TRAINING) as shell:
        widget = training_widget(shell, training, settings_in(training_home), model=str(models / "tiny-v1"),
                                 task="blobs")
        widget.refreshAll()
        assert widget.selectedModel() == str(models / "tiny-v1")
        reason = widget.ui.trainReasonLabel.text
        assert not widget.ui.trainButton.enabled
        assert reason.startswith(f"{models / 'tiny-v1'}") and "holds no rehearsal memory" in reason
        assert "unknown" not in widget.ui.trainButton.toolTip and "Budget" not in widget.ui.trainButton.toolTip
        for name in ("phantom3d", "xray2d", "sides3d"):  # the model's tasks' folders put into the workspace
            shutil.copytree(synthetic_tasks[name], training.workspace / name)
        widget.runs._readinessKey = None  # (asked again when the task, its cases, the model or the budget change)
        widget.updateButtons()
        assert widget.ui.trainButton.enabled and widget.ui.trainReasonLabel.text.startswith("Budget: ")


def test_the_training_widget_needs_no_segmentation_module(training_home):
    """Issue 30: the Training shell imports LabelShareLib for settings, installs, models and the worker; with the
    Segmentation module unimportable it still opens."""
    with shell_module(TRAINING) as shell:
        assert "LabelShareSegmentation" not in sys.modules or sys.modules["LabelShareSegmentation"] is None
        widget = training_widget(shell, training_logic(training_home), settings_in(training_home))
        widget.refreshAll()
        assert widget.ui.modelComboBox.count >= 1 + len(bundled_model_dirs())


def test_trainings_queue_shows_segmentations_job_and_its_cleanup_leaves_it_running(training_home, monkeypatch):
    import LabelShareLib.shared_worker as shared_worker_module
    from LabelShareLib.shared_worker import SEGMENTATION as SEGMENTATION_MODULE
    shared = SharedWorker(worker_factory=IdleWorker)
    monkeypatch.setattr(shared_worker_module, "_SHARED_WORKER", shared)  # the session's worker, for both widgets
    apply = shared.submit(SEGMENTATION_MODULE, "segmenting 'CT 1' with task acdc", "cpu", default_model_dir(),
                          {"command": "segment"})
    queue_folder = training_home / "unlabelled"
    queue_folder.mkdir()
    from LabelShareLib.settings import ANNOTATION_QUEUE_FOLDER
    with shell_module(TRAINING) as shell:
        widget = training_widget(shell, training_logic(training_home),
                                 settings_in(training_home, **{ANNOTATION_QUEUE_FOLDER: str(queue_folder)}),
                                 task="acdc")
        widget.refreshAll()
        assert widget.selectedEntry().name == "acdc" and widget.selectedEntry().in_model
        reason = ("The background worker is busy: LabelShare Segmentation is segmenting 'CT 1' with task acdc "
                  "(preparing). Wait for it, or cancel it in LabelShare Segmentation.")
        assert widget.ui.workerStatusLabel.text == reason and not widget.ui.workerStatusLabel.isHidden()
        assert not widget.ui.rankButton.enabled and widget.ui.rankButton.toolTip == reason
        widget.cleanup()  # LabelShare Training's cleanup lets the worker go: Segmentation's Apply goes on
        assert not apply.state.finished and shared.worker.stopped == 0
        shared.cancel(SEGMENTATION_MODULE)
        assert apply.state.value == "cancelled"
