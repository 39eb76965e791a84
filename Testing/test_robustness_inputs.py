"""Issue #11, inputs: bounded requests, image sizes and networks (4), nothing wrongly accepted (7), one line instead
of a traceback (8), messages that say what is wrong (9), and the command line's promises (10)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import cli_error, fixed_size_space
from taskfactory import blobs, write_task_folder

from labelshare import __version__
from labelshare.cli import build_parser, main
from labelshare.core.config import NetworkConfig
from labelshare.core.errors import LabelShareError, ModelError
from labelshare.core.forgetting import ForgettingReport
from labelshare.core.modelfolder import verify_folder, write_manifest
from labelshare.core.progress import parse_event
from labelshare.core.tasks import TaskDataset
from labelshare.engine.models import load_model
from labelshare.engine.worker import serve


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "model")


def serve_lines(*lines: str) -> list[dict]:
    stream = io.StringIO()
    assert serve(io.StringIO("".join(line + "\n" for line in lines)), stream) == 0
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _task(tmp_path, name="t", extra_json=None):
    return write_task_folder(tmp_path / name, {"a": 1}, [blobs((2, 8, 8), {1: np.s_[:, 0:3, 0:3]})] * 2,
                             ending=".mha", extra_json=extra_json)


def _tamper_json(folder, name, change):
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))
    write_manifest(folder)


# -- 4: bounded -------------------------------------------------------------------------------------------------------
def test_a_deeply_nested_request_is_an_error_and_the_worker_goes_on():
    events = serve_lines("[" * 100_000 + "]" * 100_000, json.dumps({"id": "x", "command": "exit"}))
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and "nested too deeply" in errors[0]["message"]
    assert events[-1]["event"] == "done" and events[-1]["request"] == "x"


def test_an_oversized_request_line_is_an_error_and_the_worker_goes_on():
    events = serve_lines(json.dumps({"id": "big", "task": "x" * 3_000_000}), json.dumps({"id": "x", "command": "exit"}))
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and "longer than" in errors[0]["message"]
    assert events[-1]["request"] == "x" and events[-1]["event"] == "done"


@pytest.mark.parametrize("size", [65536, 4096, 0, -16])
def test_fixed_size_is_bounded(size):
    from labelshare.core.plans import PlanSettings
    with pytest.raises(LabelShareError, match="--fixed-size"):
        PlanSettings(fixed_size=size).check()


@pytest.mark.parametrize("change, message", [
    (dict(filters=[65536] * 5), "filters"), (dict(filters=[16] * 40), "filters"), (dict(filters=[]), "filters"),
    (dict(filters=["16", 32, 64, 128, 256]), "filters"), (dict(out_channels=10**6), "out_channels"),
    (dict(n_tasks=10**6), "n_tasks"), (dict(in_channels=0), "in_channels"), (dict(out_channels="4"), "out_channels")])
def test_network_shapes_are_bounded(change, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**{"out_channels": 4, **change})


@pytest.mark.parametrize("change, message", [
    (lambda c: c["network"].update(filters=[65536] * 5), "filters"),
    (lambda c: c["preprocessing"].update(image_size=0), "image_size"),
    (lambda c: c["preprocessing"].update(image_size="128"), "image_size"),
    (lambda c: c["preprocessing"].update(image_size=65536), "image_size"),
    (lambda c: c.update(weights_dtype="int8"), "weights_dtype"),
    (lambda c: c.update(network=[1, 2]), "network"),
])
def test_a_tampered_config_is_refused_before_the_network_is_built(model_copy, capsys, change, message):
    _tamper_json(model_copy, "config.json", change)
    with pytest.raises(ModelError, match=f"config.json: .*{message}"):
        verify_folder(model_copy)


# -- 7: wrongly accepted ----------------------------------------------------------------------------------------------
def test_labelspace_build_never_replaces_a_file_without_overwrite(synthetic_tasks, tmp_path, capsys):
    unrelated = tmp_path / "notes.json"
    unrelated.write_text('{"mine": true}')
    argv = ["labelspace", "build", "--task", f"xray2d={synthetic_tasks['xray2d']}", "-o", unrelated]
    assert "notes.json: already exists (pass --overwrite to replace it)" in cli_error(argv, capsys)
    assert unrelated.read_text() == '{"mine": true}'
    assert main([str(a) for a in argv] + ["--overwrite", "--progress", "quiet"]) == 0
    assert json.loads(unrelated.read_text())["format"] == "labelshare.labelspace"


def test_evaluate_never_replaces_an_evaluation_without_overwrite(tiny_model, synthetic_tasks, tmp_path, capsys):
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "evaluation.md").write_text("an earlier evaluation")
    argv = ["evaluate", "--model", tiny_model, "--task", "xray2d", "--data", synthetic_tasks["xray2d"], "-o", folder,
            "--device", "cpu"]
    assert "evaluation.md: already exists (pass --overwrite" in cli_error(argv, capsys)
    assert (folder / "evaluation.md").read_text() == "an earlier evaluation"
    assert main([str(a) for a in argv] + ["--overwrite", "--progress", "quiet"]) == 0


@pytest.mark.parametrize("field, value", [("largest_component", "no"), ("largest_component", 1),
                                          ("task", ["xray2d"]), ("input", 5), ("device", "tpu"),
                                          ("overwrite", "yes"), ("unknown_option", True)])
def test_worker_request_fields_of_the_wrong_type_are_refused(tiny_model, synthetic_tasks, tmp_path, field, value):
    case = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    request = {"id": 1, "model": str(tiny_model), "task": "xray2d", "input": str(case),
               "output": str(tmp_path / "out.png"), "device": "cpu", field: value}
    last = serve_lines(json.dumps(request))[-1]
    assert last["event"] == "error" and field in last["message"], last
    assert not (tmp_path / "out.png").exists()


def test_worker_never_replaces_an_existing_output_unless_asked(tiny_model, synthetic_tasks, tmp_path):
    case = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    output = tmp_path / "out.png"
    output.write_bytes(b"precious")
    request = {"model": str(tiny_model), "task": "xray2d", "input": str(case), "output": str(output), "device": "cpu"}
    events = serve_lines(json.dumps({**request, "id": 1}), json.dumps({**request, "id": 2, "overwrite": True}))
    first = [e for e in events if e.get("request") == 1][-1]
    assert first["event"] == "error" and "already exists" in first["message"]
    assert [e for e in events if e.get("request") == 2][-1]["event"] == "done"
    assert output.read_bytes() != b"precious"


def test_weights_that_are_not_finite_are_refused(model_copy, capsys, tmp_path):
    from safetensors.torch import load_file, save_file
    weights = load_file(str(model_copy / "model.safetensors"))
    save_file({k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              str(model_copy / "model.safetensors"), metadata={"format": "labelshare.model", "dtype": "float32"})
    write_manifest(model_copy)
    with pytest.raises(ModelError, match="NaN or infinite"):
        load_model(model_copy, device="cpu")
    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)), str(image))
    line = cli_error(["segment", "--model", model_copy, "--task", "phantom3d", image, "-o", tmp_path / "o.nii.gz",
                      "--device", "cpu"], capsys)
    assert "NaN or infinite" in line and not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("batch_size", ["-5", "0"])
def test_segment_refuses_a_batch_size_below_one(tiny_model, tmp_path, capsys, batch_size):
    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)), str(image))
    line = cli_error(["segment", "--model", tiny_model, "--task", "phantom3d", image, "-o", tmp_path / "o.nii.gz",
                      "--device", "cpu", "--batch-size", batch_size], capsys)
    assert f"--batch-size must be a whole number of at least 1, not {batch_size}" in line
    assert not (tmp_path / "o.nii.gz").exists()


def test_segment_refuses_to_write_a_volume_as_one_png(tiny_model, tmp_path, capsys, monkeypatch):
    from labelshare.engine import models
    monkeypatch.setattr(models, "load_model",
                        lambda *args, **kwargs: pytest.fail("refused only after the model loaded"))
    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)), str(image))
    line = cli_error(["segment", "--model", tiny_model, "--task", "phantom3d", image, "-o", tmp_path / "o.png",
                      "--device", "cpu"], capsys)
    assert "o.png: a PNG file holds one 2D slice, not a volume of 4 slices (16x16x4)" in line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("root", ["a_file", "absent"])
def test_models_refuses_a_root_that_is_not_a_folder(tmp_path, capsys, root):
    (tmp_path / "a_file").write_text("not a folder")
    line = cli_error(["models", "--root", tmp_path / root], capsys)
    assert f"{tmp_path / root}: " in line and "--root" in line


def test_a_network_that_diverged_is_never_saved(tiny_model, tmp_path):
    import torch

    from labelshare.engine.models import save_model_folder
    model = load_model(tiny_model, device="cpu")
    with torch.no_grad():
        next(model.network.parameters()).fill_(float("inf"))
    with pytest.raises(ModelError, match="diverged"):
        save_model_folder(tmp_path / "m", model.network, model.config, model.labelspace)
    assert not (tmp_path / "m" / "model.safetensors").exists()


# -- 8: one line instead of a traceback -------------------------------------------------------------------------------
def test_output_paths_that_cannot_be_written_are_one_line(tiny_model, synthetic_tasks, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    task = f"xray2d={synthetic_tasks['xray2d']}"
    assert "is a folder" in cli_error(["labelspace", "build", "--task", task, "-o", tmp_path], capsys)
    assert "ls.json: not written" in cli_error(["labelspace", "build", "--task", task, "-o", a_file / "ls.json"],
                                               capsys)
    evaluate = ["evaluate", "--model", tiny_model, "--task", "xray2d", "--data", synthetic_tasks["xray2d"], "--device",
                "cpu", "-o"]
    assert "a_file: not a folder" in cli_error(evaluate + [a_file], capsys)
    fixed_size_space(synthetic_tasks).save(tmp_path / "fixed32.json")
    train = ["train", "--labelspace", tmp_path / "fixed32.json", "--task", task, "--task",
             f"phantom3d={synthetic_tasks['phantom3d']}", "--task", f"sides3d={synthetic_tasks['sides3d']}",
             "--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu", "--out"]
    assert "a_file" in cli_error(train + [a_file / "model"], capsys)
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("extra, message", [
    ({"labelshare": {"patient_regex": "(unclosed"}}, "patient_regex"),
    ({"labelshare": {"patient_regex": 5}}, "patient_regex"),
    ({"labelshare": ["patient_regex"]}, "'labelshare'"),
    ({"labelshare": "yes"}, "'labelshare'"),
    ({"labelshare": {"lateralised": "no"}}, "lateralised"),
    ({"labelshare": {"label_info": []}}, "label_info"),
    ({"channel_names": [1, 2]}, "channel_names"),
])
def test_a_bad_dataset_json_is_one_line(tmp_path, capsys, extra, message):
    task = _task(tmp_path, extra_json=extra)
    line = cli_error(["labelspace", "build", "--task", f"t={task}", "-o", tmp_path / "ls.json"], capsys)
    assert "dataset.json" in line and message in line


@pytest.mark.parametrize("option", ["nan", "inf", "-1"])
def test_a_bad_learning_rate_is_one_line_for_train_and_add_task(tiny_model, synthetic_tasks, tmp_path, capsys,
                                                                option):
    task = f"xray2d={synthetic_tasks['xray2d']}"
    line = cli_error(["train", "--labelspace", tiny_model / "labelspace.json", "--task", task, "--out",
                      tmp_path / "m", "--learning-rate", option], capsys)
    assert "--learning-rate" in line
    line = cli_error(["add-task", "--model", tiny_model, "--task", task, "--out", tmp_path / "m2", "--learning-rate",
                      option], capsys)
    assert "--learning-rate" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(weight_decay="x"), "weight_decay"), (lambda t: t.update(amp=None), "amp"),
    (lambda t: t.update(augment="no"), "augment"),
    (lambda t: t.update(foreground_oversampling=7), "foreground_oversampling"),
])
def test_a_tampered_training_json_is_one_line_for_add_task(model_copy, synthetic_tasks, tmp_path, capsys, change,
                                                           message):
    _tamper_json(model_copy, "training.json", change)
    line = cli_error(["add-task", "--model", model_copy, "--task", f"xray2d={synthetic_tasks['xray2d']}", "--out",
                      tmp_path / "v2", "--device", "cpu"], capsys)
    assert "training.json" in line and message in line


def test_a_lineage_with_task_folders_as_a_list_is_one_line_for_add_task(model_copy, synthetic_tasks, tmp_path,
                                                                        capsys):
    _tamper_json(model_copy, "lineage.json", lambda lineage: lineage.update(task_folders=["/a", "/b"]))
    line = cli_error(["add-task", "--model", model_copy, "--task", f"xray2d={synthetic_tasks['xray2d']}", "--out",
                      tmp_path / "v2", "--device", "cpu"], capsys)
    assert "lineage.json" in line and "task_folders" in line


def test_unexpected_failures_in_the_worker_are_reported_without_raw_exception_text(tiny_model, synthetic_tasks,
                                                                                   tmp_path, monkeypatch):
    from labelshare.engine import inference

    def broken(*args, **kwargs):
        raise ValueError("internal detail: tensor of shape (3, 4) at 0x7f00")
    monkeypatch.setattr(inference.Segmenter, "segment_case", broken)  # what the worker runs
    case = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    request = {"id": 1, "model": str(tiny_model), "task": "xray2d", "input": str(case),
               "output": str(tmp_path / "out.png"), "device": "cpu"}
    last = serve_lines(json.dumps(request))[-1]
    assert last["event"] == "error" and "internal error" in last["message"]
    assert "0x7f00" not in last["message"] and "tensor of shape" not in last["message"]


# -- 9: messages that say what is wrong -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "segment", "evaluate", "add-task"])
def test_an_unknown_device_is_named(tiny_model, synthetic_tasks, tmp_path, capsys, command):
    image = sorted((synthetic_tasks["xray2d"] / "imagesTr").iterdir())[0]
    task = f"xray2d={synthetic_tasks['xray2d']}"
    argv = {"train": ["train", "--labelspace", tiny_model / "labelspace.json", "--task", task, "--out", tmp_path / "m"],
            "segment": ["segment", "--model", tiny_model, "--task", "xray2d", image, "-o", tmp_path / "o.png"],
            "evaluate": ["evaluate", "--model", tiny_model, "--task", "xray2d", "--data", synthetic_tasks["xray2d"]],
            "add-task": ["add-task", "--model", tiny_model, "--task", task, "--out", tmp_path / "m"]}[command]
    line = cli_error(argv + ["--device", "tpu"], capsys)
    assert "unknown device 'tpu'" in line and "cuda' requested" not in line


def test_a_bare_task_argument_that_is_no_folder_mentions_name_equals_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = cli_error(["labelspace", "build", "--task", "acdc", "-o", "ls.json"], capsys)
    assert "NAME=DIR" in line and "acdc" in line


def test_an_image_that_is_a_folder_is_not_called_missing(tmp_path):
    from labelshare.core.tasks import read_image
    (tmp_path / "scan.nii.gz").mkdir()
    with pytest.raises(LabelShareError, match="scan.nii.gz: image is a folder"):
        read_image(tmp_path / "scan.nii.gz", "image")


def test_an_unreadable_image_is_not_called_missing(tmp_path, monkeypatch):
    import builtins

    from labelshare.core.tasks import read_image
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 4), np.float32)), str(path))
    real_open = builtins.open

    def no_permission(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", no_permission)
    with pytest.raises(LabelShareError, match=r"scan.nii.gz: image cannot be read \(Permission denied\)"):
        read_image(path, "image")


def test_geometry_differences_are_printed_as_plain_numbers(tmp_path):
    task = _task(tmp_path)
    image = task / "imagesTr" / "case_000_0000.mha"
    moved = sitk.ReadImage(str(image))
    moved.SetSpacing((1.3671875, 1.0, 1.0))
    sitk.WriteImage(moved, str(image))
    dataset = TaskDataset.open(task)
    with pytest.raises(LabelShareError) as error:
        dataset.read_case(dataset.cases[0])
    assert "np.float64" not in str(error.value) and "(1.3671875, 1.0, 1.0)" in str(error.value)


def test_the_gate_names_every_task_over_the_limit_in_good_grammar():
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    before = {t: {"x": {"dice_mean": v}} for t, v in scores.items()}
    after = {t: {"x": {"dice_mean": v - (0.005 if t == "d" else 0.1)}} for t, v in scores.items()}
    verdict = ForgettingReport.compare(before, after, list(scores), "new", 1.0, False, None).verdict()
    assert verdict.startswith("3 old tasks lost more than the 1 Dice point allowed")
    assert all(f"'{t}'" in verdict for t in "abc") and "'d'" not in verdict


# -- 10: promises of the command line ---------------------------------------------------------------------------------
def _events(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    events = [parse_event(line) for line in lines]
    assert all(events), f"stdout holds only JSON events: {stdout[:300]}"
    return events


def test_models_and_labelspace_show_speak_json(tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_model, run / "model")
    assert main(["models", "--root", str(tmp_path), "--progress", "json"]) == 0
    done = _events(capsys.readouterr().out)[-1]
    assert done["event"] == "done" and [m["path"] for m in done["models"]] == [str(run / "model")]
    assert done["models"][0]["valid"] and done["models"][0]["tasks"] == ["phantom3d", "xray2d", "sides3d"]
    assert main(["labelspace", "show", str(tiny_model), "--progress", "json"]) == 0
    done = _events(capsys.readouterr().out)[-1]
    assert done["event"] == "done" and done["labelspace"]["format"] == "labelshare.labelspace"


def test_models_finds_models_one_level_down(tiny_model, tmp_path, capsys):
    shutil.copytree(tiny_model, tmp_path / "demo-run" / "model")
    assert main(["models", "--root", str(tmp_path)]) == 0
    assert str(tmp_path / "demo-run" / "model") in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "segment", "evaluate", "add-task", "demo", "models",
                                     "labelspace build"])
def test_every_option_has_help_and_shows_its_default(command):
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command.split()[0]]
    if " " in command:
        subparser = subparser._subparsers._group_actions[0].choices[command.split()[1]]
    text = subparser.format_help()
    for action in subparser._actions:
        if action.dest in ("help",) or not action.option_strings:
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        # a flag (store_true/store_false: no value) has nothing to show; nor has an empty default
        shown = action.nargs != 0 and action.default not in (None, False, [], {}, "==SUPPRESS==")
        if shown:
            assert f"(default: {action.default})" in " ".join(text.split()), (command, action.option_strings[0])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"labelshare {__version__}"
