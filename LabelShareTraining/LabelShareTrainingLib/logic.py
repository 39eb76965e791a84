"""The LabelShareTraining module's logic, without Qt: tasks, collected cases, and one background training run.

The module's ``LabelShareTrainingLogic`` delegates to one :class:`TrainingLogic`; scripts and tests use it directly.

Usage::

    logic = TrainingLogic(workspace="~/labelshare-tasks", models_dir="~/.labelshare/models")
    logic.create_task("liver", ["liver", "tumour"])
    logic.add_case("liver", volumeNode, segmentationNode)              # may raise UnmatchedSegmentsError
    outcome = logic.train("liver", model="~/.labelshare/models/abdomen-v2", budget="quick")   # blocks
    request = logic.plan("liver", model, "quick", "auto"); logic.start(request)   # GUI: poll() from a timer

Tasks are the tasks of the selected model plus the task folders (nnU-Net raw layout) in the workspace folder.
A task that only the model has gets a workspace folder with the model's labels (names and ids) when its first
case is added. A run extends the selected model (``add-task``, or an update for a task the model has) or, with no
model, trains a first one (whose label space the job builds first); it runs as a child process
(:class:`LabelShareLib.jobs.ProcessJob`) under the one-job lock (:mod:`.lock`), and Stop asks it to save a
resumable checkpoint (SIGTERM) before the process tree is killed after a grace period. Planning a run
(:meth:`TrainingLogic.plan`, :meth:`TrainingLogic.readiness`) reads no case and writes no file: the module's
buttons ask it on every refresh. A published version is announced on the model store's ``changed`` notification
(:mod:`LabelShareLib.store`), so that LabelShareSegmentation lists it at once.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from labelshare.core.config import DEFAULT_DEVICE
from labelshare.core.errors import DataError, LabelShareError
from labelshare.core.fileio import atomic_write_json, read_json
from labelshare.core.forgetting import ForgettingReport
from labelshare.core.labelspace import LabelSpace
from labelshare.core.modelfolder import read_memory
from labelshare.core.naming import check_task_name
from labelshare.core.paths import labelshare_home, recorded_task_folders, user_models_dir
from labelshare.core.taskfolders import CaseSummary, TaskCollection, copy_task, create_task, list_task_folders
from LabelShareLib.jobs import JobState, ProcessJob, child_environment, engine_command
from LabelShareLib.store import ModelStore, default_store, version_of

from .cases import CaseExport, add_case_from_nodes, open_case
from .lock import HEARTBEAT_INTERVAL_S, TrainingLock
from .runs import (DEFAULT_BUDGET, TrainingProgress, TrainingRequest, discard_run, jobs_dir, next_version_path,
                   unfinished_runs)

DEFAULT_STOP_GRACE_S = 30.0  # time the engine gets to write its checkpoint after Stop before the tree is killed
TRAINED_MARKER = ".labelshare-trained.json"  # in a task folder: the cases its last published run was started with
KILL_REAP_S = 5.0  # how long stop() waits to see a killed process end


def default_workspace() -> Path:
    """Where task folders are collected unless the user's settings say otherwise."""
    return labelshare_home() / "tasks"


@dataclass
class TaskRow:
    """A row of the task list: a task of the selected model, a workspace folder, or both (not the engine's
    ``labelspace.TaskEntry``, which is a task of a label space)."""

    name: str
    in_model: bool
    folder: Path | None
    labels: dict[str, int]
    cases: int = 0
    valid: bool = True
    reason: str = ""

    @property
    def action(self) -> str:
        """What training does for this task: "Update" a task the model has, else "Train" it into the model."""
        return "Update" if self.in_model else "Train"


@dataclass
class TrainingOutcome:
    """How a run ended: ``published`` (``model`` is the new version), ``refused`` (the regression gate kept the old
    model; ``report`` says why), ``stopped`` (resumable when :attr:`resumable`), or ``failed`` (``message``)."""

    state: str
    request: TrainingRequest
    message: str = ""
    model: Path | None = None
    report: ForgettingReport | None = None
    resumable: bool = False


def parse_label_text(text: str) -> list[str] | dict[str, int]:
    """Label names typed in "New task…": ``"liver, tumour"`` (ids 1, 2 in this order) or ``"liver=1, tumour=5"``
    (ids chosen); commas, semicolons or new lines separate labels."""
    items = [item.strip() for item in re.split(r"[,;\n]", text) if item.strip()]
    if not items:
        raise DataError("give at least one label name, e.g. 'liver, tumour'")
    with_ids = [item for item in items if "=" in item]
    if not with_ids:
        return items
    if len(with_ids) != len(items):
        raise DataError("give an id to every label or to none (e.g. 'liver=1, tumour=2')")
    labels = {}
    for item in items:
        name, _, value = item.rpartition("=")
        if not value.strip().isdigit():
            raise DataError(f"label '{item}': the id after '=' must be a whole number")
        if name.strip() in labels:
            raise DataError(f"label '{name.strip()}' is given twice")
        labels[name.strip()] = int(value)
    return labels


def why_cannot_add_case(volume_node, segmentation_node, entry: TaskRow | None) -> str:
    """Why "Add current case" is disabled ('' when it can run): shown as the button's tooltip."""
    if entry is None:
        return "Choose a task or create one (New task…)."
    if not entry.valid:
        return entry.reason
    if volume_node is None:
        return "Select the volume of the case."
    if segmentation_node is None:
        return "Select the segmentation of the case."
    return ""


def why_cannot_train(entry: TaskRow | None, running_here: bool, holder=None) -> str:
    """Why "Train"/"Update" is disabled ('' when it can start); ``holder`` is the live lock of another job."""
    if running_here:
        return ""
    if holder is not None:
        return (f"A training job ({holder.description}) started {holder.started} is still running; wait for it to "
                "finish.")
    if entry is None:
        return "Choose a task or create one (New task…)."
    if not entry.valid:
        return entry.reason
    if not entry.cases:
        return f"Task '{entry.name}' has no collected cases yet: add at least one case."
    return ""


class TrainingLogic:
    """Tasks, cases and training runs of one user (see the module docstring).

    :param workspace: folder of the task folders (default :func:`default_workspace`).
    :param models_dir: where new model versions are written: the models folder LabelShareSegmentation lists.
    :param lock: the one-job lock (default: the user's ``training.lock``).
    :param engine: builds a child command line from engine arguments (default ``python -m labelshare ...``).
    :param store: the model store to check and announce new versions in (default: the one both modules share).
    """

    def __init__(self, workspace: str | Path | None = None, models_dir: str | Path | None = None,
                 lock: TrainingLock | None = None, stop_grace_s: float = DEFAULT_STOP_GRACE_S,
                 engine: Callable[..., list[str]] = engine_command, store: ModelStore | None = None):
        self.workspace = Path(workspace).expanduser() if workspace else default_workspace()
        if models_dir:
            self.models_dir = Path(models_dir).expanduser()
        else:
            self.models_dir = user_models_dir()
        self.lock = lock or TrainingLock()
        self.stop_grace_s = stop_grace_s
        self.engine = engine
        self._store = store
        self.job: ProcessJob | None = None
        self.request: TrainingRequest | None = None
        self.progress = TrainingProgress()
        self.outcome: TrainingOutcome | None = None
        self._cases_at_start: list[str] = []
        self._last_heartbeat = 0.0
        self._lock_child: int | None = None  # the process the lock names (the job's current command)

    @property
    def store(self) -> ModelStore:
        """The model store given, else the one both modules share (looked up on every use: a developer reload of
        LabelShareLib replaces it)."""
        return self._store if self._store is not None else default_store()

    # -- tasks ----------------------------------------------------------------------------------------------------
    @staticmethod
    def model_tasks(model: str | Path | None) -> dict[str, dict[str, int]]:
        """{task: {label name: id}} of a model folder ({} without a model)."""
        if not model:
            return {}
        space = LabelSpace.load(Path(model) / "labelspace.json")
        return {name: {label.name: label.id for label in sorted(space.task(name).labels, key=lambda e: e.id)}
                for name in space.task_names}

    def task_entries(self, model: str | Path | None = None) -> list[TaskRow]:
        """The model's tasks (in its order), then the workspace's other task folders (by name)."""
        model_tasks = self.model_tasks(model)
        folders = {summary.name: summary for summary in list_task_folders(self.workspace)}
        entries = []
        for name in list(model_tasks) + sorted(set(folders) - set(model_tasks)):
            folder = folders.get(name)
            entry = TaskRow(name=name, in_model=name in model_tasks, folder=folder.path if folder else None,
                              labels=dict(model_tasks.get(name) or (folder.labels if folder else {})),
                              cases=folder.cases if folder else 0)
            if folder is not None and not folder.valid:
                entry.valid, entry.reason = False, folder.reason
            elif folder is not None and entry.in_model and folder.labels != model_tasks[name]:
                entry.valid = False
                entry.reason = (f"{folder.path / 'dataset.json'}: labels {folder.labels} differ from task '{name}' of "
                                f"the model {model_tasks[name]}; collect into a task with another name")
            entries.append(entry)
        return entries

    def create_task(self, name: str, labels: list[str] | Mapping[str, int]) -> TaskCollection:
        """A new task folder in the workspace ("New task…"); labels as names (ids 1, 2, ...) or {name: id}."""
        return create_task(self.workspace, name, labels, description=f"Cases collected in 3D Slicer for '{name}'")

    def task_folder(self, task: str) -> Path:
        """The workspace folder of a task; the name (from the GUI, a model's label space, a lineage) must be a plain
        folder name (labelshare.core.naming), so that no task leads outside the workspace."""
        return self.workspace / check_task_name(task)

    def collection(self, task: str) -> TaskCollection:
        folder = self.task_folder(task)
        if not (folder / "dataset.json").is_file():
            raise DataError(f"{folder}: task '{task}' has no folder in the workspace yet; add a case first")
        return TaskCollection.open(folder, task)

    def ensure_task_folder(self, task: str, model: str | Path | None = None) -> TaskCollection:
        """The workspace folder of a task. For a task only the model has, it is made from the folder the model
        was trained on when the model's lineage records it (so that an update trains on the old cases and the new
        ones; that folder itself is never written), else it starts empty with the model's label names and ids."""
        if (self.task_folder(task) / "dataset.json").is_file():
            return self.collection(task)
        model_tasks = self.model_tasks(model)
        if task not in model_tasks:
            raise DataError(f"task '{task}' is neither in the workspace {self.workspace} nor in the selected model")
        trained_on = recorded_task_folders(model).get(task) if model else None
        if trained_on is not None:
            return copy_task(trained_on, self.workspace, task)
        return create_task(self.workspace, task, model_tasks[task],
                           description=f"Cases collected in 3D Slicer for task '{task}' of {Path(model).name}")

    # -- cases ----------------------------------------------------------------------------------------------------
    def add_case(self, task: str, volume_node, segmentation_node, model: str | Path | None = None,
                 choices: Mapping[str, str | None] | None = None, duplicate: str = "refuse") -> CaseExport:
        """"Add current case" (see :func:`.cases.add_case_from_nodes` for ``choices`` and ``duplicate``)."""
        return add_case_from_nodes(self.ensure_task_folder(task, model), volume_node, segmentation_node, choices,
                                   duplicate)

    def cases(self, task: str) -> list[CaseSummary]:
        if not (self.task_folder(task) / "dataset.json").is_file():
            return []
        return self.collection(task).cases()

    def open_case(self, task: str, case: str, scene=None):
        return open_case(self.collection(task), case, scene)

    def remove_case(self, task: str, case: str) -> Path:
        return self.collection(task).remove_case(case)

    def new_cases_since_training(self, task: str) -> int:
        """Cases of the task folder that its last published run did not start with (all when never trained)."""
        if not (self.task_folder(task) / "dataset.json").is_file():
            return 0
        collection = self.collection(task)
        marker = collection.root / TRAINED_MARKER
        trained = set(read_json(marker, "training marker").get("cases", [])) if marker.is_file() else set()
        return len(set(collection.case_names()) - trained)

    def should_train_automatically(self, task: str, after_cases: int) -> bool:
        """True when automatic training is on (``after_cases`` > 0), no run is active and enough new cases exist."""
        return after_cases > 0 and not self.running and self.new_cases_since_training(task) >= after_cases

    # -- runs -----------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.state.finished

    def plan(self, task: str, model: str | Path | None, budget: str = DEFAULT_BUDGET,
             device: str = DEFAULT_DEVICE) -> TrainingRequest:
        """The run "Train"/"Update" would start: add-task or update of ``model``, or a first model without one.
        Reads no case and writes nothing (the buttons ask on every refresh); raises with why no run can start."""
        collection = self.collection(task)
        if not collection.case_names():
            raise DataError(f"task '{task}' has no cases yet; add at least one case before training")
        if not model:
            out = next_version_path(self.models_dir, collection.name)
            return TrainingRequest(kind="train", task_name=collection.name, task_dir=str(collection.root),
                                   out=str(out), budget=budget, device=device,
                                   labelspace=str(jobs_dir() / f"{out.name}.labelspace.json"))
        model = Path(model)
        model_tasks = self.model_tasks(model)
        if task in model_tasks and collection.labels != model_tasks[task]:
            raise DataError(f"{collection.root / 'dataset.json'}: labels {collection.labels} differ from task "
                            f"'{task}' of {model.name} {model_tasks[task]}")
        stem, version = version_of(model.name)
        return TrainingRequest(kind="update" if task in model_tasks else "add-task", task_name=task,
                               task_dir=str(collection.root), out=str(next_version_path(self.models_dir, stem,
                                                                                         version + 1)),
                               base_model=str(model), budget=budget, device=device,
                               replay_tasks=self.replay_sources(model, model_tasks, task))

    def readiness(self, task: str, model: str | Path | None, budget: str = DEFAULT_BUDGET) -> tuple[str, str]:
        """(why Train cannot start, '' when it can; the budget and time estimate of the run it would start,
        :meth:`TrainingRequest.cost`). Reads no case and writes nothing."""
        try:
            return "", self.plan(task, model, budget).cost()
        except LabelShareError as error:
            return f"{str(error)[0].upper()}{str(error)[1:]}.", ""

    def start(self, request: TrainingRequest, resume: bool = False) -> ProcessJob:
        """Start a run in the background (one at a time: raises :class:`.lock.JobLockedError` otherwise)."""
        if self.running:
            raise LabelShareError(f"a training run is already active: {self.request.description}")
        self.lock.acquire(request.description)
        try:
            request.save_record()
            self.request, self.outcome = request, None
            self.progress = TrainingProgress()
            folder = Path(request.task_dir)
            self._cases_at_start = TaskCollection.open(folder, request.task_name).case_names()
            first, *then = [self.engine(*command) for command in request.commands(resume)]
            self.job = ProcessJob(first, env=child_environment(request.device), stop_grace_s=self.stop_grace_s,
                                  then_run=then, on_event=self.progress.update, import_result=self._published)
            self._lock_child = self.job.process.pid
            self.lock.set_child(self._lock_child)
            self._last_heartbeat = time.monotonic()
        except BaseException:
            if self.job is not None and not self.job.state.finished:
                self.job.cancel()
            self.lock.release()
            raise
        return self.job

    def poll(self, timeout: float = 0.0) -> JobState | None:
        """Take in the run's progress (GUI timer), refresh the lock's heartbeat, finish up when it has ended."""
        if self.job is None:
            return None
        state = self.job.poll(timeout)
        if not state.finished and self._lock_child != self.job.process.pid:
            self._lock_child = self.job.process.pid  # the job's next command (a first model: its training)
            self.lock.set_child(self._lock_child)
        if not state.finished:
            if time.monotonic() - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
                self._last_heartbeat = time.monotonic()
                try:
                    self.lock.heartbeat()
                except LabelShareError as error:  # the lock file was deleted or taken: the run itself goes on
                    self.job.add_log(f"training lock: {error}")
        elif self.outcome is None:
            self._finish()
        return state

    def stop(self, wait_s: float | None = None, on_wait: Callable[[float], None] | None = None) -> None:
        """Stop the run: the engine saves a resumable checkpoint, then the process tree is killed (after the grace
        period). ``wait_s`` blocks until it has ended, killing the tree at that deadline (module cleanup, closing
        Slicer); meanwhile ``on_wait(seconds_left)`` is called about every 0.1 s (a progress display)."""
        if not self.running:
            return
        self.job.cancel()
        if wait_s is not None:
            deadline = time.monotonic() + wait_s
            while not self.job.state.finished and time.monotonic() < deadline:
                self.job.poll(0.1)
                if on_wait is not None:
                    on_wait(max(deadline - time.monotonic(), 0.0))
            if not self.job.state.finished:
                self.job.process.kill()
                reaped_by = time.monotonic() + KILL_REAP_S  # a killed tree ends at once, but is seen a moment later
                while not self.job.state.finished and time.monotonic() < reaped_by:
                    self.job.poll(0.1)
        self.poll()

    def wait(self, timeout: float | None = None) -> TrainingOutcome:
        """Block until the run has ended (scripts, tests); returns its outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"training still running after {timeout} s")
            self.poll(0.1)
        self.poll()
        return self.outcome

    def train(self, task: str, model: str | Path | None = None, budget: str = DEFAULT_BUDGET,
              device: str = DEFAULT_DEVICE, timeout: float | None = None) -> TrainingOutcome:
        """Plan, start and wait for a run (the console API)."""
        self.start(self.plan(task, model, budget, device))
        return self.wait(timeout)

    def unfinished_runs(self) -> list[TrainingRequest]:
        """Stopped, interrupted or refused runs of this user that can be resumed, published or discarded."""
        active = self.request.out if self.running else None
        return [run for run in unfinished_runs() if run.out != active]

    def resume(self, request: TrainingRequest) -> ProcessJob:
        return self.start(request, resume=True)

    def publish_anyway(self, request: TrainingRequest) -> ProcessJob:
        """Publish a version the regression gate refused (the engine does not train again)."""
        return self.start(dataclasses.replace(request, accept_regression=True), resume=True)

    def discard(self, request: TrainingRequest) -> None:
        """Keep the old model: delete an unpublished run (never a published version)."""
        if self.running and self.request.out == request.out:
            raise LabelShareError("stop the run before discarding it")
        discard_run(request)

    # -- internals --------------------------------------------------------------------------------------------------
    def replay_sources(self, model: Path, model_tasks: Mapping[str, dict], task: str) -> dict[str, str]:
        """Where the run finds the cases of the model's other tasks (to rehearse them, so that they are not
        forgotten): the folders the model's lineage records are found by the engine, and so is the model's own
        rehearsal memory; a task folder of the workspace is passed on (a folder holds more cases than a memory).
        The one place that decides this. Raises naming the tasks whose cases are nowhere. Reads ``memory.json``,
        not the cases."""
        recorded = recorded_task_folders(model)
        memory = read_memory(model, LabelSpace.load(model / "labelspace.json"))
        in_memory = set(memory.tasks) if memory is not None else set()
        folders, missing = {}, []
        for name in model_tasks:
            if name == task or name in recorded:
                continue
            local = self.task_folder(name)
            if (local / "dataset.json").is_file():
                folders[name] = str(local)
            elif name not in in_memory:
                missing.append(name)
        if missing:
            held = "holds no rehearsal memory" if memory is None else (
                "was made without a rehearsal memory" if not memory.patient_images
                else f"has no rehearsal memory of {', '.join(missing)}")
            raise DataError(f"{model}: {held}, and the workspace {self.workspace} has no folder of its task(s) "
                            f"{', '.join(missing)}; put those tasks' nnU-Net folders into the workspace")
        return folders

    def _published(self, done_event: dict) -> Path:
        """On success: the new version exists and is complete (checked by the store, which keeps the result for
        the model lists); remember which cases it was trained with."""
        model = Path(done_event.get("output") or self.request.out)
        self.store.verify(model)
        marker = Path(self.request.task_dir) / TRAINED_MARKER
        atomic_write_json(marker, {"model": str(model), "cases": self._cases_at_start,
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        return model

    def _finish(self) -> None:
        self.lock.release()
        request, job, progress = self.request, self.job, self.progress
        if job.state == JobState.DONE:
            self.outcome = TrainingOutcome("published", request, (job.done_event or {}).get("message", ""),
                                           model=job.result,
                                           report=ForgettingReport.of_model(job.result))
            request.remove_record()
            self.store.changed.notify(job.result)  # e.g. LabelShareSegmentation's model list shows it
            return
        run_state = request.state()
        if job.state == JobState.FAILED and progress.regression:
            report = ForgettingReport.read(progress.report_path) if progress.report_path else None
            self.outcome = TrainingOutcome("refused", request, job.error, report=report, resumable=True)
        elif job.state == JobState.CANCELLED or progress.interrupted:
            self.outcome = TrainingOutcome("stopped", request, "stopped; the previous model is unchanged",
                                           resumable=run_state == "interrupted")
        else:
            self.outcome = TrainingOutcome("failed", request, job.error, resumable=run_state == "interrupted")
        if run_state == "gone":
            request.remove_record()
