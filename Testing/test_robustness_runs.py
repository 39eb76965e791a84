"""Issue #11, runs that build a model: signals at any moment end in status 75 with one line and leave a resumable
run (5), a run killed after its model folder was complete publishes it on --resume (5), one staging folder holds one
run (5), nothing a failed or killed run leaves blocks the next one or ends up in a published model (6), and damaged
checkpoints are one-line errors (8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from robustness_support import cli_error, fixed_size_space, hidden_entries, snapshot

from labelshare.engine import training_run
from labelshare.cli import main
from labelshare.core.config import TrainConfig
from labelshare.core.modelfolder import verify_folder
from labelshare.core.paths import candidate_dir_for, staging_dir_for
from labelshare.core.progress import Progress
from labelshare.engine.training import CHECKPOINT_DIR, Trainer
from labelshare.engine.training_run import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--batch-size", "6", "--device", "cpu"]  # with a label space of fixed_size_space (--fixed-size 32)


@pytest.fixture
def two_tasks(synthetic_tasks, tmp_path):
    """phantom3d and xray2d with their label space file (the quickest run that has two tasks)."""
    space = fixed_size_space(synthetic_tasks, ["phantom3d", "xray2d"])
    space.save(tmp_path / "ls.json")
    return {"space": space, "space_file": tmp_path / "ls.json",
            "tasks": [(name, synthetic_tasks[name]) for name in ("phantom3d", "xray2d")]}


def train_argv(two_tasks, out, epochs=1, steps=3) -> list[str]:
    return ["train", "--labelspace", str(two_tasks["space_file"]),
            *[arg for name, folder in two_tasks["tasks"] for arg in ("--task", f"{name}={folder}")],
            "--out", str(out), "--epochs", str(epochs), "--steps-per-epoch", str(steps), *TINY]


def start_paused(argv: list[str], pause_at: str) -> subprocess.Popen:
    """``labelshare argv`` in a child process whose function ``pause_at`` ("module:Owner.name") prints PAUSED and
    waits before it runs, so that a signal arrives at a known moment. The wait ends when a signal arrived (or after
    60 s): a handler that raises ends it at once, and one that only sets a flag (the training loop's, which stops
    after the step) lets the function run then, as it would have without the pause."""
    code = textwrap.dedent(f"""
        import functools, importlib, os, signal, sys, time
        module, _, path = {pause_at!r}.partition(":")
        owner = importlib.import_module(module)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = getattr(owner, name)

        @functools.wraps(original)
        def paused(*args, **kwargs):
            arrived = []

            def seen(number, frame, handler):
                arrived.append(number)
                if callable(handler):
                    handler(number, frame)
                elif handler == signal.SIG_DFL:  # what the signal would have done without the pause
                    signal.signal(number, handler)
                    os.kill(os.getpid(), number)

            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, functools.partial(seen, handler=signal.getsignal(number)))
            print("PAUSED", flush=True)
            deadline = time.monotonic() + 60
            while not arrived and time.monotonic() < deadline:
                time.sleep(0.05)
            return original(*args, **kwargs)

        setattr(owner, name, paused)
        from labelshare.cli import main
        sys.exit(main({argv!r}))
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)


def signal_when_paused(process: subprocess.Popen, number: int = signal.SIGTERM) -> tuple[int, str]:
    for line in process.stdout:
        if line.strip() == "PAUSED":
            process.send_signal(number)
            break
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def assert_stopped_with_one_line(status: int, stderr: str) -> str:
    assert status == 75, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("labelshare: stopped: ") and "SIGTERM" in last, stderr
    return last


# -- 5: signals -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_while_loading_the_data_stops_with_75_and_one_line(two_tasks, tmp_path):
    out = tmp_path / "model"
    status, stderr = signal_when_paused(start_paused(train_argv(two_tasks, out),
                                                     "labelshare.core.preprocessing:case_slices"))
    assert "--resume" in assert_stopped_with_one_line(status, stderr)
    assert not out.exists()
    assert main(train_argv(two_tasks, out) + ["--progress", "quiet"]) == 0, "the next run is not blocked"


@pytest.mark.slow
def test_sigterm_while_evaluating_stops_with_75_and_resume_publishes(two_tasks, tmp_path):
    out = tmp_path / "model"
    status, stderr = signal_when_paused(start_paused(train_argv(two_tasks, out),
                                                     "labelshare.engine.training_run:evaluate_validation"))
    assert_stopped_with_one_line(status, stderr)
    assert not out.exists()
    assert main(train_argv(two_tasks, out) + ["--resume", "--progress", "quiet"]) == 0
    verify_folder(out)


def test_sigterm_to_evaluate_and_labelspace_is_one_line_and_writes_nothing(tiny_model, synthetic_tasks, tmp_path):
    evaluate = ["evaluate", "--model", str(tiny_model), "--task", "xray2d", "--data", str(synthetic_tasks["xray2d"]),
                "-o", str(tmp_path / "evaluation"), "--device", "cpu"]
    assert_stopped_with_one_line(*signal_when_paused(start_paused(evaluate,
                                                                  "labelshare.engine.evaluation:dice_per_label")))
    build = ["labelspace", "build", "--task", f"xray2d={synthetic_tasks['xray2d']}", "-o", str(tmp_path / "ls.json")]
    assert_stopped_with_one_line(*signal_when_paused(start_paused(build, "labelshare.core.labelspace:LabelSpace.save")))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_signal_while_the_interpreter_exits_keeps_the_reported_status():
    """A finished command exits with its own status even when SIGTERM arrives while Python shuts down (which takes
    a moment once torch is loaded); the Slicer module reads that status."""
    code = textwrap.dedent("""
        import atexit, os, signal, time
        from labelshare import cli
        cli.main = lambda: 0  # a command that finished
        atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.5)))
        cli.run()
    """)
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def add_task_argv(base_model, synthetic_tasks, out) -> list[str]:
    return ["add-task", "--model", str(base_model), "--task", f"sides3d={synthetic_tasks['sides3d']}", "--out",
            str(out), "--replay-task", f"phantom3d={synthetic_tasks['phantom3d']}", "--replay-task",
            f"xray2d={synthetic_tasks['xray2d']}", "--max-regression", "100", "--epochs", "1", "--steps-per-epoch",
            "3", "--batch-size", "6", "--device", "cpu"]


@pytest.mark.slow
def test_sigterm_in_the_forgetting_stage_publishes_nothing(base_model, synthetic_tasks, tmp_path):
    out = tmp_path / "v2"
    argv = add_task_argv(base_model, synthetic_tasks, out)
    status, stderr = signal_when_paused(start_paused(argv,
                                                     "labelshare.engine.incremental.gate:ForgettingReport.compare"))
    assert_stopped_with_one_line(status, stderr)
    assert not out.exists() and candidate_dir_for(out).is_dir()
    assert main(argv + ["--resume", "--progress", "quiet"]) == 0
    verify_folder(out)


class Killed(BaseException):
    """Stands for SIGKILL at a chosen line: nothing after it runs, no handler, no cleanup."""


@pytest.mark.slow
def test_killed_after_the_model_folder_was_complete_resume_publishes_without_training(two_tasks, tmp_path,
                                                                                       monkeypatch):
    out = tmp_path / "model"
    config = TrainConfig(batch_size=6, epochs=1, steps_per_epoch=3, device="cpu")
    real_publish = training_run.publish_dir

    def killed_before_rename(staging, target):
        raise Killed()
    monkeypatch.setattr(training_run, "publish_dir", killed_before_rename)
    with pytest.raises(Killed):
        train(two_tasks["tasks"], two_tasks["space"], out, config, progress=Progress("quiet"))
    staging = staging_dir_for(out)
    assert not (staging / CHECKPOINT_DIR).exists(), "the kill came after the checkpoint was removed"
    verify_folder(staging)
    monkeypatch.setattr(training_run, "publish_dir", real_publish)
    monkeypatch.setattr(Trainer, "run", lambda *args, **kwargs: pytest.fail("trained again"))
    result = train(two_tasks["tasks"], two_tasks["space"], out, config, resume=True, progress=Progress("quiet"))
    assert result.path == out and result.metrics["mean_dice"].keys() == {"phantom3d", "xray2d"}
    verify_folder(out)
    assert not staging.exists()


@pytest.mark.slow
def test_a_run_with_other_settings_does_not_publish_a_complete_staging_folder(two_tasks, tmp_path, monkeypatch):
    out = tmp_path / "model"
    config = TrainConfig(batch_size=6, epochs=1, steps_per_epoch=3, device="cpu")
    monkeypatch.setattr(training_run, "publish_dir", lambda staging, target: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        train(two_tasks["tasks"], two_tasks["space"], out, config, progress=Progress("quiet"))
    monkeypatch.undo()
    other = TrainConfig(batch_size=6, epochs=1, steps_per_epoch=3, device="cpu", learning_rate=1e-3)
    with pytest.raises(Exception, match="other tasks, label space or settings"):
        train(two_tasks["tasks"], two_tasks["space"], out, other, resume=True, progress=Progress("quiet"))


@pytest.mark.slow
def test_two_runs_never_work_in_one_staging_folder(two_tasks, tmp_path, capsys):
    out = tmp_path / "model"
    first = start_paused(train_argv(two_tasks, out), "labelshare.core.preprocessing:case_slices")
    try:
        assert first.stdout.readline().strip() == "PAUSED"
        line = cli_error(train_argv(two_tasks, out) + ["--resume"], capsys)
        assert f"{staging_dir_for(out)}: another LabelShare run is working in this folder" in line
    finally:
        first.kill()
        first.communicate()
    assert main(train_argv(two_tasks, out) + ["--resume", "--progress", "quiet"]) == 0, "a killed holder blocks nothing"


# -- 6: leftovers -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_temporary_files_of_a_killed_write_are_not_published(two_tasks, tmp_path, monkeypatch):
    out = tmp_path / "model"
    config = TrainConfig(batch_size=6, epochs=1, steps_per_epoch=3, device="cpu")
    monkeypatch.setattr(training_run, "publish_dir", lambda staging, target: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        train(two_tasks["tasks"], two_tasks["space"], out, config, progress=Progress("quiet"))
    monkeypatch.undo()
    staging = staging_dir_for(out)
    for name in (".model.safetensors.abcd1234.tmp.safetensors", ".labelspace.json.k2j4h6g8.tmp.json"):
        (staging / name).write_bytes(b"half")
    train(two_tasks["tasks"], two_tasks["space"], out, config, resume=True, progress=Progress("quiet"))
    assert hidden_entries(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["nan image", "cuda"])
def test_errors_before_training_leave_nothing_that_blocks_the_next_run(two_tasks, tmp_path, capsys, problem):
    import shutil

    import torch
    out = tmp_path / "model"
    argv = train_argv(two_tasks, out)
    if problem == "nan image":
        folder = shutil.copytree(two_tasks["tasks"][0][1], tmp_path / "phantom3d")
        image = sorted((folder / "imagesTr").iterdir())[0]
        nan_image = sitk.GetImageFromArray(np.full((10, 48, 48), np.nan, np.float32))
        nan_image.CopyInformation(sitk.ReadImage(str(image)))
        sitk.WriteImage(nan_image, str(image))
        argv[argv.index(f"phantom3d={two_tasks['tasks'][0][1]}")] = f"phantom3d={folder}"
        expected = "NaN"
    else:
        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
        argv[argv.index("cpu")] = "cuda"
        expected = "no CUDA GPU"
    assert expected in cli_error(argv, capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert main(train_argv(two_tasks, out) + ["--progress", "quiet"]) == 0


@pytest.mark.slow
def test_a_staging_folder_without_a_checkpoint_does_not_block_a_new_run(two_tasks, tmp_path):
    out = tmp_path / "model"
    staging = staging_dir_for(out)
    staging.mkdir()
    (staging / "split.json").write_text("{")  # what a run killed while it started may leave
    assert main(train_argv(two_tasks, out) + ["--progress", "quiet"]) == 0
    verify_folder(out)


# -- 8: damaged checkpoints -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, synthetic_tasks):
    """A run stopped after its first epoch: the staging folder with a checkpoint (copied by each test)."""
    root = tmp_path_factory.mktemp("interrupted")
    space = fixed_size_space(synthetic_tasks, ["phantom3d", "xray2d"])
    space.save(root / "ls.json")
    argv = ["train", "--labelspace", str(root / "ls.json"), "--task", f"phantom3d={synthetic_tasks['phantom3d']}",
            "--task", f"xray2d={synthetic_tasks['xray2d']}", "--out", str(root / "model"), "--epochs", "2",
            "--steps-per-epoch", "2", *TINY, "--progress", "quiet"]
    status, _ = signal_when_paused(start_paused(argv, "labelshare.engine.training:Trainer.validate"))
    assert status == 75
    assert (staging_dir_for(root / "model") / CHECKPOINT_DIR / "checkpoint.json").is_file()
    return root, argv


def _tamper_checkpoint(folder: Path, damage: str) -> None:
    info_file = folder / "checkpoint.json"
    info = json.loads(info_file.read_text())
    weights = folder / f"weights-{info['tag']}.safetensors"
    if damage == "no tag":
        del info["tag"]
    elif damage == "tag outside":
        info["tag"] = "../../../../etc/x"
    elif damage == "not an object":
        info = [info]
    elif damage == "wrong optimizer slots":
        info["optimizer_slots"] = {"0": ["exp_avg", "missing"]}
    elif damage == "bad random state":
        info["numpy_rng"] = {"bit_generator": "PCG64", "state": "x"}
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "missing weights":
        weights.unlink()
    elif damage == "missing optimizer":
        (folder / f"optimizer-{info['tag']}.safetensors").unlink()
    elif damage == "split names an unknown case":
        split_file = folder.parent / "split.json"
        split = json.loads(split_file.read_text())
        split["tasks"]["phantom3d"]["train"].append("nope")
        split_file.write_text(json.dumps(split))
    elif damage == "split not an object":
        (folder.parent / "split.json").write_text("[]")
    info_file.write_text(json.dumps(info))


@pytest.mark.parametrize("damage", ["no tag", "tag outside", "not an object", "wrong optimizer slots",
                                    "bad random state", "truncated weights", "missing weights", "missing optimizer",
                                    "split names an unknown case", "split not an object"])
@pytest.mark.slow
def test_a_damaged_checkpoint_is_a_one_line_error(interrupted, tmp_path, capsys, damage):
    import shutil
    root, argv = interrupted
    work = shutil.copytree(root, tmp_path / "run")
    argv = [a.replace(str(root), str(work)) for a in argv]
    staging = staging_dir_for(work / "model")
    _tamper_checkpoint(staging / CHECKPOINT_DIR, damage)
    before = snapshot(staging)
    line = cli_error(argv + ["--resume"], capsys)
    assert str(staging) in line and ("checkpoint" in line or "split.json" in line)
    assert snapshot(staging) == before, "a refused resume changes nothing"
