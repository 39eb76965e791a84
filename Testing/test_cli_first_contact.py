"""A new user's first contact (issue 31): mistakes answered before torch loads, models named as ``labelshare models``
lists them, global options before the command, ITK's warnings only with --debug, one rule for mirroring a
lateralised task, and a stopped demo that continues with --resume."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from test_layers import HEAVY, run_without_heavy_packages

from labelshare.cli import CONTINUE_HINTS, build_parser, main
from labelshare.core.config import MIRROR_RULE
from labelshare.core.errors import ModelError
from labelshare.core.modelfolder import resolve_model
from labelshare.core.paths import bundled_model_dirs, default_model_dir
from labelshare.core.progress import parse_event
from labelshare.engine.worker import WorkerServer


@pytest.fixture
def workspace(tmp_path):
    """An image, an existing output, an empty folder and a non-DICOM file named .dcm in a folder of its own."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "x.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "exists.nii.gz"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "a.dcm").write_text("not DICOM")
    return tmp_path


def run_light(argvs: list[list[str]], cwd) -> list[dict]:
    """Each command line through ``main`` in one interpreter where torch, MONAI, highdicom ... cannot be imported:
    its status and what it wrote to stderr."""
    result = run_without_heavy_packages(f"""
        import contextlib, io, json, os
        os.chdir({str(cwd)!r})
        from labelshare.cli import main
        answers = []
        for argv in {argvs!r}:
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                status = main(argv)
            answers.append({{"status": status, "stderr": stderr.getvalue()}})
        print(json.dumps(answers))
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} and sys.modules[m])))
    """)
    assert result.returncode == 0, result.stderr
    answers, heavy = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert heavy == []
    return answers


LIGHT_MISTAKES = {
    "a wrong task": (["segment", "--task", "nope", "x.nii.gz", "-o", "y.nii.gz"],
                     "unknown task 'nope'; known tasks: acdc, hippocampus, mammo, sunnybrook"),
    "a missing input": (["segment", "--task", "hippocampus", "missing.nii.gz", "-o", "y.nii.gz"],
                        "missing.nii.gz: input not found"),
    "an existing output": (["segment", "--task", "hippocampus", "x.nii.gz", "-o", "exists.nii.gz"],
                           "exists.nii.gz: already exists (pass --overwrite"),
    "an empty folder": (["segment", "--task", "hippocampus", "empty", "-o", "out"], "empty: no images in it"),
    "rank: a wrong task": (["rank", "--task", "nope", "x.nii.gz", "-o", "r.csv"], "unknown task 'nope'"),
    "rank: tta of a lateralised task": (["rank", "--task", "acdc", "--score", "tta", "x.nii.gz", "-o", "r.csv"],
                                        "task 'acdc' is lateralised"),
    "segment: --tta of a lateralised task": (["segment", "--task", "sunnybrook", "--tta", "x.nii.gz", "-o",
                                              "t.nii.gz"], "task 'sunnybrook' is lateralised"),
    "segment: --series of an image": (["segment", "--task", "hippocampus", "--series", "1.2", "x.nii.gz", "-o",
                                       "t.nii.gz"], "x.nii.gz: is not DICOM, and --series 1.2 picks"),
    "evaluate: no --model, a wrong task": (["evaluate", "--task", "nope", "--data", "empty"],
                                           "unknown task 'nope'; known tasks: acdc"),
    "a model by a name nobody has": (["segment", "--model", "labelshare-9tasks-v9", "--task", "hippocampus",
                                      "x.nii.gz", "-o", "y.nii.gz"], "labelshare-9tasks-v9: model folder does not "
                                                                     "exist, and no model has this name"),
}


def test_every_trivial_mistake_is_one_line_before_torch_is_imported(workspace):
    """The four mistakes of issue 31 (and their kin) are answered without torch: here it cannot be imported."""
    answers = run_light([argv for argv, _ in LIGHT_MISTAKES.values()], workspace)
    for (name, (_, expected)), answer in zip(LIGHT_MISTAKES.items(), answers, strict=True):
        lines = answer["stderr"].strip().splitlines()
        assert answer["status"] == 1 and len(lines) == 1, (name, answer)
        assert lines[0].startswith("labelshare: error: ") and expected in lines[0], (name, lines[0])


def test_a_model_is_named_as_labelshare_models_lists_it(tiny_model, tmp_path, capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out.splitlines()
    bundled = {folder.name for folder in bundled_model_dirs()}
    marked = [line for line in listing if line.split()[0] in bundled and "(default)" in line.split("  ")[0]]
    assert len(marked) == 1 and marked[0].startswith(f"{default_model_dir().name} (default)  ")
    assert all(line.split("  ")[-1] == f"folder: {default_model_dir().parent / line.split()[0]}"
               for line in listing if line.split()[0] in bundled)
    assert main(["models", "--progress", "json"]) == 0
    listed = parse_event(capsys.readouterr().out.splitlines()[-1])["models"]
    assert [m["name"] for m in listed if m["default"]] == [default_model_dir().name]

    assert main(["labelspace", "show", default_model_dir().name]) == 0  # a name, not a folder
    assert "| shared |" in capsys.readouterr().out
    shutil.copytree(tiny_model, tmp_path / "store" / "run" / "tiny")
    assert resolve_model("run/tiny", roots=[tmp_path / "store"]) == tmp_path / "store" / "run" / "tiny"
    assert resolve_model(None) == default_model_dir()
    assert resolve_model(str(tiny_model)) == tiny_model  # a folder is a folder, wherever it is
    shutil.copytree(tiny_model, tmp_path / "other" / "tiny")
    with pytest.raises(ModelError, match="tiny: 2 models have this name"):
        resolve_model("tiny", roots=[tmp_path / "store" / "run", tmp_path / "other"])


def test_global_options_go_before_or_after_the_command(capsys):
    parser = build_parser()
    assert parser.parse_args(["--progress", "json", "models"]).progress == "json"
    assert parser.parse_args(["models", "--progress", "quiet"]).progress == "quiet"
    assert parser.parse_args(["models"]).progress == "human" and not parser.parse_args(["models"]).debug
    assert parser.parse_args(["--debug", "labelspace", "show", "x"]).debug
    assert parser.parse_args(["labelspace", "--progress", "json", "show", "x"]).progress == "json"
    assert parser.parse_args(["worker"]).progress == "json"  # the worker always speaks JSON
    assert main(["--progress", "json", "models"]) == 0
    assert parse_event(capsys.readouterr().out.splitlines()[-1])["event"] == "done"


def test_itk_warnings_are_shown_only_with_debug(workspace):
    """A folder holding a '.dcm' that is not DICOM: one line; ITK's and GDCM's warnings only with --debug."""
    command = [sys.executable, "-m", "labelshare", "segment", "--task", "hippocampus", "fake", "-o", "o.nii.gz"]
    quiet = subprocess.run(command, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == ["labelshare: error: fake: holds DICOM files but no readable image "
                                                 "series"]
    loud = subprocess.run([*command, "--debug"], cwd=workspace, capture_output=True, text=True, timeout=120)
    assert "WARNING" in loud.stderr and "No Series were found" in loud.stderr


def test_one_rule_for_mirroring_a_lateralised_task_in_segment_rank_and_the_worker(tiny_model, tmp_path,
                                                                                  synthetic_tasks, capsys):
    """``segment --tta``, ``rank --score tta`` and the worker's ``"mirror": true`` refuse a lateralised task with
    the same line; ``rank --score auto`` resolves per task; the help states the rule."""
    image = next((synthetic_tasks["sides3d"] / "imagesTr").iterdir())
    base = ["--model", str(tiny_model), "--task", "sides3d", str(image), "--device", "cpu"]
    assert main(["segment", *base, "-o", str(tmp_path / "s.nii.gz"), "--tta"]) == 1
    assert main(["rank", *base, "-o", str(tmp_path / "r.csv"), "--score", "tta"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("labelshare: error:")]
    stream = io.StringIO()
    WorkerServer(stream).handle({"id": 1, "model": str(tiny_model), "task": "sides3d", "input": str(image),
                                 "output": str(tmp_path / "w.nii.gz"), "device": "cpu", "mirror": True})
    answer = [e for e in map(parse_event, stream.getvalue().splitlines()) if e and e["event"] == "error"]
    rule = "task 'sides3d' is lateralised (its labels tell left from right), so mirroring is not a valid " \
           "augmentation for it"
    assert [rule in text for text in [*lines, answer[0]["message"]]] == [True, True, True]
    assert not list(tmp_path.iterdir())
    assert main(["rank", *base, "-o", str(tmp_path / "r.csv"), "--progress", "json"]) == 0  # auto: entropy here
    assert parse_event(capsys.readouterr().out.splitlines()[-1])["event"] == "done"
    parser = build_parser()
    for command in ("segment", "rank", "evaluate"):
        help_text = " ".join(parser._subparsers._group_actions[0].choices[command].format_help().split())
        assert MIRROR_RULE in help_text, command


def test_a_stopped_demo_continues_with_resume(tiny_model, tmp_path, capsys):
    """A demo stopped after its model was trained: the same command with --resume keeps the model and finishes the
    segmentations and the report; without --resume the folder is refused with the hint. (A demo stopped during
    training continues training from its checkpoint: train --resume, tested with training.)"""
    out = tmp_path / "demo"
    shutil.copytree(tiny_model, out / "model")
    shutil.copy(tiny_model / "labelspace.json", out)  # written before training, as the demo does
    command = ["demo", "--out", str(out), "--device", "cpu", "--progress", "quiet"]
    assert main(command) == 1
    assert capsys.readouterr().err.strip().endswith("add --resume to continue a stopped demo there")
    assert main([*command, "--resume"]) == 0
    report = (out / "report.md").read_text()
    assert "## Validation Dice" in report and all((out / "overlays" / f"{task}.png").is_file()
                                                  for task in ("phantom3d", "xray2d", "sides3d"))
    assert "--resume" in CONTINUE_HINTS["demo"]

