"""``add_task``: teach a trained label-sharing model a new task (or more cases of one of its tasks) and publish the
new version behind the regression gate. The steps live in :mod:`.mapping`, :mod:`.trainer` and :mod:`.gate`."""

from __future__ import annotations

import copy
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping, Sequence

import torch

from ...core.budget import add_task_epochs, estimate
from ...core.config import ADD_TASK_TRAIN_OPTIONS, AddTaskConfig, InferenceConfig, TrainConfig
from ...core.errors import LabelShareError, LabelSpaceError, ModelError, UnknownTaskError
from ...core.fileio import hold_folder, read_json, sha256_file
from ...core.forgetting import ForgettingReport
from ...core.labelspace import LabelSpace
from ...core.methods import method_named
from ...core.memory import RehearsalMemory
from ...core.modelfolder import ModelConfig, check_new_version, read_memory, resolve_model, verify_folder
from ...core.paths import candidate_dir_for, recorded_task_folders, refused_report_paths
from ...core.progress import Progress, ProgressPart
from ...core.tasks import TaskDataset, split_by_patient
from ..models import Model, load_model, resolve_device
from ..networks import expand_output_channels, expand_task_inputs
from ..statistics import compute_statistics
from ..memory import check_sources, memory_slices
from ..training_run import MemoryTask, TrainingResult, run_training
from .gate import apply_gate
from .mapping import OVERLAP_CASES, map_labels, measure_overlap, new_channel_starts, parse_pins
from .trainer import DISTILL_TEMPERATURE, IncrementalTrainer, spread_cases


@dataclass
class AddTaskResult:
    """A published version: its folder, the forgetting report and its validation metrics (``metrics.json``)."""

    path: Path
    report: ForgettingReport
    metrics: dict

    @property
    def summary(self) -> str:
        worst = self.report.worst()
        if worst is None:
            return "no old task was evaluated"
        return f"largest change {100 * worst[1]['change']:+.1f} Dice points on '{worst[0]}'"


def add_task(model: str | Path, task: tuple[str, str | Path], out: str | Path, config: AddTaskConfig | None = None,
             *, replay_tasks: Sequence[tuple[str, str | Path]] = (), resume: bool = False,
             progress: Progress | None = None, command: Sequence[str] | None = None) -> AddTaskResult:
    """Add ``task`` (name, nnU-Net folder) to the model folder ``model`` and publish the result as ``out``; a task
    the model already has is updated with the folder's cases instead. Raises
    :class:`~labelshare.engine.incremental.gate.RegressionRefused` when the gate refuses (nothing at ``out``; report
    beside it).

    >>> add_task("models/v1", ("sunnybrook", "data/sunnybrook"), "models/v2",
    ...          replay_tasks=[("acdc", "data/acdc"), ("hippo", "data/hippo")])   # doctest: +SKIP
    """
    config = config or AddTaskConfig()
    config.check()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LabelShareError("add-task runs in one process on one device; start it without torchrun")
    progress = progress or Progress("human")
    old_path, out = resolve_model(model), check_new_version(out)
    name, folder = task
    candidate = candidate_dir_for(out)
    progress.progress("mapping", 0.0, f"reading {old_path.name}")
    old = load_model(old_path, device=config.train.device)
    if not method_named(old.config.method).addable:
        raise ModelError(f"{old_path}: add-task extends label-sharing models; this is a {old.config.method} "
                         "model")
    recorded = _recorded_train_config(old, config)  # a tampered training.json is refused before any task is read
    update = name in old.labelspace.tasks
    if update and config.label_map:
        raise LabelSpaceError(f"--map: task '{name}' is already in {old_path.name}; its mapping stays as it is")
    new_task = TaskDataset.open(folder, name)
    memory = read_memory(old_path, old.labelspace)
    old_folders = _old_task_folders(old, replay_tasks, name, memory)
    tasks = {t: (new_task if t == name else TaskDataset.open(old_folders[t], t))
             for t in dict.fromkeys([*old.labelspace.tasks, name]) if t == name or t in old_folders}
    from_memory = [t for t in old.labelspace.task_names if t != name and t not in old_folders]
    _check_old_labels(old, tasks, name)
    split = _split(old, tasks, name, config)
    split.update({t: _recorded_split_of(old, t) for t in from_memory})
    memory_tasks = {t: _memory_task(old, memory, t, config.replay_cases != 0) for t in from_memory}
    folder_split = split[name]  # the updated task's cases in its folder (its statistics are measured on them)
    if update and memory is not None and name in memory.tasks:
        split[name], held_back = _with_held_back_cases(old, memory, name, split[name])
        if held_back is not None:
            memory_tasks[name] = held_back
            progress.log(f"{name}: {folder} lacks cases the model was trained on; its rehearsal memory stands in for "
                         f"them ({len(held_back.replay) if held_back.replay is not None else 0} replay / "
                         f"{len(held_back.gate)} gate slices)")
    train_config = _train_config(recorded, config, len(new_task.labels), len(split[name]["train"]))
    replay = {t: (spread_cases(tasks[t], split[t]["train"], config.replay_cases, config.train.seed)
                  if t in tasks else (list(dict.fromkeys(memory_tasks[t].replay.cases))  # a case's exemplars: one entry
                                     if memory_tasks[t].replay is not None else []))
              for t in old.labelspace.tasks if t != name}
    if from_memory:
        progress.log(f"{', '.join(from_memory)}: replayed and scored from the rehearsal memory of {old_path.name} "
                     "(no folder given)")
    distill_weight = config.distill_weight
    if distill_weight > 0 and not any(replay.values()) and not config.distill_new_task:
        progress.log("no old slices are replayed, so there is nothing to distil on: distillation is off")
        distill_weight = 0.0
    new_task_share = config.new_task_share
    if new_task_share is None:  # as in joint training: with plans, half of every batch cost the old tasks 2 points
        new_task_share = 1 / (1 + sum(1 for cases in replay.values() if cases))
    request = _json_round_trip({
        "parent": old_path.name, "parent_manifest_sha256": sha256_file(old_path / "manifest.json"),
        "task": name, "task_folder": str(Path(folder).resolve()), "strategy": config.strategy,
        "map": list(config.label_map),
        "replay_cases": "all" if config.replay_cases is None else config.replay_cases,
        "distill_weight": distill_weight, "distill_new_task": config.distill_new_task,
        "new_task_share": new_task_share,
        "new_label_init": config.new_label_init, "new_label_lr_scale": config.new_label_lr_scale,
        "old_task_folders": {t: str(p.resolve()) for t, p in old_folders.items()}, "from_memory": from_memory,
        "memory": config.memory.options(),
        "train": {k: v for k, v in train_config.to_json().items() if k != "device"}})
    with ExitStack() as holding:  # the candidate is held from its check (or creation) until it is published
        if candidate.exists():
            holding.enter_context(hold_folder(candidate))
            trained = _existing_candidate(candidate, out, request, resume or config.accept_regression)
            progress.log(f"{candidate}: trained earlier by the same command; checking it again")
        else:
            progress.log(f"budget: {train_config.epochs} epochs x {train_config.steps_per_epoch} steps = "
                         + estimate(old_path, train_config.total_steps, distill_weight > 0).describe(),
                         steps=train_config.total_steps)
            space, network, mapping = _prepare(old, new_task, {name: folder_split}, config, update, train_config,
                                               ProgressPart(progress, 0.0, 0.05))
            first_new_channel = old.network.config.out_channels if mapping.get("new_channels") else None
            progress.metrics("mapping", task=name, strategy=mapping["strategy"], shared=mapping["shared"],
                             n_shared=space.n_shared, message=f"{name}: " + "; ".join(
                                 f"{label} -> shared {k} ({mapping['reasons'][label]})"
                                 for label, k in mapping["shared"].items()))
            method = "label-sharing" if old.config.method == "per-task" else old.config.method
            model_config = ModelConfig(method=method, layout="shared", network=copy.deepcopy(network.config),
                                       preprocessing=copy.deepcopy(old.config.preprocessing),
                                       weights_dtype=old.config.weights_dtype,
                                       largest_component={t: labels for t, labels in
                                                          old.config.largest_component.items() if t in from_memory})
            parent_data = (old.read_json("lineage.json", {}) or {}).get("data", {})
            lineage = {"parent": old_path.name, "parent_manifest_sha256": request["parent_manifest_sha256"],
                       "operation": "update-task" if update else "add-task",
                       "tasks_added": [] if update else [name], "task": name, "mapping": mapping,
                       "replay": {"cases_per_task": request["replay_cases"], "exemplars": replay,
                                  "from_memory": from_memory},
                       "new_task_share": new_task_share,
                       "distillation": {"weight": distill_weight, "new_task_weight": config.distill_new_task,
                                        "temperature": DISTILL_TEMPERATURE},
                       "task_folders": {t: str(tasks[t].root.resolve()) for t in space.task_names if t in tasks},
                       "data": {t: {**(parent_data.get(t) or {}), "from_memory": True} for t in from_memory},
                       "request": request}
            ordered = {t: tasks[t] for t in space.task_names if t in tasks}
            trained = run_training(ordered, space, model_config, candidate, train_config,
                                   ProgressPart(progress, 0.05, 0.9), resume=resume, command=command,
                                   lineage=lineage, initial_network=network, trainer_class=IncrementalTrainer,
                                   split=split, trainer_options={"replay": replay, "teacher": old.network,
                                                                 "distill_weight": distill_weight,
                                                                 "new_task": name,
                                                                 "new_task_share": new_task_share,
                                                                 "first_new_channel": first_new_channel,
                                                                 "new_channel_lr_scale": config.new_label_lr_scale,
                                                                 "distill_new_task": config.distill_new_task},
                                   memory_config=config.memory, memory_tasks=memory_tasks, parent=old_path)
            holding.enter_context(hold_folder(candidate))
        published, report = apply_gate(old, trained, out, tasks, name, "update-task" if update else "add-task",
                                       config, ProgressPart(progress, 0.9, 0.99),
                                       gates={t: m.gate for t, m in memory_tasks.items()})
    return AddTaskResult(path=published, report=report, metrics=trained.metrics)


def _recorded_train_config(old: Model, config: AddTaskConfig) -> TrainConfig:
    """The old model's training settings (augmentation, precision) from its ``training.json`` with this run's
    budget and device (the options add-task offers), checked: a tampered file is one :class:`ModelError` naming it.
    The epochs are set by :func:`_train_config` once the task's size is known."""
    recorded = old.read_json("training.json", {}) or {}
    if not isinstance(recorded, dict):
        raise ModelError(f"{old.path / 'training.json'}: not a JSON object")
    known = set(TrainConfig.__dataclass_fields__)
    try:
        train_config = TrainConfig.from_options(**{**{k: v for k, v in recorded.items() if k in known},
                                                   **config.train.options(ADD_TASK_TRAIN_OPTIONS)})
        train_config.weights_dtype = old.config.weights_dtype
        train_config.task_weights = {}  # the joint run's batch shares: add-task sets its own (new_task_share)
        train_config.epochs = config.epochs or 1
        train_config.check()
    except (LabelShareError, TypeError, ValueError) as error:  # the budget was checked with AddTaskConfig
        raise ModelError(f"{old.path / 'training.json'}: {error}") from None
    return train_config


def _train_config(recorded: TrainConfig, config: AddTaskConfig, labels: int, training_cases: int) -> TrainConfig:
    """The recorded settings (:func:`_recorded_train_config`) with the new budget: the one given, else one that
    grows with the task (:func:`labelshare.core.budget.add_task_epochs`)."""
    train_config = copy.deepcopy(recorded)
    train_config.epochs = config.epochs or add_task_epochs(labels, training_cases, train_config.steps_per_epoch)
    return train_config


def _old_task_folders(old: Model, given: Sequence[tuple[str, str | Path]], task: str,
                      memory: RehearsalMemory | None) -> dict[str, Path]:
    """Folder of the old tasks except ``task``: ``--replay-task`` first, else the model's lineage; the others must
    be in the model's rehearsal memory (else one error naming them)."""
    folders: dict[str, Path] = {}
    for name, folder in given:
        if name not in old.labelspace.tasks:
            raise UnknownTaskError(name, old.labelspace.task_names)
        if name == task:
            raise LabelShareError(f"--replay-task {name}: that is the task given with --task")
        if name in folders:
            raise LabelShareError(f"--replay-task {name}: given twice")
        folders[name] = Path(folder)
    recorded = recorded_task_folders(old.path)
    missing = []
    for name in old.labelspace.task_names:
        if name == task or name in folders:
            continue
        if name in recorded:
            folders[name] = recorded[name]
        else:
            missing.append(name)
    check_sources(old.path, missing, memory, [], "for replay and for the forgetting report")
    return folders


def _recorded_split_of(old: Model, task: str) -> dict[str, list[str]]:
    """The old model's split of a task trained from its memory (kept as it is)."""
    recorded = ((old.read_json("split.json", {}) or {}).get("tasks") or {}).get(task)
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(side), list)
                                                 for side in ("train", "validation")):
        raise ModelError(f"{old.path / 'split.json'}: missing or malformed for task '{task}'; add-task needs the old "
                         "split")
    return {"train": list(recorded["train"]), "validation": list(recorded["validation"])}


def _memory_task(old: Model, memory: RehearsalMemory, task: str, replayed: bool) -> MemoryTask:
    """An old task's replay and gate slices from the model's memory (no replay with ``--replay-cases 0``)."""
    entry, head = old.labelspace.task(task), old.heads[task]
    parts = memory.tasks[task].parts
    if "gate" not in parts:
        raise ModelError(f"{old.path}: the rehearsal memory of task '{task}' has no gate slices; give the task's "
                         f"folder with --replay-task {task}=DIR")
    replay = memory_slices(old.path, memory, task, "replay", head, not entry.lateralised) \
        if replayed and "replay" in parts else None
    return MemoryTask(replay=replay, gate=memory_slices(old.path, memory, task, "gate", head, not entry.lateralised))


def _with_held_back_cases(old: Model, memory: RehearsalMemory, task: str, split: dict[str, list[str]]
                          ) -> tuple[dict[str, list[str]], MemoryTask | None]:
    """An update from a folder that lacks cases the model was trained on (a workspace that holds only the new
    ones): the task's memory stands in for them. Returns the split with those cases kept on their side (the
    memory's exemplars of them are training or validation data of the new version too) and the memory's slices of
    them (None when the folder holds every old case)."""
    recorded = _recorded_split_of(old, task)
    listed = set(split["train"]) | set(split["validation"])
    absent = {side: [c for c in recorded[side] if c not in listed] for side in ("train", "validation")}
    if not absent["train"] and not absent["validation"]:
        return split, None
    stored = _memory_task(old, memory, task, replayed=True)
    replay = stored.replay.select(absent["train"]) if stored.replay is not None else None
    gate = stored.gate.select(absent["validation"])
    if not len(gate):
        return split, None
    return ({side: split[side] + absent[side] for side in ("train", "validation")},
            MemoryTask(replay=replay if replay is not None and len(replay) else None, gate=gate))


def _check_old_labels(old: Model, tasks: Mapping[str, TaskDataset], task: str) -> None:
    for name, dataset in tasks.items():
        if name not in old.labelspace.tasks:
            continue
        expected = {e.name: e.id for e in old.labelspace.task(name).labels}
        if dataset.labels != expected:
            hint = "; add it under a new task name instead" if name == task else ""
            raise LabelShareError(f"{dataset.root / 'dataset.json'}: labels {dataset.labels} differ from task "
                                  f"'{name}' of {old.path.name} {expected}{hint}")


def _split(old: Model, tasks: Mapping[str, TaskDataset], task: str, config: AddTaskConfig) -> dict[str, dict]:
    """The old model's split for its tasks; cases it has not seen are split by patient (a patient it has seen
    stays on its side). Validation cases of the old split must still be in the folders."""
    recorded = (old.read_json("split.json", {}) or {}).get("tasks")
    if not isinstance(recorded, dict):
        raise ModelError(f"{old.path / 'split.json'}: missing or malformed; add-task needs the old validation split")
    split = {}
    for name, dataset in tasks.items():
        present = {case.name for case in dataset.cases}
        old_split = recorded.get(name, {"train": [], "validation": []})
        lost = [c for c in old_split["validation"] if c not in present]
        if lost and name != task:
            raise LabelShareError(f"{dataset.root}: validation case '{lost[0]}' of task '{name}' in {old.path.name} "
                                  "is missing; is this the folder the model was trained on?")
        train = [c for c in old_split["train"] if c in present]
        validation = [c for c in old_split["validation"] if c in present]
        if name == task:
            known = set(train) | set(validation)
            side = {dataset.case(c).patient: "validation" for c in validation}
            side.update({dataset.case(c).patient: "train" for c in train})
            unseen = [case for case in dataset.cases if case.name not in known]
            fresh = [case for case in unseen if case.patient not in side]
            fraction = (old.read_json("split.json", {}) or {}).get("validation_fraction",
                                                                   TrainConfig().validation_fraction)
            fresh_train, fresh_validation = split_by_patient(fresh, fraction, config.train.seed) if fresh else ([], [])
            train += [c.name for c in unseen if side.get(c.patient) == "train"] + fresh_train
            validation += [c.name for c in unseen if side.get(c.patient) == "validation"] + fresh_validation
        split[name] = {"train": train, "validation": validation}
    return split


def _prepare(old: Model, new_task: TaskDataset, split: Mapping[str, Mapping[str, list[str]]], config: AddTaskConfig,
             update: bool, train_config: TrainConfig, progress: Progress) -> tuple[LabelSpace, torch.nn.Module, dict]:
    """The new label space, the network to start from (old weights, expanded) and the mapping record."""
    name = new_task.name
    progress.progress("mapping", 0.1, f"{name}: label statistics of {len(split[name]['train'])} training cases")
    stats = compute_statistics(new_task, split[name]["train"], plan_settings=old.labelspace.plan_settings)
    if stats.plan.slice_context > old.network.config.in_channels:
        raise LabelSpaceError(f"task '{name}': the plan rule of {old.path.name} gives it {stats.plan.slice_context} "
                              f"slices per input, but the network takes {old.network.config.in_channels}")
    network = copy.deepcopy(old.network)
    if update:
        entry = old.labelspace.task(name)
        shared = {label.name: label.shared for label in entry.labels}
        space = old.labelspace.with_task(stats, shared, entry.strategy)
        return space, network, {"task": name, "strategy": entry.strategy, "shared": shared,
                                "reasons": {label: "unchanged (update of an existing task)" for label in shared}}
    expand_task_inputs(network, len(old.labelspace.tasks) + 1)
    pins = parse_pins(config.label_map, stats, old.labelspace)
    overlap = None
    if (config.strategy == "overlap" and len(pins) < len(stats.labels)) or config.new_label_init == "predicted":
        cases = spread_cases(new_task, split[name]["train"], OVERLAP_CASES, config.train.seed)
        progress.progress("mapping", 0.5, f"{name}: segmenting {len(cases)} training cases with {old.path.name}")
        device = resolve_device(train_config.device)
        overlap = measure_overlap(network, device, new_task, cases, stats.plan, task_index=len(old.labelspace.tasks),
                                  batch_size=InferenceConfig().batch_size_on(device.type))
    strategy = "overlap" if config.strategy == "overlap" and overlap is not None else "size"
    mapping = map_labels(old.labelspace, stats, strategy, pins, overlap.dice if strategy == "overlap" else None)
    space = old.labelspace.with_task(stats, mapping.shared, mapping.strategy)
    starts = new_channel_starts(stats, mapping.shared, old.labelspace.n_shared, config.new_label_init,
                                overlap.coverage if overlap is not None else None)
    expand_output_channels(network, starts)
    progress.progress("mapping", 1.0, f"{name}: mapped by {mapping.strategy}; n* = {space.n_shared}")
    return space, network, {**mapping.to_json(), "new_channels": [
        {"shared": old.labelspace.n_shared + 1 + i, "copied_from": source, "bias_shift": round(shift, 4),
         "init": config.new_label_init} for i, (source, shift) in enumerate(starts)]}


def _json_round_trip(data: dict) -> dict:
    return json.loads(json.dumps(data))


def _existing_candidate(candidate: Path, out: Path, request: dict, reuse: bool) -> TrainingResult:
    """A candidate trained earlier by the same command, as a :class:`TrainingResult` read from its folder."""
    try:
        verify_folder(candidate)
    except ModelError as error:
        raise LabelShareError(f"{candidate}: the unpublished version of {out.name} is damaged ({error}); delete "
                              "the folder to train again") from None
    lineage = read_json(candidate / "lineage.json")
    if not isinstance(lineage, dict) or lineage.get("request") != request:
        raise LabelShareError(f"{candidate}: an unpublished version of {out.name} trained with other settings is "
                              "there; delete the folder or choose another --out")
    if not reuse:
        report = refused_report_paths(out)[1]
        why = f"refused by the regression gate (report: {report})" if report.is_file() else \
            "stopped before its regression gate"
        raise LabelShareError(f"{candidate}: {out.name} was trained but not published ({why}); add --resume to check "
                              "it again, --accept-regression to publish it, or delete the folder to train again")
    split = (read_json(candidate / "split.json") or {}).get("tasks")
    if not isinstance(split, dict) or not isinstance(lineage.get("data"), dict):
        raise LabelShareError(f"{candidate}: the unpublished version of {out.name} is damaged (split.json or "
                              "lineage.json); delete the folder to train again")
    return TrainingResult(path=candidate, metrics=read_json(candidate / "metrics.json"), split=split,
                          data=lineage["data"])
