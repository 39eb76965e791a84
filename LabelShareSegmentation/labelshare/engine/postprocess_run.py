"""``labelshare postprocess``: choose a trained model's post-processing on its validation cases, as a new version.

New models choose it when their training ends; this command gives a model trained before that (or one whose
choice should be made again) the same decision, like nnU-Net's separate post-processing step after training. Per
task and label it keeps only the largest connected component where that raises the mean Dice of the validation
cases of the model's ``split.json`` (:func:`labelshare.engine.evaluation.choose_postprocessing`). The new version has
the same weights, label space and split, the choice in ``config.json``, the scores of the new pipeline in
``metrics.json`` / ``evaluation.csv``, and its parent in ``lineage.json``; the model given is never changed.

``labelshare memory`` (:func:`make_memory`) is the other version with the same weights: a model made before versions
carried a rehearsal memory (:mod:`labelshare.engine.memory`) gets one chosen from its tasks' folders. Both write the
version artefacts (:mod:`labelshare.engine.artefacts`) like every command that publishes a version.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..core.config import MemoryConfig, TrainConfig
from ..core.errors import LabelShareError
from ..core.fileio import empty_folder, hold_folder, make_folders, now_iso, publish_dir
from ..core.modelfolder import WEIGHTS_FILE, ModelConfig, check_new_version, read_memory
from ..core.paths import staging_dir_for
from ..core.progress import Progress
from ..core.scores import Evaluation
from ..core.tasks import TaskDataset
from .artefacts import VersionContext, write_artefacts
from .evaluation import choose_postprocessing
from .memory import check_sources
from .models import Model, environment_summary, load_model, save_model_folder
from .networks import count_parameters
from .training_run import metrics_json, model_card

# files of the parent that a version with the same weights carries unchanged (the others are written anew)
CARRIED_FILES = (WEIGHTS_FILE, "split.json", "training.json", "training_log.jsonl")


def postprocess(model_path: str | Path, task_arguments: Sequence[tuple[str, Path]], out: str | Path,
                progress: Progress | None = None, command: Sequence[str] = (),
                memory_config: MemoryConfig | None = None) -> Path:
    """Write ``out``: ``model_path`` with the post-processing chosen on the validation cases of every task (and its
    version artefacts: the parent's rehearsal memory, or one chosen from the folders when it has none)."""
    progress = progress or Progress("quiet")
    out = check_new_version(out)
    model = load_model(model_path, device="cpu")  # the command offers no --device: the CPU, as always
    given = dict(task_arguments)
    missing = [name for name in model.tasks if name not in given]
    unknown = [name for name in given if name not in model.tasks]
    if missing or unknown:
        raise LabelShareError(f"{model.path}: give every task of the model once with --task NAME=DIR"
                              + (f"; missing: {', '.join(missing)}" if missing else "")
                              + (f"; not in the model: {', '.join(unknown)}" if unknown else ""))
    tasks = {name: TaskDataset.open(given[name], name) for name in model.tasks}
    choice, evaluation = {}, Evaluation()
    for i, (name, task) in enumerate(tasks.items()):
        cases = model.validation_cases(name)
        if not cases:
            raise LabelShareError(f"{model.path / 'split.json'}: records no validation cases of task '{name}'")
        labels, scores = choose_postprocessing(model, task, cases, progress=progress,
                                               fraction_range=(i / len(tasks), (i + 1) / len(tasks)))
        evaluation.extend(scores)
        if labels:
            choice[name] = labels
        progress.log(f"{name}: largest connected component kept of " + (", ".join(labels) or "no label"))
    previous = model.read_json("metrics.json", {}) or {}
    metrics = metrics_json(evaluation, [previous["last_epoch"]] if previous.get("last_epoch") else [])
    return same_weights_version(model, tasks, out, "postprocess", memory_config or MemoryConfig(), progress, command,
                                config=replace(model.config, largest_component=choice), metrics=metrics,
                                evaluation=evaluation)


def make_memory(model_path: str | Path, task_arguments: Sequence[tuple[str, Path]], out: str | Path,
                memory: MemoryConfig, device: str, progress: Progress | None = None,
                command: Sequence[str] = ()) -> Path:
    """``labelshare memory``: ``model_path`` as a new version (same weights, records and scores) with a rehearsal
    memory chosen from the given task folders; a task whose folder is not given keeps the model's own memory of it
    (else one error naming it). The model given is never changed."""
    progress = progress or Progress("quiet")
    out = check_new_version(out)
    if not memory.write_memory:
        raise LabelShareError("labelshare memory writes a rehearsal memory; --no-memory asks for none")
    model = load_model(model_path, device=device)
    given = dict(task_arguments)
    unknown = [name for name in given if name not in model.tasks]
    if unknown:
        raise LabelShareError(f"{model.path}: has no task {', '.join(unknown)} (its tasks: {', '.join(model.tasks)})")
    check_sources(model.path, model.tasks, read_memory(model.path, model.labelspace), list(given),
                  "to choose its memory's exemplars")
    tasks = {name: TaskDataset.open(given[name], name) for name in model.tasks if name in given}
    for name, task in tasks.items():
        expected = {label.name: label.id for label in model.labelspace.task(name).labels}
        if task.labels != expected:
            raise LabelShareError(f"{task.root / 'dataset.json'}: labels {task.labels} differ from task '{name}' of "
                                  f"{model.path.name} {expected}")
    return same_weights_version(model, tasks, out, "memory", memory, progress, command)


def same_weights_version(model: Model, tasks: dict[str, TaskDataset], out: Path, operation: str,
                         memory: MemoryConfig, progress: Progress, command: Sequence[str], *,
                         config: ModelConfig | None = None, metrics: dict | None = None,
                         evaluation: Evaluation | None = None) -> Path:
    """Publish ``out``: the label space and :data:`CARRIED_FILES` (the weights among them) of ``model``, its metrics and
    evaluation (or the new ones given, with ``config``), its version artefacts written for the same weights, and a
    lineage naming ``model`` as the parent and ``operation``."""
    config = config or model.config
    parent_lineage = model.read_json("lineage.json", {}) or {}
    lineage = {**parent_lineage, "parent": model.path.name, "operation": operation, "created": now_iso(),
               "command": list(command),
               "training_command": parent_lineage.get("training_command", parent_lineage.get("command", [])),
               "environment": environment_summary()}
    metrics = metrics if metrics is not None else model.read_json("metrics.json", {}) or {}
    train_config = TrainConfig(**{key: value for key, value in (model.read_json("training.json", {}) or {}).items()
                                  if key in TrainConfig.__dataclass_fields__})
    split = (model.read_json("split.json", {}) or {}).get("tasks") or {}
    staging = staging_dir_for(out)
    make_folders(staging)
    with hold_folder(staging):
        empty_folder(staging)  # what an interrupted run left: this command starts over
        carried = CARRIED_FILES + (() if evaluation is not None else ("metrics.json", "evaluation.csv"))
        for name in carried:
            if (model.path / name).is_file():
                shutil.copyfile(model.path / name, staging / name)
        new_model = replace(model, config=config)
        artefacts = write_artefacts(VersionContext(
            name=out.name, model=new_model, split=split, tasks=tasks, parent=model.path, same_weights=True,
            memory=memory, progress=progress, seed=train_config.seed), staging)
        new_files = {"metrics.json": metrics} if evaluation is not None else {}
        save_model_folder(staging, None, config, model.labelspace,
                          json_files={**new_files, "lineage.json": lineage},
                          text_files={**({"evaluation.csv": evaluation.to_csv()} if evaluation is not None else {}),
                                      "README.md": model_card(out.name, config, model.labelspace, tasks, metrics,
                                                              lineage, train_config, count_parameters(model.network),
                                                              artefacts)})
        return publish_dir(staging, out)
