"""`labelshare segment` with many images in one call: files, folders and globs alike, one event per image with an
ETA and a summary, a bad case in the middle, the overwrite rule, --continue after a kill mid-batch, PNG refused for
volumes, and DICOM in → DICOM SEG out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import real_task_dir
from dicomfactory import ROTATION, mr_volume, write_series

from labelshare.cli import EXIT_SOME_FAILED, main
from labelshare.inference import Segmenter
from labelshare.models import load_model
from labelshare.outputs import output_complete, sidecar_path
from labelshare.progress import parse_event

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


def test_continue_after_a_kill_mid_batch_keeps_complete_outputs_and_redoes_the_rest(tiny_model, tmp_path,
                                                                                    synthetic_tasks):
    scans = tmp_path / "scans"
    scans.mkdir()
    source = sitk.ReadImage(str(sorted((synthetic_tasks[TASK] / "imagesTr").iterdir())[0]))
    larger = sitk.Expand(source, (4, 4, 4))  # 192x192x40: long enough per image that the kill lands mid-batch
    for index in range(12):
        sitk.WriteImage(larger, str(scans / f"case_{index:02d}.nii.gz"))
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
    (labels / f".{outputs[-1].name}.x1y2.tmp.nii.gz").write_bytes(b"half written")  # a temporary file left behind

    result = subprocess.run([*command, "--continue"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    statuses = {e["case"]: e["status"] for e in events if e["event"] == "progress" and "case" in e}
    kept = {path.name.removesuffix(".nii.gz") for path in complete[1:]}
    assert {case for case, status in statuses.items() if status == "skipped"} == kept
    assert statuses[complete[0].name.removesuffix(".nii.gz")] == "done"
    assert len(statuses) == 12 and (events[-1]["event"], events[-1]["skipped"]) == ("done", len(kept))
    assert all(output_complete(path) for path in outputs)


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
