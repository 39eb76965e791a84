"""Real background training runs of LabelShareTraining's logic: the engine in a child process on tiny synthetic
tasks, with progress events, Stop (checkpoint, nothing published), resume, the regression gate and publishing.

Budgets are made tiny here (images 32 px, a few steps) so that each run takes seconds on a CPU; the runs are real
``labelshare train`` / ``labelshare add-task`` processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):
    sys.path.insert(0, str(REPO_ROOT / module_folder))

from LabelShareLib.jobs import JobState, engine_command  # noqa: E402
from LabelShareLib.store import ModelStore, available_models  # noqa: E402
from LabelShareTrainingLib import runs  # noqa: E402
from LabelShareTrainingLib.lock import JobLockedError  # noqa: E402
from LabelShareTrainingLib.logic import TrainingLogic  # noqa: E402

from labelshare.core import synthetic  # noqa: E402
from labelshare.core.modelfolder import verify_folder  # noqa: E402
from labelshare.core.paths import staging_dir_for  # noqa: E402
from labelshare.core.tasks import TaskDataset  # noqa: E402

RUN_TIMEOUT_S = 300


@pytest.fixture(autouse=True)
def tiny_budgets(tmp_path, monkeypatch):
    """Runs of a few seconds, and the model store, jobs and lock of these tests out of the user's home."""
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    # One torch thread per training process: on a machine whose cores are busy, OpenMP's spinning threads made
    # each step up to 7 times slower (measured: 63 s with 2 threads vs 9 s with 1 for the same run).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setitem(runs.BUDGETS, "quick", {"epochs": 2, "steps_per_epoch": 3, "batch_size": 4})
    monkeypatch.setitem(runs.FIRST_MODEL_EPOCHS, "quick", 3)


@pytest.fixture
def workspace(tmp_path, synthetic_tasks) -> Path:
    """The synthetic tasks the tiny model knows (needed for replay), plus a task 'blobs' collected case by case."""
    folder = tmp_path / "workspace"
    for name, path in synthetic_tasks.items():
        shutil.copytree(path, folder / name)
    logic = TrainingLogic(workspace=folder, models_dir=tmp_path / "models")
    blobs = logic.create_task("blobs", ["left_blob", "right_blob"])
    source = TaskDataset.open(synthetic.write_task(tmp_path / "source", "sides3d", 6, seed=5))
    for case in source.cases:
        image, _, label = source.read_case(case)
        blobs.add_case(image, label, name=case.name)
    return folder


def poll_until(logic: TrainingLogic, condition, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert logic.running, f"run ended early: {logic.job.state} {logic.job.error} {list(logic.job.log)[-5:]}"
        assert time.monotonic() < deadline, "run made no progress"
        logic.poll(0.1)


@pytest.mark.slow
def test_first_model_run_reports_progress_stops_resumably_survives_a_crash_and_resumes(workspace, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setitem(runs.BUDGETS, "quick", {"epochs": 2, "steps_per_epoch": 6, "batch_size": 4})
    models = tmp_path / "models"
    store, announced = ModelStore(), []
    store.changed.subscribe(announced.append)  # what LabelShareSegmentation's widget does
    logic = TrainingLogic(workspace=workspace, models_dir=models, store=store,
                          engine=engine_command)
    request = logic.plan("blobs", None, "quick", "cpu")
    assert request.kind == "train" and Path(request.out) == models / "blobs-v1" and request.epochs == 3

    # 1. Progress arrives; a second job is refused; Stop leaves a checkpoint and no model.
    logic.start(request)
    with pytest.raises(JobLockedError, match="first model from task 'blobs'"):
        TrainingLogic(workspace=workspace, models_dir=models).start(request)  # e.g. a second Slicer
    poll_until(logic, lambda: logic.progress.stage == "training")  # stop early: many steps are left
    assert logic.progress.epochs == 3 and logic.progress.loss is not None and logic.progress.eta_s is not None
    assert logic.progress.summary().startswith("epoch 1/3 · loss ") and 0 < logic.job.fraction < 1
    logic.stop(wait_s=60)
    outcome = logic.outcome
    assert outcome.state == "stopped" and outcome.resumable and logic.job.state == JobState.CANCELLED
    assert any("checkpoint saved" in line for line in logic.job.log), "Stop let the engine save a checkpoint"
    assert not Path(request.out).exists(), "no model version appears from a stopped run"
    assert (staging_dir_for(request.out) / ".checkpoint" / "checkpoint.json").is_file()
    assert logic.lock.holder() is None and not logic.lock.path.exists()
    assert [run.out for run in logic.unfinished_runs()] == [request.out]
    assert logic.new_cases_since_training("blobs") == 6
    assert announced == [], "nothing was published"

    # 2. Slicer crashes while the resumed run trains: the training process ends, the lock goes stale.
    crashing_slicer = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(REPO_ROOT / "LabelShareSegmentation")!r}, {str(REPO_ROOT / "LabelShareTraining")!r}]
        from pathlib import Path
        from LabelShareLib.jobs import engine_command
        from LabelShareTrainingLib.logic import TrainingLogic
        from LabelShareTrainingLib.runs import TrainingRequest
        logic = TrainingLogic(workspace={str(workspace)!r}, models_dir={str(models)!r},
                              engine=engine_command)
        job = logic.resume(TrainingRequest.from_record(Path({str(request.record_path)!r})))
        while logic.progress.stage != "training":
            if not logic.running:
                sys.exit(3)
            logic.poll(0.1)
        print(job.process.pid, flush=True)
        os._exit(1)
    """)
    crashed = subprocess.run([sys.executable, "-c", crashing_slicer], capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_S)
    assert crashed.returncode == 1, crashed.stderr[-2000:]
    orphan = int(crashed.stdout.split()[-1])
    try:
        psutil.Process(orphan).wait(timeout=120)  # it ends at its next progress message: nobody reads it
    except psutil.NoSuchProcess:
        pass
    assert logic.lock.read().child_pid == orphan and logic.lock.holder() is None, "stale, not released"
    assert not Path(request.out).exists() and [run.out for run in logic.unfinished_runs()] == [request.out]

    # 3. The next start clears the stale lock; the run resumes from its checkpoint and publishes.
    logic.resume(request)
    outcome = logic.wait(RUN_TIMEOUT_S)
    assert outcome.state == "published", outcome.message
    assert outcome.model == Path(request.out) and outcome.report is None
    assert announced == [outcome.model], "the model store announced the new version (to the model lists)"
    verify_folder(outcome.model)
    assert any("resuming at step" in line for line in logic.job.log)
    assert logic.progress.epoch == 3 and logic.progress.best_dice is not None, "epoch metrics arrived"
    assert logic.unfinished_runs() == [] and logic.lock.holder() is None and not logic.lock.path.exists()
    assert logic.new_cases_since_training("blobs") == 0
    assert not logic.should_train_automatically("blobs", after_cases=1)
    assert {entry.name: entry.action for entry in logic.task_entries(outcome.model)} == {
        "blobs": "Update", "phantom3d": "Train", "sides3d": "Train", "xray2d": "Train"}


@pytest.mark.slow
def test_add_task_refused_by_the_gate_keeps_the_old_model_until_published_anyway(workspace, tmp_path, tiny_model):
    models = tmp_path / "models"
    base = Path(shutil.copytree(tiny_model, models / "tiny"))
    # A learning rate of 10 (the most the engine accepts) wrecks the old tasks, so the regression gate (1 Dice point)
    # refuses the new version.
    store, announced = ModelStore(), []
    store.changed.subscribe(announced.append)
    logic = TrainingLogic(workspace=workspace, models_dir=models, store=store,
                          engine=lambda *arguments: engine_command(*arguments, "--learning-rate", "10"))
    entries = {entry.name: entry for entry in logic.task_entries(base)}
    assert entries["blobs"].action == "Train" and entries["phantom3d"].action == "Update"
    assert entries["blobs"].cases == 6 and not entries["blobs"].in_model
    request = logic.plan("blobs", base, "quick", "cpu")
    assert request.kind == "add-task" and Path(request.out) == models / "tiny-v2"
    assert sorted(request.replay_tasks) == ["phantom3d", "sides3d", "xray2d"]

    logic.start(request)
    refused = logic.wait(RUN_TIMEOUT_S)
    assert refused.state == "refused", refused.message
    assert "not published" in refused.message and refused.resumable
    assert refused.report is not None and not refused.report.passed and refused.report.verdict()
    assert any(v["change"] < -0.01 for labels in refused.report.tasks.values() for v in labels.values())
    assert not Path(request.out).exists() and request.state() == "refused"
    assert [run.out for run in logic.unfinished_runs()] == [request.out] and announced == []
    verify_folder(base)  # the old model is untouched

    logic.publish_anyway(request)
    published = logic.wait(RUN_TIMEOUT_S)
    assert published.state == "published", published.message
    assert published.model == Path(request.out) and published.report is not None
    assert announced == [published.model]
    assert published.report.table() == refused.report.table()
    assert logic.unfinished_runs() == []
    listed = {Path(summary.path).name: summary for summary in available_models(models)}
    assert listed["tiny"].valid and listed["tiny-v2"].valid, "the new version and the old one (rollback)"
    assert "blobs" in listed["tiny-v2"].tasks and "blobs" not in listed["tiny"].tasks
    update = logic.plan("blobs", published.model, "quick", "cpu")
    assert update.kind == "update" and Path(update.out) == models / "tiny-v3"


def test_stop_with_a_deadline_reports_the_wait_and_kills_a_process_that_does_not_end(workspace, tmp_path):
    """Closing Slicer during a run: the wait is bounded and shown (``on_wait``), never a silent hang."""
    ignores_sigterm = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
                       " time.sleep(120)")
    logic = TrainingLogic(workspace=workspace, models_dir=tmp_path / "models",
                          engine=lambda *arguments: [sys.executable, "-c", ignores_sigterm])
    job = logic.start(logic.plan("blobs", None, "quick", "cpu"))
    poll_until(logic, lambda: "ready" in job.log)
    seconds_left = []
    started = time.monotonic()
    logic.stop(wait_s=2, on_wait=seconds_left.append)
    assert time.monotonic() - started < 8
    assert not logic.running and logic.outcome.state == "stopped" and not job.process.alive
    assert len(seconds_left) >= 5 and seconds_left == sorted(seconds_left, reverse=True) and seconds_left[0] <= 2
    assert logic.lock.holder() is None


def test_standard_budget_leaves_add_task_epochs_to_the_engine_and_a_first_model_gets_its_own(tmp_path):
    """'standard' add-task and update runs take the engine's budget, which grows with the task (labelshare.core.budget);
    a first model has no parent to size a budget from and gets FIRST_MODEL_EPOCHS."""
    common = dict(task_name="liver", task_dir=str(tmp_path / "liver"), out=str(tmp_path / "liver-v2"),
                  budget="standard", device="cpu")
    for kind in ("add-task", "update"):
        arguments = runs.TrainingRequest(kind=kind, base_model=str(tmp_path / "liver-v1"), **common).arguments()
        assert "--epochs" not in arguments and arguments[arguments.index("--steps-per-epoch") + 1] == "100"
    first = runs.TrainingRequest(kind="train", labelspace=str(tmp_path / "space.json"), **common).arguments()
    assert first[first.index("--epochs") + 1] == str(runs.FIRST_MODEL_EPOCHS["standard"])


def test_the_cost_shown_before_train_is_the_engines_budget_timed_at_the_parent_models_speed(workspace, tmp_path,
                                                                                             tiny_model):
    """LabelShareTraining shows the run's budget before Train is pressed: the engine's add-task budget for the task
    (labelshare.core.budget) and a time from the speed the parent model trained at, which its lineage records."""
    from labelshare.core.budget import add_task_epochs
    from labelshare.core.config import TrainConfig
    logic = TrainingLogic(workspace=workspace, models_dir=tmp_path / "models")
    request = logic.plan("blobs", tiny_model, budget="standard")
    assert request.kind == "add-task" and request.epochs is None
    steps = add_task_epochs(2, round(6 * 0.8), TrainConfig.steps_per_epoch) * TrainConfig.steps_per_epoch
    cost = request.cost()
    assert cost.startswith(f"{steps} steps, about ") and "at the speed the parent model trained" in cost
    quick = logic.plan("blobs", tiny_model, budget="quick")
    reason, quick_cost = logic.readiness("blobs", tiny_model, "quick")
    assert reason == "" and quick_cost.startswith(f"{quick.epochs * quick.steps_per_epoch} steps")
    logic.create_task("empty", ["organ"])
    assert logic.readiness("empty", tiny_model) == (
        "Task 'empty' has no cases yet; add at least one case before training.", "")
