"""The task-folder writer (labelshare.core.taskfolders): everything it writes reads back through TaskDataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from labelshare.core import taskfolders
from labelshare.core.errors import DataError
from labelshare.core.taskfolders import (PENDING_FILE, TRASH_DIR, DuplicateCaseError, TaskCollection, copy_task,
                                         create_task, image_fingerprint, list_task_folders)
from labelshare.core.tasks import TaskDataset

LABELS = ["Liver", "tumour"]


def oblique_case(seed: int = 0, shape=(6, 20, 24)) -> tuple[sitk.Image, np.ndarray]:
    """A float volume with anisotropic spacing and an oblique direction, and a label with both labels."""
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 20, shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[1:5, 4:16, 5:20] = 1
    label[2:4, 8:12, 9:13] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(sitk.VersorTransform((1, 1, 0), 0.4).GetMatrix())
    return image, label


@pytest.fixture
def liver(tmp_path) -> TaskCollection:
    return create_task(tmp_path / "workspace", "liver", LABELS)


def files_of(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_create_task_writes_nnunet_dataset_json(tmp_path):
    created = create_task(tmp_path, "kidney", {"cortex": 2, "medulla": 5}, description="test")
    metadata = json.loads((tmp_path / "kidney" / "dataset.json").read_text())
    assert metadata["labels"] == {"background": 0, "cortex": 2, "medulla": 5}
    assert metadata["numTraining"] == 0 and metadata["file_ending"] == ".nii.gz"
    assert created.labels == {"cortex": 2, "medulla": 5}
    assert (tmp_path / "kidney" / "imagesTr").is_dir() and (tmp_path / "kidney" / "labelsTr").is_dir()
    assert created.cases() == [] and created.case_names() == []
    assert create_task(tmp_path, "spleen", ["spleen", "vessel"]).labels == {"spleen": 1, "vessel": 2}
    assert not list(tmp_path.glob(".*")), "no staging folder is left behind"


@pytest.mark.parametrize("name, labels, message", [
    ("liver", ["a", "A"], "differ only in case"),
    ("liver", ["lv cavity", "LV_cavity"], "differ only in case"),
    ("liver", ["background", "x"], "label 0"),
    ("liver", {"a": 0}, "1..65535"),
    ("liver", {"a": 1, "b": 1}, "already used"),
    ("liver", [], "at least one label"),
    ("li ver", ["a"], "task name"),
    ("a=b", ["a"], "task name"),
    ("", ["a"], "task name"),
])
def test_create_task_refuses_bad_definitions(tmp_path, name, labels, message):
    with pytest.raises(DataError, match=message):
        create_task(tmp_path, name, labels)


def test_create_task_never_replaces_a_folder(tmp_path, liver):
    with pytest.raises(DataError, match="already exists"):
        create_task(liver.root.parent, "liver", ["other"])
    assert liver.labels == {"Liver": 1, "tumour": 2}


def test_added_case_reads_back_through_taskdataset_with_identical_labels_and_geometry(liver):
    image, label = oblique_case()
    name = liver.add_case(image, label, name="patient 7/frame01", source="volume 'CT'",
                          details={"skipped_segments": ["ruler"]})
    assert name == "patient_7_frame01"
    dataset = TaskDataset.open(liver.root, "liver")
    assert dataset.labels == {"Liver": 1, "tumour": 2}
    assert [c.name for c in dataset.cases] == [name] and dataset.cases[0].patient == "patient_7"
    read_image, image_array, label_array = dataset.read_case(dataset.cases[0])
    np.testing.assert_array_equal(label_array, label)
    np.testing.assert_array_equal(image_array, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(read_image.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read_image.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read_image.GetDirection(), image.GetDirection(), atol=1e-5)
    metadata = json.loads((liver.root / "dataset.json").read_text())
    assert metadata["numTraining"] == 1
    record = metadata["labelshare"]["collection"]["cases"][name]
    assert record["label_voxels"] == {"Liver": int((label == 1).sum()), "tumour": int((label == 2).sum())}
    assert record["missing_labels"] == [] and record["skipped_segments"] == ["ruler"]
    assert record["image_sha256"] == image_fingerprint(image)
    assert not (liver.root / PENDING_FILE).exists()
    [summary] = liver.cases()
    assert summary.name == name and summary.recorded and summary.source == "volume 'CT'"


def test_missing_labels_are_allowed_and_recorded(liver):
    image, label = oblique_case()
    label[label == 2] = 1
    name = liver.add_case(image, label)
    [summary] = liver.cases()
    assert summary.name == name == "case" and summary.missing_labels == ["tumour"]
    assert summary.label_voxels["tumour"] == 0


def test_bad_labels_and_images_are_refused_with_the_reason(liver):
    image, label = oblique_case()
    with pytest.raises(DataError, match=r"label values \[7\]"):
        liver.add_case(image, np.where(label == 2, 7, label))
    with pytest.raises(DataError, match="label shape"):
        liver.add_case(image, label[:, :, :-1])
    vector = sitk.Compose(image, image)
    with pytest.raises(DataError, match="2 components"):
        liver.add_case(vector, label)
    assert liver.case_names() == [] and files_of(liver.root) == ["dataset.json"]


def test_same_image_twice_is_detected_and_the_caller_decides(liver):
    image, label = oblique_case()
    first = liver.add_case(image, label, name="ct")
    with pytest.raises(DuplicateCaseError) as same:
        liver.add_case(image, label, name="ct again")
    assert same.value.existing == first and same.value.same_label
    corrected = label.copy()
    corrected[0] = 1
    with pytest.raises(DuplicateCaseError) as different:
        liver.add_case(image, corrected)
    assert different.value.existing == first and not different.value.same_label
    kept = liver.add_case(image, corrected, name="ct", duplicate="keep")
    assert kept == "ct_2" and liver.case_names() == ["ct", "ct_2"]
    replaced = liver.add_case(image, corrected, duplicate="replace")
    assert replaced == "ct" and sorted(liver.case_names()) == ["ct", "ct_2"]
    _, stored_label = liver.read_case("ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored_label), corrected)
    trashed = [json.loads(p.read_text()) for p in (liver.root / TRASH_DIR).glob("*/case.json")]
    assert [t["case"] for t in trashed] == ["ct"] and "replaced" in trashed[0]["reason"]
    assert trashed[0]["record"]["label_sha256"] != liver.records["ct"]["label_sha256"]
    other, other_label = oblique_case(seed=1)
    assert liver.add_case(other, other_label, name="ct") == "ct_3", "a taken name is never overwritten"


def test_failure_between_image_and_label_leaves_the_dataset_consistent(liver, monkeypatch):
    image, label = oblique_case()
    liver.add_case(image, label, name="good")
    before = (liver.root / "dataset.json").read_text()
    real_write = taskfolders.write_image_atomic
    calls = []

    def fail_on_label(image_to_write, target, **options):
        calls.append(target)
        if "labelsTr" in str(target):
            raise OSError("disk full (injected)")
        return real_write(image_to_write, target, **options)

    monkeypatch.setattr(taskfolders, "write_image_atomic", fail_on_label)
    other, other_label = oblique_case(seed=3)
    with pytest.raises(OSError, match="injected"):
        liver.add_case(other, other_label, name="bad")
    assert [p.parent.name for p in calls] == ["imagesTr", "labelsTr"], "the image was written before the failure"
    assert (liver.root / "dataset.json").read_text() == before
    assert [c.name for c in TaskDataset.open(liver.root).cases] == ["good"]
    visible = [f for f in files_of(liver.root) if not f.startswith(TRASH_DIR)]
    assert visible == ["dataset.json", "imagesTr/good_0000.nii.gz", "labelsTr/good.nii.gz"]
    trashed = [f for f in files_of(liver.root) if f.startswith(TRASH_DIR)]
    assert any(f.endswith("imagesTr/bad_0000.nii.gz") for f in trashed), "the half-added image is kept in trash"


def test_crash_between_image_and_label_is_undone_on_next_open(liver):
    """The process dies (os._exit) after the image is written: no except clause runs, the intent file remains."""
    image, label = oblique_case()
    liver.add_case(image, label, name="good")
    script = textwrap.dedent(f"""
        import os, numpy as np, SimpleITK as sitk
        from labelshare.core import taskfolders as c
        real = c.write_image_atomic
        def crash(image, target, **options):
            if "labelsTr" in str(target):
                os._exit(9)
            real(image, target, **options)
        c.write_image_atomic = crash
        image = sitk.GetImageFromArray(np.ones((3, 8, 8), np.int16))
        c.TaskCollection.open({str(liver.root)!r}).add_case(image, np.ones((3, 8, 8), np.uint8), name="crashed")
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert (liver.root / "imagesTr" / "crashed_0000.nii.gz").exists() and (liver.root / PENDING_FILE).exists()
    with pytest.raises(DataError, match="no label file"):
        TaskDataset.open(liver.root)  # what a reader without recovery would see
    reopened = TaskCollection.open(liver.root)
    assert reopened.case_names() == ["good"] and not (liver.root / PENDING_FILE).exists()
    assert [c.name for c in TaskDataset.open(liver.root).cases] == ["good"]
    [record] = [json.loads(p.read_text()) for p in (liver.root / TRASH_DIR).glob("*/case.json")]
    assert record["case"] == "crashed" and record["moved"] == ["imagesTr/crashed_0000.nii.gz"]


def test_remove_moves_the_case_to_trash(liver):
    image, label = oblique_case()
    liver.add_case(image, label, name="one")
    other, other_label = oblique_case(seed=2)
    liver.add_case(other, other_label, name="two")
    trash = liver.remove_case("one")
    assert sorted(files_of(trash)) == ["case.json", "imagesTr/one_0000.nii.gz", "labelsTr/one.nii.gz"]
    assert json.loads((trash / "case.json").read_text())["record"]["source"] == ""
    assert [c.name for c in TaskDataset.open(liver.root).cases] == ["two"]
    assert json.loads((liver.root / "dataset.json").read_text())["numTraining"] == 1
    assert list(liver.records) == ["two"]
    with pytest.raises(DataError, match="no case 'one'"):
        liver.remove_case("one")
    assert liver.add_case(image, label, name="one") == "one", "a removed case can be collected again"


def test_existing_nnunet_folder_is_listed_and_extended(tmp_path, synthetic_tasks):
    phantom = shutil.copytree(synthetic_tasks["phantom3d"], tmp_path / "ws" / "phantom3d")
    shutil.copytree(synthetic_tasks["xray2d"], tmp_path / "ws" / "xray2d")
    (tmp_path / "ws" / "broken").mkdir()
    (tmp_path / "ws" / "broken" / "dataset.json").write_text("{}")
    summaries = {s.name: s for s in list_task_folders(tmp_path / "ws")}
    assert summaries["phantom3d"].valid and summaries["phantom3d"].cases == 8
    assert summaries["phantom3d"].labels == {"body": 1, "organ": 2, "lesion": 3}
    assert not summaries["broken"].valid and "labels" in summaries["broken"].reason
    task = TaskCollection.open(phantom)
    listed = task.cases()
    assert len(listed) == 8 and not any(c.recorded for c in listed)
    dataset = TaskDataset.open(phantom)
    _, _, first_label = dataset.read_case(dataset.cases[0])
    assert listed[0].label_voxels == {name: int((first_label == i).sum()) for name, i in dataset.labels.items()}
    existing_image, existing_label = task.read_case(dataset.cases[0].name)
    with pytest.raises(DuplicateCaseError) as duplicate:
        task.add_case(existing_image, sitk.GetArrayFromImage(existing_label))
    assert duplicate.value.existing == dataset.cases[0].name and duplicate.value.same_label
    with pytest.raises(DataError, match="'.png' files"):
        TaskCollection.open(tmp_path / "ws" / "xray2d").add_case(*oblique_case())


def test_files_of_unrecorded_cases_are_read_once_per_session(tmp_path, synthetic_tasks, monkeypatch):
    phantom = shutil.copytree(synthetic_tasks["phantom3d"], tmp_path / "ws" / "phantom3d")
    reads = []
    original = taskfolders.read_image
    monkeypatch.setattr(taskfolders, "read_image",
                        lambda path, *args, **options: reads.append(path) or original(path, *args, **options))
    task = TaskCollection.open(phantom)
    first = task.cases()
    assert len(reads) == 8  # every label file once
    assert TaskCollection.open(phantom).cases() == first and len(reads) == 8  # a table refresh reads nothing
    image, label = oblique_case()
    task.add_case(image, label, name="new")
    task.add_case(*oblique_case(seed=1), name="newer")
    image_reads = [p for p in reads if p.parent.name == "imagesTr"]
    assert len(image_reads) == 8 and len(set(image_reads)) == 8  # duplicate checks hashed each old image once


def test_copied_task_is_extended_without_touching_its_source(tmp_path, synthetic_tasks):
    source = shutil.copytree(synthetic_tasks["sides3d"], tmp_path / "data" / "sides3d")
    before = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    copy = copy_task(source, tmp_path / "workspace", "sides3d")
    assert copy.root == tmp_path / "workspace" / "sides3d" and len(copy.case_names()) == 8
    original, copied = TaskDataset.open(source), TaskDataset.open(copy.root)
    assert copied.labels == original.labels and [c.name for c in copied.cases] == [c.name for c in original.cases]
    assert copied.options["copied_from"] == str(source.resolve()) and copied.metadata["numTraining"] == 8
    first = copied.cases[0].image_path
    assert first.read_bytes() == original.cases[0].image_path.read_bytes()
    image, label = oblique_case()
    copy.add_case(image, np.minimum(label, 2), name="new")
    copy.remove_case(original.cases[0].name)
    assert sorted(copy.case_names()) == sorted([c.name for c in original.cases[1:]] + ["new"])
    after = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert after == before, "the source folder is never written"
    with pytest.raises(DataError, match="already exists"):
        copy_task(source, tmp_path / "workspace", "sides3d")
