"""A training run end to end: tasks + label space -> a published, verified model folder.

``train()`` is what ``labelshare train`` runs; :func:`run_training` is its body, which incremental learning and the
benchmarks build on: it splits every task by patient, loads the slices, trains, evaluates the validation cases at
native resolution, writes the model folder under its staging name and renames it into place (or, for add-task,
leaves it for the regression gate). Both return a :class:`TrainingResult`; they emit progress, never ``done``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Mapping, Sequence

import torch

from ..core.config import MemoryConfig, TrainConfig
from ..core.errors import LabelShareError, LabelSpaceError, ModelError
from ..core.fileio import (atomic_write_json, empty_folder, hold_folder, make_folders, now_iso, publish_dir,
                           remove_tree)
from ..core.labelspace import LabelSpace
from ..core.layouts import task_heads
from ..core.methods import DEFAULT_METHOD
from ..core.modelfolder import (MANIFEST_FILE, ModelConfig, check_new_version, data_fingerprint, is_non_commercial,
                                read_model_json, verify_folder)
from ..core.paths import published_name, staging_dir_for
from ..core.plans import check_patch_multiple
from ..core.progress import Progress, ProgressPart
from ..core.scores import Evaluation
from ..core.tasks import Split, TaskDataset, check_split_cases, open_tasks, read_split, split_by_patient
from .artefacts import VersionContext, write_artefacts
from .evaluation import choose_postprocessing
from .memory import GATE_DEFINITION, gate_evaluation
from .models import Model, environment_summary, resolve_device, save_model_folder
from .networks import build_network, count_parameters
from .sampling import TaskSlices, load_task_slices
from .training import CHECKPOINT_DIR, DistributedContext, Trainer, distributed_context


@dataclass
class PreparedData:
    """Tasks, their patient-wise split and their slices at plan resolution; ``gates``: the gate slices of the tasks
    trained from a rehearsal memory (no folder), on which they are scored."""

    tasks: dict[str, TaskDataset]
    split: dict[str, dict[str, list[str]]]
    train_banks: list[TaskSlices]
    validation_banks: list[TaskSlices]
    gates: dict[str, TaskSlices] = field(default_factory=dict)

    def slices_of(self, task: str) -> tuple[TaskSlices | None, TaskSlices | None]:
        """A task's training slices and its validation slices (gate slices included)."""
        train = next((bank for bank in self.train_banks if bank.task == task), None)
        validation = next((bank for bank in self.validation_banks if bank.task == task and
                           bank is not self.gates.get(task)), None)
        if validation is None:
            return train, self.gates.get(task)
        return train, validation.joined(self.gates.get(task))


@dataclass
class MemoryTask:
    """A task trained and scored from a rehearsal memory instead of its folder (or, for a task updated from a
    folder that lacks its old cases, in addition to it): its replay slices (None: not replayed) and its gate
    slices."""

    replay: TaskSlices | None
    gate: TaskSlices


def check_tasks_match(space: LabelSpace, tasks: dict[str, TaskDataset]) -> None:
    """Every task of the run is in the label space with the same labels and ids."""
    for name, task in tasks.items():
        entry = space.task(name)
        expected = {e.name: e.id for e in entry.labels}
        if expected != task.labels:
            raise LabelSpaceError(f"{task.root / 'dataset.json'}: labels {task.labels} differ from task '{name}' in "
                                  f"the label space {expected}")


def make_split(tasks: dict[str, TaskDataset], validation_fraction: float, seed: int) -> dict[str, dict[str, list[str]]]:
    split = {}
    for name, task in tasks.items():
        train, validation = split_by_patient(task.cases, validation_fraction, seed)
        split[name] = {"train": train, "validation": validation}
    return split


def prepare_data(tasks: dict[str, TaskDataset], space: LabelSpace, layout: str,
                 split: dict[str, dict[str, list[str]]], progress: Progress,
                 fraction_range: tuple[float, float] = (0.0, 0.1),
                 memory_tasks: Mapping[str, MemoryTask] | None = None) -> PreparedData:
    """The slices of every task in the label space's order: read from the task's folder (the cases of ``split`` it
    holds), and (``memory_tasks``) the replay slices of a rehearsal memory, whose gate slices monitor and score the
    task. The prepared split lists the cases read from the folders."""
    heads, memory_tasks = task_heads(layout, space), memory_tasks or {}
    train_banks, validation_banks, gates, present = [], [], {}, {}
    start, end = fraction_range
    step = (end - start) / max(1, len(tasks))
    for name in space.task_names:
        memory = memory_tasks.get(name)
        train = memory.replay if memory is not None else None
        if name in tasks:
            i, task = list(tasks).index(name), tasks[name]
            held = {case.name for case in task.cases}
            present[name] = {side: [c for c in cases if c in held] for side, cases in split[name].items()}
            bank = load_task_slices(task, present[name]["train"] + present[name]["validation"], heads[name],
                                    space.task(name).plan, progress, (start + i * step, start + (i + 1) * step))
            train = bank.select(present[name]["train"]).joined(train)
            if present[name]["validation"]:
                validation_banks.append(bank.select(present[name]["validation"]))
        if train is not None:
            train_banks.append(train)
        if memory is not None:
            validation_banks.append(memory.gate)
            gates[name] = memory.gate
    return PreparedData(tasks=tasks, split=present, train_banks=train_banks, validation_banks=validation_banks,
                        gates=gates)


def evaluate_validation(model: Model, data: PreparedData, progress: Progress,
                        fraction_range: tuple[float, float]) -> tuple[dict[str, list[str]], Evaluation, Evaluation]:
    """Every validation case scored, and each task's post-processing chosen on them (the labels whose largest
    connected component alone is kept: :func:`labelshare.engine.evaluation.choose_postprocessing`); the scores are those
    of the model with that choice. Tasks trained from a rehearsal memory are scored on its gate slices (the third
    result: :func:`labelshare.engine.memory.gate_evaluation`)."""
    gates = Evaluation()
    for name, bank in data.gates.items():
        progress.progress("evaluating", fraction_range[0], f"{name}: {len(bank)} gate slices of the rehearsal memory")
        gates.extend(gate_evaluation(model.network, bank, model.heads[name], model.device))
    result, choice = Evaluation(), {}
    start, end = fraction_range
    names = [n for n in data.tasks if data.split[n]["validation"]]
    step = (end - start) / max(1, len(names))
    for i, name in enumerate(names):
        labels, evaluation = choose_postprocessing(model, data.tasks[name], data.split[name]["validation"],
                                                   progress=progress,
                                                   fraction_range=(start + i * step, start + (i + 1) * step))
        result.extend(evaluation)
        if labels:
            choice[name] = labels
    return choice, result, gates


def metrics_json(evaluation: Evaluation, history: list[dict], gates: Evaluation | None = None) -> dict:
    """``metrics.json``: the validation scores; tasks trained from a rehearsal memory are scored on its gate
    slices, kept apart (``memory_gate``: another definition, not comparable with the validation cases)."""
    metrics = {"validation": evaluation.summary(), "mean_dice": evaluation.mean_dice(),
               "definition": "per-case Dice/HD95 at native resolution on the validation split, mean over cases",
               "last_epoch": history[-1] if history else None}
    if gates is not None and gates.scores:
        metrics.update(memory_gate=gates.summary(), memory_gate_definition=GATE_DEFINITION)
    return metrics


@dataclass
class TrainingResult:
    """What a run produced: the model folder (published, or the candidate add-task publishes after its gate), its
    validation metrics (``metrics.json``), the split, and the data fingerprints of its tasks."""

    path: Path
    metrics: dict
    split: dict[str, dict[str, list[str]]]
    data: dict[str, dict]


def train(task_arguments: Sequence[tuple[str, Path]], space: LabelSpace, out: str | Path,
          config: TrainConfig | None = None, method: str = DEFAULT_METHOD, resume: bool = False,
          progress: Progress | None = None, command: Sequence[str] | None = None,
          split: dict[str, dict[str, list[str]]] | None = None,
          memory_config: MemoryConfig | None = None) -> TrainingResult:
    """Train a model on the tasks and publish it as ``out``, with its rehearsal memory (``memory_config``).

    ``split`` ({task: {"train": [...], "validation": [...]}}) fixes the cases of each side (the benchmark gives every
    method the same one); by default every task is split by patient with ``config.seed``.

    >>> train([("acdc", Path("data/acdc")), ("hippo", Path("data/hippo"))], LabelSpace.load("ls.json"),
    ...       "models/acdc-hippo-v1", TrainConfig(epochs=20))   # doctest: +SKIP
    """
    config = config or TrainConfig()
    config.check()
    progress = progress or Progress("human")
    out = check_new_version(out)
    tasks = open_tasks(task_arguments)
    for name in tasks:
        space.task(name)
    unknown = [name for name in config.task_weights if name not in tasks]
    if unknown:
        raise LabelShareError(f"--task-weight {unknown[0]}: not a task of this run ({', '.join(tasks)})")
    missing = [name for name in space.task_names if name not in tasks]
    if missing:
        raise LabelShareError(f"the label space has task(s) {', '.join(missing)} without data; give --task "
                              f"{missing[0]}=DIR")
    check_tasks_match(space, tasks)
    if space.plan_settings is None:
        raise LabelSpaceError("the label space has no plans (a first-release file): build it again with "
                              "labelshare labelspace build")
    space = LabelSpace({name: space.tasks[name] for name in tasks}, space.strategy, space.groups,
                       space.plan_settings)
    model_config = ModelConfig.for_method(method, space, config.weights_dtype)
    for name, entry in space.tasks.items():  # plans are made for a network: its down-sampling divides the patches
        check_patch_multiple(entry.plan, model_config.network.patch_multiple, f"{name}'s plan")
    return run_training(tasks, space, model_config, out, config, progress, resume=resume, command=command,
                        lineage={"parent": None, "operation": "train", "tasks_added": list(tasks)}, split=split,
                        memory_config=memory_config)


def run_training(tasks: dict[str, TaskDataset], space: LabelSpace, model_config: ModelConfig, out: Path,
                 config: TrainConfig, progress: Progress, resume: bool = False,
                 command: Sequence[str] | None = None, lineage: dict | None = None,
                 initial_network: torch.nn.Module | None = None, trainer_class: type[Trainer] = Trainer,
                 trainer_options: dict | None = None, split: dict[str, dict[str, list[str]]] | None = None,
                 extra_json: dict | None = None, memory_config: MemoryConfig | None = None,
                 memory_tasks: Mapping[str, MemoryTask] | None = None, parent: Path | None = None) -> TrainingResult:
    """The shared body of ``train`` and ``add-task``: staging folder, data, loop, evaluation, version artefacts
    (:mod:`labelshare.engine.artefacts`; ``memory_config``: the rehearsal memory's settings), model folder.

    ``memory_tasks`` are tasks of the label space that are trained from a rehearsal memory instead of a folder (the
    old tasks of add-task whose folders are not given): ``split`` must hold their (old) split, ``lineage["data"]``
    their data records, and ``parent`` is the version whose memory holds them.

    The staging folder is held by this run (:func:`labelshare.core.fileio.hold_folder`) and kept only while it holds
    something to continue: a checkpoint, or the complete model folder of a run killed before renaming it (which
    ``resume`` publishes without training again). A run that fails or stops before its first checkpoint removes
    it, and one that finds such a folder starts over in it."""
    check_new_version(out)
    resolve_device(config.device)  # no CUDA for --device cuda: say so before anything is read or written
    staging = staging_dir_for(out)
    with distributed_context(config.device) as context, ExitStack() as holding:
        if context.is_main:
            _take_staging(staging, out, resume, holding)
        context.barrier()
        try:
            return _train_in(staging, tasks, space, model_config, out, config, progress, context, resume, command,
                             lineage, initial_network, trainer_class, trainer_options, split, extra_json,
                             memory_config or MemoryConfig(), memory_tasks or {}, parent)
        except BaseException:
            if context.is_main and staging.is_dir() and not _resumable(staging):
                remove_tree(staging)
            raise


def _resumable(staging: Path) -> bool:
    """Whether a staging folder holds anything to continue: a checkpoint or a complete model folder."""
    return (staging / CHECKPOINT_DIR / "checkpoint.json").is_file() or (staging / MANIFEST_FILE).is_file()


def _take_staging(staging: Path, out: Path, resume: bool, holding: ExitStack) -> None:
    """Create (or find) the staging folder and hold it for this run; empty it when it holds nothing to continue
    (what a run killed before its first checkpoint left), refuse it without ``resume`` when it does."""
    make_folders(staging)
    holding.enter_context(hold_folder(staging))
    if not _resumable(staging):
        empty_folder(staging)
    elif not resume:
        raise LabelShareError(f"{staging}: an unfinished run of {out.name} is there; add --resume to continue it "
                              "or delete that folder to start over")


def _recorded_split(split_file: Path, tasks: dict[str, TaskDataset], memory_tasks: Sequence[str]) -> Split:
    """The split an unfinished run recorded, checked against the task folders (a task trained from a rehearsal
    memory has no folder to check it against)."""
    hint = f"; delete {split_file.parent} to start the run over"
    try:
        split = read_split(split_file, sorted(set(tasks) | set(memory_tasks)))
    except LabelShareError as error:
        raise LabelShareError(f"{error}{hint}") from None
    check_split_cases(_folder_split(split, memory_tasks), tasks, hint)
    return split


def _folder_split(split: Split, memory_tasks: Sequence[str]) -> Split:
    """The part of a split that the task folders hold: a task trained (even in part: an update from a folder of new
    cases only) from a rehearsal memory has cases its folder lacks."""
    return {name: sides for name, sides in split.items() if name not in memory_tasks}


def _identity_digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _finished_model(staging: Path, digest: str, split: dict) -> TrainingResult:
    """The complete model folder a run killed before renaming it left in ``staging``, if the same run made it."""
    try:
        verify_folder(staging)
    except ModelError as error:
        raise LabelShareError(f"{staging}: the finished model there is damaged ({error}); delete the folder to train "
                              "again") from None
    if (read_model_json(staging, "training.json", {}) or {}).get("run_identity") != digest:
        raise LabelShareError(f"{staging}: holds a model trained by a run with other tasks, label space or settings; "
                              "start a new run (another --out) or delete that folder")
    lineage = read_model_json(staging, "lineage.json", {}) or {}
    return TrainingResult(path=staging, metrics=read_model_json(staging, "metrics.json", {}), split=split,
                          data=lineage.get("data", {}))


def _train_in(staging: Path, tasks: dict[str, TaskDataset], space: LabelSpace, model_config: ModelConfig, out: Path,
              config: TrainConfig, progress: Progress, context: DistributedContext, resume: bool,
              command: Sequence[str] | None, lineage: dict | None, initial_network: torch.nn.Module | None,
              trainer_class: type[Trainer], trainer_options: dict | None,
              split: dict[str, dict[str, list[str]]] | None, extra_json: dict | None, memory: MemoryConfig,
              memory_tasks: Mapping[str, MemoryTask], parent: Path | None) -> TrainingResult:
    split_file = staging / "split.json"
    if split_file.is_file():
        split = _recorded_split(split_file, tasks, list(memory_tasks))
    elif split is None:
        split = make_split(tasks, config.validation_fraction, config.seed)
    else:
        check_split_cases(_folder_split(split, list(memory_tasks)), tasks)
    data = prepare_data(tasks, space, model_config.layout, split, progress, memory_tasks=memory_tasks)
    if initial_network is None:
        torch.manual_seed(config.seed)  # the initial weights, so that a run (or a resumed benchmark) repeats
    network = initial_network if initial_network is not None else build_network(model_config.network)
    identity = {"labelspace": space.to_json(), "model": model_config.to_json(),
                "train": {k: v for k, v in config.to_json().items() if k != "device"}, "split": split}
    if context.is_main:
        atomic_write_json(split_file, {"seed": config.seed, "validation_fraction": config.validation_fraction,
                                       "rule": "patient-wise; see labelshare.core.tasks.patient_of", "tasks": split})
        progress.log(f"{model_config.method}: {count_parameters(network) / 1e6:.2f} M parameters; "
                     + "; ".join(f"{n}: {len(split[n]['train'])} training / {len(split[n]['validation'])} "
                                 f"validation cases" for n in tasks)
                     + "".join(f"; {n}: from the rehearsal memory of {parent.name if parent else 'the parent'} ("
                               f"{len(m.replay) if m.replay is not None else 0} replay / {len(m.gate)} gate slices)"
                               for n, m in memory_tasks.items()))
    trainer = trainer_class(network, task_heads(model_config.layout, space), data.train_banks,
                            data.validation_banks, config, staging, progress, context, identity,
                            fraction_range=(0.1, 0.9), **(trainer_options or {}))
    digest = _identity_digest(trainer.run_identity)
    finished = None
    if (staging / MANIFEST_FILE).is_file():  # killed after the model folder was complete, before the rename
        finished = _finished_model(staging, digest, split)
        progress.log(f"{staging}: the model of this run is complete; publishing it")
    else:
        state = trainer.run(resume=resume)
    if not context.is_main:  # rank 0 alone evaluates, writes and publishes
        context.barrier()
        return TrainingResult(path=out, metrics={}, split=split, data={})
    if finished is not None:
        metrics, data_record = finished.metrics, finished.data
    else:
        model = Model(path=None, config=model_config, labelspace=space, network=trainer.network.eval(),
                      device=trainer.device)
        largest_component, evaluation, gates = evaluate_validation(model, data, progress, (0.9, 0.97))
        kept = {name: labels for name, labels in model_config.largest_component.items()
                if name in memory_tasks and name not in tasks}
        model_config = replace(model_config, largest_component={**kept, **largest_component})
        model = replace(model, config=model_config)
        data_record = {name: {"folder": task.root.name, "cases": len(task.cases),
                              "fingerprint": data_fingerprint([p for c in task.cases
                                                               for p in (c.image_path, c.label_path)])}
                       for name, task in tasks.items()}
        data_record = {name: data_record.get(name) or (lineage or {}).get("data", {}).get(name)
                       for name in space.task_names if name in data_record or name in memory_tasks}
        lineage = {**(lineage or {}), "created": now_iso(), "command": list(command) if command else sys.argv[1:],
                   "data": data_record,
                   "environment": environment_summary(context.world_size), "elapsed_s": round(state.elapsed_s, 1)}
        metrics = metrics_json(evaluation, state.history, gates)
        artefacts = write_artefacts(VersionContext(
            name=published_name(out), model=model, split=split, tasks=tasks, parent=parent, same_weights=False,
            memory=memory, progress=ProgressPart(progress, 0.97, 0.99), seed=config.seed,
            slices={name: data.slices_of(name) for name in tasks}), staging)
        save_model_folder(staging, trainer.network, model_config, space,
                          json_files={"metrics.json": metrics, "lineage.json": lineage,
                                      "training.json": {**config.to_json(), "run_identity": digest},
                                      **(extra_json or {})},
                          text_files={"training_log.jsonl": "".join(_jsonl(r) for r in state.history),
                                      "README.md": model_card(out.name, model_config, space, tasks, metrics, lineage,
                                                              config, count_parameters(trainer.network), artefacts),
                                      "evaluation.csv": evaluation.to_csv()})
    remove_tree(staging / CHECKPOINT_DIR)
    published = publish_dir(staging, out)
    context.barrier()
    return TrainingResult(path=published, metrics=metrics, split=split, data=data_record)


def _jsonl(record: dict) -> str:
    return json.dumps(record) + "\n"


def model_card(name: str, config: ModelConfig, space: LabelSpace, tasks: dict[str, TaskDataset], metrics: dict,
               lineage: dict, train_config: TrainConfig, parameters: int,
               artefacts: Mapping[str, list[str]] | None = None) -> str:
    """The model card (README.md); ``artefacts``: each version artefact's section (title -> lines,
    :func:`labelshare.engine.artefacts.write_artefacts`)."""
    lines = [f"# LabelShare model `{name}`", "",
             f"Method: **{config.method}** (output layout `{config.layout}`, {config.network.out_channels} output "
             f"channels, conditioning `{config.network.conditioning}`), {parameters / 1e6:.2f} M parameters, "
             f"weights stored as {config.weights_dtype}. Input: one 2D slice or projection at its task's plan "
             "resolution, preprocessed by the plan's schemes (below)"
             + (f", with its neighbours as {config.network.in_channels} input channels where the task's plan takes "
                "more than one slice per input" if config.network.in_channels > 1 else "") + ".",
             "", "## Tasks and labels", "", space.table(), "## Intended input", "",
             "What each task was trained on; other images (another modality, view, field of view or anatomy) are "
             "outside what the model has seen.", ""]
    for task_name, entry in space.tasks.items():
        lines.append(f"- **{task_name}**: {entry.intended_input or 'not described by its dataset.json'}; "
                     f"{entry.n_cases} training cases, {entry.n_slices} slices; plan: {entry.plan.describe()}; "
                     f"preprocessing: {entry.plan.preprocessing.describe()}")
    lines += ["", "## Training data and licences", ""]
    non_commercial = [n for n, e in space.tasks.items() if is_non_commercial(e.license)]
    if non_commercial:
        lines += [f"**Non-commercial use only:** trained on {', '.join(non_commercial)}, whose licence forbids "
                  "commercial use. The model weights inherit that restriction.", ""]
    for task_name, entry in space.tasks.items():
        task = tasks.get(task_name)
        cases = len(task.cases) if task is not None else entry.n_cases
        lines.append(f"- **{task_name}**: {cases} cases; licence: {entry.license or 'not stated'}"
                     + (f"; cite: {entry.citation}" if entry.citation else ""))
    lines += ["", "## Validation (patient-wise split, native resolution)", "", "| task | label | Dice | HD95 |",
              "|---|---|---|---|"]
    for task_name, labels in metrics["validation"].items():
        for label, s in labels.items():
            lines.append(f"| {task_name} | {label} | {s['dice_mean']:.3f} ± {s['dice_sd']:.3f} | "
                         f"{s['hd95_mean']:.2f} |")
    if metrics.get("memory_gate"):
        lines += ["", f"Tasks trained from the parent's rehearsal memory (their folders were not given), scored by "
                  f"{metrics['memory_gate_definition']}:", "", "| task | label | Dice | slices |", "|---|---|---|---|"]
        lines += [f"| {task_name} | {label} | {s['dice_mean']:.3f} ± {s['dice_sd']:.3f} | {s['n']} |"
                  for task_name, labels in metrics["memory_gate"].items() for label, s in labels.items()]
    if config.largest_component:
        lines += ["", "Post-processing (chosen on the validation cases, as nnU-Net does): only the largest connected "
                  "component is kept of " + "; ".join(f"{task}: {', '.join(labels)}"
                                                      for task, labels in config.largest_component.items()) + "."]
    for title, artefact_lines in (artefacts or {}).items():
        if artefact_lines:
            lines += ["", f"## {title}", "", *artefact_lines]
    lines += ["", "## Provenance", "",
              f"- created {lineage.get('created')} on {lineage['environment']['device']}, "
              f"torch {lineage['environment']['torch']}; training took {lineage.get('elapsed_s')} s",
              f"- training: {train_config.epochs} epochs x {train_config.steps_per_epoch} steps, batch "
              f"{train_config.batch_size}, learning rate {train_config.learning_rate}, seed {train_config.seed}",
              f"- parent model: {lineage.get('parent') or 'none'}",
              f"- command: `labelshare {' '.join(lineage.get('command', []))}`"]
    if lineage.get("training_command"):
        lines.append(f"- training command: `labelshare {' '.join(lineage['training_command'])}`")
    lines.append("")
    return "\n".join(lines)
