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

from labelshare.core.config import TrainConfig
from labelshare.core.labelspace import LabelSpace
from labelshare.core.layouts import task_heads
from labelshare.core.modelfolder import verify_folder
from labelshare.core.plans import TaskPlan
from labelshare.core.progress import Progress, parse_event
from labelshare.core.tasks import TaskDataset
from labelshare.engine.models import load_model
from labelshare.engine.sampling import Augmenter, PatchSampler, TaskBatch, TaskSlices, load_task_slices
from labelshare.engine.training_run import train


def _history(model_dir):
    return [json.loads(line) for line in (model_dir / "training_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_short_training_loss_falls_and_easy_task_is_learnt(tmp_path, synthetic_tasks, synthetic_space):
    tasks = [(n, synthetic_tasks[n]) for n in ("phantom3d", "xray2d")]
    space = LabelSpace({n: synthetic_space.tasks[n] for n, _ in tasks}, plan_settings=synthetic_space.plan_settings)
    config = TrainConfig(batch_size=8, epochs=4, steps_per_epoch=15, learning_rate=3e-3, device="cpu")
    out = train(tasks, space, tmp_path / "m", config, progress=Progress("quiet")).path
    history = _history(out)
    assert len(history) == 4
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_dice"]["xray2d"] > 0.85
    assert metrics["validation"]["phantom3d"]["body"]["dice_mean"] > 0.85
    verify_folder(out)


def _banks(synthetic_tasks, synthetic_space):
    heads = task_heads("shared", synthetic_space)
    banks = []
    for name, path in synthetic_tasks.items():
        task = TaskDataset.open(path, name)
        banks.append(load_task_slices(task, [c.name for c in task.cases], heads[name], synthetic_space.task(name).plan))
    return heads, banks


def test_sampler_balances_tasks_and_patches_have_the_plan_size(synthetic_tasks, synthetic_space):
    heads, banks = _banks(synthetic_tasks, synthetic_space)
    sampler = PatchSampler(banks, [heads[b.task] for b in banks], 12, foreground_fraction=1.0,
                           rng=np.random.default_rng(0))
    for _ in range(20):
        batches = sampler.sample(torch.device("cpu"))
        assert [b.head.task for b in batches] == [b.task for b in banks]
        assert [b.images.shape[0] for b in batches] == [4, 4, 4]
        for batch, bank in zip(batches, banks, strict=True):
            assert tuple(batch.images.shape[-2:]) == bank.plan.patch_size == tuple(batch.targets.shape[-2:])
            assert (batch.targets > 0).flatten(1).any(dim=1).all(), "foreground_fraction 1: every patch has a label"


def test_sampler_gives_each_task_its_share_of_the_batch():
    plan = TaskPlan(patch_size=(32, 32), spacing=(1.0, 1.0))
    banks = [TaskSlices(task=t, plan=plan, cases=["c"], images=[np.zeros((1, 32, 32), np.float16)],
                        targets=[np.zeros((1, 32, 32), np.uint8)], flip_allowed=True) for t in "abc"]
    sampler = PatchSampler(banks, [None] * 3, 16, 0.0, np.random.default_rng(0), shares=[0.5, 0.25, 0.25])
    totals = np.sum([sampler.counts() for _ in range(200)], axis=0)
    assert totals.tolist() == [1600, 800, 800]
    uneven = PatchSampler(banks, [None] * 3, 10, 0.0, np.random.default_rng(0), shares=[0.5, 0.25, 0.25])
    draws = np.array([uneven.counts() for _ in range(2000)])
    assert (draws.sum(axis=1) == 10).all() and set(draws[:, 0]) == {5}
    assert abs(draws[:, 1].mean() - 2.5) < 0.1, "the remainder goes to the tasks rounding shortened"
    with pytest.raises(ValueError):
        PatchSampler(banks, [None] * 3, 16, 0.0, np.random.default_rng(0), shares=[1.0, -1.0, 1.0])


@pytest.mark.parametrize("fraction", [0.0, 0.33, 1.0])
def test_foreground_oversampling_hits_the_stated_rate_and_spreads_over_labels(tmp_path, fraction):
    """One 200x200 slice with two tiny labels (4 and 1 pixels) far apart: random 32x32 patches almost never hold
    them, so the share of patches that do is the oversampling rate, and both labels are chosen about equally."""
    label = np.zeros((1, 200, 200), np.uint8)
    label[0, 10:12, 10:12] = 1
    label[0, 180, 185] = 2
    plan = TaskPlan(patch_size=(32, 32), spacing=(1.0, 1.0))
    bank = TaskSlices(task="t", plan=plan, cases=["c"], images=[np.zeros((1, 200, 200), np.float16)],
                      targets=[label], flip_allowed=True)
    sampler = PatchSampler([bank], [None], 1, foreground_fraction=fraction, rng=np.random.default_rng(1))
    counts = np.zeros(3)
    draws = 3000
    for _ in range(draws):
        _, target = sampler.patch(bank)
        counts += [1, (target == 1).any(), (target == 2).any()]
    hit = (counts[1] + counts[2]) / draws
    assert abs(hit - fraction) < 0.04, hit
    if fraction:
        assert abs(counts[1] / (counts[1] + counts[2]) - 0.5) < 0.06, "each label chosen about half the time"


def test_no_flips_for_lateralised_tasks():
    torch.manual_seed(0)
    image = torch.zeros(32, 1, 16, 16)
    image[:, :, :, :4] = 1.0   # bright left edge
    augmenter = Augmenter(np.random.default_rng(0), "standard", probability=0.0)
    augmenter._intensity = lambda images: images  # look at the geometry only
    for flip_allowed in (False, True):
        batch = TaskBatch(head=None, images=image, targets=torch.zeros(32, 16, 16, dtype=torch.int64),
                          flip_allowed=flip_allowed)
        out = augmenter(batch).images
        left_brighter = out[:, 0, :, :8].mean(dim=(1, 2)) > out[:, 0, :, 8:].mean(dim=(1, 2))
        if flip_allowed:
            assert not left_brighter.all()   # the other task: some samples mirrored
        else:
            assert left_brighter.all()       # lateralised task: never mirrored


def _train_command(tasks, space_path, out, epochs, steps, extra=()):
    command = [sys.executable, "-m", "labelshare", "train", "--labelspace", str(space_path), "--out", str(out),
               "--epochs", str(epochs), "--steps-per-epoch", str(steps), "--batch-size", "4",
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
    load_model(out, device="cpu")
