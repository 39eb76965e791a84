"""The benchmark (issue 3): every method trains on synthetic data with the right outputs, DoD-Net's head depends on
the task code, the runner writes well-formed outputs, repeats itself with the same seed and resumes a half-finished
run; the shipped default model is a valid, small, documented model folder."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelshare_benchmarks.methods import METHODS, BenchmarkSettings, main, run_benchmark
from labelshare_benchmarks.compare_models import comparison_table
from labelshare_benchmarks.paired import paired_standard_error
from labelshare_benchmarks import training_budget
from labelshare.core.config import NetworkConfig
from labelshare.core.errors import LabelShareError, TrainingInterrupted
from labelshare.core.fileio import read_json
from labelshare.core.layouts import task_heads
from labelshare.core.modelfolder import WEIGHTS_FILE
from labelshare.core.paths import staging_dir_for
from labelshare.core.paths import default_model_dir
from labelshare.core.progress import Progress
from labelshare.core.tasks import TaskDataset
from labelshare.engine.inference import Segmenter
from labelshare.engine.metrics import dice_per_label
from labelshare.engine.models import load_model
from labelshare.engine.networks import build_network
from labelshare.engine.training import Trainer

from conftest import REAL_TASKS, real_task_dir

GROUP = "phantom3d:lesion=xray2d:heart"  # ranked 3rd and 2nd by size: the group changes the mapping
TINY = dict(steps_per_task=2, steps_per_epoch=2, batch_size=6, patch_pixels=32 * 32, seed=0, device="cpu")


def tiny_settings(**changes) -> BenchmarkSettings:
    return BenchmarkSettings(**{**TINY, "groups": [GROUP], **changes})


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory, synthetic_tasks):
    """Every method on the three synthetic tasks, two steps per task."""
    out = tmp_path_factory.mktemp("benchmark") / "run"
    return run_benchmark(list(synthetic_tasks.items()), list(METHODS), out, tiny_settings(),
                         progress=Progress("quiet"),
                         command=["labelshare-bench", "methods", "--out", str(out), "(test)"])


def test_dodnet_head_gives_different_outputs_for_different_task_codes():
    torch.manual_seed(0)
    network = build_network(NetworkConfig(out_channels=4, n_tasks=3, conditioning="dodnet")).eval()
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        outputs = [network(images, torch.full((2,), task)) for task in range(3)]
        again = network(images, torch.zeros(2, dtype=torch.long))
    assert outputs[0].shape == (2, 4, 32, 32)
    torch.testing.assert_close(outputs[0], again)
    for a in range(3):
        for b in range(a + 1, 3):
            assert (outputs[a] - outputs[b]).abs().max() > 1e-4, f"task codes {a} and {b} give the same output"
    with pytest.raises(ValueError, match="task"):
        network(images)


@pytest.mark.slow
def test_the_baselines_are_the_benchmarks_registered_through_the_engines_public_registry(tiny_benchmark):
    """The product offers its own methods; DoD-Net and multi-channel come from labelshare_benchmarks, which registers
    them (and their layouts) in the engine's registries, also in a process that never imported it (the package's
    entry point), so their model folders load wherever the benchmarks are installed."""
    import subprocess
    import sys

    from labelshare.cli import build_parser
    from labelshare.core.methods import METHODS as ENGINE_METHODS
    from labelshare.core.methods import PRODUCT_METHODS
    from labelshare_benchmarks import baselines

    product = {m.name for m in PRODUCT_METHODS}
    assert product == {"label-sharing", "label-sharing-task-channels", "per-task"}
    train = build_parser().parse_args(["train", "--labelspace", "l", "--task", "t=d", "--out", "o"])
    assert train.method == "label-sharing"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--labelspace", "l", "--task", "t=d", "--out", "o", "--method", "dodnet"])
    assert all(ENGINE_METHODS[m.name] is m for m in baselines.METHODS)
    dodnet = tiny_benchmark.method("dodnet").models["phantom3d"]
    loaded = subprocess.run([sys.executable, "-c", "import sys; from labelshare.engine.models import load_model; "
                             "network = load_model(sys.argv[1], 'cpu').network; "
                             "print(type(network).__module__, 'labelshare_benchmarks.methods' in sys.modules)",
                             str(dodnet)], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["labelshare_benchmarks.dodnet", "False"]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_with_its_budget_and_output_channels(tiny_benchmark, synthetic_tasks, method):
    result = tiny_benchmark.method(method)
    settings = tiny_benchmark.settings
    tasks = {name: TaskDataset.open(path, name) for name, path in synthetic_tasks.items()}
    for folder in set(result.models.values()):
        model = load_model(folder, device="cpu")
        model_tasks = model.tasks
        assert model.config.method == METHODS[method].engine_method
        training = read_json(folder / "training.json")
        # the budget: every task of a model gets steps_per_task steps
        assert training["epochs"] * training["steps_per_epoch"] == len(model_tasks) * settings.steps_per_task
        assert len((folder / "training_log.jsonl").read_text().splitlines()) == training["epochs"]
        label_counts = [len(tasks[t].labels) for t in model_tasks]
        expected = {"per-task": label_counts[0] + 1, "multi-channel": 1 + sum(label_counts),
                    "dodnet": 1 + max(label_counts)}.get(method, model.labelspace.n_shared + 1)
        with torch.no_grad():
            for index, name in enumerate(model_tasks):
                logits = model.network(torch.randn(2, 1, 32, 32), torch.full((2,), index))
                assert logits.shape == (2, expected, 32, 32)
                head = task_heads(model.config.layout, model.labelspace)[name]
                assert len(head.label_positions) == len(tasks[name].labels)
                assert len(head.channels) == (expected if model.config.layout == "shared"
                                              else len(tasks[name].labels) + 1)
        first_conv = model.network.unet.input_block.conv1.conv
        conditioned = method.endswith("task-channels")
        assert first_conv.in_channels == 1 + (len(model_tasks) if conditioned else 0)
        # a full segmentation returns only the task's own label ids
        name = model_tasks[-1]
        image = tasks[name].read_case(tasks[name].case(tiny_benchmark.split[name]["validation"][0]))[0]
        labels = set(np.unique(sitk.GetArrayFromImage(Segmenter(model).segment(image, name))).tolist())
        assert labels <= {0, *tasks[name].labels.values()}


@pytest.mark.slow
def test_grouped_methods_put_the_group_on_one_shared_label(tiny_benchmark):
    for method in ("label-sharing-grouped", "label-sharing-grouped-task-channels"):
        space = load_model(tiny_benchmark.method(method).models["phantom3d"], device="cpu").labelspace
        assert space.task("phantom3d").label("lesion").shared == space.task("xray2d").label("heart").shared
    size_space = load_model(tiny_benchmark.method("label-sharing").models["phantom3d"], device="cpu").labelspace
    assert size_space.task("phantom3d").label("lesion").shared != size_space.task("xray2d").label("heart").shared


@pytest.mark.slow
def test_benchmark_writes_well_formed_outputs(tiny_benchmark, synthetic_tasks):
    out = tiny_benchmark.out
    markdown = (out / "results.md").read_text()
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    tasks = {name: TaskDataset.open(path, name) for name, path in synthetic_tasks.items()}
    n_labels = sum(len(t.labels) for t in tasks.values())
    own = [r for r in rows if r["images"] == r["task"]]
    lookalike = [r for r in rows if r["images"] != r["task"]]
    assert len(own) == len(METHODS) * n_labels
    # one --group of two labels: each task read out on the other's images, for every method
    assert sorted((r["task"], r["label"], r["images"], r["reference_label"]) for r in lookalike) == sorted(
        len(METHODS) * [("phantom3d", "lesion", "xray2d", "heart"), ("xray2d", "heart", "phantom3d", "lesion")])
    assert "## Look-alike check" in markdown and "| phantom3d: lesion | xray2d: heart |" in markdown
    for row in rows:
        assert row["method"] in METHODS and row["task"] in tasks and row["label"] in tasks[row["task"]].labels
        assert 0.0 <= float(row["dice_mean"]) <= 1.0
        assert int(row["parameters"]) > 10_000 and float(row["training_s"]) > 0
        assert float(row["inference_ms_per_slice"]) > 0
    per_task = [r for r in rows if r["method"] == "per-task"]
    joint = [r for r in rows if r["method"] == "label-sharing"]
    # one network per task: about T times the parameters (output layers differ by a few channels)
    assert int(per_task[0]["parameters"]) == pytest.approx(len(tasks) * int(joint[0]["parameters"]), rel=1e-3)
    for method in METHODS:
        assert f"| {method} |" in markdown
    for name, task in tasks.items():
        for label in task.labels:
            assert f"| {name} | {label} |" in markdown
    assert "mean over tasks" in markdown and "Size-ranked" in markdown and "Grouped" in markdown
    # every joint method's task row: its difference to per-task with the paired standard error
    task_rows = [line for line in markdown.splitlines() if line.startswith(tuple(f"| {t} | 0." for t in tasks))]
    assert len(task_rows) == len(tasks)
    assert all(row.count(" ± ") == len(METHODS) - 1 for row in task_rows)
    assert (out / "command.txt").read_text().startswith("labelshare-bench methods --out ")
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # every model was trained and scored on the benchmark's one split
    split = read_json(out / "split.json")["tasks"]
    for method in tiny_benchmark.methods:
        for name, folder in method.models.items():
            assert read_json(folder / "split.json")["tasks"][name] == split[name]
            assert method.validation[name][next(iter(tasks[name].labels))]["n"] <= len(split[name]["validation"])


def test_paired_standard_error_pairs_cases_and_averages_their_labels(tmp_path):
    """Case means skip NaN labels; only cases of the task in both folders count; fewer than two cases: NaN."""
    rows = {"base": [("t", "a", "x", 0.8), ("t", "a", "y", 0.6), ("t", "b", "x", 0.5), ("t", "b", "y", 0.5),
                     ("t", "c", "x", 0.9), ("t", "c", "y", math.nan), ("t", "d", "x", 0.1), ("u", "a", "x", 0.0)],
            "model": [("t", "a", "x", 0.9), ("t", "a", "y", 0.7), ("t", "b", "x", 0.5), ("t", "b", "y", 0.7),
                      ("t", "c", "x", 0.6), ("t", "c", "y", math.nan), ("u", "a", "x", 1.0)]}
    for name, values in rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluation.csv").write_text(
            "task,case,label,label_id,dice,hd95\n" + "".join(f"{t},{c},{lab},1,{d},1.0\n" for t, c, lab, d in values))
    # per-case differences 0.1, 0.1, -0.3: sd 0.2309, standard error 0.2309 / sqrt(3)
    assert paired_standard_error(tmp_path / "base", tmp_path / "model", "t") == pytest.approx(0.13333, abs=1e-4)
    assert math.isnan(paired_standard_error(tmp_path / "base", tmp_path / "model", "u"))
    table = comparison_table(tmp_path / "base", tmp_path / "model")
    assert "| t | x | 0.575 | 0.667 | +9.2 |" in table  # label x: (0.8+0.5+0.9+0.1)/4 against (0.9+0.5+0.6)/3
    assert "| t | **mean** (3 cases) | 0.700 | 0.667 | -3.3 ± 13.3 |" in table
    assert "| u | **mean** (1 cases) | 0.000 | 1.000 | +100.0 ± nan |" in table



def _budget_folder(folder, epochs: int, case_dice: dict, learning_rate=2e-3, split=("a", "b")):
    """A hand-made trained model folder: ``case_dice`` maps (case, label) to Dice of task t."""
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps({"epochs": epochs, "steps_per_epoch": 100, "batch_size": 16,
                                                      "learning_rate": learning_rate, "seed": 0, "device": "cpu",
                                                      "run_identity": folder.name}))
    (folder / "split.json").write_text(json.dumps({"tasks": {"t": {"train": ["c"], "validation": list(split)}}}))
    (folder / "evaluation.csv").write_text("task,case,label,label_id,dice,hd95\n" + "".join(
        f"t,{case},{label},1,{dice},1.0\n" for (case, label), dice in case_dice.items()))
    (folder / "training_log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "step": 100 * e, "elapsed_s": 60.0 * e,
                    "validation_dice": {"t": {"x": 0.5 + 0.01 * e, "y": 0.3 + 0.01 * e}}}) + "\n"
        for e in range(1, epochs + 1)))
    return folder


def test_training_budget_pairs_budgets_of_one_recipe(tmp_path, capsys):
    """Budgets sorted by steps; each later budget's task mean paired with the smallest; chart and record written;
    folders of another recipe, another split or the same budget are refused by name."""
    small = _budget_folder(tmp_path / "small", 2, {("a", "x"): 0.8, ("a", "y"): 0.6, ("b", "x"): 0.5,
                                                     ("b", "y"): 0.5})
    large = _budget_folder(tmp_path / "large", 8, {("a", "x"): 0.9, ("a", "y"): 0.7, ("b", "x"): 0.7,
                                                     ("b", "y"): 0.7})
    out = tmp_path / "report"
    assert training_budget.main([str(large), str(small), "--out", str(out), "--goal", "t=0.9"]) == 0
    table = (out / "budget.md").read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "| task | label | 200 steps | 800 steps |" in table
    assert "| t | x | 0.650 | 0.800 |" in table
    # case means 0.7, 0.5 -> 0.8, 0.7: differences 0.1 and 0.2, mean +15 points, sd 0.0707 / sqrt(2) = 5 points
    assert "| t | **mean** (2 cases) | 0.600 | 0.750 (+15.0 ± 5.0) |" in table
    assert "| | training time | 2.0 min | 8.0 min |" in table
    record = read_json(out / "budget.json")
    assert [m["steps"] for m in record["models"]] == [200, 800]
    assert record["models"][1]["task_mean"]["t"]["difference_to_first"] == pytest.approx(0.15)
    assert record["models"][1]["curve"][-1] == {"step": 800, "dice": {"t": pytest.approx(0.48)}}
    assert (out / "budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    other_rate = _budget_folder(tmp_path / "other-rate", 4, {("a", "x"): 0.8}, learning_rate=1e-3)
    other_split = _budget_folder(tmp_path / "other-split", 4, {("a", "x"): 0.8}, split=("a",))
    same_steps = _budget_folder(tmp_path / "same-steps", 2, {("a", "x"): 0.8})
    no_log = _budget_folder(tmp_path / "no-log", 4, {("a", "x"): 0.8})
    (no_log / "training_log.jsonl").unlink()
    no_epochs = _budget_folder(tmp_path / "no-epochs", 4, {("a", "x"): 0.8})
    (no_epochs / "training.json").write_text(json.dumps({"batch_size": 16}))
    for folder, message in ((other_rate, "other learning_rate"), (other_split, "split.json differs"),
                            (same_steps, "same number of steps"), (no_log, "no training_log.jsonl"),
                            (no_epochs, "KeyError: 'epochs'")):
        assert training_budget.main([str(small), str(folder), "--out", str(tmp_path / "refused")]) == 1
        error = capsys.readouterr().err
        assert message in error and (folder.name in error or message == "same number of steps"), error
    assert training_budget.main([str(small), str(large), "--out", str(tmp_path / "refused"), "--goal", "t"]) == 1
    assert "--goal t: expected TASK=DICE" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

@pytest.mark.slow
def test_same_seed_reproduces_the_numbers(tmp_path, synthetic_tasks):
    tasks = [(n, synthetic_tasks[n]) for n in ("phantom3d", "xray2d")]
    results = [run_benchmark(tasks, ["label-sharing"], tmp_path / f"run{i}", tiny_settings(),
                             progress=Progress("quiet")) for i in range(2)]
    first, second = (r.method("label-sharing").validation for r in results)
    for task, labels in first.items():
        for label, stats in labels.items():
            assert stats["dice_mean"] == pytest.approx(second[task][label]["dice_mean"], abs=1e-6)


def test_benchmark_refuses_bad_arguments(tmp_path, synthetic_tasks, capsys):
    task_args = ["--task", f"xray2d={synthetic_tasks['xray2d']}", "--task", f"sides3d={synthetic_tasks['sides3d']}"]
    assert main([*task_args, "--methods", "per-task,bogus", "--out", str(tmp_path / "a")]) == 1
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert main([*task_args, "--methods", "label-sharing-grouped", "--out", str(tmp_path / "b")]) == 1
    assert "needs --group" in capsys.readouterr().err
    assert main([*task_args, "--steps-per-task", "3", "--steps-per-epoch", "2",
                 "--out", str(tmp_path / "c")]) == 1
    assert "multiple of --steps-per-epoch" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_resume_reuses_finished_models_and_continues_an_interrupted_training(tmp_path, synthetic_tasks, monkeypatch):
    tasks = [(n, synthetic_tasks[n]) for n in ("phantom3d", "xray2d")]
    out = tmp_path / "bench"
    settings = tiny_settings(steps_per_epoch=1)
    quiet = Progress("quiet")
    run_benchmark(tasks, ["per-task"], out, settings, progress=quiet)
    finished = {p: p.stat().st_mtime_ns for p in (out / "per-task").rglob(WEIGHTS_FILE)}
    assert len(finished) == 2

    with pytest.raises(LabelShareError, match="--resume"):
        run_benchmark(tasks, ["per-task"], out, settings, progress=quiet)
    with pytest.raises(LabelShareError, match="--patch-pixels"):
        run_benchmark(tasks, ["per-task"], out, tiny_settings(steps_per_epoch=1, patch_pixels=48 * 48), resume=True,
                      progress=quiet)

    original_step = Trainer.train_step
    steps_run = []

    def stopped_at_third_step(self, step):
        steps_run.append(step)
        if step == 2:  # as if the user pressed Ctrl+C during the third step of the joint model
            os.kill(os.getpid(), signal.SIGINT)
        return original_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", stopped_at_third_step)
    with pytest.raises(TrainingInterrupted):
        run_benchmark(tasks, ["per-task", "label-sharing"], out, settings, resume=True, progress=quiet)
    assert steps_run == [0, 1, 2]  # the finished per-task models were not trained again
    joint = out / "label-sharing" / "all"
    assert not joint.exists() and (staging_dir_for(joint) / ".checkpoint" / "checkpoint.json").is_file()

    steps_run.clear()
    monkeypatch.setattr(Trainer, "train_step", lambda self, step: steps_run.append(step) or original_step(self, step))
    result = run_benchmark(tasks, ["per-task", "label-sharing"], out, settings, resume=True, progress=quiet)
    assert steps_run == [3]  # 2 tasks x 2 steps; the first three were done before the interruption
    assert {p: p.stat().st_mtime_ns for p in (out / "per-task").rglob(WEIGHTS_FILE)} == finished
    history = [json.loads(line) for line in (joint / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert [m.method for m in result.methods] == ["per-task", "label-sharing"]
    assert "| label-sharing |" in (out / "results.md").read_text()

    # a table rewritten later (another process, another thread count) names the machine the methods were run on
    timing_file = out / "per-task" / "inference.json"
    timing = json.loads(timing_file.read_text())
    timing_file.write_text(json.dumps({**timing, "machine": "the first run's machine"}))
    run_benchmark(tasks, ["per-task"], out, settings, resume=True, progress=quiet)
    assert "- machine: the first run's machine\n" in (out / "results.md").read_text()


# -- the shipped default model -----------------------------------------------------------------------------------------
def test_default_model_is_shipped_small_and_documented():
    folder = default_model_dir()
    assert folder is not None, "no default model under LabelShareSegmentation/Resources/Models"
    model = load_model(folder, device="cpu")
    assert set(model.tasks) == set(REAL_TASKS)
    assert model.config.weights_dtype == "float16"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 20 * 1024 * 1024
    card = (folder / "README.md").read_text()
    assert "Non-commercial use only" in card and "acdc" in card
    assert "labelshare train" in card and "float16" in card
    for name in ("README.md", "lineage.json", "training.json", "split.json", "metrics.json"):
        text = (folder / name).read_text()
        for machine_path in ("/work/", "/tmp/", "/home/", "\\Users\\"):
            assert machine_path not in text, f"{folder / name} names a machine path ({machine_path})"


@pytest.mark.realdata
def test_default_model_segments_a_validation_case_of_every_real_task():
    folder = default_model_dir()
    model = load_model(folder, device="cpu")
    split = read_json(folder / "split.json")["tasks"]
    segmenter = Segmenter(model)
    for name, data_folder in REAL_TASKS.items():
        task = TaskDataset.open(real_task_dir(data_folder), name)
        image, _, reference = task.read_case(task.case(split[name]["validation"][0]))
        predicted = sitk.GetArrayFromImage(segmenter.segment(image, name))
        dice = [d for d in dice_per_label(predicted, reference, list(task.labels.values())).values() if d == d]
        assert np.mean(dice) > 0.5, f"{name}: mean Dice {np.mean(dice):.3f} on a validation case"


def test_window_size_benchmark_scores_every_overlap_through_the_segmenters_public_option(tiny_model, synthetic_tasks,
                                                                                         capsys, monkeypatch):
    import labelshare.engine.slices as slices
    from labelshare_benchmarks import window_size

    windows_used = []

    def recording(*args, roi_size, overlap, **kwargs):
        windows_used.append((tuple(roi_size), overlap))
        return sliding_window(*args, roi_size=roi_size, overlap=overlap, **kwargs)

    sliding_window = slices.sliding_window_inference
    monkeypatch.setattr(slices, "sliding_window_inference", recording)
    engine = (slices.WINDOW_OVERLAP, slices.window_logits)
    window_size.main(["--model", str(tiny_model), "--task", f"xray2d={synthetic_tasks['xray2d']}",
                      "--overlaps", "0.25", "0"])
    lines = capsys.readouterr().out.splitlines()
    titles = [line.split(":")[0] for line in lines[1:]]
    assert titles == ["patch windows, overlap 0.25", "patch windows, overlap 0", "whole-slice window"]
    model = load_model(tiny_model, device="cpu")
    labels = [name for _, name in model.task_labels("xray2d")]
    assert all(f"{label} " in line for line in lines[1:] for label in labels)
    assert {overlap for _, overlap in windows_used} == {0.25, 0.0, slices.WINDOW_OVERLAP}
    assert all(side % model.config.network.patch_multiple == 0 for size, _ in windows_used for side in size)
    assert slices.Windows(whole_slice=True).whole_slice_size((64, 48), (100, 70), 16) == (112, 80)
    assert (slices.WINDOW_OVERLAP, slices.window_logits) == engine  # nothing of the engine was changed
    with pytest.raises(SystemExit):
        window_size.main(["--model", str(tiny_model), "--task", f"xray2d={synthetic_tasks['xray2d']}",
                          "--overlaps", "1"])
    assert "--overlaps [1.0]: each in [0, 1)" in capsys.readouterr().err


def test_cpu_efficiency_benchmark_times_every_option_and_compares_its_logits(capsys):
    from labelshare_benchmarks import cpu_efficiency

    cpu_efficiency.main(["--patch", "32", "32", "--batch-size", "2", "--rounds", "1", "--steps", "1",
                         "--options", "float32", "bfloat16", "torchscript"])
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "option" not in line}
    assert list(rows) == ["float32", "bfloat16", "torchscript"]
    assert rows["float32"][1] == "1.00x" and rows["torchscript"][:2] == ["-", "-"]  # inference only
    assert float(rows["float32"][4]) == 0 and float(rows["torchscript"][4]) < 1e-4
    assert float(rows["bfloat16"][4]) > 1e-3  # bf16 rounding moves the logits: the table must show it
