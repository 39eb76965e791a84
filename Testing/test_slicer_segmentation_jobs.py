"""The background-job runner (LabelShareLib.jobs) with real child processes: progress, log, import,
failures, crashes and cancel (the whole process tree, with or without a grace period)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LabelShareSegmentation"))
from LabelShareLib.jobs import (LOG_LINES, JobFailed, JobState, ProcessJob, WorkerProcess,  # noqa: E402
                                child_environment)

PRELUDE = "import os, subprocess, sys, time\nfrom labelshare.core.progress import Progress\np = Progress('json')\n"


def child(code: str, **options) -> ProcessJob:
    """A job running ``code`` (after PRELUDE) in a fresh interpreter that can import labelshare."""
    return ProcessJob([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=child_environment(), **options)


def poll_until(job: ProcessJob, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached; job {job.state}, log {list(job.log)}"
        job.poll(0.05)


def test_progress_log_and_import_of_a_successful_job():
    events, states = [], []
    job = child("""
        print("plain text is logged", flush=True)
        print("a warning", file=sys.stderr, flush=True)
        p.progress("preparing", 0.0, "loading")
        time.sleep(0.3)  # the parent sees "preparing" on its own before "segmenting" arrives
        for k in range(1, 5):
            p.progress("segmenting", k / 4, f"{k}/4")
            time.sleep(0.05)
        p.log("almost there")
        p.done("result.nrrd")
    """, import_result=lambda event: f"imported {event['output']}", on_event=events.append)
    while not job.state.finished:
        states.append(job.poll(0.05))
    assert job.state == JobState.DONE and job.result == "imported result.nrrd"
    running, importing = states.index(JobState.RUNNING), states.index(JobState.IMPORTING)
    assert 0 < running < importing < len(states) - 1  # preparing, running, importing (shown once), done
    assert [e["fraction"] for e in events if e["event"] == "progress"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert job.fraction == 1.0 and job.stage == "segmenting" and job.done_event["output"] == "result.nrrd"
    assert {"plain text is logged", "a warning", "almost there"} <= set(job.log)
    assert job.elapsed_s > 0 and job.status_text == "Done"


def test_engine_error_event_fails_the_job_with_its_message():
    job = child("""
        p.progress("segmenting", 0.5)
        p.error("case.nii.gz: image contains NaN or infinite values")
        sys.exit(1)
    """, import_result=lambda event: pytest.fail("a failed job must not import"))
    with pytest.raises(JobFailed, match="case.nii.gz: image contains NaN"):
        job.result_or_raise(30)
    assert job.state == JobState.FAILED and job.status_text.startswith("Failed: case.nii.gz")


def test_crash_without_a_final_event_fails_with_exit_code_and_last_output():
    job = child("""
        p.progress("segmenting", 0.3)
        print("Segmentation fault in the network", file=sys.stderr, flush=True)
        os._exit(139)
    """)
    assert job.wait(30) == JobState.FAILED
    assert "stopped unexpectedly (exit code 139)" in job.error and "Segmentation fault" in job.error


def test_import_error_fails_the_job_and_keeps_the_traceback_in_the_log():
    def broken_import(event):
        raise ValueError("result has the wrong size")

    job = child("p.done('x')", import_result=broken_import)
    assert job.wait(30) == JobState.FAILED and job.error == "result has the wrong size"
    assert any("Traceback" in line for line in job.log)


def test_log_keeps_only_the_last_lines():
    job = child(f"for i in range({LOG_LINES + 250}): print(f'line {{i}}')\np.done()")
    assert job.wait(30) == JobState.DONE
    assert len(job.log) == LOG_LINES and job.log[-1] == f"line {LOG_LINES + 249}"
    # a GUI that showed 10 lines gets the ones still held after them; one that showed them all gets none
    assert job.log_lines_after(10) == list(job.log) and job.log_lines_after(LOG_LINES + 250) == []
    assert job.log_lines_after(LOG_LINES + 248) == [f"line {LOG_LINES + 248}", f"line {LOG_LINES + 249}"]


def test_cancel_kills_the_child_and_its_children_and_never_imports():
    job = child("""
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        p.log(f"grandchild {grandchild.pid}")
        p.progress("segmenting", 0.1)
        time.sleep(60)
    """, import_result=lambda event: pytest.fail("a cancelled job must not import"))
    poll_until(job, lambda: job.state == JobState.RUNNING)
    grandchild = int(next(line for line in job.log if line.startswith("grandchild")).split()[1])
    child_pid = job.process.pid
    assert psutil.pid_exists(grandchild)
    job.cancel()
    assert job.state == JobState.CANCELLED and job.status_text == "Cancelled"
    for pid in (child_pid, grandchild):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert job.poll() == JobState.CANCELLED


def test_cancel_with_grace_lets_the_child_stop_cleanly_then_kills_a_stubborn_one():
    polite = child("""
        import signal
        def stop(*_):
            p.log("checkpoint saved")
            p.error("stopped", interrupted=True)
            sys.exit(75)
        signal.signal(signal.SIGTERM, stop)
        p.progress("training", 0.2)
        time.sleep(60)
    """, stop_grace_s=20)
    poll_until(polite, lambda: polite.state == JobState.RUNNING)
    polite.cancel()
    assert polite.status_text == "Stopping…"
    assert polite.wait(30) == JobState.CANCELLED and "checkpoint saved" in polite.log

    stubborn = child("""
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        p.progress("training", 0.2)
        time.sleep(60)
    """, stop_grace_s=0.5)
    poll_until(stubborn, lambda: stubborn.state == JobState.RUNNING)
    started = time.monotonic()
    stubborn.cancel()
    assert stubborn.wait(30) == JobState.CANCELLED
    assert 0.4 < time.monotonic() - started < 10


def test_child_environment_forces_cpu_and_finds_the_engine():
    env = child_environment("cpu", base={"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PYTHONUNBUFFERED"] == "1"
    assert (Path(env["PYTHONPATH"].split(os.pathsep)[0]) / "labelshare" / "engine" / "worker.py").is_file()
    assert "CUDA_VISIBLE_DEVICES" not in child_environment("auto", base={})


FAKE_WORKER = PRELUDE + textwrap.dedent("""
    import json
    p.log("worker ready", worker="ready")
    for line in sys.stdin:
        request = json.loads(line)
        tag = {"request": request["id"]}
        if request.get("crash"):
            print("out of memory in the network", file=sys.stderr, flush=True)
            os._exit(139)
        p.progress("segmenting", 0.5, **tag)
        print("a line between events", flush=True)
        if request.get("wait"):
            time.sleep(60)
        p.done(request["output"], **tag)
""")


def test_worker_process_serves_requests_and_reports_a_crash_into_the_job():
    """WorkerProcess with a stand-in for ``labelshare worker`` (same protocol, no torch): events reach the job through
    its public surface, the process is reused, and a crash fails the job with the exit code and the last lines."""
    worker = WorkerProcess(argv=[sys.executable, "-c", FAKE_WORKER], env=child_environment())
    try:
        job = worker.submit({"output": "first.mha"}, import_result=lambda event: event["output"])
        assert job.result_or_raise(30) == "first.mha" and job.reported and job.fraction == 1.0
        assert "a line between events" in job.log and worker.ready_after_s is not None
        pid = worker.process.pid
        assert worker.submit({"output": "second.mha"}).wait(30) == JobState.DONE and worker.process.pid == pid

        crashed = worker.submit({"output": "x", "crash": True})
        with pytest.raises(JobFailed, match=r"worker stopped unexpectedly \(exit code 139\): .*out of memory"):
            crashed.result_or_raise(30)
        assert not crashed.reported and worker.process is None  # the next request starts a new process

        waiting = worker.submit({"output": "y", "wait": True})
        poll_until(waiting, lambda: waiting.state == JobState.RUNNING)
        waiting.cancel()
        assert waiting.state == JobState.CANCELLED and worker.process is None
    finally:
        worker.stop()
