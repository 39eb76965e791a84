"""The segmentation logic end to end on real slicer-core and a real ``labelshare worker`` with the tiny model:
segments equal to the engine's own output, progress to 100 %, re-run, cancel, crash, and bad inputs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import slicer

from labelshare.core.config import InferenceConfig
from labelshare.core.errors import DataError, LabelShareError, ModelError, UnknownTaskError
from labelshare.core.paths import bundled_model_dirs, default_model_dir
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import load_model

pytest_plugins = ["slicer_support"]  # fixtures: mrml_scene, slicer_env
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LabelShareSegmentation"))
from LabelShareLib import segments, store, volumes  # noqa: E402
from LabelShareLib.jobs import JobFailed, JobState  # noqa: E402
from LabelShareLib.shared_worker import SharedWorker  # noqa: E402
from LabelShareSegmentationLib.logic import EditsKept, SegmentationLogic, why_not_ready  # noqa: E402

TASK = "phantom3d"


@pytest.fixture(scope="module")
def logic():
    """One logic for the module's tests: its worker is reused until a test kills it (starting one takes seconds)."""
    logic = SegmentationLogic()
    yield logic
    logic.stop()


@pytest.fixture
def volume(mrml_scene, synthetic_tasks):
    case = sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[0]
    return volumes.image_to_volume(sitk.ReadImage(str(case)), mrml_scene, "case 0")


def scene_contents(scene) -> list[str]:
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def test_segments_come_from_the_worker_and_equal_the_engine_output(logic, volume, tiny_model, mrml_scene):
    events, states = [], []

    def record(event):
        events.append(event)
        states.append(job.state)  # the state each event left the job in

    job = logic.start(volume, TASK, model=tiny_model, device="cpu", on_event=record)
    assert job.wait(120) == JobState.DONE, job.error
    node = job.result
    fractions = [e["fraction"] for e in events if e["event"] == "progress" and e["stage"] == "segmenting"]
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert JobState.RUNNING in states and job.fraction == 1.0

    expected = Segmenter(load_model(tiny_model, device="cpu")).segment(volumes.volume_to_image(volume), TASK)
    expected = sitk.GetArrayFromImage(expected)
    labels = [(1, "body"), (2, "organ"), (3, "lesion")]
    segmentation = node.GetSegmentation()
    assert node.GetName() == "case 0 phantom3d"
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        [name for _, name in labels]
    for index, (label_id, _) in enumerate(labels):
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
        np.testing.assert_array_equal(voxels, (expected == label_id).astype(np.uint8))
    assert not list(Path(job.done_event["output"]).parent.glob("*")), "transfer files must be removed"

    # again into that node: the same worker answers (no new process, model kept), the task's segments are
    # replaced in place (nothing was edited: no copy is kept)
    worker_pid = logic.shared.worker.process.pid
    nodes_before = scene_contents(mrml_scene)
    assert logic.segment(volume, TASK, model=tiny_model, device="cpu", output_node=node, timeout=120) is node
    assert logic.job.done_event["load_s"] == 0.0 and logic.shared.worker.process.pid == worker_pid
    assert scene_contents(mrml_scene) == nodes_before and segmentation.GetNumberOfSegments() == 3

    # with test-time mirroring (the Advanced checkbox) the segments are the engine's mirrored output
    mirrored = Segmenter(load_model(tiny_model, device="cpu"), InferenceConfig(mirror=True)).segment(
        volumes.volume_to_image(volume), TASK)
    mirrored = sitk.GetArrayFromImage(mirrored)
    assert not np.array_equal(mirrored, expected)
    assert logic.segment(volume, TASK, model=tiny_model, device="cpu", output_node=node, timeout=120,
                         mirror=True) is node
    for index, (label_id, _) in enumerate(labels):
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
        np.testing.assert_array_equal(voxels, (mirrored == label_id).astype(np.uint8))


def test_cancel_stops_the_worker_and_leaves_the_scene_unchanged(logic, volume, tiny_model, mrml_scene):
    before = scene_contents(mrml_scene)
    job = None

    def cancel_on_first_event(event):
        if event["event"] == "progress":
            job.cancel()

    job = logic.start(volume, TASK, model=tiny_model, device="cpu", on_event=cancel_on_first_event)
    worker_process = logic.shared.worker.process
    assert job.wait(120) == JobState.CANCELLED
    assert not worker_process.alive and not psutil.pid_exists(worker_process.pid)
    assert scene_contents(mrml_scene) == before
    assert job.result is None and logic.shared.worker.process is None  # the next run starts a new worker


def test_engine_crash_fails_the_job_with_a_clear_reason(logic, volume, tiny_model, mrml_scene):
    before = scene_contents(mrml_scene)
    job = logic.start(volume, TASK, model=tiny_model, device="cpu")
    psutil.Process(logic.shared.worker.process.pid).kill()  # what the out-of-memory killer or a segfault does
    with pytest.raises(JobFailed, match=r"worker stopped unexpectedly \(exit code -9\)"):
        job.result_or_raise(120)
    assert scene_contents(mrml_scene) == before
    assert logic.shared.worker.process is None  # the next run starts a new worker


def test_engine_error_reaches_the_user_and_the_worker_keeps_serving(logic, volume, tiny_model, mrml_scene):
    """Also: after the cancel and the crash above, the next run starts a new worker that works."""
    broken = volumes.image_to_volume(sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, dtype=np.float32)),
                                     mrml_scene, "broken scan")
    with pytest.raises(JobFailed, match="NaN or infinite"):
        logic.segment(broken, TASK, model=tiny_model, device="cpu", timeout=120)
    worker_pid = logic.shared.worker.process.pid
    assert logic.segment(volume, TASK, model=tiny_model, device="cpu", timeout=120) is not None
    assert logic.shared.worker.process.pid == worker_pid


def test_bad_inputs_are_refused_before_anything_runs(volume, tiny_model, mrml_scene, tmp_path):
    logic = SegmentationLogic(SharedWorker())
    before = scene_contents(mrml_scene)
    with pytest.raises(UnknownTaskError, match="unknown task 'liver'; known tasks: phantom3d, sides3d, xray2d"):
        logic.start(volume, "liver", model=tiny_model)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_model, incomplete)
    (incomplete / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing model.safetensors"):
        logic.start(volume, TASK, model=incomplete)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "nothing loaded")
    with pytest.raises(DataError, match="volume 'nothing loaded' is empty"):
        logic.start(empty, TASK, model=tiny_model)
    with pytest.raises(LabelShareError, match="unknown device 'tpu'"):
        logic.start(volume, TASK, model=tiny_model, device="tpu")
    with pytest.raises(LabelShareError, match="largest-component some: use one of model, all, none"):
        logic.start(volume, TASK, model=tiny_model, largest_component="some")
    with pytest.raises(LabelShareError, match="unknown option"):
        logic.start(volume, TASK, model=tiny_model, largestComponent="all")
    assert logic.shared.worker is None  # no process was started
    mrml_scene.RemoveNode(empty)
    assert scene_contents(mrml_scene) == before


def test_why_apply_is_disabled(volume, tiny_model, mrml_scene):
    from labelshare.core.modelfolder import summarize_model
    summary = summarize_model(tiny_model)
    assert why_not_ready(None, summary, TASK) == "Select an input volume."
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "nothing")
    assert why_not_ready(empty, summary, TASK) == "Volume 'nothing' is empty (it has no voxels)."
    assert why_not_ready(volume, None, TASK) == "Select a model, or add a model folder."
    assert why_not_ready(volume, summary, "") == "Select a task."
    assert why_not_ready(volume, summary, "liver") == f"Model {tiny_model.name} has no task 'liver'."
    assert why_not_ready(volume, summary, TASK) == ""


def test_results_go_into_a_chosen_node_beside_other_segments(logic, volume, tiny_model, mrml_scene):
    chosen = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my work")
    mine = chosen.GetSegmentation().AddEmptySegment("", "my tumour")
    assert logic.segment(volume, TASK, model=tiny_model, device="cpu", output_node=chosen, timeout=120) is chosen
    assert chosen.GetSegmentation().GetSegment(mine) is not None
    assert len(segments.task_segment_ids(chosen, TASK)) == 3


def test_model_list_checks_every_folder_and_keeps_the_reason(tiny_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "v1")
    shutil.copytree(tiny_model, models / "v2-tampered")
    (models / "v2-tampered" / "labelspace.json").write_text("{}")
    found = {Path(s.path).name: s for s in store.models_in(models)}
    assert found["v1"].valid and found["v1"].tasks == ["phantom3d", "xray2d", "sides3d"]
    assert not found["v2-tampered"].valid and "do not match manifest.json" in found["v2-tampered"].reason
    assert store.model_title(found["v1"]) == "v1 — phantom3d, xray2d, sides3d"
    assert store.model_title(found["v2-tampered"]) == "v2-tampered — cannot be used"

    bundled = [folder.name for folder in bundled_model_dirs()]
    listed = store.available_models(models, [models / "v1", tmp_path / "gone"])
    # the bundled models first (newest first), then the models folder, then the added folders (v1 once)
    assert [Path(s.path).name for s in listed] == [*bundled, "v1", "v2-tampered", "gone"]
    assert "folder does not exist" in listed[-1].reason
    not_made_yet = store.available_models(tmp_path / "no models yet")
    assert [Path(s.path).name for s in not_made_yet] == bundled and all(s.valid for s in not_made_yet)

    (models / "v1" / "config.json").unlink()
    [incomplete] = store.models_in(models / "v1")
    assert not incomplete.valid and "missing config.json" in incomplete.reason
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty: no LabelShare model here"):
        store.models_in(tmp_path / "empty")
    assert [(label.id, label.name) for label in store.task_labels(tiny_model, "phantom3d")] == \
        [(1, "body"), (2, "organ"), (3, "lesion")]


def test_console_api_without_a_model_uses_the_bundled_default_model(logic, volume, mrml_scene):
    bundled = default_model_dir()
    assert bundled is not None, "no default model under LabelShareSegmentation/Resources/Models"
    node = logic.segment(volume, "acdc", device="cpu", timeout=120)
    segmentation = node.GetSegmentation()
    assert node.GetName() == "case 0 acdc"
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        ["rv_cavity", "myocardium", "lv_cavity"]
    expected = sitk.GetArrayFromImage(Segmenter(load_model(bundled, device="cpu")).segment(
        volumes.volume_to_image(volume), "acdc"))
    for index, label_id in enumerate((1, 2, 3)):
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
        np.testing.assert_array_equal(voxels > 0, expected == label_id)


def test_segment_many_uses_one_warm_worker_and_goes_on_after_a_bad_volume(logic, tiny_model, mrml_scene,
                                                                         synthetic_tasks):
    sources = sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[1:3]
    good = [volumes.image_to_volume(sitk.ReadImage(str(path)), mrml_scene, f"scan {index}")
            for index, path in enumerate(sources)]
    broken = volumes.image_to_volume(sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, dtype=np.float32)),
                                     mrml_scene, "broken scan")
    with pytest.raises(JobFailed, match=r"1 of 3 volumes failed: 'broken scan': .*NaN or infinite"):
        logic.segment_many([good[0], broken, good[1]], TASK, model=tiny_model, device="cpu", timeout=120)
    worker_pid = logic.shared.worker.process.pid  # the same worker served all three

    nodes = logic.segment_many(good, TASK, model=tiny_model, device="cpu", timeout=120)
    assert logic.shared.worker.process.pid == worker_pid and logic.job.done_event["load_s"] == 0.0
    assert [node.GetName() for node in nodes] == ["scan 0 phantom3d_1", "scan 1 phantom3d_1"]  # new nodes
    segmenter = Segmenter(load_model(tiny_model, device="cpu"))
    for volume, node in zip(good, nodes, strict=True):
        expected = sitk.GetArrayFromImage(segmenter.segment(volumes.volume_to_image(volume), TASK))
        segmentation = node.GetSegmentation()
        for index, label_id in enumerate((1, 2, 3)):
            voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
            np.testing.assert_array_equal(voxels > 0, expected == label_id)


def test_apply_never_loses_an_edit(logic, volume, tiny_model, mrml_scene):
    """Issue 27: "Create new segmentation" makes a new node every time; into the node of the previous Apply, an
    edited segment is replaced only after the user said so, and stays recoverable in a hidden copy."""
    first = logic.segment(volume, TASK, model=tiny_model, device="cpu", timeout=120)
    assert logic.segment(volume, TASK, model=tiny_model, device="cpu", timeout=120) is not first  # new node
    body = segments.task_segment_ids(first, TASK)[0]
    edited = slicer.util.arrayFromSegmentBinaryLabelmap(first, body, volume)
    edited[:] = 0  # the user erased the body in the Segment Editor
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, first, body, volume)

    asked = []

    def keep_my_edits(node, task, names):
        asked.append((node.GetName(), task, names))
        return False

    before = scene_contents(mrml_scene)
    with pytest.raises(EditsKept, match="edited segments of 'case 0 phantom3d' were kept"):
        logic.start(volume, TASK, model=tiny_model, device="cpu", output_node=first, confirm_replace=keep_my_edits)
    assert asked == [("case 0 phantom3d", TASK, ["body"])] and scene_contents(mrml_scene) == before
    assert not slicer.util.arrayFromSegmentBinaryLabelmap(first, body, volume).any(), "the edit is still there"

    job = logic.start(volume, TASK, model=tiny_model, device="cpu", output_node=first,
                      confirm_replace=lambda node, task, names: True)
    assert job.result_or_raise(120) is first
    replaced_body = segments.task_segment_ids(first, TASK)[0]
    assert slicer.util.arrayFromSegmentBinaryLabelmap(first, replaced_body, volume).any()
    [copy] = [node for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode", mrml_scene)
              if node.GetAttribute(segments.REPLACED_FROM_ATTRIBUTE) == first.GetID()]
    kept = copy.GetSegmentation()
    assert kept.GetNthSegment(0).GetName() == "body" and not copy.GetDisplayNode().GetVisibility()
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(copy, kept.GetNthSegmentID(0), volume),
                                  edited)  # the erased body, recoverable
    assert segments.edited_task_segments(first, TASK) == []


def test_a_colour_volume_is_segmented_as_its_luminance(logic, tiny_model, mrml_scene, synthetic_tasks):
    """Issue 27: RGB radiographs (PNG, JPEG) are vector volumes; they reach the network as their luminance."""
    source = sitk.ReadImage(str(sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]))
    values = sitk.GetArrayFromImage(source).astype(float)
    grey = (255 * (values - values.min()) / max(np.ptp(values), 1e-6)).astype(np.uint8)  # an 8-bit picture
    rgb = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "radiograph")
    slicer.util.updateVolumeFromArray(rgb, np.stack([grey, grey, grey], axis=-1).reshape(1, *grey.shape[-2:], 3))
    assert why_not_ready(rgb, store.default_store().summary(tiny_model), "xray2d") == ""
    job = logic.start(rgb, "xray2d", model=tiny_model, device="cpu")
    assert job.notes == [volumes.colour_note(rgb)] and "luminance" in job.notes[0] and job.notes[0] in job.log
    node = job.result_or_raise(120)
    expected = Segmenter(load_model(tiny_model, device="cpu")).segment(volumes.segmentation_input(rgb)[0], "xray2d")
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), rgb)
        np.testing.assert_array_equal(voxels > 0, sitk.GetArrayFromImage(expected) == index + 1)
