"""``labelshare postprocess``: choose a trained model's post-processing on its validation cases, as a new version.

New models choose it when their training ends; this command gives a model trained before that (or one whose
choice should be made again) the same decision, like nnU-Net's separate post-processing step after training. Per
task and label it keeps only the largest connected component where that raises the mean Dice of the validation
cases of the model's ``split.json`` (:func:`labelshare.engine.evaluation.choose_postprocessing`). The new version has
the same weights, label space and split, the choice in ``config.json``, the scores of the new pipeline in
``metrics.json`` / ``evaluation.csv``, and its parent in ``lineage.json``; the model given is never changed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..core.config import TrainConfig
from ..core.errors import LabelShareError
from ..core.fileio import empty_folder, hold_folder, make_folders, now_iso, publish_dir
from ..core.modelfolder import check_new_version
from ..core.paths import staging_dir_for
from ..core.progress import Progress
from ..core.scores import Evaluation
from ..core.tasks import TaskDataset
from .evaluation import choose_postprocessing
from .models import environment_summary, load_model, save_model_folder
from .networks import count_parameters
from .training_run import metrics_json, model_card

# files of the parent that the new version carries unchanged (the others are written anew)
CARRIED_FILES = ("split.json", "training.json", "training_log.jsonl")


def postprocess(model_path: str | Path, task_arguments: Sequence[tuple[str, Path]], out: str | Path,
                progress: Progress | None = None, command: Sequence[str] = ()) -> Path:
    """Write ``out``: ``model_path`` with the post-processing chosen on the validation cases of every task."""
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
    config = replace(model.config, largest_component=choice)
    parent_lineage = model.read_json("lineage.json", {}) or {}
    lineage = {**parent_lineage, "parent": model.path.name, "operation": "postprocess", "created": now_iso(),
               "command": list(command),
               "training_command": parent_lineage.get("training_command", parent_lineage.get("command", [])),
               "environment": environment_summary()}
    previous = model.read_json("metrics.json", {}) or {}
    metrics = metrics_json(evaluation, [previous["last_epoch"]] if previous.get("last_epoch") else [])
    train_config = TrainConfig(**{key: value for key, value in (model.read_json("training.json", {}) or {}).items()
                                  if key in TrainConfig.__dataclass_fields__})
    staging = staging_dir_for(out)
    make_folders(staging)
    with hold_folder(staging):
        empty_folder(staging)  # what an interrupted run left: this command starts over
        for name in CARRIED_FILES:
            if (model.path / name).is_file():
                shutil.copyfile(model.path / name, staging / name)
        save_model_folder(staging, model.network, config, model.labelspace,
                          json_files={"metrics.json": metrics, "lineage.json": lineage},
                          text_files={"evaluation.csv": evaluation.to_csv(),
                                      "README.md": model_card(out.name, config, model.labelspace, tasks, metrics,
                                                              lineage, train_config,
                                                              count_parameters(model.network))})
        return publish_dir(staging, out)
