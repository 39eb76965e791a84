"""`labelshare segment` with many images in one call: files, folders and globs alike, one event per image with an
ETA and a summary, a bad case in the middle, the overwrite rule, --continue after a kill mid-batch, a signal that
stops the whole batch (status 75) and a second one that ends it at once, temporary files that --continue and
--overwrite remove, the final error event of a single failed image, PNG refused for volumes, and DICOM in → DICOM
SEG out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import real_task_dir
from dicomfactory import ROTATION, mr_volume, write_series

from labelshare.cli import main
from labelshare.commands import EXIT_SOME_FAILED
from labelshare.core.errors import EXIT_INTERRUPTED
from labelshare.core.fileio import TEMPORARY_NAME
from labelshare.core.outputs import output_complete, sidecar_path
from labelshare.core.progress import parse_event
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import load_model

TASK = "phantom3d"


def segment(model, *arguments) -> list[str]:
    return ["segment", "--model", str(model), "--task", TASK, "--device", "cpu", *map(str, arguments)]


def events_of(text: str) -> list[dict]:
    return [event for event in map(parse_event, text.splitlines()) if event]


def outputs_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def scans(tmp_path, synthetic_tasks) -> Path:
    """Four phantom volumes in nnU-Net naming (case_N_0000.nii.gz)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for index, source in enumerate(sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[:4]):
        shutil.copy(source, folder / f"case_{index}_0000.nii.gz")
    return folder


def test_files_a_folder_and_a_glob_give_the_same_outputs_in_one_call(tiny_model, scans, tmp_path):
    files = sorted(scans.iterdir())
    for name, inputs in (("from_files", files), ("from_folder", [scans]), ("from_glob", [f"{scans}/case_*.nii.gz"])):
        assert main(segment(tiny_model, *inputs, "-o", tmp_path / name, "--progress", "quiet")) == 0
        assert outputs_in(tmp_path / name) == sorted(f"case_{i}.{ending}" for i in range(4)
                                                     for ending in ("json", "nii.gz"))
    segmenter = Segmenter(load_model(tiny_model, device="cpu"))
    for index, source in enumerate(files):
        image = sitk.ReadImage(str(source))
        expected = sitk.GetArrayFromImage(segmenter.segment(image, TASK))
        for name in ("from_files", "from_folder", "from_glob"):
            written = sitk.ReadImage(str(tmp_path / name / f"case_{index}.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)
            assert written.GetSpacing() == image.GetSpacing() and written.GetOrigin() == image.GetOrigin()
    sidecar = json.loads((tmp_path / "from_folder" / "case_0.json").read_text())
    assert sidecar["task"] == TASK and sidecar["model"]["name"] == tiny_model.name
    assert {k: v["name"] for k, v in sidecar["labels"].items()} == {"1": "body", "2": "organ", "3": "lesion"}


def test_a_bad_case_in_the_middle_fails_alone_with_one_event_per_image_and_a_summary(tiny_model, scans, tmp_path,
                                                                                     capsys):
    nan = sitk.GetImageFromArray(np.full((4, 16, 16), np.nan, np.float32))
    (scans / "case_1_0000.nii.gz").unlink()  # the second of four becomes unusable (NIfTI would not keep the NaN)
    sitk.WriteImage(nan, str(scans / "case_1_0000.mha"))
    capsys.readouterr()
    status = main(segment(tiny_model, scans, "-o", tmp_path / "labels", "--progress", "json"))
    captured = capsys.readouterr()
    assert status == EXIT_SOME_FAILED == 4
    events = events_of(captured.out)
    per_image = [e for e in events if e["event"] == "progress" and "case" in e]
    assert [(e["case"], e["status"]) for e in per_image] == [("case_0", "done"), ("case_1", "failed"),
                                                             ("case_2", "done"), ("case_3", "done")]
    assert [e["fraction"] for e in per_image] == [0.25, 0.5, 0.75, 1.0]
    assert all(e["eta_s"] >= 0 for e in per_image) and per_image[-1]["eta_s"] == 0
    assert "case_1_0000.mha: image contains NaN or infinite values" in per_image[1]["reason"]
    summary = events[-1]
    assert summary["event"] == "error" and (summary["done"], summary["skipped"], summary["failed"]) == (3, 0, 1)
    assert summary["failures"][0]["input"] == str(scans / "case_1_0000.mha")
    assert captured.err.strip().splitlines()[-1] == (
        f"labelshare: error: 1 of 4 images failed (3 done, 0 skipped, 1 failed; outputs in {tmp_path / 'labels'})")
    assert outputs_in(tmp_path / "labels") == ["case_0.json", "case_0.nii.gz", "case_2.json", "case_2.nii.gz",
                                               "case_3.json", "case_3.nii.gz"]

    status = main(segment(tiny_model, scans, "-o", tmp_path / "again", "--progress", "human"))
    human = capsys.readouterr().err.splitlines()
    assert status == 4 and "summary: 3 done, 0 skipped, 1 failed" in human
    assert any(line.startswith("  failed: ") and "case_1_0000.mha" in line for line in human)
    assert any("2/4 case_1: failed" in line for line in human) and any("(ETA" in line for line in human)


def test_existing_outputs_are_refused_before_anything_runs_unless_overwrite(tiny_model, scans, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "case_2.nii.gz").write_bytes(b"an earlier result")
    assert main(segment(tiny_model, scans, "-o", labels)) == 1
    assert "case_2.nii.gz: already exists (pass --overwrite" in capsys.readouterr().err
    assert outputs_in(labels) == ["case_2.nii.gz"]  # nothing was written
    assert main(segment(tiny_model, scans, "-o", labels, "--overwrite", "--progress", "quiet")) == 0
    assert all(output_complete(labels / f"case_{i}.nii.gz") for i in range(4))
    with pytest.raises(SystemExit):
        main(segment(tiny_model, scans, "-o", labels, "--overwrite", "--continue"))
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_batch_refuses_an_output_named_like_an_image_file(tiny_model, scans, tmp_path, capsys):
    assert main(segment(tiny_model, scans, "-o", tmp_path / "labels.nii.gz")) == 1
    assert "labels.nii.gz: with several images (or a folder of them) -o names a folder" in capsys.readouterr().err
    assert not (tmp_path / "labels.nii.gz").exists()


def larger_scans(folder: Path, synthetic_tasks, count: int) -> Path:
    """``count`` phantom volumes of 192x192x40: long enough per image that a kill or a signal lands mid-batch."""
    folder.mkdir()
    larger = sitk.Expand(sitk.ReadImage(str(sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[0])), (4, 4, 4))
    for index in range(count):
        sitk.WriteImage(larger, str(folder / f"case_{index:02d}.nii.gz"))
    return folder


def temporary_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMPORARY_NAME.match(p.name))


def test_continue_after_a_kill_mid_batch_keeps_complete_outputs_and_redoes_the_rest(tiny_model, tmp_path,
                                                                                    synthetic_tasks):
    scans = larger_scans(tmp_path / "scans", synthetic_tasks, 12)
    labels = tmp_path / "labels"
    command = [sys.executable, "-m", "labelshare", *segment(tiny_model, scans, "-o", labels, "--progress", "json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        event = parse_event(line)
        if event and event.get("status") == "done":
            os.kill(process.pid, signal.SIGKILL)  # no clean-up of any kind: what the OOM killer does
            break
    process.wait(60)
    process.stdout.close()
    outputs = [labels / f"case_{index:02d}.nii.gz" for index in range(12)]
    complete = [path for path in outputs if output_complete(path)]
    assert 1 <= len(complete) < 12, "the kill must land mid-batch"
    sidecar_path(complete[0]).unlink()  # as if killed between the image and its sidecar
    (labels / f".{outputs[-1].name}.x1y2z3w4.tmp.nii.gz").write_bytes(b"half written")  # what a kill leaves
    (labels / ".case_03.json.abcd_123.tmp.json").write_text("{")
    (labels / ".notes").write_text("the user's own hidden file")

    result = subprocess.run([*command, "--continue"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    statuses = {e["case"]: e["status"] for e in events if e["event"] == "progress" and "case" in e}
    kept = {path.name.removesuffix(".nii.gz") for path in complete[1:]}
    assert {case for case, status in statuses.items() if status == "skipped"} == kept
    assert statuses[complete[0].name.removesuffix(".nii.gz")] == "done"
    assert len(statuses) == 12 and (events[-1]["event"], events[-1]["skipped"]) == ("done", len(kept))
    assert all(output_complete(path) for path in outputs)
    assert temporary_files(labels) == [] and (labels / ".notes").is_file()  # --continue removed what the kill left


def test_overwrite_removes_the_temporary_files_a_kill_left(tiny_model, scans, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / ".case_0.nii.gz.k2j4h6g8.tmp.nii.gz").write_bytes(b"half written")
    (labels / ".case_0.json.k2j4h6g8.tmp.json").write_text("{")
    (labels / ".other.nii.gz.k2j4h6g8.tmp.nii.gz").write_bytes(b"not one of this run's outputs")
    assert main(segment(tiny_model, scans, "-o", labels, "--overwrite", "--progress", "quiet")) == 0
    assert temporary_files(labels) == [".other.nii.gz.k2j4h6g8.tmp.nii.gz"]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_whole_batch_with_status_75_and_continue_finishes_it(tiny_model, tmp_path,
                                                                                synthetic_tasks, number):
    """The batch stops once the image in progress is discarded (not only that image fails): status 75, one line
    with what was done and how to continue, the final error event; --continue writes the rest."""
    scans = larger_scans(tmp_path / "scans", synthetic_tasks, 6)
    labels = tmp_path / "labels"
    command = [sys.executable, "-m", "labelshare", *segment(tiny_model, scans, "-o", labels, "--progress", "json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        event = parse_event(line)
        if event and event.get("status") == "done":
            process.send_signal(number)
            break
    rest, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED == 75, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"labelshare: stopped: interrupted by {signal.Signals(number).name} after ")
    assert "the image in progress was discarded; repeat the command with --continue" in last
    assert events_of(rest)[-1]["event"] == "error" and events_of(rest)[-1]["interrupted"]
    outputs = [labels / f"case_{index:02d}.nii.gz" for index in range(6)]
    assert 1 <= sum(map(output_complete, outputs)) < 6 and temporary_files(labels) == []
    result = subprocess.run([*command, "--continue"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert all(output_complete(path) for path in outputs)


STOPPING_SLOWLY = {
    "command": """
        from labelshare.cli import stop_on_signals
        with stop_on_signals():
            try:
                print("working", flush=True)
                time.sleep(60)
            finally:
                print("stopping", flush=True)
                time.sleep(60)  # a clean-up that takes its time
    """,
    "training": """
        from labelshare.engine.training import StopRequest
        with StopRequest() as stop:
            print("working", flush=True)
            while stop.signal_number is None:  # the first signal only sets the flag the loop checks after its step
                time.sleep(0.01)
            print("stopping", flush=True)  # (only now: two signals sent at once would arrive as one)
            time.sleep(60)
    """}


@pytest.mark.parametrize("where", STOPPING_SLOWLY)
def test_a_second_signal_ends_a_stopping_command_at_once(where):
    process = subprocess.Popen([sys.executable, "-c", "import time\n" + textwrap.dedent(STOPPING_SLOWLY[where])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "working\n"
    process.send_signal(signal.SIGINT)
    assert process.stdout.readline() == "stopping\n"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)  # not the 60 s of the clean-up
    assert process.returncode == 75 and stderr.strip() == "labelshare: stopped: SIGINT again; ending at once"


def test_a_single_failed_image_ends_the_json_stream_with_the_error_event(tiny_model, scans, tmp_path, capsys,
                                                                         monkeypatch):
    nan = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 16, 16), np.nan, np.float32)), str(nan))
    assert main(segment(tiny_model, nan, "-o", tmp_path / "a.nii.gz", "--progress", "json")) == 1
    last = events_of(capsys.readouterr().out)[-1]
    assert last["event"] == "error" and "nan.mha: image contains NaN" in last["message"]

    def bug(*args, **kwargs):
        raise ValueError("a bug in a writer")
    monkeypatch.setattr("labelshare.engine.segment_run.write_segmentation", bug)
    with pytest.raises(ValueError, match="a bug in a writer"):  # a bug keeps its traceback ...
        main(segment(tiny_model, scans / "case_0_0000.nii.gz", "-o", tmp_path / "b.nii.gz", "--progress", "json"))
    last = events_of(capsys.readouterr().out)[-1]  # ... and the stream still ends with the error event
    assert last["event"] == "error" and last["message"].startswith("internal error (ValueError: a bug in a writer)")


def test_volumes_into_png_fail_and_a_2d_image_in_the_same_batch_is_written(tiny_model, synthetic_tasks, tmp_path,
                                                                           capsys):
    xray = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    volume = sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[0]
    status = main(segment(tiny_model, xray, volume, "-o", tmp_path / "png", "--format", "png"))
    assert status == 4
    assert "a PNG file holds one 2D slice, not a volume of 10 slices (48x48x10)" in capsys.readouterr().err
    written = sitk.ReadImage(str(tmp_path / "png" / f"{xray.name.removesuffix('_0000.png')}.png"))
    assert written.GetSize() == sitk.ReadImage(str(xray)).GetSize()
    assert set(np.unique(sitk.GetArrayViewFromImage(written))) <= {0, 1, 2, 3}


def test_a_folder_of_dicom_series_gives_one_dicom_seg_per_series(tiny_model, synthetic_tasks, tmp_path):
    studies = tmp_path / "studies"
    uids = {}
    for index, source in enumerate(sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[:2]):
        uids[f"patient{index}"], _ = write_series(mr_volume(sitk.ReadImage(str(source)), ROTATION),
                                                  studies / f"patient{index}", series_number=index + 1)
    assert main(segment(tiny_model, studies, "-o", tmp_path / "segs", "--format", "dicom-seg",
                        "--progress", "quiet")) == 0
    assert outputs_in(tmp_path / "segs") == ["patient0.dcm", "patient1.dcm"]
    for name, uid in uids.items():
        seg = hd.seg.segread(tmp_path / "segs" / f"{name}.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["body", "organ", "lesion"]


def test_from_dicom_to_dicom_seg_with_the_bundled_model(tmp_path, capsys):
    """The README's example: a DICOM series folder of a real MR volume (oblique) to DICOM SEG and to a label map."""
    volume = mr_volume(sitk.ReadImage(str(real_task_dir("msd_hippocampus") / "imagesTr" / "hippocampus_003.nii.gz")),
                       ROTATION)
    series_uid, files = write_series(volume, tmp_path / "dicom")
    base = ["segment", "--task", "hippocampus", str(tmp_path / "dicom"), "--device", "cpu", "--progress", "quiet"]
    assert main([*base, "-o", str(tmp_path / "seg.dcm")]) == 0
    assert main([*base, "-o", str(tmp_path / "labels.nii.gz")]) == 0
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    np.testing.assert_allclose(labels.GetDirection(), ROTATION, atol=1e-6)
    values = sitk.GetArrayFromImage(labels)
    assert (values == 1).sum() > 100 and (values == 2).sum() > 100  # the model finds both hippocampus parts

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    source_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == \
        source_uids
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior", "posterior"]
    assert int(seg.NumberOfFrames) == sum(int((values == i).any(axis=(1, 2)).sum()) for i in (1, 2))
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, combine_segments=True)
    np.testing.assert_array_equal(pixels, values)
