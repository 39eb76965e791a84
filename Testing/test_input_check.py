"""The input check (labelshare.core.input_check, labelshare.engine.input_check): the calibration warns at most a few
held-out in-distribution cases and flags shifted ones; the statistics are written into every version and verified by
its manifest; through the command line and the worker an out-of-distribution input is warned (stderr line,
``warning`` event, sidecar) and an in-distribution one is not; a model without statistics still segments and says
which parts could not run."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from labelshare import cli
from labelshare.core.config import MemoryConfig
from labelshare.core.errors import ModelError
from labelshare.core.fileio import read_json
from labelshare.core.input_check import (FEATURES, GEOMETRY, INPUT_CHECK_ARRAYS, INPUT_CHECK_FILE, INTENSITY,
                                         MODALITY, ORIENTATION, CaseMeasurement, InputCheckStatistics, calibrate,
                                         check_input, conformal_quantile)
from labelshare.core.modelfolder import MANIFEST_FILE, verify_folder, write_manifest
from labelshare.core.outputs import sidecar_path
from labelshare.core.tasks import TaskDataset
from labelshare.engine.input_check import NO_STATISTICS
from labelshare.engine.models import load_model
from labelshare.engine.postprocess_run import make_memory
from labelshare.engine.worker import serve

TASK = "phantom3d"


# -- the statistics and the score, on made-up measurements -----------------------------------------------------------
def measurement(rng: np.random.Generator, shift: float = 0.0, spacing: float = 1.0) -> CaseMeasurement:
    geometry = {"spacing_rows": spacing, "spacing_columns": spacing, "extent_rows": 100 * spacing,
                "extent_columns": 100 * spacing, "slices": 20.0}
    return CaseMeasurement(geometry, {INTENSITY: rng.normal(shift, 1.0, 9), FEATURES: rng.normal(shift, 1.0, 64)})


def test_the_threshold_is_calibrated_on_held_out_cases_and_warns_few_new_in_distribution_cases():
    rng = np.random.default_rng(0)
    training = [measurement(rng, spacing=rng.uniform(0.9, 1.1)) for _ in range(60)]
    patients = [f"p{i // 2}" for i in range(60)]  # two cases per patient: folds by patient
    reference = calibrate(training, patients)
    assert reference.folds == 5 and reference.patients == 30 and set(reference.gaussians) == {INTENSITY, FEATURES}
    # fitted-case scores sit lower than held-out ones: a threshold from them would warn most new cases
    fitted = [max(reference.part_scores(m).values()) for m in training]
    assert np.percentile(fitted, 95) < reference.threshold
    new = [check_input(reference, measurement(rng, spacing=1.0), TASK, "MRI", "") for _ in range(400)]
    assert np.mean([result.warned for result in new]) <= 0.10  # at most 5 % expected; 400 draws
    shifted = check_input(reference, measurement(rng, shift=1.5), TASK, "MRI", "")
    assert shifted.warned and any("the network's features of it are unlike" in reason for reason in shifted.reasons)
    coarse = check_input(reference, measurement(rng, spacing=4.0), TASK, "MRI", "")
    assert coarse.warned and any("pixel spacing (rows) is 4 mm" in reason for reason in coarse.reasons)
    # the modality is checked apart from the score: a CT given to an MRI task is warned however typical it looks
    ct = measurement(rng)
    ct.modality = "CT"
    result = check_input(reference, ct, TASK, "cine MRI (short axis)", "")
    assert result.warned and "it is CT (its DICOM Modality), but task phantom3d was trained on" in result.reasons[0]
    assert MODALITY in check_input(reference, measurement(rng), TASK, "MRI", "").not_run


def test_conformal_quantile_and_fewer_parts():
    assert conformal_quantile(list(range(1, 20))) == 19  # ceil(0.95 * 20) = 19th of 19
    assert conformal_quantile(list(range(1, 101))) == 96
    rng = np.random.default_rng(1)
    reference = calibrate([measurement(rng) for _ in range(30)], [f"p{i}" for i in range(30)])
    kept = reference.without((FEATURES, ORIENTATION))
    assert set(kept.gaussians) == {INTENSITY} and set(kept.scales) == {GEOMETRY, INTENSITY}
    assert kept.threshold <= reference.threshold
    result = check_input(kept, measurement(rng), TASK, "MRI", "")
    assert "have none (its images were not at hand" in result.not_run[FEATURES]


def test_statistics_round_trip_through_their_files(tmp_path):
    rng = np.random.default_rng(2)
    reference = calibrate([measurement(rng) for _ in range(20)], [f"p{i}" for i in range(20)])
    InputCheckStatistics({TASK: reference}, {"other": "why"}).write(tmp_path)
    read = InputCheckStatistics.read(tmp_path)
    assert read.missing == {"other": "why"} and read.tasks[TASK].threshold == pytest.approx(reference.threshold)
    probe = measurement(rng, shift=0.5)
    assert read.tasks[TASK].part_scores(probe) == pytest.approx(reference.part_scores(probe), rel=1e-4)
    data = json.loads((tmp_path / INPUT_CHECK_FILE).read_text())
    data["tasks"][TASK]["threshold"] = -1
    (tmp_path / INPUT_CHECK_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelError, match="threshold must be positive"):
        InputCheckStatistics.read(tmp_path)


# -- a model's statistics ---------------------------------------------------------------------------------------------
def test_every_new_version_carries_statistics_that_its_manifest_verifies(tiny_model, tmp_path):
    manifest = read_json(tiny_model / MANIFEST_FILE, "manifest")
    listed = json.dumps(manifest)
    assert INPUT_CHECK_FILE in listed and INPUT_CHECK_ARRAYS in listed
    statistics = load_model(tiny_model, "cpu").input_statistics
    assert set(statistics.tasks) == {"phantom3d", "sides3d", "xray2d"}
    assert all({FEATURES, ORIENTATION} <= set(reference.gaussians) for reference in statistics.tasks.values())
    assert "Input check" in (tiny_model / "README.md").read_text()

    changed = shutil.copytree(tiny_model, tmp_path / "changed")
    with open(changed / INPUT_CHECK_ARRAYS, "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ModelError, match="input_check.npz: contents do not match manifest.json"):
        verify_folder(changed)
    # statistics of a task the model does not have are refused even when the manifest vouches for them
    foreign = shutil.copytree(tiny_model, tmp_path / "foreign")
    data = json.loads((foreign / INPUT_CHECK_FILE).read_text())
    data["tasks"]["liver"] = {**data["tasks"][TASK], "gaussian_parts": []}  # its geometry only: no arrays needed
    (foreign / INPUT_CHECK_FILE).write_text(json.dumps(data))
    write_manifest(foreign)
    with pytest.raises(ModelError, match="statistics of task\\(s\\) liver, which the label space does not have"):
        verify_folder(foreign)


def without_statistics(model: Path, target: Path) -> Path:
    """A copy of a model as versions were before they carried input check statistics."""
    shutil.copytree(model, target)
    (target / INPUT_CHECK_FILE).unlink()
    (target / INPUT_CHECK_ARRAYS).unlink()
    write_manifest(target)
    return target


def test_labelshare_memory_gives_an_older_model_statistics_of_the_tasks_given(tiny_model, synthetic_tasks, tmp_path):
    old = without_statistics(tiny_model, tmp_path / "old")
    new = make_memory(old, [(TASK, synthetic_tasks[TASK])], tmp_path / "new",
                      MemoryConfig(memory_slices=4, gate_slices=4, replay_pixels=0, gate_pixels=0), "cpu")
    statistics = load_model(new, "cpu").input_statistics
    assert list(statistics.tasks) == [TASK]
    assert set(statistics.missing) == {"sides3d", "xray2d"}
    assert "training images were not at hand" in statistics.missing["xray2d"]


# -- the check while segmenting: command line, sidecar, worker ------------------------------------------------------
def training_case(model: Path, tasks: dict[str, Path]) -> Path:
    """A training case of the task: the statistics were fitted on it, so it is in distribution however few cases
    the tiny model's statistics hold."""
    name = read_json(model / "split.json", "split")["tasks"][TASK]["train"][0]
    return TaskDataset.open(tasks[TASK], TASK).case(name).image_path


def noise_like(path: Path, target: Path) -> Path:
    image = sitk.ReadImage(str(path))
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=sitk.GetArrayViewFromImage(image).shape)
                                   .astype(np.float32))
    noise.CopyInformation(image)
    sitk.WriteImage(noise, str(target))
    return target


def segment(model: Path, image: Path, output: Path, capsys, *options: str) -> tuple[int, str, list[dict]]:
    status = cli.main(["segment", "--model", str(model), "--task", TASK, str(image), "-o", str(output),
                       "--device", "cpu", *options])
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return status, captured.err, events


def test_an_unusual_input_is_warned_and_segmented_and_a_usual_one_is_not(tiny_model, synthetic_tasks, tmp_path,
                                                                          capsys):
    usual = training_case(tiny_model, synthetic_tasks)
    status, err, _ = segment(tiny_model, usual, tmp_path / "usual.nii.gz", capsys)
    assert status == 0 and "warning" not in err
    record = json.loads(sidecar_path(tmp_path / "usual.nii.gz").read_text())
    check = record["input_check"]
    assert check["warned"] is False and check["reasons"] == [] and check["score"] <= check["threshold"]
    assert set(check["parts"]) == {GEOMETRY, INTENSITY, "layout", FEATURES, ORIENTATION}
    assert set(check["not_run"]) == {MODALITY}  # a NIfTI file does not say its modality
    assert record["case_score"]["score"] == "entropy" and 0 <= record["case_score"]["value"] <= 1

    noise = noise_like(usual, tmp_path / "noise.nii.gz")
    status, err, _ = segment(tiny_model, noise, tmp_path / "out.nii.gz", capsys)
    assert status == 0 and (tmp_path / "out.nii.gz").is_file()  # a warning, never a refusal
    lines = [line for line in err.splitlines() if "unlike the training images of task phantom3d" in line]
    assert len(lines) == 1 and str(noise) in lines[0]
    check = json.loads(sidecar_path(tmp_path / "out.nii.gz").read_text())["input_check"]
    assert check["warned"] is True and check["score"] > check["threshold"] and check["reasons"]

    status, _, events = segment(tiny_model, noise, tmp_path / "json.nii.gz", capsys, "--progress", "json")
    warnings = [event for event in events if event["event"] == "warning"]
    assert status == 0 and len(warnings) == 1
    assert warnings[0]["input_check"]["warned"] and warnings[0]["detail"].startswith("unlike the training images")
    assert events[-1]["event"] == "done"

    status, err, _ = segment(tiny_model, noise, tmp_path / "unchecked.nii.gz", capsys, "--no-input-check")
    assert status == 0 and "unlike" not in err
    assert "input_check" not in json.loads(sidecar_path(tmp_path / "unchecked.nii.gz").read_text())


def test_a_model_without_statistics_segments_and_says_what_it_could_not_check(tiny_model, synthetic_tasks, tmp_path,
                                                                               capsys):
    old = without_statistics(tiny_model, tmp_path / "old")
    noise = noise_like(training_case(tiny_model, synthetic_tasks), tmp_path / "noise.nii.gz")
    status, err, _ = segment(old, noise, tmp_path / "out.nii.gz", capsys)
    assert status == 0 and "unlike" not in err
    check = json.loads(sidecar_path(tmp_path / "out.nii.gz").read_text())["input_check"]
    assert check["score"] is None and check["warned"] is False
    assert check["not_run"][FEATURES] == NO_STATISTICS and check["not_run"][GEOMETRY] == NO_STATISTICS


def run_worker(*requests: dict) -> list[dict]:
    stream = io.StringIO()
    assert serve(io.StringIO("\n".join(json.dumps(request) for request in requests) + "\n"), stream) == 0
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_worker_sends_the_warning_as_an_event_before_done(tiny_model, synthetic_tasks, tmp_path):
    usual = training_case(tiny_model, synthetic_tasks)
    noise = noise_like(usual, tmp_path / "noise.nii.gz")
    request = {"model": str(tiny_model), "task": TASK, "device": "cpu"}
    events = run_worker({**request, "id": "usual", "input": str(usual), "output": str(tmp_path / "a.nii.gz")},
                        {**request, "id": "noise", "input": str(noise), "output": str(tmp_path / "b.nii.gz")})
    usual_events = [e for e in events if e.get("request") == "usual"]
    noise_events = [e for e in events if e.get("request") == "noise"]
    assert usual_events[-1]["event"] == "done" and not any(e["event"] == "warning" for e in usual_events)
    kinds = [e["event"] for e in noise_events]
    assert kinds[-1] == "done" and kinds.count("warning") == 1
    warning = noise_events[kinds.index("warning")]
    assert warning["input_check"]["warned"] and "unlike the training images of task phantom3d" in warning["detail"]
