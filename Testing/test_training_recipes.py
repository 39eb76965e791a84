"""Training recipes of issue 29: a 2.5D model beside a 2D task through training, add-task and ranking; a given split
(``train --split``); task shares of the batch (``--task-weight``); the scanner-like intensity augmentation; a run
stopped within an epoch logs that epoch's loss over all its steps."""

from __future__ import annotations

import copy
import json
import os
import signal

import numpy as np
import pytest
import torch

from labelshare import cli
from labelshare.core.config import AddTaskConfig, NetworkConfig, RankConfig, TrainConfig
from labelshare.core.errors import TrainingInterrupted
from labelshare.core.inputs import collect_inputs
from labelshare.core.labelspace import LabelSpace
from labelshare.core.layouts import task_heads
from labelshare.core.plans import PlanSettings
from labelshare.core.progress import Progress
from labelshare.core.tasks import TaskDataset
from labelshare.engine.incremental import add_task
from labelshare.engine.models import load_model
from labelshare.engine.networks import build_network
from labelshare.engine.ranking import rank_cases
from labelshare.engine.sampling import Augmenter, TaskBatch, load_task_slices
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training import Trainer
from labelshare.engine.training_run import train


def history(model_dir):
    return [json.loads(line) for line in (model_dir / "training_log.jsonl").read_text().splitlines()]


def train_arguments(tasks: dict, space_path, out, *extra) -> list[str]:
    arguments = ["train", "--labelspace", str(space_path), "--out", str(out), "--epochs", "1", "--steps-per-epoch",
                 "2", "--batch-size", "4", "--device", "cpu", "--progress", "quiet", *extra]
    for name, path in tasks.items():
        arguments += ["--task", f"{name}={path}"]
    return arguments


@pytest.mark.slow
def test_a_volume_task_with_slice_context_trains_beside_a_2d_task_into_a_loadable_model(tmp_path, synthetic_tasks):
    """2.5D end to end: a 3-slice plan for the volumes, one slice for the X-rays, a network of 3 input channels that
    trains, validates, is evaluated at native resolution and segments after loading; add-task plans a new volume
    task with the model's rule (its overlap mapping and training take the stacks) and the result ranks images."""
    tasks = [(name, synthetic_tasks[name]) for name in ("phantom3d", "xray2d")]
    settings = PlanSettings(slice_context=3)
    space = LabelSpace.build([compute_statistics(TaskDataset.open(path, name), plan_settings=settings)
                              for name, path in tasks], plan_settings=settings)
    assert [space.task(name).plan.slice_context for name, _ in tasks] == [3, 1]
    out = train(tasks, space, tmp_path / "m", TrainConfig(batch_size=4, epochs=1, steps_per_epoch=3, device="cpu"),
                progress=Progress("quiet")).path
    model = load_model(out, device="cpu")
    assert model.config.network.in_channels == 3
    assert set(json.loads((out / "metrics.json").read_text())["mean_dice"]) == {"phantom3d", "xray2d"}
    assert history(out)[0]["validation_dice"].keys() == {"phantom3d", "xray2d"}
    added = add_task(out, ("sides3d", synthetic_tasks["sides3d"]), tmp_path / "v2",
                     AddTaskConfig.from_options(max_regression=100.0, epochs=1, steps_per_epoch=2, batch_size=4,
                                                device="cpu"),
                     replay_tasks=tasks, progress=Progress("quiet")).path
    assert load_model(added, device="cpu").labelspace.task("sides3d").plan.slice_context == 3
    sides = TaskDataset.open(synthetic_tasks["sides3d"])
    ranking = rank_cases(load_model(added, device="cpu"), collect_inputs([sides.cases[0].image_path]),
                         RankConfig(task="sides3d", device="cpu"), Progress("quiet"))
    assert ranking.failures == [] and len(ranking.cases) == 1


def test_a_split_file_fixes_the_cases_and_a_bad_one_is_refused_in_one_line(tmp_path, synthetic_tasks, capsys):
    task = TaskDataset.open(synthetic_tasks["xray2d"], "xray2d")
    names = [case.name for case in task.cases]
    split_file = tmp_path / "fold.split.json"
    split_file.write_text(json.dumps({"tasks": {"xray2d": {"train": names[2:], "validation": names[:2]}}}))
    space_path = tmp_path / "ls.json"
    LabelSpace.build([compute_statistics(task)]).save(space_path)
    arguments = train_arguments({"xray2d": synthetic_tasks["xray2d"]}, space_path, tmp_path / "m",
                                "--split", str(split_file))
    assert cli.main(arguments) == 0
    assert json.loads((tmp_path / "m" / "split.json").read_text())["tasks"]["xray2d"]["validation"] == names[:2]
    arguments[arguments.index("--out") + 1] = str(tmp_path / "refused")
    for content, message in (({"tasks": {"xray2d": {"train": names, "validation": names[:1]}}},
                              f"task 'xray2d' has case '{names[0]}' on both sides"),
                             ({"tasks": {"other": {"train": names, "validation": []}}},
                              "it has tasks ['other'], not ['xray2d']"),
                             ({"tasks": {"xray2d": {"train": ["nobody"], "validation": names[:1]}}},
                              "task 'xray2d' has no case 'nobody' of the split"),
                             ({"tasks": {"xray2d": names}}, "not a split")):
        split_file.write_text(json.dumps(content))
        capsys.readouterr()
        assert cli.main(arguments) == 1
        error = capsys.readouterr().err
        assert message in error and error.startswith("labelshare: error: ") and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists() and not (tmp_path / ".refused.partial").exists()


def test_scanner_augmentation_changes_intensities_only_and_repeats_with_its_random_state():
    ramp = torch.linspace(-2, 2, 32 * 32).reshape(1, 1, 32, 32).repeat(16, 3, 1, 1)
    batch = TaskBatch(head=None, images=ramp, targets=(ramp[:, 0] > 0).long(), flip_allowed=True)
    standard = Augmenter(np.random.default_rng(3), "standard")(batch)
    scanner = [Augmenter(np.random.default_rng(3), "scanner")(batch) for _ in range(2)]
    assert torch.equal(scanner[0].images, scanner[1].images), "the same random state gives the same patches"
    assert torch.equal(scanner[0].targets, standard.targets), "the spatial part is unchanged"
    assert not torch.allclose(scanner[0].images, standard.images)
    uniform = TaskBatch(head=None, images=torch.ones(4, 1, 16, 16), targets=torch.zeros(4, 16, 16, dtype=torch.long),
                        flip_allowed=True)
    assert torch.isfinite(Augmenter(np.random.default_rng(0), "scanner")(uniform).images).all()


def banks_of(synthetic_tasks, synthetic_space):
    heads = task_heads("shared", synthetic_space)
    banks = []
    for name, path in synthetic_tasks.items():
        task = TaskDataset.open(path, name)
        banks.append(load_task_slices(task, [c.name for c in task.cases], heads[name], synthetic_space.task(name).plan))
    return heads, banks


def small_network(synthetic_space) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(NetworkConfig(out_channels=synthetic_space.n_shared + 1, filters=[4, 8, 16]))


def test_task_weights_set_each_task_share_of_the_batch(tmp_path, synthetic_tasks, synthetic_space, capsys):
    heads, banks = banks_of(synthetic_tasks, synthetic_space)
    config = TrainConfig(batch_size=16, device="cpu", task_weights={"phantom3d": 2.0, "xray2d": 1.0})
    trainer = Trainer(small_network(synthetic_space), heads, banks, [], config, tmp_path, Progress("quiet"))
    assert dict(zip([b.task for b in banks], trainer.sampler.shares, strict=True)) == pytest.approx(
        {"phantom3d": 0.5, "xray2d": 0.25, "sides3d": 0.25}), "tasks not named weigh 1"
    synthetic_space.save(tmp_path / "ls.json")
    assert cli.main(train_arguments(synthetic_tasks, tmp_path / "ls.json", tmp_path / "m", "--task-weight",
                                    "acdc=2")) == 1
    assert "--task-weight acdc: not a task of this run (" in capsys.readouterr().err
    assert cli.main(train_arguments(synthetic_tasks, tmp_path / "ls.json", tmp_path / "m", "--task-weight",
                                    "xray2d=0")) == 1
    assert "--task-weight xray2d must be a number in (0, 1000]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(train_arguments(synthetic_tasks, tmp_path / "ls.json", tmp_path / "m", "--task-weight", "2"))
    assert "argument --task-weight: 2: expected TASK=WEIGHT" in capsys.readouterr().err


def test_a_run_stopped_within_an_epoch_logs_the_loss_of_all_its_steps(tmp_path, synthetic_tasks, synthetic_space):
    """Stopped after step 2 of 4 and resumed, the epoch's loss is the mean over its four steps, as without a stop."""
    heads, banks = banks_of(synthetic_tasks, synthetic_space)
    config = TrainConfig(batch_size=4, epochs=1, steps_per_epoch=4, device="cpu")
    network = small_network(synthetic_space)

    def trainer(folder):
        return Trainer(copy.deepcopy(network), heads, banks, [], config, tmp_path / folder, Progress("quiet"))

    whole = trainer("whole").run()
    stopped = trainer("parts")
    step = stopped.train_step

    def stop_after_the_second(number):
        loss = step(number)
        if number == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what a batch system sends at the end of a sitting
        return loss

    stopped.train_step = stop_after_the_second
    with pytest.raises(TrainingInterrupted):
        stopped.run()
    checkpoint = json.loads((tmp_path / "parts" / ".checkpoint" / "checkpoint.json").read_text())
    assert checkpoint["step"] == 2 and len(checkpoint["epoch_losses"]) == 2
    resumed = trainer("parts").run(resume=True)
    assert resumed.history[0]["loss"] == pytest.approx(whole.history[0]["loss"], rel=1e-5)
