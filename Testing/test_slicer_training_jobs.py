"""LabelShareTraining's job layer without Slicer: the one-job lock, the engine command lines, model versions,
resumable runs, progress folding and the forgetting report."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):  # the package imports LabelShareLib
    sys.path.insert(0, str(REPO_ROOT / module_folder))

from LabelShareLib.store import version_of  # noqa: E402
from LabelShareTrainingLib.lock import JobLockedError, LockInfo, TrainingLock  # noqa: E402
from LabelShareTrainingLib.runs import (BUDGETS, FIRST_MODEL_EPOCHS, TrainingProgress, TrainingRequest,  # noqa: E402
                                        discard_run, jobs_dir, next_version_path, unfinished_runs)

from labelshare.core.errors import LabelShareError  # noqa: E402
from labelshare.core.forgetting import ForgettingReport  # noqa: E402


@pytest.fixture(autouse=True)
def labelshare_home(tmp_path, monkeypatch) -> Path:
    """Keep the model store, jobs and lock of these tests out of the user's home."""
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def exited_process() -> tuple[int, float]:
    """pid and start time of a process that has ended."""
    process = psutil.Popen([sys.executable, "-c", "pass"])
    started = process.create_time()
    process.wait()
    return process.pid, started


def write_lock(lock: TrainingLock, **fields) -> None:
    me = psutil.Process()
    info = LockInfo(host=socket.gethostname(), owner_pid=me.pid, owner_started=me.create_time(), started="earlier",
                    heartbeat=lock.now(), description="test job")
    for key, value in fields.items():
        setattr(info, key, value)
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.path.write_text(json.dumps(info.to_json()))


# -- lock -------------------------------------------------------------------------------------------------------------
def test_lock_allows_one_job_and_release_frees_it(tmp_path):
    lock = TrainingLock(tmp_path / "training.lock")
    info = lock.acquire("first job")
    assert lock.read() == info and lock.owned_by_this_process()
    with pytest.raises(JobLockedError, match="first job.*still running"):
        TrainingLock(lock.path).acquire("second job")
    lock.release()
    assert not lock.path.exists()
    TrainingLock(lock.path).acquire("second job")
    assert lock.read().description == "second job"


def test_stale_lock_of_a_dead_process_is_cleared(tmp_path):
    lock = TrainingLock(tmp_path / "training.lock")
    pid, started = exited_process()
    write_lock(lock, owner_pid=pid, owner_started=started)
    assert "gone" in lock.stale_reason(lock.read()) and lock.holder() is None
    assert lock.acquire("new").owner_pid != pid


def test_recycled_pid_does_not_keep_a_lock_alive(tmp_path):
    lock = TrainingLock(tmp_path / "training.lock")
    write_lock(lock, owner_started=psutil.Process().create_time() - 3600)  # our pid, but another process's start
    assert lock.stale_reason(lock.read())
    lock.acquire("new")


def test_live_owner_with_old_heartbeat_and_no_child_is_stale(tmp_path):
    lock = TrainingLock(tmp_path / "training.lock", stale_after_s=60)
    write_lock(lock, heartbeat=lock.now() - 61)
    assert "silent" in lock.stale_reason(lock.read())


def test_running_training_process_keeps_the_lock_after_its_owner_died(tmp_path):
    """What a Slicer crash leaves: the owner is gone, the training process runs on; no second job may start."""
    lock_path = tmp_path / "training.lock"
    training = psutil.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = textwrap.dedent(f"""
            import os, sys
            sys.path[:0] = [{str(REPO_ROOT / 'LabelShareSegmentation')!r}, {str(REPO_ROOT / 'LabelShareTraining')!r}]
            from LabelShareTrainingLib.lock import TrainingLock
            lock = TrainingLock({str(lock_path)!r})
            lock.acquire("crashed owner")
            lock.set_child({training.pid})
            os._exit(1)   # dies without releasing, like a crash
        """)
        assert subprocess.run([sys.executable, "-c", owner]).returncode == 1
        lock = TrainingLock(lock_path, now=lambda: 10 ** 10)  # heartbeat long stale: only the child keeps it live
        assert lock.read().child_pid == training.pid and lock.holder() is not None
        with pytest.raises(JobLockedError, match="crashed owner"):
            lock.acquire("new")
        training.kill()
        training.wait()
        assert "no longer running" in lock.stale_reason(lock.read())
        assert lock.acquire("new").description == "new"
    finally:
        if training.is_running():
            training.kill()


def test_other_host_lock_lives_by_heartbeat(tmp_path):
    clock = [1000.0]
    lock = TrainingLock(tmp_path / "training.lock", stale_after_s=120, now=lambda: clock[0])
    write_lock(lock, host="another-computer", owner_pid=1, heartbeat=1000.0)
    with pytest.raises(JobLockedError, match="computer 'another-computer'"):
        lock.acquire("mine")
    clock[0] = 1121.0
    assert "no heartbeat" in lock.stale_reason(lock.read())
    assert lock.acquire("mine").host == socket.gethostname()


def test_unreadable_lock_is_cleared_and_foreign_lock_is_not_released(tmp_path):
    lock = TrainingLock(tmp_path / "training.lock")
    lock.path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        lock.read()
    lock.acquire("after damage")
    pid, started = exited_process()
    write_lock(lock, owner_pid=pid, owner_started=started)
    lock.release()
    assert lock.path.exists(), "release only removes this process's own lock"
    with pytest.raises(LabelShareError, match="does not hold"):
        lock.heartbeat()


# -- requests, versions, records --------------------------------------------------------------------------------------
def test_add_task_command_line_follows_the_engine_contract(tmp_path):
    request = TrainingRequest(kind="add-task", task_name="liver", task_dir=str(tmp_path / "liver"),
                              out=str(tmp_path / "m-v3"), base_model=str(tmp_path / "m-v2"), budget="standard",
                              device="cpu", replay_tasks={"acdc": "/data/acdc"})
    budget = BUDGETS["standard"]
    assert request.arguments() == [
        "add-task", "--model", str(tmp_path / "m-v2"), "--task", f"liver={tmp_path / 'liver'}",
        "--out", str(tmp_path / "m-v3"), "--replay-task", "acdc=/data/acdc",  # no --epochs: the engine's budget
        "--steps-per-epoch", str(budget["steps_per_epoch"]), "--batch-size", str(budget["batch_size"]),
        "--device", "cpu", "--progress", "json"]
    assert request.arguments(resume=True)[-1] == "--resume"
    assert request.description == "add task 'liver' in m-v2 -> m-v3"
    accepted = TrainingRequest(**{**request.__dict__, "accept_regression": True, "kind": "update"})
    assert "--accept-regression" in accepted.arguments() and accepted.description.startswith("update task")
    first = TrainingRequest(kind="train", task_name="liver", task_dir="d", out="o", labelspace="ls.json")
    assert first.arguments()[:3] == ["train", "--labelspace", "ls.json"]
    assert first.epochs == FIRST_MODEL_EPOCHS["quick"] and first.batch_size == BUDGETS["quick"]["batch_size"]


def test_a_recorded_request_keeps_its_budget_numbers_when_presets_change(labelshare_home, monkeypatch):
    request = TrainingRequest(kind="add-task", task_name="t", task_dir="d", out=str(labelshare_home / "m-v2"),
                              base_model="m-v1", budget="quick")
    request.save_record()
    monkeypatch.setitem(BUDGETS, "quick", {"epochs": 99, "steps_per_epoch": 99, "batch_size": 99})
    again = TrainingRequest.from_record(request.record_path)
    assert again == request and again.arguments(resume=True) == request.arguments(resume=True)
    assert TrainingRequest(kind="add-task", task_name="t", task_dir="d", out="x", base_model="m").epochs == 99
    with pytest.raises(LabelShareError, match="needs the model"):
        TrainingRequest(kind="update", task_name="liver", task_dir="d", out="o")
    with pytest.raises(LabelShareError, match="unknown budget"):
        TrainingRequest(kind="train", task_name="liver", task_dir="d", out="o", labelspace="x", budget="huge")
    with pytest.raises(LabelShareError, match="unknown device"):
        TrainingRequest(kind="train", task_name="liver", task_dir="d", out="o", labelspace="x", device="tpu")
    gpu = TrainingRequest(kind="train", task_name="liver", task_dir="d", out="o", labelspace="x", device="GPU")
    assert gpu.device == "cuda" and gpu.arguments()[-4:] == ["--device", "cuda", "--progress", "json"]


def test_new_versions_never_reuse_a_name(tmp_path):
    models = tmp_path / "models"
    assert next_version_path(models, "liver") == models / "liver-v1"
    assert version_of("liver-v12") == ("liver", 12) and version_of("default") == ("default", 1)
    for name in ("liver-v1", "liver-v2", ".liver-v5.candidate", "..liver-v7.candidate.partial", "liverish-v9",
                 "other-v8"):
        (models / name).mkdir(parents=True)
    (models / "liver-v6.forgetting.json").write_text("{}")
    assert next_version_path(models, "liver") == models / "liver-v8"
    assert next_version_path(models, "default", at_least=2) == models / "default-v2"


def run_request(models: Path, version: int, kind: str = "add-task") -> TrainingRequest:
    if kind == "train":
        return TrainingRequest(kind="train", task_name="t", task_dir="d", out=str(models / f"t-v{version}"),
                               labelspace=str(jobs_dir() / f"t-v{version}.labelspace.json"))
    return TrainingRequest(kind=kind, task_name="t", task_dir="d", out=str(models / f"m-v{version}"),
                           base_model=str(models / "m-v1"))


def test_run_states_follow_the_engine_folders(labelshare_home):
    from labelshare.core.paths import candidate_dir_for, refused_report_paths, staging_dir_for
    models = labelshare_home / "models"
    models.mkdir(parents=True)
    interrupted, refused, published, gone, first = (run_request(models, 2), run_request(models, 3),
                                                     run_request(models, 4), run_request(models, 5),
                                                     run_request(models, 1, "train"))
    staging_dir_for(candidate_dir_for(Path(interrupted.out))).mkdir()
    candidate_dir_for(Path(refused.out)).mkdir()
    for report in refused_report_paths(Path(refused.out)):
        report.write_text("{}")
    Path(published.out).mkdir()
    staging_dir_for(Path(first.out)).mkdir()
    assert [r.state() for r in (interrupted, refused, published, gone, first)] == [
        "interrupted", "refused", "published", "gone", "interrupted"]
    for request in (interrupted, refused, published, gone, first):
        request.save_record()
    jobs_dir().joinpath("t-v1.labelspace.json").write_text("{}")
    (jobs_dir() / "notes.json").write_text("[]")           # not a run record: left alone
    assert sorted(r.out for r in unfinished_runs()) == sorted([interrupted.out, refused.out, first.out])
    assert sorted(p.name for p in jobs_dir().iterdir()) == [
        "m-v2.json", "m-v3.json", "notes.json", "t-v1.json", "t-v1.labelspace.json"]
    discard_run(refused)
    assert not candidate_dir_for(Path(refused.out)).exists()
    assert not any(p.exists() for p in refused_report_paths(Path(refused.out)))
    discard_run(first)
    assert not staging_dir_for(Path(first.out)).exists() and not (jobs_dir() / "t-v1.labelspace.json").exists()
    assert [r.out for r in unfinished_runs()] == [interrupted.out]
    with pytest.raises(LabelShareError, match="never deleted"):
        discard_run(published)
    assert Path(published.out).is_dir()


def test_progress_events_fold_into_what_the_widget_shows():
    progress = TrainingProgress()
    progress.update({"event": "progress", "stage": "loading", "fraction": 0.05, "message": "reading"})
    assert progress.stage == "loading" and progress.summary() == ""
    progress.update({"event": "progress", "stage": "training", "fraction": 0.3, "epoch": 2, "epochs": 5,
                     "step": 7, "steps": 20, "loss": 0.51234, "eta_s": 75})
    progress.update({"event": "metrics", "stage": "epoch", "epoch": 1, "mean_validation_dice": 0.61})
    progress.update({"event": "metrics", "stage": "epoch", "epoch": 2, "mean_validation_dice": 0.58})
    progress.update({"event": "metrics", "stage": "epoch", "epoch": 3, "mean_validation_dice": None})
    assert progress.best_dice == 0.61
    assert progress.summary() == "epoch 2/5 · loss 0.5123 · best validation Dice 0.610 · ETA 1m15s"
    progress.update({"event": "error", "message": "refused", "regression": True, "report": "/x/forgetting.json"})
    assert progress.regression and progress.report_path == "/x/forgetting.json" and progress.stage == "error"


def test_forgetting_report_becomes_table_rows(tmp_path):
    report = {"threshold": 1.0, "passed": False,
              "tasks": {"acdc": {"lv": {"before": 0.9, "after": 0.8, "change": -0.1}},
                        "hippo": {"head": {"before": 0.7, "after": 0.71, "change": 0.01},
                                  "tail": {"before": None, "after": 0.5, "change": None}}},
              "new_task": {"name": "liver", "dice": {"liver": 0.8}}}
    (tmp_path / "forgetting.json").write_text(json.dumps(report))
    read = ForgettingReport.of_model(tmp_path)  # the engine's reader (labelshare.core.forgetting), used by the widget
    assert read.threshold == 1.0 and not read.passed and read.new_task_name == "liver"
    assert read.new_task == {"liver": 0.8}
    assert read.table() == [("acdc", "lv", "0.900", "0.800", "-10.0"), ("hippo", "head", "0.700", "0.710", "+1.0"),
                            ("hippo", "tail", "-", "0.500", "-"), ("liver", "liver", "-", "0.800", "new")]
    assert ForgettingReport.of_model(tmp_path / "none") is None
    (tmp_path / "forgetting.json").write_text(json.dumps({"tasks": {}}))
    with pytest.raises(LabelShareError, match="malformed forgetting report"):
        ForgettingReport.read(tmp_path / "forgetting.json")
