"""What a training run is: the engine command it runs, where its model goes, how its progress and result read.

A run is one ``labelshare`` command in a child process (the module never trains in Slicer's process):

- ``add-task`` adds a new task to the selected model ("Train");
- ``update`` is ``add-task`` for a task the model already has: the engine retrains it with the folder's cases;
- ``train`` makes a first model from one task when no model is selected; its label space (which reads every case)
  is built in the same job, by ``labelshare labelspace build`` before ``labelshare train`` (:meth:`TrainingRequest.
  commands`), never in Slicer's process.

New versions are named ``<stem>-v<N>`` in the models folder that LabelShareSegmentation lists; old versions are
only read, so rolling back is choosing an older version. Every run leaves a record in the ``jobs`` folder of the
LabelShare home with its request, so that a run that was stopped, whose Slicer closed or crashed, or that the
regression gate refused can be resumed, published anyway, or discarded later. The engine keeps such a run in
hidden folders beside the requested model folder; what they are and what state they mean is the engine's
(``labelshare.core.modelfolder.run_work_folders``/``run_state``, ``labelshare.core.paths.refused_report_paths``).

Only the engine's light modules are imported (no torch): Slicer loads the module before the first-run dependency
install.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labelshare.core.budget import add_task_epochs, estimate
from labelshare.core.config import DEFAULT_DEVICE, AddTaskConfig, TrainConfig, parse_device
from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import atomic_write_json, read_json, remove_tree
from labelshare.core.modelfolder import run_state, run_work_folders
from labelshare.core.paths import labelshare_home, refused_report_paths
from labelshare.core.progress import format_duration
from labelshare.core.taskfolders import TaskCollection

JOB_KINDS = ("add-task", "update", "train")
# Budgets: epochs x steps per epoch, batch size. "quick" takes minutes on a laptop CPU for a small task;
# "standard" adds or updates a task with the engine's budget (epochs None: it grows with the task's labels and cases,
# labelshare.core.budget; the engine's steps per epoch and batch size) and trains a first model for FIRST_MODEL_EPOCHS.
BUDGETS = {
    "quick": {"epochs": 3, "steps_per_epoch": 40, "batch_size": 8},
    "standard": {"epochs": None, "steps_per_epoch": TrainConfig.steps_per_epoch, "batch_size": TrainConfig.batch_size},
}
DEFAULT_BUDGET = "quick"
FIRST_MODEL_EPOCHS = {"quick": 10, "standard": 30}  # a model trained from scratch needs more epochs


def jobs_dir() -> Path:
    return labelshare_home() / "jobs"


def next_version_path(models_dir: Path, stem: str, at_least: int = 1) -> Path:
    """``<models_dir>/<stem>-v<N>`` (the lineage naming of :func:`LabelShareLib.store.version_of`): N at least
    ``at_least`` and above every version of ``stem`` there, finished or not (hidden run folders and refused reports
    count, so a name is never reused)."""
    numbers = [at_least - 1]
    if models_dir.is_dir():
        for path in models_dir.iterdir():
            match = re.match(rf"^\.*{re.escape(stem)}-v(\d+)(\.|$)", path.name)
            if match:
                numbers.append(int(match[1]))
    return models_dir / f"{stem}-v{max(numbers) + 1}"


@dataclass
class TrainingRequest:
    """One run as the user asked for it; :meth:`arguments` is the engine command line (after ``labelshare``).

    The budget's numbers are fixed when the request is made (from :data:`BUDGETS`), so that resuming a run repeats
    its command exactly even if the presets change in between; ``epochs`` None leaves them to the engine's budget
    for the task.
    """

    kind: str
    task_name: str
    task_dir: str
    out: str
    base_model: str | None = None
    budget: str = DEFAULT_BUDGET
    device: str = DEFAULT_DEVICE
    labelspace: str | None = None
    accept_regression: bool = AddTaskConfig.accept_regression
    replay_tasks: dict[str, str] = field(default_factory=dict)
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None

    def __post_init__(self):
        if self.kind not in JOB_KINDS:
            raise LabelShareError(f"unknown run kind '{self.kind}' (known: {', '.join(JOB_KINDS)})")
        if self.budget not in BUDGETS:
            raise LabelShareError(f"unknown budget '{self.budget}' (known: {', '.join(BUDGETS)})")
        preset = BUDGETS[self.budget]
        if self.epochs is None:
            self.epochs = FIRST_MODEL_EPOCHS[self.budget] if self.kind == "train" else preset["epochs"]
        self.steps_per_epoch = self.steps_per_epoch or preset["steps_per_epoch"]
        self.batch_size = self.batch_size or preset["batch_size"]
        self.device = parse_device(self.device)  # "gpu" becomes "cuda"; unknown words raise
        if self.kind == "train" and not self.labelspace:
            raise LabelShareError("a first model ('train') needs a label space file")
        if self.kind != "train" and not self.base_model:
            raise LabelShareError(f"'{self.kind}' needs the model to extend")

    @property
    def description(self) -> str:
        if self.kind == "train":
            return f"first model from task '{self.task_name}' -> {Path(self.out).name}"
        verb = "add task" if self.kind == "add-task" else "update task"
        return f"{verb} '{self.task_name}' in {Path(self.base_model).name} -> {Path(self.out).name}"

    def commands(self, resume: bool = False) -> list[list[str]]:
        """The engine command lines of the run, in order: for a first model, its label space is built first unless
        an earlier attempt of the run built it (it stays beside the run's record until the run is published)."""
        if self.kind == "train" and not Path(self.labelspace).is_file():
            build = ["labelspace", "build", "--task", f"{self.task_name}={self.task_dir}", "--output", self.labelspace,
                     "--progress", "json"]
            return [build, self.arguments(resume)]
        return [self.arguments(resume)]

    def arguments(self, resume: bool = False) -> list[str]:
        task = f"{self.task_name}={self.task_dir}"
        if self.kind == "train":
            command = ["train", "--labelspace", self.labelspace, "--task", task, "--out", self.out]
        else:
            command = ["add-task", "--model", self.base_model, "--task", task, "--out", self.out]
            for name, folder in sorted(self.replay_tasks.items()):
                command += ["--replay-task", f"{name}={folder}"]
            if self.accept_regression:
                command.append("--accept-regression")
        if self.epochs is not None:
            command += ["--epochs", str(self.epochs)]
        command += ["--steps-per-epoch", str(self.steps_per_epoch), "--batch-size", str(self.batch_size),
                    "--device", self.device, "--progress", "json"]
        return command + (["--resume"] if resume else [])

    def cost(self) -> str:
        """The run's budget in steps and, for a run on a model, about how long it takes at the speed that model
        trained (:mod:`labelshare.core.budget`): what the user reads before pressing Train. Reads no case (the task
        folder's listing and the model's training log only) and writes nothing."""
        epochs = self.epochs
        if epochs is None:  # the engine's budget, from the task's labels and training cases
            collection = TaskCollection.open(self.task_dir, self.task_name)
            training_cases = round(len(collection.case_names()) * (1 - TrainConfig.validation_fraction))
            epochs = add_task_epochs(len(collection.labels), max(1, training_cases), self.steps_per_epoch)
        steps = epochs * self.steps_per_epoch
        if self.kind == "train":
            return f"{steps} steps"
        return estimate(self.base_model, steps, distillation=True).describe()

    # -- where the engine keeps an unfinished run ---------------------------------------------------------------------
    def state(self) -> str:
        """The engine's state of this run: ``published``, ``refused`` (trained, waiting: publish anyway or
        discard), ``interrupted`` (resumable) or ``gone`` (nothing was written)."""
        return run_state(self.out)

    # -- records --------------------------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return jobs_dir() / f"{Path(self.out).name}.json"

    def save_record(self) -> Path:
        atomic_write_json(self.record_path, {"format": "labelshare.engine.training-run", "request": asdict(self)})
        return self.record_path

    def remove_record(self) -> None:
        self.record_path.unlink(missing_ok=True)
        if self.labelspace and Path(self.labelspace).parent == jobs_dir():
            Path(self.labelspace).unlink(missing_ok=True)

    @classmethod
    def from_record(cls, path: Path) -> TrainingRequest:
        data = read_json(path, "training run record")
        if not isinstance(data, dict) or data.get("format") != "labelshare.engine.training-run":
            raise LabelShareError(f"{path}: not a LabelShare training run record")
        try:
            return cls(**data["request"])
        except (KeyError, TypeError) as error:
            raise LabelShareError(f"{path}: malformed training run record ({error})") from None


def unfinished_runs() -> list[TrainingRequest]:
    """Runs that are ``refused`` or ``interrupted``, oldest first; records of published runs and of runs that wrote
    nothing are removed here."""
    runs = []
    folder = jobs_dir()
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []:
        try:
            request = TrainingRequest.from_record(path)
        except LabelShareError:
            continue  # a label space file, or not ours: left alone
        if request.state() in ("published", "gone"):
            request.remove_record()
        else:
            runs.append(request)
    return runs


def discard_run(request: TrainingRequest) -> None:
    """Delete an unpublished run: its hidden folders (a checkpoint or a refused candidate, never a published model
    version), its refused report and its record."""
    if Path(request.out).exists():
        raise LabelShareError(f"{request.out}: the run was published; model versions are never deleted here")
    for folder in run_work_folders(request.out):
        remove_tree(folder)
    for path in refused_report_paths(request.out):
        path.unlink(missing_ok=True)
    request.remove_record()


@dataclass
class TrainingProgress:
    """What the widget shows about a running job beside the job's own state: folded from the engine's events."""

    stage: str = "starting"
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    best_dice: float | None = None
    eta_s: float | None = None
    output: str | None = None
    regression: bool = False
    report_path: str | None = None
    interrupted: bool = False

    def update(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.stage = str(event.get("stage") or self.stage)
            if self.stage == "training":
                self.epoch = int(event.get("epoch", self.epoch))
                self.epochs = int(event.get("epochs", self.epochs))
                self.loss = event.get("loss", self.loss)
                self.eta_s = event.get("eta_s", self.eta_s)
        elif kind == "metrics":
            dice = event.get("mean_validation_dice")
            if dice is not None and math.isfinite(dice) and (self.best_dice is None or dice > self.best_dice):
                self.best_dice = float(dice)
        elif kind == "done":
            self.stage, self.output = "done", event.get("output")
        elif kind == "error":
            self.stage = "error"
            self.regression = bool(event.get("regression", False))
            self.report_path = event.get("report")
            self.interrupted = bool(event.get("interrupted", False))

    def summary(self) -> str:
        """One line: epoch, loss, best validation Dice, ETA (the parts known so far)."""
        parts = []
        if self.epochs:
            parts.append(f"epoch {self.epoch}/{self.epochs}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.best_dice is not None:
            parts.append(f"best validation Dice {self.best_dice:.3f}")
        if self.eta_s is not None and self.stage == "training":
            parts.append(f"ETA {format_duration(self.eta_s)}")
        return " · ".join(parts)
