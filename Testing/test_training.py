"""Training: a short run learns, checkpoints resume after a kill, signals save and exit with status 75."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from labelshare.layouts import task_heads
from labelshare.labelspace import LabelSpace
from labelshare.modelfolder import verify_folder
from labelshare.models import load_model
from labelshare.training_run import train
from labelshare.progress import Progress, parse_event
from labelshare.config import TrainConfig
from labelshare.training import Augmenter, Batch, TaskBalancedSampler, build_slice_bank
from labelshare.tasks import TaskDataset


def _history(model_dir):
    return [json.loads(line) for line in (model_dir / "training_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_short_training_loss_falls_and_easy_task_is_learnt(tmp_path, synthetic_tasks, synthetic_space):
    tasks = [(n, synthetic_tasks[n]) for n in ("phantom3d", "xray2d")]
    space = LabelSpace({n: synthetic_space.tasks[n] for n, _ in tasks})
    config = TrainConfig(image_size=48, batch_size=8, epochs=4, steps_per_epoch=15, learning_rate=3e-3, device="cpu")
    out = train(tasks, space, tmp_path / "m", config, progress=Progress("quiet")).path
    history = _history(out)
    assert len(history) == 4
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_dice"]["xray2d"] > 0.85
    assert metrics["validation"]["phantom3d"]["body"]["dice_mean"] > 0.85
    verify_folder(out)


def test_sampler_balances_tasks_and_oversamples_foreground(synthetic_tasks, synthetic_space):
    heads = task_heads("shared", synthetic_space)
    banks = []
    for name, path in synthetic_tasks.items():
        task = TaskDataset.open(path, name)
        banks.append(build_slice_bank(task, [c.name for c in task.cases], heads[name], 32))
    sampler = TaskBalancedSampler(banks, 12, foreground_fraction=1.0, rng=np.random.default_rng(0))
    picks = [sampler.sample() for _ in range(20)]
    for batch in picks:
        counts = np.bincount([b for b, _ in batch], minlength=3)
        assert list(counts) == [4, 4, 4]
        assert all(banks[b].foreground[i] for b, i in batch)


def test_no_flips_for_lateralised_tasks():
    torch.manual_seed(0)
    image = torch.zeros(64, 1, 16, 16)
    image[:, :, :, :4] = 1.0   # bright left edge
    batch = Batch(images=image, targets=torch.zeros(64, 16, 16, dtype=torch.int64),
                  task_index=torch.tensor([0] * 32 + [1] * 32), heads=[])
    augmenter = Augmenter(np.random.default_rng(0), flip_allowed={0: False, 1: True}, probability=0.0)
    augmenter._intensity = lambda images: images  # look at the geometry only
    out = augmenter(batch).images
    left_brighter = out[:, 0, :, :8].mean(dim=(1, 2)) > out[:, 0, :, 8:].mean(dim=(1, 2))
    assert left_brighter[:32].all()          # lateralised task: never mirrored
    assert not left_brighter[32:].all()      # the other task: some samples mirrored


def _train_command(tasks, space_path, out, epochs, steps, extra=()):
    command = [sys.executable, "-m", "labelshare", "train", "--labelspace", str(space_path), "--out", str(out),
               "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--image-size", "32", "--batch-size", "4",
               "--device", "cpu", "--progress", "json", *extra]
    for name, path in tasks.items():
        command += ["--task", f"{name}={path}"]
    return command


def _run_until_epoch(command, epoch, stop_signal):
    """Start training, wait for the checkpoint of ``epoch``, then send ``stop_signal``; returns (status, events)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    events = []
    for line in process.stdout:
        event = parse_event(line)
        if event is None:
            continue
        events.append(event)
        if event["event"] == "metrics" and event.get("epoch") == epoch:
            time.sleep(0.3)
            process.send_signal(stop_signal)
            break
    process.stdout.read()
    return process.wait(timeout=120), events


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal, expected_status", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 75)])
def test_resume_after_stop(tmp_path, synthetic_tasks, synthetic_space, stop_signal, expected_status):
    space_path = tmp_path / "ls.json"
    synthetic_space.save(space_path)
    out = tmp_path / "model"
    command = _train_command(synthetic_tasks, space_path, out, epochs=3, steps=6)
    status, events = _run_until_epoch(command, 1, stop_signal)
    assert status == expected_status
    assert not out.exists()                                  # nothing half-written at the model path
    checkpoint = json.loads((tmp_path / ".model.partial" / ".checkpoint" / "checkpoint.json").read_text())
    assert checkpoint["step"] >= 6
    if stop_signal == signal.SIGTERM:
        assert events[-1]["event"] != "done"
    again = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 1 and "add --resume" in again.stderr
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    resumed_events = [e for e in map(parse_event, resumed.stdout.splitlines()) if e]
    assert any(e["event"] == "log" and "resuming at step" in e["message"] for e in resumed_events)
    first_step = next(e["step"] for e in resumed_events if e["event"] == "progress" and "step" in e)
    assert first_step == checkpoint["step"] + 1
    assert resumed_events[-1]["event"] == "done" and resumed_events[-1]["output"] == str(out)
    assert [r["epoch"] for r in _history(out)] == [1, 2, 3]
    assert not (tmp_path / ".model.partial").exists()
    load_model(out)
