"""LabelShare Training where the annotator is (issue 26): an empty workspace, the bundled model and its rehearsal
memory. Create a task, add one case from Slicer nodes, press Train: a new version is published without any folder of
the model's tasks, and the bundled model is only read. A real ``labelshare add-task`` child process on tiny synthetic
tasks (a few steps; slicer-core)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):
    sys.path.insert(0, str(REPO_ROOT / module_folder))

import slicer  # noqa: E402
from LabelShareLib.volumes import image_to_volume  # noqa: E402
from LabelShareTrainingLib import runs  # noqa: E402
from LabelShareTrainingLib.logic import TrainingLogic  # noqa: E402
from slicer_support import slicer_scene  # noqa: E402

from labelshare.core import paths, synthetic  # noqa: E402
from labelshare.core.errors import DataError  # noqa: E402
from labelshare.core.memory import MEMORY_DIR  # noqa: E402
from labelshare.core.modelfolder import read_memory, verify_folder, write_manifest  # noqa: E402
from labelshare.core.tasks import TaskDataset  # noqa: E402

RUN_TIMEOUT_S = 300


@pytest.fixture(autouse=True)
def tiny_budgets(tmp_path, monkeypatch):
    """Runs of a few seconds (one torch thread), and the store, jobs and lock of the test out of the user's home."""
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setitem(runs.BUDGETS, "quick", {"epochs": 1, "steps_per_epoch": 4, "batch_size": 4})


@pytest.fixture
def bundled(tiny_model, tmp_path, monkeypatch) -> Path:
    """The test suite's tiny model (its rehearsal memory included) as the extension's bundled model."""
    folder = tmp_path / "Resources" / "Models" / "labelshare-3tasks-v1"
    shutil.copytree(tiny_model, folder)
    monkeypatch.setattr(paths, "BUNDLED_MODELS_DIR", folder.parent)
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def add_one_case(logic: TrainingLogic, task: str, tmp_path: Path) -> None:
    """One case collected from a volume node and a segmentation node, as "Add current case" does."""
    source = TaskDataset.open(synthetic.write_task(tmp_path / "source", "sides3d", 1, seed=7))
    image, _, label = source.read_case(source.cases[0])
    with slicer_scene() as env:
        volume = image_to_volume(image, env.scene, "blobs case")
        segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "blobs case segmentation")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        labels = sitk.GetArrayFromImage(label) if not isinstance(label, np.ndarray) else label
        for name, value in (("left_blob", 1), ("right_blob", 2)):
            segment = segmentation.GetSegmentation().AddEmptySegment("", name)
            slicer.util.updateSegmentBinaryLabelmapFromArray((labels == value).astype(np.uint8), segmentation,
                                                             segment, volume)
        logic.add_case(task, volume, segmentation)


def test_train_from_the_bundled_model_in_an_empty_workspace_publishes_a_version(bundled, tmp_path):
    logic = TrainingLogic(workspace=tmp_path / "workspace", models_dir=tmp_path / "models")
    model = paths.default_model_dir()
    assert model == bundled and not logic.workspace.exists()
    before = digest(model)
    logic.create_task("blobs", ["left_blob", "right_blob"])
    add_one_case(logic, "blobs", tmp_path)
    assert [case.name for case in logic.cases("blobs")] and sorted(p.name for p in logic.workspace.iterdir()) == \
        ["blobs"], "the workspace holds the new task only"

    reason, cost = logic.readiness("blobs", model, "quick")
    assert reason == "" and "steps" in cost, "Train can start: the model's memory stands in for its tasks' folders"
    request = logic.plan("blobs", model, "quick", "cpu")
    assert request.kind == "add-task" and request.replay_tasks == {}
    assert "--replay-task" not in request.arguments()

    outcome = logic.train("blobs", model, "quick", "cpu", timeout=RUN_TIMEOUT_S)
    if outcome.state == "refused":  # a few steps may cost an old task a point: publish it as a user can
        logic.publish_anyway(outcome.request)
        outcome = logic.wait(RUN_TIMEOUT_S)
    assert outcome.state == "published", outcome.message
    published = outcome.model
    assert published.parent == logic.models_dir and published.name == "labelshare-3tasks-v2"
    verify_folder(published)
    assert outcome.report is not None and set(outcome.report.tasks) == {"phantom3d", "xray2d", "sides3d"}
    assert all("rehearsal memory's" in outcome.report.scored_on[name] for name in outcome.report.tasks)
    memory = read_memory(published, verify_folder(published)[1])
    assert list(memory.tasks) == ["phantom3d", "xray2d", "sides3d", "blobs"]  # the new task's exemplars added
    assert digest(model) == before, "the bundled model is only read"


def test_a_model_without_a_memory_says_which_task_folders_train_needs(bundled, tmp_path):
    shutil.rmtree(bundled / MEMORY_DIR)
    write_manifest(bundled)
    logic = TrainingLogic(workspace=tmp_path / "workspace", models_dir=tmp_path / "models")
    logic.create_task("blobs", ["left_blob", "right_blob"])
    add_one_case(logic, "blobs", tmp_path)
    reason, _ = logic.readiness("blobs", bundled, "quick")
    assert "holds no rehearsal memory" in reason and "phantom3d, xray2d, sides3d" in reason
    with pytest.raises(DataError, match="put those tasks' nnU-Net folders into the workspace"):
        logic.plan("blobs", bundled)
