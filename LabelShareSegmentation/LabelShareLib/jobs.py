"""Background jobs: child processes that speak the progress protocol, polled without ever blocking the GUI.

No Qt here, so the same code runs in Slicer (polled from a ``qt.QTimer``), in scripts and in tests (``wait()``).
Two kinds of job share one state machine (:class:`Job`):

- :class:`ProcessJob`: one child process per job, e.g. ``python -m labelshare train ... --progress json``; the job
  ends when the process exits.
- :class:`WorkerJob`: one request to a persistent ``labelshare worker`` child (:class:`WorkerProcess`; the engine's
  side of it is ``labelshare.engine.worker.WorkerServer``), which answers with the same events tagged with the request
  id; the process outlives the job.

States: ``preparing`` → ``running`` (the engine's ``stage``, e.g. "segmenting" or "training", is in
:attr:`Job.stage`) → ``importing`` (the caller's ``import_result`` runs on the polling thread, which is Slicer's
main thread) → ``done``; or ``failed`` / ``cancelled``. Cancel kills the child and all its descendants (psutil).

Usage (a training job in the LabelShareTraining module)::

    job = ProcessJob(engine_command("train", "--labelspace", ..., "--progress", "json"), stop_grace_s=30)
    timer.connect("timeout()", lambda: update_gui(job.poll()))    # GUI: poll every 100 ms
    job.wait()                                                      # scripts and tests: block until finished
"""

from __future__ import annotations

import abc
import enum
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labelshare.core.config import DEFAULT_DEVICE, DEVICES, parse_device
from labelshare.core.errors import LabelShareError
from labelshare.core.progress import parse_event

from .application import python_executable
from .signals import Signal

LOG_LINES = 500  # lines kept in a job's log (older lines are dropped)
LOG_LINE_CHARACTERS = 2000
POLL_INTERVAL_S = 0.05


class JobState(str, enum.Enum):
    PREPARING = "preparing"
    RUNNING = "running"
    IMPORTING = "importing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class JobFailed(LabelShareError):
    """A job ended in the failed state; the message is the reason."""


class JobCancelled(LabelShareError):
    """A job was cancelled before it finished."""


def engine_command(*arguments: str) -> list[str]:
    """``python -m labelshare ARGUMENTS...`` for a child process."""
    return [python_executable(), "-m", "labelshare", *arguments]


def child_environment(device: str = DEFAULT_DEVICE, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of an engine child: ``labelshare`` importable from wherever this module runs (source checkout
    or installed extension), and no GPU visible when ``device`` is ``cpu`` (``CUDA_VISIBLE_DEVICES=-1``), so that
    even library code that would pick the GPU by itself stays on the CPU."""
    import labelshare
    env = dict(os.environ if base is None else base)
    engine_parent = str(Path(labelshare.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([engine_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive when they are written
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def device_choice(text: str | None) -> str:
    """A device word as one of the items the device combos offer (the engine's ``DEVICES``: auto, cuda, cpu):
    ``gpu`` and ``GPU`` (older settings) are ``cuda``, ``cuda:N`` is offered as ``cuda``, anything else ``auto``."""
    try:
        device = parse_device(text or "auto")
    except LabelShareError:
        return "auto"
    return device if device in DEVICES else "cuda"


class ChildProcess:
    """A child process whose stdout and stderr lines are collected by two reader threads.

    :meth:`read` never blocks longer than asked, so a GUI can poll it from a timer.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, stdin_pipe: bool = False):
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0  # no console window on Windows
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, text=True, encoding="utf-8", errors="replace", bufsize=1,
            creationflags=flags)
        self.pid = self.popen.pid
        self._lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._open_streams = 2
        for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True, name=f"child-{self.pid}-{name}"
                             ).start()

    def _pump(self, name: str, stream) -> None:
        for line in stream:
            self._lines.put((name, line.rstrip("\r\n")))
        self._lines.put((name, None))

    def read(self, timeout: float = 0.0) -> list[tuple[str, str]]:
        """(stream name, line) pairs received so far; waits up to ``timeout`` seconds for the first one."""
        received = []
        try:
            item = self._lines.get(timeout=timeout) if timeout > 0 else self._lines.get_nowait()
            while True:
                if item[1] is None:
                    self._open_streams -= 1
                else:
                    received.append(item)
                item = self._lines.get_nowait()
        except queue.Empty:
            return received

    @property
    def exit_code(self) -> int | None:
        """None while running (or while its output is still being read), else the exit status."""
        if self._open_streams > 0:
            return None
        return self.popen.poll()

    def send(self, line: str) -> None:
        """Write one line to the child's stdin; raises BrokenPipeError/OSError when the child has gone."""
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def _tree(self) -> list:
        import psutil  # imported here: the module must load in Slicer before the first-run dependency install
        try:
            parent = psutil.Process(self.pid)
            return parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            return []

    def terminate(self) -> list:
        """Ask the child and all its descendants to stop (SIGTERM; on Windows this already kills them); returns
        the processes, for :meth:`kill` to finish off after a grace period."""
        import psutil
        tree = self._tree()
        for process in tree:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        return tree

    def kill(self, tree: list | None = None) -> None:
        """Kill the child and all its descendants (and ``tree``) now, and wait until they are gone."""
        import psutil
        tree = self._tree() + (tree or [])
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=5)
        self.popen.wait(timeout=5)
        if self.popen.stdin:
            try:
                self.popen.stdin.close()
            except OSError:
                pass

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Job(abc.ABC):
    """State, progress, capped log and result of one unit of background work (see the module docstring).

    :param import_result: called with the final ``done`` event on the polling thread while the job is in the
        ``importing`` state; its return value becomes :attr:`result`, an exception fails the job.
    :param on_event: called with every protocol event of the job (to record timings or metrics).

    :attr:`ended` is notified once, with the job, when it reaches ``done``, ``failed`` or ``cancelled``;
    :attr:`notes` are what the user should read besides the progress (e.g. "segmented as its luminance", or a
    ``warning`` event's message: the input check's); :attr:`warnings` are the ``warning`` events themselves.
    """

    def __init__(self, import_result: Callable[[dict], Any] | None = None,
                 on_event: Callable[[dict], None] | None = None, log_lines: int = LOG_LINES):
        self.state = JobState.PREPARING
        self.stage = "preparing"
        self.fraction = 0.0
        self.message = ""
        self.error = ""
        self.result: Any = None
        self.done_event: dict | None = None
        self.log: deque[str] = deque(maxlen=log_lines)
        self.lines_added = 0  # lines ever added to the log (a GUI appends the ones it has not shown yet)
        self.started_s = time.monotonic()
        self.finished_s: float | None = None
        self.error_event: dict | None = None
        self.notes: list[str] = []
        self.warnings: list[dict] = []
        self.ended = Signal("a job's end")
        self._import_result = import_result
        self._on_event = on_event

    @abc.abstractmethod
    def poll(self, timeout: float = 0.0) -> JobState:
        """Take in what the child reported (waiting up to ``timeout`` seconds), advance, return the state."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the work; the job ends ``cancelled`` and never imports."""

    # -- common -------------------------------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job has finished (scripts, tests, the console API); returns the final state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.state.finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job still {self.state.value} after {timeout} s")
            self.poll(POLL_INTERVAL_S)
        return self.state

    def result_or_raise(self, timeout: float | None = None) -> Any:
        """:meth:`wait`, then the result; raises :class:`JobFailed` / :class:`JobCancelled` otherwise."""
        state = self.wait(timeout)
        if state == JobState.CANCELLED:
            raise JobCancelled("cancelled")
        if state == JobState.FAILED:
            raise JobFailed(self.error)
        return self.result

    @property
    def elapsed_s(self) -> float:
        return (self.finished_s or time.monotonic()) - self.started_s

    @property
    def status_text(self) -> str:
        """One line for a progress bar or status label."""
        if self.state == JobState.RUNNING:
            return f"{self.stage.capitalize()} {100 * self.fraction:.0f} %"
        if self.state == JobState.FAILED:
            return f"Failed: {self.error}"
        return self.state.value.capitalize()

    def log_lines_after(self, shown: int) -> list[str]:
        """The lines added after the first ``shown`` ones that the capped log still holds (what a GUI appends)."""
        new = min(self.lines_added - shown, len(self.log))
        return list(self.log)[-new:] if new > 0 else []

    def add_log(self, line: str) -> None:
        self.lines_added += 1
        self.log.append(line if len(line) <= LOG_LINE_CHARACTERS else line[:LOG_LINE_CHARACTERS] + " …")

    # -- what the process side (ProcessJob.poll, WorkerProcess.pump) reports into the job ----------------------------
    def handle_event(self, event: dict) -> None:
        """Take in one protocol event of this job (progress, log, metrics, done, error)."""
        kind = event["event"]
        if kind == "progress":
            self.stage = str(event.get("stage") or self.stage)
            self.fraction = float(event.get("fraction") or 0.0)
            self.message = str(event.get("message") or "")
            if self.stage != "preparing" and self.state == JobState.PREPARING:
                self.state = JobState.RUNNING
        elif kind == "log":
            self.add_log(str(event.get("message", "")))
        elif kind == "warning":
            self.warnings.append(event)
            self.notes.append(str(event.get("detail") or event.get("message", "")))  # detail: without a file name
            self.add_log(f"warning: {event.get('message', '')}")
        elif kind == "done":
            self.fraction = 1.0
            self.done_event = event
        elif kind == "error":
            self.error_event = event
            self.add_log(f"error: {event.get('message', '')}")
        if self._on_event is not None:
            self._on_event(event)

    @property
    def reported(self) -> bool:
        """The child sent this job's final event (``done`` or ``error``)."""
        return self.done_event is not None or self.error_event is not None

    def fail(self, reason: str) -> None:
        """End the job as failed with the reason shown to the user (e.g. the child died)."""
        self.error = reason
        self._end(JobState.FAILED)

    def mark_cancelled(self) -> None:
        """End the job as cancelled (its process was stopped)."""
        self._end(JobState.CANCELLED)

    def _end(self, state: JobState) -> None:
        self.state = state
        self.finished_s = time.monotonic()
        self.ended.notify(self)

    def last_lines(self, count: int = 3) -> str:
        """The last lines of the log on one line, for a failure message."""
        return " | ".join(list(self.log)[-count:])

    def _finish_reported(self) -> None:
        """End after the child's final event: import on success, fail on an error event.

        The import runs on the poll after the one that saw the ``done`` event, so that a GUI shows "Importing"
        before the (main-thread) import starts."""
        if self.done_event is not None:
            if self.state != JobState.IMPORTING:
                self.state = JobState.IMPORTING
                return
            try:
                if self._import_result is not None:
                    self.result = self._import_result(self.done_event)
            except Exception as error:  # shown to the user; the traceback goes to the log for a bug report
                self.add_log(traceback.format_exc())
                self.fail(str(error) or type(error).__name__)
                return
            self._end(JobState.DONE)
        else:
            self.fail(str(self.error_event.get("message") or "failed without a message"))


class ProcessJob(Job):
    """A child process per job: e.g. ``ProcessJob(engine_command("train", ..., "--progress", "json"))``.

    :param stop_grace_s: on :meth:`cancel`, seconds the child gets to stop by itself (SIGTERM: the engine's
        training saves a resumable checkpoint) before the whole tree is killed; 0 kills at once.
    :param then_run: further command lines, each started when the one before ended with its ``done`` event (e.g.
        the label space of a first model, then its training): one job, one log; it is done when the last is.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, stop_grace_s: float = 0.0,
                 then_run: list[list[str]] | tuple = (), **job_options):
        super().__init__(**job_options)
        self.env = env or child_environment()
        self.process = ChildProcess(argv, env=self.env)
        self.remaining = [list(command) for command in then_run]
        self.stop_grace_s = stop_grace_s
        self._cancel_requested = False
        self._kill_deadline: float | None = None
        self._terminated_tree: list = []

    def poll(self, timeout: float = 0.0) -> JobState:
        if self.state.finished:
            return self.state
        for stream, line in self.process.read(timeout):
            event = parse_event(line) if stream == "stdout" else None
            if event is not None:
                self.handle_event(event)
            else:
                self.add_log(line)
        if self._kill_deadline is not None and time.monotonic() > self._kill_deadline:
            self.process.kill(self._terminated_tree)
            self._kill_deadline = None
        exit_code = self.process.exit_code
        if exit_code is None:
            return self.state
        if self._cancel_requested:
            self.mark_cancelled()
        elif exit_code == 0 and self.done_event is not None and self.remaining:
            self.done_event = None  # the next command's done event ends the job
            self.process = ChildProcess(self.remaining.pop(0), env=self.env)
        elif (exit_code == 0 and self.done_event is not None) or self.error_event is not None:
            self._finish_reported()
        else:
            self.fail(f"the engine process stopped unexpectedly (exit code {exit_code})"
                      + (f": {self.last_lines()}" if self.log else ""))
        return self.state

    def cancel(self) -> None:
        if self.state.finished or self._cancel_requested:
            return
        self._cancel_requested = True
        self.add_log("cancel requested")
        if self.stop_grace_s > 0 and self.process.alive:
            self._terminated_tree = self.process.terminate()
            self._kill_deadline = time.monotonic() + self.stop_grace_s
        else:
            self.process.kill()
            self.mark_cancelled()

    @property
    def status_text(self) -> str:
        if self._cancel_requested and not self.state.finished:
            return "Stopping…"
        return super().status_text


class WorkerProcess:
    """A persistent ``labelshare worker`` child (the engine's ``WorkerServer``) serving one :class:`WorkerJob` at a
    time.

    It is started on the first :meth:`submit` and keeps its loaded models until :meth:`stop` (Cancel, another
    model or device, scene close, module cleanup). ``device`` is fixed for the life of the process because CPU
    is forced through the environment (``CUDA_VISIBLE_DEVICES=-1``).
    """

    def __init__(self, device: str = DEFAULT_DEVICE, argv: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.device = device
        self.argv = argv or engine_command("worker")
        self.env = env or child_environment(device)
        self.process: ChildProcess | None = None
        self.current: WorkerJob | None = None
        self.started_s: float | None = None
        self.ready_after_s: float | None = None  # process start to "ready" (interpreter start plus imports)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def busy(self) -> bool:
        return self.current is not None and not self.current.state.finished

    def start(self) -> None:
        """Start the process unless it is running (:meth:`submit` calls this)."""
        if self.running:
            return
        self.stop()
        self.started_s = time.monotonic()
        self.ready_after_s = None
        self.process = ChildProcess(self.argv, env=self.env, stdin_pipe=True)

    def submit(self, request: dict, **job_options) -> WorkerJob:
        """Send a request (``id`` is added) and return its job."""
        if self.busy:
            raise LabelShareError("the LabelShare worker is still busy with the previous request")
        self.start()
        job = WorkerJob(self, f"r{uuid.uuid4().hex[:12]}", **job_options)
        self.current = job
        try:
            self.process.send(json.dumps({**request, "id": job.request_id}))
        except OSError:
            job.fail(self._stopped_reason())
        return job

    def stop(self) -> None:
        """Kill the worker process tree; a request in progress ends cancelled."""
        if self.current is not None and not self.current.state.finished:
            self.current.mark_cancelled()
        if self.process is not None:
            self.process.kill()
        self.process = None

    def pump(self, timeout: float = 0.0) -> None:
        """Route the worker's output to the current job; fail it if the worker died."""
        if self.process is None:
            return
        for stream, line in self.process.read(timeout):
            event = parse_event(line) if stream == "stdout" else None
            if event is not None and event.get("worker") == "ready":
                self.ready_after_s = time.monotonic() - self.started_s
            elif self.current is None or self.current.state.finished:  # between requests: Slicer's log
                logging.info("LabelShare worker: %s", line)
            elif event is not None and event.get("request") == self.current.request_id:
                self.current.handle_event(event)  # may cancel the job, which stops this worker
            else:
                self.current.add_log(line)
        if self.process is not None and self.process.exit_code is not None:
            if self.current is not None and not self.current.state.finished and not self.current.reported:
                self.current.fail(self._stopped_reason())
            logging.info("LabelShare worker exited with code %s", self.process.exit_code)
            self.process = None

    def _stopped_reason(self) -> str:
        code = self.process.exit_code if self.process is not None else None
        lines = self.current.last_lines() if self.current is not None and self.current.log else ""
        return (f"the LabelShare worker stopped unexpectedly (exit code {code})" + (f": {lines}" if lines else ""))


class WorkerJob(Job):
    """One request to a :class:`WorkerProcess`; cancelling it stops the worker (the only way to interrupt torch)."""

    def __init__(self, worker: WorkerProcess, request_id: str, **job_options):
        super().__init__(**job_options)
        self.worker = worker
        self.request_id = request_id

    def poll(self, timeout: float = 0.0) -> JobState:
        if self.state.finished:
            return self.state
        self.worker.pump(timeout)
        if not self.state.finished and self.reported:
            self._finish_reported()
        return self.state

    def cancel(self) -> None:
        if not self.state.finished:
            self.add_log("cancel requested")
            self.worker.stop()
            if not self.state.finished:  # a worker that was not serving this job any more
                self.mark_cancelled()
