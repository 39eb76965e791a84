"""The engine's persistent worker (``labelshare worker``, labelshare/engine/worker.py), run in-process on the tiny
model: request/answer protocol, models kept loaded, errors that do not end the worker."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import SimpleITK as sitk

from labelshare.cli import build_parser
from labelshare.commands import cmd_worker
from labelshare.core.config import SegmentConfig
from labelshare.engine.segment_run import segment_file
from labelshare.engine.worker import serve


def run(*requests, **options) -> list[dict]:
    """Serve the requests (dicts, or raw lines as str); returns every event written."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in requests]
    stream = io.StringIO()
    assert serve(io.StringIO("\n".join(lines) + "\n"), stream, **options) == 0
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def answers(events: list[dict], request_id) -> list[dict]:
    return [e for e in events if e.get("request") == request_id]


def test_segment_requests_are_answered_with_tagged_events_and_the_model_stays_loaded(tiny_model, synthetic_tasks,
                                                                                      tmp_path):
    case = sorted((synthetic_tasks["phantom3d"] / "imagesTr").iterdir())[0]
    request = {"model": str(tiny_model), "task": "phantom3d", "input": str(case), "device": "cpu"}
    events = run({**request, "id": "a", "output": str(tmp_path / "a.nii.gz")},
                 {**request, "id": "b", "output": str(tmp_path / "b.nii.gz"), "largest_component": "all"})
    assert events[0]["event"] == "log" and events[0]["worker"] == "ready" and events[0]["import_s"] >= 0
    first, second = answers(events, "a"), answers(events, "b")
    assert first[-1]["event"] == "done" and first[-1]["output"] == str(tmp_path / "a.nii.gz")
    assert first[0]["stage"] == "preparing" and "loading model" in first[0]["message"]
    assert [e["fraction"] for e in first if e.get("stage") == "segmenting"][-1] == 1.0
    assert first[-1]["load_s"] > 0 and second[-1]["load_s"] == 0.0  # loaded once, then kept
    assert not any(e.get("stage") == "preparing" for e in second)

    reference = segment_file(tiny_model, SegmentConfig.from_options(task="phantom3d", device="cpu"), case,
                             tmp_path / "reference.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(reference))))


def test_segment_requests_mirror_like_the_command_line_when_asked(tiny_model, synthetic_tasks, tmp_path):
    case = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    request = {"model": str(tiny_model), "task": "xray2d", "input": str(case), "device": "cpu"}
    run({**request, "id": "default", "output": str(tmp_path / "default.png")},
        {**request, "id": "mirrored", "output": str(tmp_path / "mirrored.png"), "mirror": True})
    for name, mirror in (("default", False), ("mirrored", True)):
        reference = segment_file(tiny_model, SegmentConfig.from_options(task="xray2d", device="cpu", mirror=mirror),
                                 case, tmp_path / f"reference-{name}.png")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.png"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(reference))))
    assert run({**request, "id": 1, "output": str(tmp_path / "x.png"), "mirror": "yes"})[-1]["message"] == \
        "worker request 1: 'mirror' must be true or false, not \"yes\""

def test_bad_requests_get_an_error_and_the_worker_goes_on_until_exit(tiny_model, synthetic_tasks, tmp_path):
    case = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    good = {"id": 5, "model": str(tiny_model), "task": "xray2d", "input": str(case),
            "output": str(tmp_path / "out.png"), "device": "cpu"}
    events = run("this is not json", "[1, 2]", {"id": 1, "command": "train"}, {"id": 2, "task": "xray2d"},
                 {**good, "id": 3, "task": "liver"}, {**good, "id": 4, "model": str(tmp_path / "absent")},
                 good, {"id": 6, "command": "exit"}, {**good, "id": 7})
    errors = {e.get("request"): e["message"] for e in events if e["event"] == "error"}
    anonymous = [e["message"] for e in events if e["event"] == "error" and e.get("request") is None]
    assert anonymous[0].startswith("request is not valid JSON") and anonymous[1] == "request must be a JSON object"
    assert errors[1] == "unknown worker command 'train' (known: segment, rank, exit)"
    assert errors[2] == "worker request 2 lacks input, output"
    assert errors[3] == "unknown task 'liver'; known tasks: phantom3d, sides3d, xray2d"
    assert errors[4] == f"{tmp_path / 'absent'}: model folder does not exist, and no model has this name (labelshare " \
                        "models lists them)"
    assert answers(events, 5)[-1]["event"] == "done" and (tmp_path / "out.png").is_file()
    assert answers(events, 6)[-1]["message"] == "worker stopped"
    assert answers(events, 7) == []  # nothing is read after exit


def test_only_the_most_recent_models_stay_loaded(tiny_model, synthetic_tasks, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    case = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    request = {"task": "xray2d", "input": str(case), "device": "cpu"}
    events = run(*({**request, "id": i, "model": str(model), "output": str(tmp_path / f"{i}.nrrd")}
                   for i, model in enumerate([tiny_model, copy, tiny_model])), max_models=1)
    assert all(answers(events, i)[-1]["load_s"] > 0 for i in range(3))  # the first model was dropped for the copy


def test_worker_is_a_command_of_the_cli():
    assert build_parser().parse_args(["worker"]).func is cmd_worker


def test_rank_requests_rank_a_folder_with_the_loaded_model(tiny_model, synthetic_tasks, tmp_path):
    folder = synthetic_tasks["xray2d"] / "imagesTr"
    request = {"model": str(tiny_model), "task": "xray2d", "device": "cpu"}
    events = run({**request, "id": "s", "input": str(sorted(folder.iterdir())[0]), "output": str(tmp_path / "s.png")},
                 {**request, "id": "r", "command": "rank", "inputs": [str(folder)],
                  "output": str(tmp_path / "ranking.csv")},
                 {**request, "id": "x", "command": "rank", "inputs": [str(tmp_path / "absent")],
                  "output": str(tmp_path / "x.csv")},
                 {**request, "id": "again", "command": "rank", "inputs": [str(folder)],
                  "output": str(tmp_path / "ranking.csv")},
                 {**request, "id": "replace", "command": "rank", "inputs": [str(folder)],
                  "output": str(tmp_path / "ranking.csv"), "overwrite": True})
    ranked = answers(events, "r")
    assert ranked[-1]["event"] == "done" and ranked[-1]["ranked"] == 8 and ranked[-1]["failures"] == []
    assert ranked[-1]["load_s"] == 0.0  # the model the segment request loaded
    assert [e["index"] for e in ranked if e.get("stage") == "ranking"] == list(range(1, 9))
    assert len((tmp_path / "ranking.csv").read_text().splitlines()) == 9
    assert answers(events, "x")[-1]["message"] == f"{tmp_path / 'absent'}: input not found (no such file or folder)"
    again = answers(events, "again")  # the one overwrite rule: refused before ranking, unless asked
    assert [e["event"] for e in again] == ["error"] and "ranking.csv: already exists" in again[-1]["message"]
    assert answers(events, "replace")[-1]["event"] == "done"
