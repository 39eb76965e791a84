"""The background worker both modules share (LabelShareLib/shared_worker.py), with the real ``labelshare worker``:
one owner knows whose job runs; a job of either module is visible to both; neither module cancels the other's job
(issue 27: a model change or a scene close in LabelShare Segmentation cancelled Training's Rank or Next case, and a
blocked Apply said "a segmentation is already running" while nothing showed as running)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT / folder) for folder in ("LabelShareSegmentation", "LabelShareTraining")]

from LabelShareLib import volumes  # noqa: E402
from LabelShareLib.jobs import JobState  # noqa: E402
from LabelShareLib.shared_worker import SEGMENTATION, TRAINING, SharedWorker, WorkerBusyError  # noqa: E402
from LabelShareSegmentationLib.logic import SegmentationLogic, why_not_ready  # noqa: E402
from LabelShareTrainingLib.annotation_queue import AnnotationQueue, AnnotationQueueLogic  # noqa: E402

pytest_plugins = ["slicer_support"]  # fixtures: mrml_scene, slicer_env
TASK = "phantom3d"


@pytest.fixture
def shared():
    shared = SharedWorker()
    yield shared
    for module in (SEGMENTATION, TRAINING):
        shared.release(module)


def test_trainings_rank_survives_segmentations_model_change_and_scene_close(shared, slicer_env, tiny_model,
                                                                            synthetic_tasks, tmp_path):
    unlabelled = tmp_path / "scans"
    shutil.copytree(synthetic_tasks[TASK] / "imagesTr", unlabelled)
    seen = []
    shared.changed.subscribe(lambda use: seen.append((use.module, use.job.state.finished)))  # what both widgets do
    queue = AnnotationQueueLogic(AnnotationQueue.in_workspace(tmp_path / "workspace"), shared)
    rank = queue.start_rank(unlabelled, TASK, tiny_model, device="cpu")
    assert seen == [(TRAINING, False)]

    segmentation = SegmentationLogic(shared)
    segmentation.stop()  # LabelShare Segmentation: another model chosen, or its scene closed, or its cleanup
    segmentation.stop()
    shared.cancel(SEGMENTATION)
    assert not rank.state.finished and shared.worker is not None and shared.worker.running

    # Segmentation sees what runs, and where to cancel it; its Apply is refused with that, not started
    assert shared.describe().startswith(f"{TRAINING} is ranking the images of 'scans' for task {TASK} (")
    reason = shared.blocked_reason(SEGMENTATION)
    assert reason.startswith("The background worker is busy: LabelShare Training is ranking the images of 'scans'")
    assert reason.endswith("Wait for it, or cancel it in LabelShare Training.")
    volume = volumes.image_to_volume(sitk.ReadImage(str(sorted(unlabelled.iterdir())[0])), slicer_env.scene, "scan")
    with pytest.raises(WorkerBusyError) as refused:
        segmentation.start(volume, TASK, model=tiny_model, device="cpu")
    assert str(refused.value) == reason
    assert why_not_ready(volume, shared.store.summary(tiny_model), TASK, reason) == reason
    assert shared.blocked_reason(TRAINING) == "", "Training's own job does not block Training's view"

    assert len(rank.result_or_raise(300)) == len(list(unlabelled.iterdir()))  # the ranking finished
    assert seen == [(TRAINING, False), (TRAINING, True)] and shared.describe() == ""
    node = segmentation.segment(volume, TASK, model=tiny_model, device="cpu", timeout=300)  # now it may
    assert node.GetSegmentation().GetNumberOfSegments() == 3
    assert seen[-2:] == [(SEGMENTATION, False), (SEGMENTATION, True)]


def test_each_module_cancels_only_its_own_job(shared, slicer_env, tiny_model, synthetic_tasks):
    image = sitk.ReadImage(str(sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[0]))
    volume = volumes.image_to_volume(image, slicer_env.scene, "scan")
    job = SegmentationLogic(shared).start(volume, TASK, model=tiny_model, device="cpu")
    shared.release(TRAINING)  # e.g. LabelShare Training's cleanup
    shared.cancel(TRAINING)
    assert not job.state.finished and shared.describe().startswith(
        f"{SEGMENTATION} is segmenting 'scan' with task {TASK}")
    assert shared.blocked_reason(TRAINING).endswith("cancel it in LabelShare Segmentation.")
    shared.cancel(SEGMENTATION)
    assert job.state == JobState.CANCELLED and not shared.busy
