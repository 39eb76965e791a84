"""The annotation queue of LabelShareTraining (LabelShareTrainingLib/annotation_queue.py): ranking in the real
``labelshare worker`` with the tiny model, "Next case" on slicer-core (image loaded, segmented), marked done after
"Add current case", and a queue file that survives a restart and a kill mid-write."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_FOLDERS = [str(REPO_ROOT / folder) for folder in ("LabelShareSegmentation", "LabelShareTraining")]
sys.path[:0] = MODULE_FOLDERS

from LabelShareLib.shared_worker import SharedWorker  # noqa: E402
from LabelShareTrainingLib.annotation_queue import (QUEUE_FILE, AnnotationQueue,  # noqa: E402
                                                    AnnotationQueueLogic)
from LabelShareTrainingLib.logic import TrainingLogic  # noqa: E402

from labelshare.core.config import RankConfig  # noqa: E402
from labelshare.core.errors import DataError  # noqa: E402
from labelshare.core.ranking_table import RankedCase  # noqa: E402

pytest_plugins = ["slicer_support"]  # fixtures: mrml_scene, slicer_env
TASK = "phantom3d"


def ranked(count: int, prefix: str = "case") -> list[RankedCase]:
    return [RankedCase(f"{prefix}_{i:05d}", Path(f"/data/{prefix}_{i:05d}.nii.gz"), 1.0 - i / count,
                       {"body": 100 + i}, 0.1) for i in range(count)]


def test_next_case_mark_done_and_restart(tmp_path):
    queue = AnnotationQueue.in_workspace(tmp_path)
    assert queue.next_case() is None and not (tmp_path / QUEUE_FILE).exists()
    queue.set_ranking(ranked(3), TASK, "/models/m", "/data")
    assert queue.next_case().case == "case_00000"
    queue.set_current("case_00000")
    assert queue.mark_done("case_00000").case == "case_00001"

    restarted = AnnotationQueue.in_workspace(tmp_path)  # Slicer restarted: the same state from the file
    assert [(e.case, e.done) for e in restarted.entries] == [("case_00000", True), ("case_00001", False),
                                                             ("case_00002", False)]
    assert restarted.state.current == "" and restarted.counts() == (1, 3)
    restarted.set_ranking(list(reversed(ranked(3))), TASK, "/models/m2", "/data")  # ranked again by a new model
    assert [e.case for e in restarted.entries][-1] == "case_00000" and restarted.entry("case_00000").done
    assert restarted.next_case().case == "case_00002"
    restarted.set_ranking(ranked(3), "other-task", "/models/m", "/data")  # another task: nothing is done
    assert restarted.counts() == (0, 3)
    with pytest.raises(DataError, match="case 'absent' is not in the annotation queue"):
        restarted.mark_done("absent")


def test_a_damaged_queue_file_is_a_one_line_error(tmp_path):
    (tmp_path / QUEUE_FILE).write_text('{"format": 1, "entries": [')  # what a write without rename could leave
    with pytest.raises(DataError, match=f"{QUEUE_FILE}: annotation queue is not valid JSON"):
        AnnotationQueue.in_workspace(tmp_path)
    (tmp_path / QUEUE_FILE).write_text('{"format": 1}')
    with pytest.raises(DataError, match="not an annotation queue of LabelShare .*; remove it and rank again"):
        AnnotationQueue.in_workspace(tmp_path)


WRITER = """
import sys
from pathlib import Path
from LabelShareTrainingLib.annotation_queue import AnnotationQueue
from labelshare.core.ranking_table import RankedCase
queue = AnnotationQueue(sys.argv[1])
cases = [RankedCase(f"case_{i:05d}", Path(f"/data/case_{i:05d}.nii.gz"), 1.0 - i / 20000, {"body": i}, 0.1)
         for i in range(20000)]
queue.set_ranking(cases, "phantom3d", "/models/m", "/data")
print("ready", flush=True)
round_number = 0
while True:  # mark cases done one after another: every save rewrites the whole (large) file
    queue.mark_done(f"case_{round_number % 20000:05d}")
    round_number += 1
"""


def test_the_queue_survives_a_kill_in_the_middle_of_writing(tmp_path):
    path = tmp_path / QUEUE_FILE
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(MODULE_FOLDERS + [os.environ.get("PYTHONPATH", "")])}
    for delay in (0.05, 0.13, 0.29, 0.41):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                  env=environment)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        queue = AnnotationQueue(path)  # the old or the new state, never a torn one
        assert len(queue.entries) == 20000 and queue.state.task == TASK
        done = [entry.done for entry in queue.entries]
        assert done == sorted(done, reverse=True)  # a prefix of the cases is done, as the writer marked them
        path.unlink()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


@pytest.fixture(scope="module")
def shared():
    """A worker owner of the module's own (the queue's jobs are LabelShare Training's in it)."""
    shared = SharedWorker()
    yield shared
    shared.release("LabelShare Training")


def test_rank_next_case_add_case_and_restart_on_slicer_core(slicer_env, shared, tiny_model,
                                                            synthetic_tasks, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for image in sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[:3]:
        shutil.copy(image, unlabelled / image.name)
    workspace = tmp_path / "workspace"
    queue_logic = AnnotationQueueLogic(AnnotationQueue.in_workspace(workspace), shared)
    events = []
    job = queue_logic.start_rank(unlabelled, TASK, tiny_model, device="cpu", on_event=events.append)
    entries = job.result_or_raise(300)
    assert len(entries) == 3 and [e.score for e in entries] == sorted((e.score for e in entries), reverse=True)
    assert [e["index"] for e in events if e.get("stage") == "ranking"] == [1, 2, 3]
    assert (workspace / "annotation-queue.csv").is_file()
    first = entries[0]

    entry, volume, segmentation = queue_logic.open_next(device="cpu", timeout=300)
    assert entry.case == first.case and volume.GetName() == first.case
    assert volume.GetScene() is slicer_env.scene and volume.GetImageData().GetDimensions()[0] == 48
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["body", "organ", "lesion"]  # the model's masks, ready for the Segment Editor

    training = TrainingLogic(workspace=workspace, models_dir=tmp_path / "models")
    training.add_case(TASK, volume, segmentation, model=tiny_model)  # "Add current case"
    assert queue_logic.case_added(volume).case == first.case
    assert queue_logic.case_added(volume) is None  # only once

    restarted = AnnotationQueueLogic(AnnotationQueue.in_workspace(workspace), shared)
    assert restarted.queue.entry(first.case).done and restarted.queue.next_case().case == entries[1].case
    second, volume2 = restarted.load_next()
    assert second.case == entries[1].case and restarted.queue.state.current == second.case
    assert AnnotationQueue.in_workspace(workspace).state.current == second.case  # remembered across a restart


def test_next_case_when_all_are_done_and_a_missing_folder(slicer_env, shared, tmp_path):
    queue_logic = AnnotationQueueLogic(AnnotationQueue.in_workspace(tmp_path), shared)
    with pytest.raises(DataError, match="every case of the annotation queue is done; rank another folder"):
        queue_logic.load_next()
    with pytest.raises(DataError, match="absent: folder of unlabelled images not found"):
        queue_logic.start_rank(tmp_path / "absent", TASK)


def test_cancel_stops_the_ranking_and_leaves_the_queue_as_it_was(slicer_env, shared, tiny_model,
                                                                 synthetic_tasks, tmp_path):
    queue = AnnotationQueue.in_workspace(tmp_path / "workspace")
    queue.set_ranking(ranked(2), TASK, tiny_model, "/data")
    queue_logic = AnnotationQueueLogic(queue, shared)
    job = queue_logic.start_rank(synthetic_tasks[TASK] / "imagesTr", TASK, tiny_model, device="cpu")
    job.cancel()
    assert job.wait(60).value == "cancelled"
    assert [e.case for e in AnnotationQueue.in_workspace(tmp_path / "workspace").entries] == ["case_00000",
                                                                                              "case_00001"]
    assert shared.start_ranking("LabelShare Training", [synthetic_tasks[TASK] / "imagesTr"], tmp_path / "r.csv",
                                RankConfig.from_options(task=TASK, device="cpu"),
                                tiny_model).result_or_raise(300)[0].name  # a new worker
