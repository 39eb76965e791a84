"""Incremental learning: add a task to a trained label-sharing model, or update one of its tasks with more cases,
without forgetting the tasks it already knows (``labelshare add-task``, :func:`add_task`).

1. **Mapping.** The new task's label statistics are computed on its training cases and each of its labels gets a
   shared label, honouring both constraints of the paper (a task label maps to exactly one shared label; a shared
   label holds at most one label of each task). Strategies: ``size`` (the paper: the k-th largest label goes to
   shared label k) and ``overlap`` (the current model segments the new task's training images; each label goes to
   the shared label whose prediction overlaps it most, as Dice, by an optimal one-to-one assignment; a label whose
   best overlap is below :data:`MIN_OVERLAP_DICE` takes the lowest free shared label in size order, or a new one).
   ``--map LABEL=SHARED`` pins labels by hand and the strategy places the rest. Old mappings never change.
2. **Expansion.** A task with more labels than n* extends the label space, and the output layer grows with it
   (:func:`labelshare.networks.expand_output_channels`: old channels keep their weights, new ones start from the
   background channel); a task-conditioned network also gets an input for the new task.
3. **Training** continues from the old weights on the new task mixed with replay of the old tasks: exemplar cases
   read from the old tasks' folders, drawn from their training split only, and optionally distillation of the old
   model's outputs on the replayed slices. Every task gets the same share of each batch (the engine's sampler).
4. **Forgetting report and gate.** Every task of the old model is scored on its validation cases by the old and by
   the new model (per-case Dice at native resolution, mean over cases, then over labels; the old model's own
   ``metrics.json`` is reused for tasks whose validation cases and data are unchanged). When a task loses more
   than ``max_regression`` Dice points the new version is refused (:class:`RegressionRefused`, exit status 3)
   unless ``accept_regression``: the report is written beside the requested folder as ``<NEW>.forgetting.json``
   and ``.md``, and the trained candidate stays in ``.<NEW>.candidate`` so that the same command with
   ``--accept-regression`` publishes it without training again.
5. **Publishing.** The new folder holds ``forgetting.json``/``forgetting.md`` and a ``lineage.json`` with parent,
   operation, task, mapping, replay set, data fingerprints and the task folders used. The old folder is only read.

The old tasks' folders (needed for replay and for the report) come from ``--replay-task NAME=DIR``, else from the
absolute paths that the old model's ``lineage.json`` records under ``task_folders`` (every add-task writes them).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .errors import LabelShareError, LabelSpaceError, ModelError, TrainingInterrupted, UnknownTaskError
from .evaluation import Evaluation, evaluate_cases, format_number, nanmean
from .fileio import atomic_write_json, atomic_write_text, publish_dir, read_json, sha256_file
from .labelspace import LabelSpace, TaskStatistics, compute_statistics
from .models import Model, ModelConfig, load_model, resolve_device, verify_folder, write_manifest
from .paths import recorded_task_folders
from .networks import expand_output_channels, expand_task_inputs
from .pipeline import run_training
from .progress import Progress
from .tasks import TaskDataset, parse_task_argument, split_by_patient
from .training import Batch, StopRequest, TrainConfig, Trainer, config_to_json, resize_slices

# Defaults chosen by measurement (docs/incremental/README.md).
DEFAULT_STRATEGY = "overlap"
DEFAULT_REPLAY_CASES: int | None = None  # None: every training case of every old task
DEFAULT_DISTILL_WEIGHT = 1.0
DEFAULT_EPOCHS = 3
DEFAULT_STEPS_PER_EPOCH = 100
DEFAULT_LEARNING_RATE = 2e-3
DEFAULT_MAX_REGRESSION = 1.0  # Dice points (0-100 scale)

STRATEGIES = ("overlap", "size")
MIN_OVERLAP_DICE = 0.1  # below this a label's best overlap is noise, not a structure the model already finds
OVERLAP_CASES = 50  # training cases of the new task segmented for the overlap strategy (spread over patients)
DISTILL_TEMPERATURE = 2.0
ADDABLE_METHODS = ("label-sharing", "label-sharing-task-channels", "per-task")
EXIT_REGRESSION = 3


class RegressionRefused(LabelShareError):
    """The new version lost more than the allowed Dice on an old task and was not published."""

    def __init__(self, message: str, report: Path):
        super().__init__(message)
        self.report = report


# -- mapping ----------------------------------------------------------------------------------------------------------
@dataclass
class LabelMapping:
    """The shared label of every label of a task being added, and why it went there."""

    task: str
    strategy: str
    shared: dict[str, int]
    reasons: dict[str, str]
    overlap: dict[str, list[float]] | None = None  # label -> Dice with the prediction of shared label 1..n*

    def to_json(self) -> dict:
        return {"task": self.task, "strategy": self.strategy, "shared": self.shared, "reasons": self.reasons,
                **({"overlap_dice": self.overlap} if self.overlap is not None else {})}


def parse_pins(texts: Sequence[str], stats: TaskStatistics, space: LabelSpace) -> dict[str, int]:
    """``--map LABEL=SHARED`` arguments -> {label: shared label}; SHARED is a number or ``TASK:LABEL`` of the model."""
    pins: dict[str, int] = {}
    limit = space.n_shared + len(stats.labels)
    for text in texts:
        label, sep, target = (part.strip() for part in text.partition("="))
        if not sep or not label or not target:
            raise LabelSpaceError(f"--map '{text}': use LABEL=SHARED (a shared label number or TASK:LABEL)")
        if label not in stats.labels:
            raise LabelSpaceError(f"--map '{text}': task '{stats.name}' has no label '{label}' "
                                  f"(labels: {', '.join(stats.labels)})")
        if label in pins:
            raise LabelSpaceError(f"--map '{text}': label '{label}' is mapped twice")
        if ":" in target:
            other_task, _, other_label = target.partition(":")
            shared = space.task(other_task).label(other_label).shared
        else:
            try:
                shared = int(target)
            except ValueError:
                raise LabelSpaceError(f"--map '{text}': '{target}' is neither a shared label number nor "
                                      "TASK:LABEL") from None
            if not 1 <= shared <= limit:
                raise LabelSpaceError(f"--map '{text}': shared label must be 1..{limit} (n* = {space.n_shared}; "
                                      "numbers above n* add shared labels)")
        if shared in pins.values():
            taken = next(name for name, value in pins.items() if value == shared)
            raise LabelSpaceError(f"--map '{text}': shared label {shared} already holds '{taken}'; a shared label "
                                  "holds at most one label of a task")
        pins[label] = shared
    return pins


def map_labels(space: LabelSpace, stats: TaskStatistics, strategy: str, pins: Mapping[str, int] | None = None,
               overlap: np.ndarray | None = None) -> LabelMapping:
    """Shared labels for a new task: explicit pins first, then the strategy.

    ``overlap`` (for ``overlap``): Dice between each label of the task (rows, in ``stats.labels`` order) and the
    prediction of every output channel (columns 0..n*, 0 = background), from :func:`measure_overlap`.
    """
    if strategy not in STRATEGIES:
        raise LabelSpaceError(f"unknown mapping strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    if stats.name in space.tasks:
        raise LabelSpaceError(f"task '{stats.name}' is already in the model; its mapping stays as it is")
    assigned = dict(pins or {})
    reasons = {label: "explicit (--map)" for label in assigned}
    members = space.shared_members()
    names = list(stats.labels)
    overlap_json = None
    if strategy == "overlap":
        if overlap is None or overlap.shape != (len(names), space.n_shared + 1):
            raise ValueError("the overlap strategy needs the Dice of every label with every output channel")
        overlap_json = {label: [round(float(v), 4) for v in overlap[i, 1:]] for i, label in enumerate(names)}
        rows = [i for i, label in enumerate(names) if label not in assigned]
        free = [k for k in range(1, space.n_shared + 1) if k not in assigned.values()]
        if rows and free:
            scores = overlap[np.ix_(rows, free)]
            for r, c in zip(*linear_sum_assignment(scores, maximize=True), strict=True):
                if scores[r, c] >= MIN_OVERLAP_DICE:
                    label, shared = names[rows[r]], free[c]
                    assigned[label] = shared
                    holders = ", ".join(f"{t}:{n}" for t, n in members[shared - 1].items())
                    reasons[label] = f"overlap: Dice {scores[r, c]:.2f} with the prediction of shared label {shared} " \
                                     f"({holders})"
    used = set(assigned.values())
    slot = 1
    for rank, label in enumerate(stats.size_order(), start=1):
        if label in assigned:
            continue
        while slot in used:
            slot += 1
        assigned[label] = slot
        used.add(slot)
        reasons[label] = (f"size rank {rank}" if strategy == "size" else
                          f"{_unmatched(overlap[names.index(label)], assigned, label)}; size rank {rank}") + \
            (f", next free shared label {slot}" if slot <= space.n_shared else f", new shared label {slot}")
    added = sorted(k for k in used if k > space.n_shared)
    if added != list(range(space.n_shared + 1, space.n_shared + 1 + len(added))):
        raise LabelSpaceError(f"--map: new shared labels must follow n* = {space.n_shared} without gaps "
                              f"(got {', '.join(map(str, added))})")
    strategy_used = "explicit" if pins and len(pins) == len(names) else strategy
    return LabelMapping(task=stats.name, strategy=strategy_used, shared={n: assigned[n] for n in names},
                        reasons={n: reasons[n] for n in names}, overlap=overlap_json)


def _unmatched(overlap_row: np.ndarray, assigned: Mapping[str, int], label: str) -> str:
    """Why the overlap strategy did not place a label: its best overlap is too small or went to another label."""
    best = int(np.argmax(overlap_row[1:])) + 1
    holder = next((other for other, shared in assigned.items() if shared == best and other != label), None)
    if overlap_row[best] >= MIN_OVERLAP_DICE and holder is not None:
        return f"its best overlap, shared label {best} (Dice {overlap_row[best]:.2f}), went to {holder}"
    return f"no overlap of Dice >= {MIN_OVERLAP_DICE} (best {overlap_row[best]:.2f}, shared label {best})"


@torch.no_grad()
def measure_overlap(network: torch.nn.Module, device: torch.device, task: TaskDataset, case_names: Sequence[str],
                    image_size: int, task_index: int, batch_size: int = 32) -> np.ndarray:
    """Dice between each label of ``task`` and the prediction (argmax over all output channels) of each channel,
    over the given cases at training resolution: array (labels in ``task.labels`` order, channels)."""
    network.eval()
    label_ids = list(task.labels.values())
    lut = torch.zeros(max(label_ids) + 1, dtype=torch.int64)
    for position, label_id in enumerate(label_ids, start=1):
        lut[label_id] = position
    counts = None
    for case in task.iter_cases(case_names):
        images, labels = resize_slices(case.image, case.label, image_size)
        labels = lut[labels]
        for start in range(0, images.shape[0], batch_size):
            batch = images[start: start + batch_size].to(device)
            index = torch.full((batch.shape[0],), task_index, device=device)
            logits = network(batch, index)
            channels = logits.shape[1]
            pairs = labels[start: start + batch_size] * channels + logits.max(dim=1).indices.cpu()
            found = torch.bincount(pairs.flatten(), minlength=(len(label_ids) + 1) * channels)
            found = found.reshape(len(label_ids) + 1, channels)
            counts = found if counts is None else counts + found
    counts = counts.double()
    label_pixels = counts[1:].sum(dim=1, keepdim=True)
    predicted_pixels = counts.sum(dim=0, keepdim=True)
    return (2 * counts[1:] / (label_pixels + predicted_pixels).clamp_min(1)).numpy()


def spread_cases(task: TaskDataset, case_names: Sequence[str], count: int | None, seed: int) -> list[str]:
    """``count`` of the cases (all when None or more), spread over patients: patients in a seeded random order
    give one case each in turn. Used for replay exemplars and for the cases the overlap strategy segments."""
    if count is None or count >= len(case_names):
        return list(case_names)
    patient_of = {case.name: case.patient for case in task.cases}
    by_patient: dict[str, list[str]] = {}
    for name in case_names:
        by_patient.setdefault(patient_of[name], []).append(name)
    patients = sorted(by_patient)
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    chosen: list[str] = []
    turn = 0
    while len(chosen) < count:
        chosen += [by_patient[p][turn] for p in order if turn < len(by_patient[p])][: count - len(chosen)]
        turn += 1
    chosen_names = set(chosen)
    return [name for name in case_names if name in chosen_names]


# -- training ---------------------------------------------------------------------------------------------------------
class IncrementalTrainer(Trainer):
    """The engine's training loop with replay and distillation.

    Old tasks train on their replay exemplars only (``replay``: task -> case names; an empty list drops the task
    from training). With ``distill_weight`` > 0 the old model's outputs on the replayed slices are a second target
    (Hinton et al. 2015): KL(old || new) of the softmax at temperature :data:`DISTILL_TEMPERATURE` over the old
    output channels, times T^2, added to the segmentation loss.
    """

    def __init__(self, network, heads, train_banks, validation_banks, config, workdir, progress, context=None,
                 run_identity=None, fraction_range=(0.0, 1.0), *, replay: Mapping[str, Sequence[str]],
                 teacher: torch.nn.Module | None = None, distill_weight: float = 0.0):
        banks = []
        for bank in train_banks:
            if bank.task in replay:
                bank = bank.select(np.isin(np.array(bank.case_of_slice), list(replay[bank.task])))
            if len(bank):
                banks.append(bank)
        identity = {**(run_identity or {}), "replay": {t: list(c) for t, c in replay.items()},
                    "distill_weight": distill_weight}
        super().__init__(network, heads, banks, validation_banks, config, workdir, progress, context, identity,
                         fraction_range)
        self.distill_weight = distill_weight
        self.teacher = None
        if teacher is not None and distill_weight > 0:
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.replayed_tasks = torch.tensor([heads[t].index for t, cases in replay.items() if cases],
                                           device=self.device, dtype=torch.int64)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        loss = super().loss(logits, batch)
        if self.teacher is None:
            return loss
        replayed = torch.isin(batch.task_index, self.replayed_tasks)
        if not bool(replayed.any()):
            return loss
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with torch.no_grad(), autocast:
            old_logits = self.teacher(batch.images[replayed], batch.task_index[replayed])
        temperature = DISTILL_TEMPERATURE
        new_log_p = F.log_softmax(logits[replayed, : old_logits.shape[1]].float() / temperature, dim=1)
        old_log_p = F.log_softmax(old_logits.float() / temperature, dim=1)
        divergence = F.kl_div(new_log_p, old_log_p, reduction="none", log_target=True).sum(dim=1).mean()
        return loss + self.distill_weight * temperature ** 2 * divergence


class _Part(Progress):
    """One part of add-task as seen by the command's progress: fractions mapped into [start, end], the part's own
    ``done`` passed on as a log line (the command's ``done`` comes last), and a SIGINT/SIGTERM received outside the
    training loop (which handles its own) turned into :class:`TrainingInterrupted` at the next event."""

    def __init__(self, outer: Progress, start: float, end: float, stop: StopRequest):
        super().__init__("quiet")
        self.outer, self.start, self.end, self.stop = outer, start, end, stop

    def emit(self, event: str, **fields) -> None:
        if self.stop.signal_number is not None:
            raise TrainingInterrupted("stopped by signal; repeat the command with --resume to continue")
        if event == "done":
            event, fields = "log", {"message": fields.get("message", "")}
        if event == "progress":
            fields["fraction"] = self.start + (self.end - self.start) * fields.get("fraction", 0.0)
        self.outer.emit(event, **fields)


# -- forgetting report ------------------------------------------------------------------------------------------------
@dataclass
class ForgettingReport:
    """Dice of every label of every old task before and after; ``change`` = after - before (Dice, 0-1 scale);
    ``threshold`` in Dice points (0-100 scale); the gate looks at each task's mean over its labels."""

    threshold: float
    tasks: dict[str, dict[str, dict[str, float]]]
    new_task: dict[str, float]
    new_task_name: str
    accepted: bool = False

    def task_means(self) -> dict[str, dict[str, float]]:
        means = {}
        for task, labels in self.tasks.items():
            before = nanmean([v["before"] for v in labels.values()])
            after = nanmean([v["after"] for v in labels.values()])
            means[task] = {"before": before, "after": after, "change": after - before}
        return means

    def worst(self) -> tuple[str, dict[str, float]] | None:
        scored = [(t, m) for t, m in self.task_means().items() if m["change"] == m["change"]]
        return min(scored, key=lambda item: item[1]["change"]) if scored else None

    @property
    def passed(self) -> bool:
        worst = self.worst()
        return worst is None or worst[1]["change"] * 100 >= -self.threshold - 1e-9

    def to_json(self, parent: str, model: str, operation: str) -> dict:
        worst = self.worst()
        return {"format": "labelshare.forgetting", "threshold": self.threshold, "passed": self.passed,
                "accepted": self.accepted or self.passed, "parent": parent, "model": model, "operation": operation,
                "definition": "per-case Dice at native resolution on each task's validation cases, mean over cases; "
                              "change = after - before in Dice (0-1); threshold in Dice points (0-100), applied to "
                              "each task's mean over its labels",
                "tasks": self.tasks, "task_means": self.task_means(),
                "worst": {"task": worst[0], **worst[1]} if worst else None,
                "new_task": {"name": self.new_task_name, "dice": self.new_task}}

    def to_markdown(self, parent: str, model: str) -> str:
        verdict = "passed" if self.passed else ("REGRESSION accepted (--accept-regression)" if self.accepted
                                               else "REFUSED")
        lines = [f"# Forgetting report: `{parent}` -> `{model}`", "",
                 f"Gate: no old task may lose more than {self.threshold:g} Dice points (mean over its labels). "
                 f"Verdict: **{verdict}**.", "",
                 "Per-case Dice at native resolution on each task's validation cases, mean over cases.", "",
                 "| task | label | before | after | change (points) |", "|---|---|---|---|---|"]
        means = self.task_means()
        for task, labels in self.tasks.items():
            for label, v in labels.items():
                lines.append(f"| {task} | {label} | {_dice(v['before'])} | {_dice(v['after'])} | "
                             f"{_points(v['change'])} |")
            m = means[task]
            lines.append(f"| **{task}** | *mean* | {_dice(m['before'])} | {_dice(m['after'])} | "
                         f"**{_points(m['change'])}** |")
        lines += ["", f"New version on `{self.new_task_name}`: "
                  + ", ".join(f"{label} {_dice(v)}" for label, v in self.new_task.items()), ""]
        return "\n".join(lines)


_dice = functools.partial(format_number, digits=3, missing="-")


def _points(change: float) -> str:
    return "-" if change != change else f"{100 * change:+.1f}"


Summary = Mapping[str, Mapping[str, Mapping[str, float]]]  # task -> label -> {"dice_mean": ...} (metrics.json)


def forgetting_report(before: Summary, after: Summary, old_tasks: Sequence[str], new_task: str, threshold: float,
                      accepted: bool) -> ForgettingReport:
    """Compare the old model's validation summary with the new model's (both as in ``metrics.json``)."""
    tasks = {}
    for task in old_tasks:
        tasks[task] = {}
        for label, scores in before[task].items():
            old, new = scores["dice_mean"], after[task][label]["dice_mean"]
            tasks[task][label] = {"before": old, "after": new, "change": new - old}
    new_scores = {label: s["dice_mean"] for label, s in after.get(new_task, {}).items()}
    return ForgettingReport(threshold=threshold, tasks=tasks, new_task=new_scores, new_task_name=new_task,
                            accepted=accepted)


def old_validation_scores(old: Model, candidate: Path, tasks: Mapping[str, TaskDataset], names: Sequence[str],
                          progress: Progress) -> Summary:
    """The old model's Dice on each task's validation cases of the candidate's split.

    The old model's own ``metrics.json`` is that evaluation when the task's validation cases and the data
    fingerprint of its folder are unchanged and the metric definition is the same; other tasks are evaluated.
    """
    split = read_json(candidate / "split.json")["tasks"]
    data = read_json(candidate / "lineage.json")["data"]
    definition = read_json(candidate / "metrics.json").get("definition")
    recorded = old.read_json("metrics.json", {}) or {}
    recorded_split = (old.read_json("split.json", {}) or {}).get("tasks", {})
    recorded_data = (old.read_json("lineage.json", {}) or {}).get("data", {})
    scores: dict[str, Mapping[str, Mapping[str, float]]] = {}
    to_evaluate = []
    for name in names:
        unchanged = (recorded.get("definition") == definition and name in recorded.get("validation", {})
                     and recorded_split.get(name, {}).get("validation") == split[name]["validation"]
                     and recorded_data.get(name, {}).get("fingerprint") == data[name]["fingerprint"])
        if unchanged:
            scores[name] = recorded["validation"][name]
        else:
            to_evaluate.append(name)
    if scores:
        progress.log(f"old scores of {', '.join(scores)} taken from {old.path.name}/metrics.json (same validation "
                     "cases and data)")
    evaluation = Evaluation()
    for i, name in enumerate(to_evaluate):
        evaluation.extend(evaluate_cases(old, tasks[name], split[name]["validation"], progress=progress,
                                         fraction_range=(i / len(to_evaluate), (i + 1) / len(to_evaluate))))
    return {**scores, **evaluation.summary()}


# -- add-task ---------------------------------------------------------------------------------------------------------
def candidate_dir_for(out: Path) -> Path:
    """Where a trained version waits for the regression gate; hidden, beside ``out``."""
    return out.parent / f".{out.name}.candidate"


def report_paths_for(out: Path) -> tuple[Path, Path]:
    """Where a refused version's forgetting report is written (JSON, markdown): beside ``out``."""
    return out.parent / f"{out.name}.forgetting.json", out.parent / f"{out.name}.forgetting.md"


def add_task(model: str | Path, task: tuple[str, str | Path], out: str | Path, *,
             strategy: str = DEFAULT_STRATEGY, label_map: Sequence[str] = (),
             replay_tasks: Sequence[tuple[str, str | Path]] = (), replay_cases: int | None = DEFAULT_REPLAY_CASES,
             distill_weight: float = DEFAULT_DISTILL_WEIGHT, max_regression: float = DEFAULT_MAX_REGRESSION,
             accept_regression: bool = False, epochs: int = DEFAULT_EPOCHS,
             steps_per_epoch: int = DEFAULT_STEPS_PER_EPOCH, batch_size: int = 16,
             learning_rate: float = DEFAULT_LEARNING_RATE, seed: int = 0, device: str = "auto",
             resume: bool = False, progress: Progress | None = None,
             command: Sequence[str] | None = None) -> Path:
    """Add ``task`` (name, nnU-Net folder) to the model folder ``model`` and publish the result as ``out``; a task
    the model already has is updated with the folder's cases instead. Returns ``out``; raises
    :class:`RegressionRefused` when the gate refuses (nothing at ``out``; report beside it).

    >>> add_task("models/v1", ("sunnybrook", "data/sunnybrook"), "models/v2",
    ...          replay_tasks=[("acdc", "data/acdc"), ("hippo", "data/hippo")])   # doctest: +SKIP
    """
    progress = progress or Progress("human")
    old_path, out = Path(model), Path(out)
    name, folder = task
    _check_options(strategy, replay_cases, distill_weight, max_regression)
    if out.exists():
        raise LabelShareError(f"{out}: already exists; model versions are never overwritten, choose a new --out")
    candidate = candidate_dir_for(out)
    with StopRequest() as stop:
        progress.progress("mapping", 0.0, f"reading {old_path.name}")
        old = load_model(old_path, device=device)
        if old.config.method not in ADDABLE_METHODS:
            raise ModelError(f"{old_path}: add-task extends label-sharing models; this is a {old.config.method} "
                             "model")
        config = _train_config(old, epochs, steps_per_epoch, batch_size, learning_rate, seed, device)
        update = name in old.labelspace.tasks
        if update and label_map:
            raise LabelSpaceError(f"--map: task '{name}' is already in {old_path.name}; its mapping stays as it is")
        new_task = TaskDataset.open(folder, name)
        old_folders = _old_task_folders(old, replay_tasks, name)
        tasks = {t: (new_task if t == name else TaskDataset.open(old_folders[t], t))
                 for t in dict.fromkeys([*old.labelspace.tasks, name])}  # old order; an added task last
        _check_old_labels(old, tasks, name)
        split = _split(old, tasks, name, config)
        replay = {t: spread_cases(tasks[t], split[t]["train"], replay_cases, seed)
                  for t in old.labelspace.tasks if t != name}
        if distill_weight > 0 and not any(replay.values()):
            progress.log("no old slices are replayed, so there is nothing to distil on: distillation is off")
            distill_weight = 0.0
        request = _json_round_trip({
            "parent": old_path.name, "parent_manifest_sha256": sha256_file(old_path / "manifest.json"),
            "task": name, "task_folder": str(Path(folder).resolve()), "strategy": strategy,
            "map": list(label_map), "replay_cases": "all" if replay_cases is None else replay_cases,
            "distill_weight": distill_weight, "old_task_folders": {t: str(p.resolve()) for t, p in old_folders.items()},
            "train": {k: v for k, v in config_to_json(config).items() if k != "device"}})
        if candidate.exists():
            _check_candidate(candidate, out, request, resume or accept_regression)
            progress.log(f"{candidate}: trained earlier by the same command; checking it again")
        else:
            space, network, mapping = _prepare(old, new_task, split, strategy, label_map, update, config,
                                               _Part(progress, 0.0, 0.05, stop))
            progress.metrics("mapping", task=name, strategy=mapping["strategy"], shared=mapping["shared"],
                             n_shared=space.n_shared, message=f"{name}: " + "; ".join(
                                 f"{label} -> shared {k} ({mapping['reasons'][label]})"
                                 for label, k in mapping["shared"].items()))
            method = "label-sharing" if old.config.method == "per-task" else old.config.method
            model_config = ModelConfig(method=method, layout="shared", network=copy.deepcopy(network.config),
                                       preprocessing=copy.deepcopy(old.config.preprocessing),
                                       weights_dtype=old.config.weights_dtype)
            lineage = {"parent": old_path.name, "parent_manifest_sha256": request["parent_manifest_sha256"],
                       "operation": "update-task" if update else "add-task",
                       "tasks_added": [] if update else [name], "task": name, "mapping": mapping,
                       "replay": {"cases_per_task": request["replay_cases"], "exemplars": replay},
                       "distillation": {"weight": distill_weight, "temperature": DISTILL_TEMPERATURE},
                       "task_folders": {t: str(tasks[t].root.resolve()) for t in space.task_names},
                       "request": request}
            ordered = {t: tasks[t] for t in space.task_names}
            run_training(ordered, space, model_config, candidate, config, _Part(progress, 0.05, 0.9, stop),
                         resume=resume, command=command, lineage=lineage, initial_network=network,
                         trainer_class=IncrementalTrainer, split=split,
                         trainer_options={"replay": replay, "teacher": old.network, "distill_weight": distill_weight})
        return _gate(old, candidate, out, tasks, name, update, max_regression, accept_regression, progress,
                     _Part(progress, 0.9, 0.99, stop))


def _check_options(strategy: str, replay_cases: int | None, distill_weight: float, max_regression: float) -> None:
    if strategy not in STRATEGIES:
        raise LabelShareError(f"--strategy {strategy}: use one of {', '.join(STRATEGIES)}")
    if replay_cases is not None and replay_cases < 0:
        raise LabelShareError("--replay-cases must be 0 or more (or 'all')")
    if distill_weight < 0:
        raise LabelShareError("--distill-weight must be 0 or more")
    if max_regression < 0:
        raise LabelShareError("--max-regression is a number of Dice points, 0 or more")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LabelShareError("add-task runs in one process on one device; start it without torchrun")


def _train_config(old: Model, epochs: int, steps_per_epoch: int, batch_size: int, learning_rate: float, seed: int,
                  device: str) -> TrainConfig:
    """The old model's training settings (image size, augmentation, precision) with the new budget."""
    recorded = old.read_json("training.json", {}) or {}
    known = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in recorded.items() if k in known})
    config.image_size = old.config.preprocessing.image_size
    config.weights_dtype = old.config.weights_dtype
    config.epochs, config.steps_per_epoch, config.batch_size = epochs, steps_per_epoch, batch_size
    config.learning_rate, config.seed, config.device = learning_rate, seed, device
    config.check()
    return config


def _old_task_folders(old: Model, given: Sequence[tuple[str, str | Path]], task: str) -> dict[str, Path]:
    """Folder of every old task except ``task``: ``--replay-task`` first, else the model's lineage."""
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
    if missing:
        raise LabelShareError(f"{old.path}: give the folder of old task(s) {', '.join(missing)} with --replay-task "
                              f"{missing[0]}=DIR (needed for replay and for the forgetting report)")
    return folders


def _check_old_labels(old: Model, tasks: Mapping[str, TaskDataset], task: str) -> None:
    for name, dataset in tasks.items():
        if name not in old.labelspace.tasks:
            continue
        expected = {e.name: e.id for e in old.labelspace.task(name).labels}
        if dataset.labels != expected:
            hint = "; add it under a new task name instead" if name == task else ""
            raise LabelShareError(f"{dataset.root / 'dataset.json'}: labels {dataset.labels} differ from task "
                                  f"'{name}' of {old.path.name} {expected}{hint}")


def _split(old: Model, tasks: Mapping[str, TaskDataset], task: str, config: TrainConfig) -> dict[str, dict]:
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
            fresh_train, fresh_validation = (split_by_patient(fresh, config.validation_fraction, config.seed)
                                             if fresh else ([], []))
            train += [c.name for c in unseen if side.get(c.patient) == "train"] + fresh_train
            validation += [c.name for c in unseen if side.get(c.patient) == "validation"] + fresh_validation
        split[name] = {"train": train, "validation": validation}
    return split


def _prepare(old: Model, new_task: TaskDataset, split: Mapping[str, Mapping[str, list[str]]], strategy: str,
             label_map: Sequence[str], update: bool, config: TrainConfig, progress: Progress
             ) -> tuple[LabelSpace, torch.nn.Module, dict]:
    """The new label space, the network to start from (old weights, expanded) and the mapping record."""
    name = new_task.name
    progress.progress("mapping", 0.1, f"{name}: label statistics of {len(split[name]['train'])} training cases")
    stats = compute_statistics(new_task, split[name]["train"])
    network = copy.deepcopy(old.network)
    if update:
        entry = old.labelspace.task(name)
        shared = {label.name: label.shared for label in entry.labels}
        space = old.labelspace.with_task(stats, shared, entry.strategy)
        return space, network, {"task": name, "strategy": entry.strategy, "shared": shared,
                                "reasons": {label: "unchanged (update of an existing task)" for label in shared}}
    expand_task_inputs(network, len(old.labelspace.tasks) + 1)
    pins = parse_pins(label_map, stats, old.labelspace)
    overlap = None
    if strategy == "overlap" and len(pins) < len(stats.labels):
        cases = spread_cases(new_task, split[name]["train"], OVERLAP_CASES, config.seed)
        progress.progress("mapping", 0.5, f"{name}: segmenting {len(cases)} training cases with {old.path.name}")
        overlap = measure_overlap(network, resolve_device(config.device), new_task, cases, config.image_size,
                                  task_index=len(old.labelspace.tasks))
    mapping = map_labels(old.labelspace, stats, "overlap" if overlap is not None else "size", pins, overlap)
    space = old.labelspace.with_task(stats, mapping.shared, mapping.strategy)
    expand_output_channels(network, space.n_shared + 1)
    progress.progress("mapping", 1.0, f"{name}: mapped by {mapping.strategy}; n* = {space.n_shared}")
    return space, network, mapping.to_json()


def _json_round_trip(data: dict) -> dict:
    return json.loads(json.dumps(data))


def _check_candidate(candidate: Path, out: Path, request: dict, reuse: bool) -> None:
    try:
        verify_folder(candidate)
    except ModelError as error:
        raise LabelShareError(f"{candidate}: the unpublished version of {out.name} is damaged ({error}); delete "
                              "the folder to train again") from None
    if read_json(candidate / "lineage.json").get("request") != request:
        raise LabelShareError(f"{candidate}: an unpublished version of {out.name} trained with other settings is "
                              "there; delete the folder or choose another --out")
    if not reuse:
        raise LabelShareError(f"{candidate}: {out.name} was trained but not published (report: "
                              f"{report_paths_for(out)[1]}); add --accept-regression to publish it, --resume to check "
                              "it again, or delete the folder to train again")


def _gate(old: Model, candidate: Path, out: Path, tasks: Mapping[str, TaskDataset], task: str, update: bool,
          max_regression: float, accept_regression: bool, progress: Progress, part: Progress) -> Path:
    split = read_json(candidate / "split.json")["tasks"]
    old_tasks = [t for t in old.labelspace.task_names if split.get(t, {}).get("validation")]
    before = old_validation_scores(old, candidate, tasks, old_tasks, part)
    metrics = read_json(candidate / "metrics.json")
    report = forgetting_report(before, metrics["validation"], old_tasks, task, max_regression, accept_regression)
    operation = "update-task" if update else "add-task"
    data = report.to_json(old.path.name, out.name, operation)
    markdown = report.to_markdown(old.path.name, out.name)
    worst = data["worst"]
    summary = "no old task was evaluated" if worst is None else \
        f"largest change {100 * worst['change']:+.1f} Dice points on '{worst['task']}'"
    progress.metrics("forgetting", passed=report.passed, threshold=max_regression, worst=worst,
                     task_means=data["task_means"], message=f"forgetting: {summary}; threshold "
                                                            f"{max_regression:g} points: "
                                                            f"{'passed' if report.passed else 'exceeded'}")
    if not (report.passed or accept_regression):
        json_path, markdown_path = report_paths_for(out)
        atomic_write_json(json_path, data)
        atomic_write_text(markdown_path, markdown)
        raise RegressionRefused(
            f"{out}: not published: task '{worst['task']}' lost {-100 * worst['change']:.1f} Dice points (mean "
            f"{worst['before']:.3f} -> {worst['after']:.3f}), more than the {max_regression:g} allowed; report "
            f"{markdown_path}; the trained version waits in {candidate}: repeat the command with "
            "--accept-regression to publish it", json_path)
    atomic_write_json(candidate / "forgetting.json", data)
    atomic_write_text(candidate / "forgetting.md", markdown)
    write_manifest(candidate)
    published = publish_dir(candidate, out)
    for stale in report_paths_for(out):
        stale.unlink(missing_ok=True)
    progress.done(str(published), message=f"model written to {published} ({summary})",
                  mean_dice=metrics["mean_dice"], forgetting=str(published / "forgetting.json"),
                  passed=report.passed)
    return published


# -- command line -----------------------------------------------------------------------------------------------------
def parse_replay_cases(text: str) -> int | None:
    """``--replay-cases``: a number of cases, or ``all`` (None)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise LabelShareError(f"--replay-cases {text}: give a number of cases or 'all'") from None


def run_from_args(args: argparse.Namespace, progress: Progress, command: Sequence[str] | None = None) -> int:
    """``labelshare add-task`` (parser in :mod:`labelshare.cli`): 0 when published, :data:`EXIT_REGRESSION` with a
    final ``error`` event carrying ``"regression": true`` and ``"report"`` when the gate refuses."""
    try:
        add_task(args.model, parse_task_argument(args.task), args.out, strategy=args.strategy,
                 label_map=args.label_map, replay_tasks=[parse_task_argument(t) for t in args.replay_task],
                 replay_cases=parse_replay_cases(args.replay_cases), distill_weight=args.distill_weight,
                 max_regression=args.max_regression, accept_regression=args.accept_regression, epochs=args.epochs,
                 steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                 learning_rate=args.learning_rate, seed=args.seed, device=args.device, resume=args.resume,
                 progress=progress, command=command)
    except RegressionRefused as error:
        if progress.mode == "json":
            progress.error(str(error), regression=True, report=str(error.report), interrupted=False)
        print(f"labelshare: refused: {error}", file=sys.stderr)
        return EXIT_REGRESSION
    return 0
