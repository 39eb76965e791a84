"""Issue #11, files: every write is verified before it replaces anything (1), truncated or impossible images are
refused (2), names and paths read from files stay inside their folders (3), and model files get the permissions of
the rest of the folder (6)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import (cli_error, cut, fill, fixed_size_space, hidden_entries, remount_read_only,
                                small_file_system)

from labelshare.core import fileio, modelfolder
from labelshare.core.errors import DataError, LabelShareError, LabelSpaceError, ModelError
from labelshare.core.fileio import atomic_write_json, atomic_write_text, write_image_atomic
from labelshare.core.labelspace import LabelSpace
from labelshare.core.modelfolder import verify_folder
from labelshare.core.taskfolders import PENDING_FILE, TaskCollection, copy_task, create_task
from labelshare.core.tasks import read_image
from labelshare.engine.models import load_model, save_model_folder


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "model")


def _label_image(shape=(6, 40, 40)):
    label = np.zeros(shape, np.uint8)
    label[1:5, 5:35, 8:30] = 1
    label[2:4, 10:20, 10:20] = 2
    return sitk.GetImageFromArray(label)


def _phantom_case(synthetic_tasks):
    return sorted((synthetic_tasks["phantom3d"] / "imagesTr").iterdir())[0]


# -- 1: every write verified ------------------------------------------------------------------------------------------
def _short_image_writer(real_write, damage):
    """SimpleITK's WriteImage as it behaves on a full disk for NIfTI: no error, but the file is short (or, for the
    'zeros' case, a writer that loses the data)."""
    def write(image, path, useCompression=False, **options):
        if damage == "zeros":
            real_write(sitk.Image(image.GetSize(), image.GetPixelID()), path, useCompression)
        else:
            real_write(image, path, useCompression)
            cut(Path(path), 0.3)
    return write


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("damage", ["short", "zeros"])
def test_an_image_write_that_fails_silently_is_refused_and_the_old_file_kept(tmp_path, monkeypatch, ending, damage):
    target = tmp_path / f"result{ending}"
    write_image_atomic(_label_image(), target)
    before = target.read_bytes()
    monkeypatch.setattr(fileio.sitk, "WriteImage", _short_image_writer(sitk.WriteImage, damage))
    with pytest.raises(LabelShareError, match=f"{target.name}: not written"):
        write_image_atomic(_label_image((6, 40, 41)), target)
    assert target.read_bytes() == before
    assert hidden_entries(tmp_path) == [], "no temporary file is left behind"


def test_writer_errors_of_simpleitk_name_the_target(tmp_path, monkeypatch):
    def failing(image, path, useCompression=False, **options):
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: /src/itkImageFileWriter.hxx:12:\n"
                           "ITK ERROR: NrrdImageIO(0x5555): [nrrd] _nrrdGzWrite: failed to write to file")
    monkeypatch.setattr(fileio.sitk, "WriteImage", failing)
    with pytest.raises(LabelShareError, match=r"out\.nrrd: not written: .*failed to write to file"):
        write_image_atomic(_label_image(), tmp_path / "out.nrrd")


def test_json_and_text_writes_detect_errors_and_short_writes(tmp_path, monkeypatch):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"kept": True})
    real_write = os.write

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(fileio.os, "write", disk_full)
    with pytest.raises(LabelShareError, match="data.json: not written: No space left on device"):
        atomic_write_json(target, {"kept": False})

    def loses_half(fd, data):  # claims to have written everything, writes half (a lying device)
        real_write(fd, bytes(data)[: len(data) // 2])
        return len(data)
    monkeypatch.setattr(fileio.os, "write", loses_half)
    with pytest.raises(LabelShareError, match="notes.txt: not written"):
        atomic_write_text(tmp_path / "notes.txt", "x" * 1000)
    assert json.loads(target.read_text()) == {"kept": True}
    assert not (tmp_path / "notes.txt").exists() and hidden_entries(tmp_path) == []


def test_model_weights_are_read_back_before_they_count_as_written(tiny_model, tmp_path, monkeypatch):
    from labelshare.engine import models
    model = load_model(tiny_model, device="cpu")
    real_save = models.save_safetensors_model

    def half_written(network, path, metadata=None):
        real_save(network, path, metadata=metadata)
        cut(Path(path), 0.5)
    monkeypatch.setattr(models, "save_safetensors_model", half_written)
    with pytest.raises(LabelShareError, match="model.safetensors: not written"):
        save_model_folder(tmp_path / "copy", model.network, model.config, model.labelspace)
    assert not (tmp_path / "copy" / "model.safetensors").exists()


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_segment_to_a_full_disk_fails_and_keeps_the_old_result(tiny_model, synthetic_tasks, tmp_path, capsys,
                                                               ending):
    with small_file_system(tmp_path / "disk", "2m") as disk:
        output = disk / f"result{ending}"
        argv = ["segment", "--model", tiny_model, "--task", "phantom3d", _phantom_case(synthetic_tasks), "-o", output,
                "--device", "cpu", "--overwrite"]
        large = tmp_path / f"large{ending}"
        image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 128, 128)).astype(np.float32))
        image.SetSpacing((1.0, 1.0, 4.0))
        sitk.WriteImage(image, str(large))
        from labelshare.cli import main
        assert main([str(a) for a in argv]) == 0
        before = output.read_bytes()
        fill(disk, 8192)
        line = cli_error(argv[:5] + [large] + argv[6:], capsys)
        assert f"{output}: not written" in line
        assert output.read_bytes() == before
        assert hidden_entries(disk) == []


def test_worker_reports_an_error_not_done_when_the_output_is_not_written(tiny_model, synthetic_tasks, tmp_path,
                                                                          monkeypatch):
    import io

    from labelshare.engine.worker import serve

    def empty_file(image, path, useCompression=False, **options):
        open(path, "wb").close()
    monkeypatch.setattr(fileio.sitk, "WriteImage", empty_file)
    request = {"id": "r", "model": str(tiny_model), "task": "phantom3d", "input": str(_phantom_case(synthetic_tasks)),
               "output": str(tmp_path / "out.nii.gz"), "device": "cpu"}
    stream = io.StringIO()
    serve(io.StringIO(json.dumps(request) + "\n"), stream)
    last = [json.loads(line) for line in stream.getvalue().splitlines()][-1]
    assert last["event"] == "error" and "out.nii.gz: not written" in last["message"]
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("command", ["labelspace", "evaluate", "train"])
def test_a_full_disk_is_one_line_for_every_command(tiny_model, synthetic_tasks, synthetic_space, tmp_path, capsys,
                                                   command):
    fixed_size_space(synthetic_tasks).save(tmp_path / "fixed32.json")  # outside the full disk
    with small_file_system(tmp_path / "disk", "256k") as disk:
        fill(disk, 0)
        task = f"xray2d={synthetic_tasks['xray2d']}"
        argv = {"labelspace": ["labelspace", "build", "--task", task, "-o", disk / "ls.json"],
                "evaluate": ["evaluate", "--model", tiny_model, "--task", "xray2d", "--data", synthetic_tasks["xray2d"],
                             "-o", disk / "evaluation", "--device", "cpu"],
                "train": ["train", "--labelspace", tmp_path / "fixed32.json", "--task", task, "--task",
                          f"phantom3d={synthetic_tasks['phantom3d']}", "--task",
                          f"sides3d={synthetic_tasks['sides3d']}", "--out", disk / "model", "--epochs", "1",
                          "--steps-per-epoch", "2", "--device", "cpu"]}[command]
        line = cli_error(argv, capsys)
        assert "No space left on device" in line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"], "nothing half-written is left"


def test_a_read_only_output_folder_is_one_line(tiny_model, synthetic_tasks, tmp_path, capsys):
    with small_file_system(tmp_path / "disk") as disk:
        remount_read_only(disk)
        task = f"xray2d={synthetic_tasks['xray2d']}"
        line = cli_error(["labelspace", "build", "--task", task, "-o", disk / "ls.json"], capsys)
        assert "ls.json" in line and "Read-only file system" in line
        line = cli_error(["evaluate", "--model", tiny_model, "--task", "xray2d", "--data", synthetic_tasks["xray2d"],
                          "-o", disk / "evaluation", "--device", "cpu"], capsys)
        assert "evaluation" in line and "Read-only file system" in line


# -- 2: truncated or impossible images --------------------------------------------------------------------------------
def _volume_file(folder, ending, shape=(12, 64, 64), compress=True):
    path = folder / f"volume{ending}"
    array = (np.random.default_rng(0).random(shape) * 1000).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=compress)
    return path


@pytest.mark.parametrize("ending, keep", [(".nii.gz", 0.5), (".nii.gz", 1000), (".nii", 0.5), (".nii", 0.95),
                                          (".nrrd", 0.5), (".mha", 0.5)])
def test_truncated_images_are_refused_with_their_name(tmp_path, ending, keep):
    path = cut(_volume_file(tmp_path, ending), keep)
    with pytest.raises(DataError, match=f"{path.name}: test image .*(truncated|cannot be read)"):
        read_image(path, "test image")


def test_a_gzip_stream_with_a_bad_checksum_is_refused(tmp_path):
    path = _volume_file(tmp_path, ".nii.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="volume.nii.gz: test image is damaged"):
        read_image(path, "test image")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_nan_in_a_nifti_file_is_refused_not_read_as_zero(tmp_path, ending):
    """niftilib replaces NaN and infinite floats by 0 without a word; LabelShare refuses them as in other formats."""
    array = np.ones((3, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    array[2, 0, 0] = np.inf
    path = tmp_path / f"scan{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(DataError, match=f"scan{ending}: image contains NaN or infinite values"):
        read_image(path, "image")


def _huge_claims(folder):
    """Headers that claim 30000 x 30000 x 4 voxels, followed by 1 KB of data."""
    small = _volume_file(folder, ".nii", (2, 2, 2))
    header = bytearray(small.read_bytes()[:352])
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 4, 1, 1, 1, 1)
    (folder / "huge.nii").write_bytes(bytes(header) + b"\0" * 1024)
    with gzip.open(folder / "huge.nii.gz", "wb") as stream:
        stream.write(bytes(header) + b"\0" * 1024)
    for ending in (".nrrd", ".mha"):
        text = _volume_file(folder, ending, (2, 2, 2), compress=False).read_bytes()
        text = text.replace(b"sizes: 2 2 2", b"sizes: 30000 30000 4").replace(b"DimSize = 2 2 2",
                                                                             b"DimSize = 30000 30000 4")
        (folder / f"huge{ending}").write_bytes(text + b"\0" * 1024)
    return [folder / f"huge{ending}" for ending in (".nii", ".nii.gz", ".nrrd", ".mha")]


def test_a_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    paths = _huge_claims(tmp_path)
    code = textwrap.dedent(f"""
        import json, re, sys
        from labelshare.core.errors import DataError
        from labelshare.core.tasks import read_image
        messages = []
        for path in {[str(p) for p in paths]!r}:
            try:
                read_image(path, "image")
                messages.append("accepted")
            except DataError as error:
                messages.append(str(error))
        # the peak resident memory of this process (VmHWM; ru_maxrss would include the forked test runner's)
        peak_kb = int(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1))
        print(json.dumps({{"messages": messages, "peak_mb": peak_kb / 1024}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for path, message in zip(paths, report["messages"], strict=True):
        assert message.startswith(f"{path}: image is") and ("claims" in message or "truncated" in message), message
    assert report["peak_mb"] < 600, "nothing near the claimed 7 GB was allocated"


@pytest.mark.parametrize("command", ["labelspace", "train", "segment", "evaluate"])
def test_every_command_refuses_a_truncated_case(tiny_model, synthetic_tasks, tmp_path, capsys, command):
    task = shutil.copytree(synthetic_tasks["phantom3d"], tmp_path / "phantom3d")
    damaged = cut(sorted((task / "imagesTr").iterdir())[1], 0.5)
    if command == "train":  # the label space comes from the intact cases; training reads the damaged one
        fixed_size_space(synthetic_tasks).save(tmp_path / "fixed32.json")
    argv = {"labelspace": ["labelspace", "build", "--task", f"phantom3d={task}", "-o", tmp_path / "ls.json"],
            "train": ["train", "--labelspace", tmp_path / "fixed32.json", "--task", f"phantom3d={task}",
                      "--task", f"xray2d={synthetic_tasks['xray2d']}",
                      "--task", f"sides3d={synthetic_tasks['sides3d']}",
                      "--out", tmp_path / "m", "--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu"],
            "segment": ["segment", "--model", tiny_model, "--task", "phantom3d", damaged, "-o", tmp_path / "o.nii.gz",
                        "--device", "cpu"],
            "evaluate": ["evaluate", "--model", tiny_model, "--task", "phantom3d", "--data", task, "--all-cases",
                         "-o", tmp_path / "evaluation", "--device", "cpu"]}[command]
    line = cli_error(argv, capsys)
    assert str(damaged) in line and "truncated" in line


# -- 3: names and paths from files stay inside their folders ----------------------------------------------------------
def test_a_label_space_whose_task_name_is_a_path_is_refused(tiny_model, tmp_path):
    data = json.loads((tiny_model / "labelspace.json").read_text())
    data["tasks"] = {"../../x" if name == "xray2d" else name: task for name, task in data["tasks"].items()}
    (tmp_path / "labelspace.json").write_text(json.dumps(data))
    with pytest.raises(LabelSpaceError, match=r"labelspace.json: task name '\.\./\.\./x'"):
        LabelSpace.load(tmp_path / "labelspace.json")


def test_task_folders_are_only_made_under_names(tmp_path, synthetic_tasks):
    workspace = tmp_path / "deep" / "workspace"
    for bad in ("../../x", "/tmp/x", ".hidden"):
        with pytest.raises(DataError, match="task name"):
            copy_task(synthetic_tasks["xray2d"], workspace, bad)
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()


def test_a_pending_marker_cannot_move_files_from_outside_the_task(tmp_path):
    victim = tmp_path / "victim" / "important.nii.gz"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    collection = create_task(tmp_path / "a" / "b" / "workspace", "liver", ["liver"])
    (collection.root / PENDING_FILE).write_text(json.dumps({"operation": "remove",
                                                            "case": "../../../../../victim/important"}))
    with pytest.raises(DataError, match=f"{PENDING_FILE}: .*case name"):
        TaskCollection.open(collection.root)
    assert victim.read_bytes() == b"precious"


def test_opening_a_collection_removes_temporary_files_a_crash_left(tmp_path):
    collection = create_task(tmp_path / "workspace", "liver", ["liver"])
    for name in (".dataset.json.k2j4h6g8.tmp.json", f"{PENDING_FILE}.abcd1234.tmp.json"):
        (collection.root / name).write_text("{")
    TaskCollection.open(collection.root)
    assert hidden_entries(collection.root) == []


def test_case_names_given_to_a_collection_are_checked(tmp_path):
    collection = create_task(tmp_path / "workspace", "liver", ["liver"])
    with pytest.raises(DataError, match="case name"):
        collection.read_case("../../../etc/passwd")


@pytest.mark.parametrize("entry", ["../../../etc/hostname", "/etc/hostname", "sub/../../x", "..\\x"])
def test_manifest_entries_outside_the_folder_are_refused_unread(model_copy, entry, monkeypatch):
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["files"][entry] = "0" * 64
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    read = []
    monkeypatch.setattr(modelfolder, "sha256_file", lambda path: read.append(str(path)) or fileio.sha256_file(path))
    with pytest.raises(ModelError, match="not a relative path inside its folder|use letters"):
        verify_folder(model_copy)
    assert not any("hostname" in p or p.endswith("x") for p in read)


def test_a_large_file_outside_the_folder_is_never_read(model_copy, tmp_path, monkeypatch):
    outside = tmp_path / "large.bin"
    with open(outside, "wb") as stream:
        stream.truncate(2 * 1024**3)  # sparse: 2 GB that read whole would take seconds and memory
    (model_copy / "link.bin").symlink_to(outside)
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["files"]["link.bin"] = "0" * 64
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(modelfolder, "sha256_file", lambda path: pytest.fail(f"read {path}")
                        if "link" in str(path) else fileio.sha256_file(path))
    with pytest.raises(ModelError, match="link.bin: a symbolic link"):
        verify_folder(model_copy)


@pytest.mark.parametrize("how", ["file", "folder"])
def test_weights_linked_from_outside_the_folder_do_not_load(model_copy, tmp_path, how):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    weights = model_copy / "model.safetensors"
    if how == "file":
        shutil.move(weights, outside / "model.safetensors")
        weights.symlink_to(outside / "model.safetensors")
    else:
        (model_copy / "weights").mkdir()
        shutil.move(weights, outside / "model.safetensors")
        (model_copy / "weights").rmdir()
        (model_copy / "weights").symlink_to(outside)
        manifest = json.loads((model_copy / "manifest.json").read_text())
        manifest["files"]["weights/model.safetensors"] = manifest["files"]["model.safetensors"]
        (model_copy / "manifest.json").write_text(json.dumps(manifest))
        weights.symlink_to(outside / "model.safetensors")
    with pytest.raises(ModelError, match="symbolic link"):
        load_model(model_copy, device="cpu")


def test_a_lineage_naming_task_folders_as_a_list_is_a_model_error(model_copy):
    from labelshare.core.paths import recorded_task_folders
    (model_copy / "lineage.json").write_text(json.dumps({"task_folders": ["/data/a", "/data/b"]}))
    with pytest.raises(ModelError, match="lineage.json: .*task_folders"):
        recorded_task_folders(model_copy)


# -- 6: permissions --------------------------------------------------------------------------------------------------
def test_every_file_of_a_model_folder_has_the_same_permissions(tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        model = load_model(tiny_model, device="cpu")
        save_model_folder(tmp_path / "m", model.network, model.config, model.labelspace)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "m").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes


def test_a_written_image_matches_a_plain_write(tmp_path):
    """The verified writer writes exactly what SimpleITK writes (same format, same pixels)."""
    image = _label_image()
    write_image_atomic(image, tmp_path / "a.nrrd")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nrrd"))),
                                  sitk.GetArrayFromImage(image))
