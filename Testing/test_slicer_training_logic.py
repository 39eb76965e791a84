"""LabelShareTraining's logic without a training run: the task list, task folders from a model's labels, planning
(add-task, update, first model, replay folders, versions), automatic training and the reasons shown on buttons."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):
    sys.path.insert(0, str(REPO_ROOT / module_folder))

import slicer  # noqa: E402
from LabelShareTrainingLib.lock import JobLockedError, TrainingLock  # noqa: E402
from LabelShareTrainingLib.runs import TrainingRequest  # noqa: E402
from LabelShareTrainingLib.logic import (TaskRow, TrainingLogic, parse_label_text,  # noqa: E402
                                         why_cannot_add_case, why_cannot_train)
from slicer_support import slicer_scene  # noqa: E402

from labelshare.core.errors import DataError, LabelShareError  # noqa: E402
from labelshare.core.fileio import atomic_write_json  # noqa: E402
from labelshare.core.labelspace import LabelSpace  # noqa: E402
from labelshare.core.paths import recorded_task_folders  # noqa: E402
from labelshare.core.tasks import TaskDataset  # noqa: E402
from labelshare.engine.statistics import compute_statistics  # noqa: E402


@pytest.fixture(autouse=True)
def labelshare_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def model(tmp_path, synthetic_tasks) -> Path:
    """A folder with the label space of a model of the synthetic tasks (all that planning reads of a model)."""
    folder = tmp_path / "models" / "abdomen-v3"
    folder.mkdir(parents=True)
    LabelSpace.build([compute_statistics(TaskDataset.open(path, name)) for name, path in synthetic_tasks.items()
                      ]).save(folder / "labelspace.json")
    return folder


@pytest.fixture
def logic(tmp_path) -> TrainingLogic:
    return TrainingLogic(workspace=tmp_path / "workspace", models_dir=tmp_path / "models")


def add_cases(logic: TrainingLogic, task: str, source: Path, count: int) -> None:
    dataset = TaskDataset.open(source)
    for case in dataset.cases[:count]:
        image, _, label = dataset.read_case(case)
        logic.collection(task).add_case(image, label, name=case.name)


def test_label_text_of_new_task_dialog():
    assert parse_label_text("liver, tumour") == ["liver", "tumour"]
    assert parse_label_text("liver=1; tumour=5\nvessel=7") == {"liver": 1, "tumour": 5, "vessel": 7}
    assert parse_label_text(" lv cavity , rv ") == ["lv cavity", "rv"]
    for bad, message in (("", "at least one"), ("a=1, b", "every label or to none"), ("a=x", "whole number"),
                         ("a=1, a=2", "twice")):
        with pytest.raises(DataError, match=message):
            parse_label_text(bad)


def test_task_list_joins_model_tasks_and_workspace_folders(logic, model, tmp_path):
    logic.create_task("liver", ["liver", "tumour"])
    logic.create_task("xray2d", ["lung", "heart"])  # same name as a model task, other labels
    (logic.workspace / "broken").mkdir()
    (logic.workspace / "broken" / "dataset.json").write_text("{")
    entries = {entry.name: entry for entry in logic.task_entries(model)}
    assert list(entries)[:3] == ["phantom3d", "xray2d", "sides3d"], "model tasks first, in the model's order"
    assert sorted(entries) == ["broken", "liver", "phantom3d", "sides3d", "xray2d"]
    assert entries["phantom3d"].in_model and entries["phantom3d"].folder is None and entries["phantom3d"].valid
    assert entries["phantom3d"].labels == {"body": 1, "organ": 2, "lesion": 3}
    assert entries["phantom3d"].action == "Update" and entries["liver"].action == "Train"
    assert not entries["xray2d"].valid and "differ from task 'xray2d'" in entries["xray2d"].reason
    assert not entries["broken"].valid and "not valid JSON" in entries["broken"].reason
    assert [e.name for e in logic.task_entries(None)] == ["broken", "liver", "xray2d"]


def test_first_case_of_a_model_only_task_creates_its_folder_with_the_model_labels(logic, model):
    with slicer_scene() as env:
        volume = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
        slicer.util.updateVolumeFromArray(volume, np.arange(4 * 10 * 12, dtype=np.int16).reshape(4, 10, 12))
        segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ct labels")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        lesion = np.zeros((4, 10, 12), np.uint8)
        lesion[1:3, 2:5, 2:6] = 1
        segment = segmentation.GetSegmentation().AddEmptySegment("", "Lesion")
        slicer.util.updateSegmentBinaryLabelmapFromArray(lesion, segmentation, segment, volume)
        with pytest.raises(DataError, match="neither in the workspace"):
            logic.add_case("kidney", volume, segmentation, model)
        export = logic.add_case("phantom3d", volume, segmentation, model)
    folder = logic.workspace / "phantom3d"
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {
        "background": 0, "body": 1, "organ": 2, "lesion": 3}
    assert export.mapping.missing == ["body", "organ"]
    [case] = logic.cases("phantom3d")
    assert case.label_voxels == {"body": 0, "organ": 0, "lesion": int(lesion.sum())}
    assert logic.task_entries(model)[0].cases == 1 and logic.task_entries(model)[0].valid


def test_model_task_recorded_in_the_lineage_is_collected_beside_its_old_cases(logic, model, synthetic_tasks,
                                                                               tmp_path):
    trained_on = shutil.copytree(synthetic_tasks["sides3d"], tmp_path / "data" / "sides3d")
    atomic_write_json(model / "lineage.json", {"task_folders": {"sides3d": str(trained_on),
                                                                "xray2d": str(tmp_path / "gone")}})
    assert recorded_task_folders(model) == {"sides3d": trained_on}, "a folder that is gone does not count"
    collection = logic.ensure_task_folder("sides3d", model)
    assert collection.root == logic.workspace / "sides3d" and len(collection.case_names()) == 8
    assert collection.labels == logic.model_tasks(model)["sides3d"]
    empty = logic.ensure_task_folder("xray2d", model)
    assert empty.case_names() == [] and empty.labels == logic.model_tasks(model)["xray2d"]
    assert logic.ensure_task_folder("sides3d", model).root == collection.root, "made once"


def test_a_task_name_from_a_tampered_model_makes_no_folder_outside_the_workspace(model, synthetic_tasks, tmp_path):
    """Issue #11 (3): a model whose label space and lineage name a task '../../x' must not lead the collection
    outside the workspace."""
    logic = TrainingLogic(workspace=tmp_path / "deep" / "workspace", models_dir=tmp_path / "models")
    space = json.loads((model / "labelspace.json").read_text())
    space["tasks"]["../../x"] = space["tasks"].pop("xray2d")
    (model / "labelspace.json").write_text(json.dumps(space))
    atomic_write_json(model / "lineage.json", {"task_folders": {"../../x": str(synthetic_tasks["xray2d"])}})
    with pytest.raises(LabelShareError, match=r"task name '\.\./\.\./x'"):
        logic.ensure_task_folder("../../x", model)
    with pytest.raises(LabelShareError, match=r"task name '\.\./\.\./x'"):
        logic.collection("../../x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()


def test_plans_follow_the_task_and_the_model(logic, model, synthetic_tasks, tmp_path):
    with pytest.raises(DataError, match="no folder in the workspace"):
        logic.plan("liver", model)
    logic.create_task("blobs", ["left_blob", "right_blob"])
    with pytest.raises(DataError, match="no cases yet"):
        logic.plan("blobs", model)
    add_cases(logic, "blobs", synthetic_tasks["sides3d"], 3)
    with pytest.raises(DataError, match=r"no folder of its task\(s\) phantom3d, xray2d"):
        logic.plan("blobs", model)
    for name in ("phantom3d", "xray2d"):
        shutil.copytree(synthetic_tasks[name], logic.workspace / name)
    recorded = tmp_path / "elsewhere" / "sides3d"
    shutil.copytree(synthetic_tasks["sides3d"], recorded)
    atomic_write_json(model / "lineage.json", {"task_folders": {"sides3d": str(recorded)}})
    (logic.models_dir / "abdomen-v4").mkdir()  # a newer version someone made: never reused

    added = logic.plan("blobs", model, "standard", "cpu")
    assert added.kind == "add-task" and Path(added.out) == logic.models_dir / "abdomen-v5"
    assert added.replay_tasks == {"phantom3d": str(logic.workspace / "phantom3d"),
                                  "xray2d": str(logic.workspace / "xray2d")}, "sides3d: from the lineage"
    assert added.task_dir == str(logic.workspace / "blobs") and added.base_model == str(model)

    updated = logic.plan("xray2d", model)
    assert updated.kind == "update" and "--task" in updated.arguments()
    assert updated.replay_tasks == {"phantom3d": str(logic.workspace / "phantom3d")}
    (logic.workspace / "xray2d" / "dataset.json").write_text(json.dumps(
        {**json.loads((logic.workspace / "xray2d" / "dataset.json").read_text()),
         "labels": {"background": 0, "lung": 1, "heart": 2}}))
    with pytest.raises(DataError, match="differ from task 'xray2d'"):
        logic.plan("xray2d", model)

    first = logic.plan("blobs", None)
    assert first.kind == "train" and Path(first.out) == logic.models_dir / "blobs-v1"
    assert not Path(first.labelspace).exists(), "a first model's label space is built in the job, not here"
    build, train = first.commands()
    assert build[:2] == ["labelspace", "build"] and build[build.index("--output") + 1] == first.labelspace
    assert build[build.index("--task") + 1] == f"blobs={logic.workspace / 'blobs'}"
    assert train[:3] == ["train", "--labelspace", first.labelspace]
    Path(first.labelspace).parent.mkdir(parents=True)
    Path(first.labelspace).write_text("{}")  # an earlier attempt of the run built it: not again
    assert [command[0] for command in first.commands(resume=True)] == ["train"]


def test_automatic_training_counts_cases_since_the_last_published_run(logic, synthetic_tasks):
    logic.create_task("blobs", ["left_blob", "right_blob"])
    assert logic.new_cases_since_training("blobs") == 0 and logic.new_cases_since_training("nothing") == 0
    add_cases(logic, "blobs", synthetic_tasks["sides3d"], 3)
    assert logic.new_cases_since_training("blobs") == 3
    assert logic.should_train_automatically("blobs", after_cases=3)
    assert not logic.should_train_automatically("blobs", after_cases=4)
    assert not logic.should_train_automatically("blobs", after_cases=0), "off by default (0)"
    marker = logic.workspace / "blobs" / ".labelshare-trained.json"
    atomic_write_json(marker, {"model": "m", "cases": logic.collection("blobs").case_names()[:2]})
    assert logic.new_cases_since_training("blobs") == 1


def test_buttons_say_why_they_are_disabled(tmp_path):
    ready = TaskRow(name="liver", in_model=False, folder=tmp_path, labels={"liver": 1}, cases=2)
    assert why_cannot_add_case(object(), object(), ready) == ""
    assert "Choose a task" in why_cannot_add_case(object(), object(), None)
    assert "volume" in why_cannot_add_case(None, object(), ready)
    assert "segmentation" in why_cannot_add_case(object(), None, ready)
    broken = TaskRow(name="x", in_model=False, folder=tmp_path, labels={}, valid=False, reason="bad json")
    assert why_cannot_add_case(object(), object(), broken) == "bad json" == why_cannot_train(broken, False)
    assert why_cannot_train(ready, False) == ""
    empty = TaskRow(name="liver", in_model=True, folder=None, labels={"liver": 1})
    assert "no collected cases" in why_cannot_train(empty, False)
    lock = TrainingLock(tmp_path / "training.lock")
    holder = lock.acquire("update task 'acdc'")
    assert "update task 'acdc'" in why_cannot_train(ready, False, holder)
    assert why_cannot_train(ready, True, holder) == "", "the running job's own Stop button stays enabled"
    request = TrainingRequest(kind="train", task_name="liver", task_dir=str(tmp_path), out=str(tmp_path / "v1"),
                              labelspace="ls.json")
    second = TrainingLogic(workspace=tmp_path, models_dir=tmp_path, lock=TrainingLock(lock.path))
    with pytest.raises(JobLockedError):
        second.start(request)
    assert second.job is None and not request.record_path.exists(), "nothing started, nothing recorded"
