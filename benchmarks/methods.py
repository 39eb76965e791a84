"""The benchmark of the paper's comparison: per-task models, multi-channel, DoD-Net and label sharing (+ fixes).

``labelshare-bench methods --task NAME=DIR ... --methods per-task,label-sharing,... --out DIR`` trains every method on
the same patient-wise split with the same backbone, preprocessing, augmentation and budget, evaluates the same
validation cases at native resolution, and writes a markdown table, a CSV, a bar chart and the exact command.

Budget: ``--steps-per-task`` S. A per-task model trains S steps; a joint model of T tasks trains T x S steps with
task-balanced batches, so every task is seen the same number of times by every method.

Output folder (stable layout; other tools, e.g. incremental-learning experiments, reuse its models)::

    <out>/benchmark.json                 settings, tasks and command of the run (checked on --resume)
    <out>/split.json                     the patient-wise split every method uses
    <out>/labelspace-size.json           the paper's size-ranked label space (statistics of the training cases)
    <out>/labelspace-grouped.json        the same with the --group pairs (only when a grouped method is run)
    <out>/<method>/<task>/               per-task: one model folder per task (e.g. per-task/sunnybrook/)
    <out>/<method>/all/                  every other method: one model folder trained on all tasks
    <out>/<method>/inference.json        measured inference time of the method's model(s)
    <out>/results.md, results.csv, results.png, command.txt

Every model folder is a normal LabelShare model (``labelshare segment --model <out>/label-sharing/all ...``).
Resume (``--resume``): finished model folders are reused, an interrupted training continues from its checkpoint
(the engine's ``resume``), methods not trained yet are trained; the settings must be those of the first run.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
import numpy as np
import SimpleITK as sitk

from labelshare.config import TrainConfig
from labelshare.errors import LabelShareError
from labelshare.fileio import atomic_path, atomic_write_json, atomic_write_text, now_iso, read_json
from labelshare.inference import Segmenter
from labelshare.labelspace import LabelSpace, compute_statistics, parse_group, statistics_of
from labelshare.metrics import dice_per_label
from labelshare.modelfolder import verify_folder
from labelshare.models import load_model
from labelshare.networks import build_network, count_parameters
from labelshare.paths import staging_dir_for
from labelshare.plans import PlanSettings
from labelshare.progress import Progress
from labelshare.scores import nanmean
from labelshare.preprocessing import choose_slicing_axis
from labelshare.tasks import TaskDataset
from labelshare.training_run import make_split, open_tasks, train

from . import baselines  # noqa: F401  (registers multi-channel and DoD-Net with the engine)
from .common import machine
from .paired import paired_standard_error

BENCHMARK_FORMAT = "labelshare.benchmark"
JOINT_FOLDER = "all"


@dataclass(frozen=True)
class BenchmarkMethod:
    name: str
    engine_method: str   # the method of the engine's registry (labelshare.methods) that trains it
    grouped: bool        # label space with the --group pairs instead of pure size ranking
    description: str

    @property
    def per_task(self) -> bool:
        return self.engine_method == "per-task"


METHODS = {m.name: m for m in (
    BenchmarkMethod("per-task", "per-task", False, "one network per task, trained on that task only"),
    BenchmarkMethod("multi-channel", "multi-channel", False,
                    "one network, one output channel per label of every task; a task's softmax covers background "
                    "and its own channels only, so it is never penalised for labels it does not annotate"),
    BenchmarkMethod("dodnet", "dodnet", False,
                    "DoD-Net: shared U-Net + task-conditioned dynamic 1x1 head (controller: pooled bottleneck "
                    "features + one-hot task code); needs the task at inference"),
    BenchmarkMethod("label-sharing", "label-sharing", False,
                    "the paper: labels ranked by average relative size, k-th label of every task on shared label k"),
    BenchmarkMethod("label-sharing-grouped", "label-sharing", True,
                    "label sharing with the --group pairs pinned to one shared label, the rest by size"),
    BenchmarkMethod("label-sharing-task-channels", "label-sharing-task-channels", False,
                    "size-ranked label sharing with the task as one-hot input planes"),
    BenchmarkMethod("label-sharing-grouped-task-channels", "label-sharing-task-channels", True,
                    "grouped label sharing with the task as one-hot input planes"),
)}


@dataclass
class BenchmarkSettings:
    """Everything that decides the numbers (``device`` only how fast they come); defaults are the engine's."""

    steps_per_task: int = 500
    steps_per_epoch: int = TrainConfig.steps_per_epoch
    batch_size: int = TrainConfig.batch_size
    image_pixels: int = PlanSettings.image_pixels
    patch_pixels: int = PlanSettings.patch_pixels
    fixed_size: int | None = PlanSettings.fixed_size
    learning_rate: float = TrainConfig.learning_rate
    seed: int = TrainConfig.seed
    validation_fraction: float = TrainConfig.validation_fraction
    groups: list[str] = field(default_factory=list)
    device: str = TrainConfig.device

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "device"}

    def check(self) -> None:
        if self.steps_per_task < 1 or self.steps_per_epoch < 1:
            raise LabelShareError("--steps-per-task and --steps-per-epoch must be at least 1")
        if self.steps_per_task % self.steps_per_epoch:
            raise LabelShareError(f"--steps-per-task {self.steps_per_task} must be a multiple of --steps-per-epoch "
                                  f"{self.steps_per_epoch} (models are checkpointed and validated per epoch)")
        if not 0 < self.validation_fraction < 1:
            raise LabelShareError("--validation-fraction must be in (0, 1): the benchmark scores validation cases")
        self.train_config(1).check()
        self.plan_settings().check()

    def plan_settings(self) -> PlanSettings:
        return PlanSettings(image_pixels=self.image_pixels, patch_pixels=self.patch_pixels,
                            fixed_size=self.fixed_size)

    def describe_resolution(self) -> str:
        if self.fixed_size:
            return f"every slice resized to {self.fixed_size}x{self.fixed_size}"
        return (f"per-task plans (median spacing, images up to {self.image_pixels} pixels, patches up to "
                f"{self.patch_pixels} pixels)")

    def train_config(self, n_tasks: int) -> TrainConfig:
        return TrainConfig(batch_size=self.batch_size,
                           epochs=n_tasks * self.steps_per_task // self.steps_per_epoch,
                           steps_per_epoch=self.steps_per_epoch, learning_rate=self.learning_rate, seed=self.seed,
                           device=self.device, validation_fraction=self.validation_fraction)


@dataclass
class MethodResult:
    method: str
    models: dict[str, Path]                         # task -> model folder
    validation: dict[str, dict[str, dict]]          # task -> label -> {n, dice_mean, dice_sd, hd95_mean, hd95_sd}
    parameters: int                                 # summed over the method's networks
    training_s: float                               # summed over the method's networks
    inference_ms_per_slice: float
    machine: str                                    # where the inference was timed (see measure_inference)
    lookalike: list[dict] = field(default_factory=list)  # see measure_lookalike

    def mean_dice(self, task: str) -> float:
        return nanmean([s["dice_mean"] for s in self.validation[task].values()])


@dataclass
class BenchmarkResult:
    out: Path
    methods: list[MethodResult]
    tasks: list[str]
    spaces: dict[str, LabelSpace]
    split: dict[str, dict[str, list[str]]]
    command: list[str]
    settings: BenchmarkSettings

    def method(self, name: str) -> MethodResult:
        return next(m for m in self.methods if m.method == name)

    @property
    def machines(self) -> str:
        """The machines the methods were timed on: a table rewritten by ``--resume`` in another process (other thread
        count) reports the run's machine, not its own."""
        return "; ".join(dict.fromkeys(m.machine for m in self.methods))


def parse_methods(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def run_benchmark(task_arguments: Sequence[tuple[str, Path]], methods: Sequence[str], out: str | Path,
                  settings: BenchmarkSettings, resume: bool = False, progress: Progress | None = None,
                  command: Sequence[str] = ()) -> BenchmarkResult:
    """Train, evaluate and time every method; write the table, CSV, chart and command into ``out``."""
    progress = progress or Progress("human")
    settings.check()
    methods = list(methods)
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise LabelShareError(f"--methods: unknown method '{unknown[0] if unknown else ''}'; known: "
                              f"{', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise LabelShareError(f"--methods: a method is listed twice ({', '.join(methods)})")
    if any(METHODS[m].grouped for m in methods) and not settings.groups:
        raise LabelShareError("a grouped method needs --group TASK:LABEL=TASK:LABEL (e.g. "
                              "acdc:lv_cavity=sunnybrook:lv_cavity)")
    tasks = open_tasks(task_arguments)
    folders = dict(task_arguments)
    out = Path(out)
    _claim_folder(out, tasks, settings, resume, command)
    split = _load_or_make_split(out, tasks, settings)
    spaces = _label_spaces(out, tasks, split, settings, any(METHODS[m].grouped for m in methods), progress)
    results = []
    for index, name in enumerate(methods):
        method = METHODS[name]
        models = {}
        for unit in (list(tasks) if method.per_task else [JOINT_FOLDER]):
            unit_tasks = [unit] if method.per_task else list(tasks)
            folder = _train_unit(out / name / unit, method, unit_tasks, folders, spaces, split, settings, progress,
                                 command, f"[{index + 1}/{len(methods)}] {name} / {unit}")
            models.update({t: folder for t in unit_tasks})
        results.append(_method_result(out, method, models, tasks, split, settings, progress))
    result = BenchmarkResult(out=out, methods=results, tasks=list(tasks), spaces=spaces, split=split,
                             command=list(command), settings=settings)
    write_outputs(result)
    return result


# -- preparation ------------------------------------------------------------------------------------------------------
def _claim_folder(out: Path, tasks: dict[str, TaskDataset], settings: BenchmarkSettings, resume: bool,
                  command: Sequence[str]) -> None:
    """Record the settings in a new folder, or check that a resumed folder was made with the same settings."""
    record_file = out / "benchmark.json"
    identity = {"settings": settings.identity(), "tasks": {name: t.root.name for name, t in tasks.items()}}
    if record_file.is_file():
        if not resume:
            raise LabelShareError(f"{out}: holds a benchmark already; add --resume to continue it or choose a new "
                                  "--out")
        recorded = read_json(record_file, "benchmark record")
        old = {"settings": recorded.get("settings"), "tasks": recorded.get("tasks")}
        if old != identity:
            changed = sorted(k for k in set(old["settings"] or {}) | set(identity["settings"])
                             if (old["settings"] or {}).get(k) != identity["settings"].get(k))
            what = ", ".join(f"--{k.replace('_', '-')}" for k in changed) or "the tasks"
            raise LabelShareError(f"{record_file}: this benchmark was run with other {what}; repeat its settings "
                                  "to resume it or choose a new --out")
        return
    if out.exists() and any(out.iterdir()):
        raise LabelShareError(f"{out}: exists and is not a benchmark folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record_file, {"format": BENCHMARK_FORMAT, **identity, "created": now_iso(),
                                    "command": list(command)})


def _load_or_make_split(out: Path, tasks: dict[str, TaskDataset], settings: BenchmarkSettings) -> dict:
    split_file = out / "split.json"
    if split_file.is_file():
        return read_json(split_file, "benchmark split")["tasks"]
    split = make_split(tasks, settings.validation_fraction, settings.seed)
    empty = [name for name, sides in split.items() if not sides["validation"] or not sides["train"]]
    if empty:
        raise LabelShareError(f"task '{empty[0]}' has too few patients for a training and a validation side "
                              f"({len(tasks[empty[0]].cases)} cases)")
    atomic_write_json(split_file, {"seed": settings.seed, "validation_fraction": settings.validation_fraction,
                                   "rule": "patient-wise; see labelshare.tasks.patient_of", "tasks": split})
    return split


def _label_spaces(out: Path, tasks: dict[str, TaskDataset], split: dict, settings: BenchmarkSettings,
                  grouped: bool, progress: Progress) -> dict[str, LabelSpace]:
    """The size-ranked space (and the grouped one), from label statistics of the training cases only."""
    size_file, grouped_file = out / "labelspace-size.json", out / "labelspace-grouped.json"
    if size_file.is_file():
        size_space = LabelSpace.load(size_file)
    else:
        statistics = []
        for i, (name, task) in enumerate(tasks.items()):
            progress.progress("statistics", i / len(tasks), f"label statistics of {name} (training cases)")
            statistics.append(compute_statistics(task, split[name]["train"], plan_settings=settings.plan_settings()))
        size_space = LabelSpace.build(statistics, plan_settings=settings.plan_settings())
        size_space.save(size_file)
    spaces = {"size": size_space}
    if grouped:
        if grouped_file.is_file():
            spaces["grouped"] = LabelSpace.load(grouped_file)
        else:
            spaces["grouped"] = LabelSpace.build([statistics_of(e) for e in size_space.tasks.values()],
                                                 [parse_group(g) for g in settings.groups], size_space.plan_settings)
            spaces["grouped"].save(grouped_file)
    return spaces


def _space_for(method: BenchmarkMethod, unit_tasks: list[str], spaces: dict[str, LabelSpace]) -> LabelSpace:
    if method.per_task:
        return LabelSpace.build([statistics_of(spaces["size"].task(unit_tasks[0]))],
                                plan_settings=spaces["size"].plan_settings)
    return spaces["grouped" if method.grouped else "size"]


def _train_unit(folder: Path, method: BenchmarkMethod, unit_tasks: list[str], folders: dict[str, Path],
                spaces: dict[str, LabelSpace], split: dict, settings: BenchmarkSettings, progress: Progress,
                command: Sequence[str], title: str) -> Path:
    """One model folder of a method: reused when finished, resumed when interrupted, else trained."""
    if folder.is_dir():
        verify_folder(folder)
        progress.log(f"{title}: reusing the finished model {folder}")
        return folder
    resume = staging_dir_for(folder).is_dir()
    progress.log(f"{title}: {'resuming' if resume else 'training'} ({len(unit_tasks)} task(s) x "
                 f"{settings.steps_per_task} steps)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return train([(t, folders[t]) for t in unit_tasks], _space_for(method, unit_tasks, spaces), folder,
                 settings.train_config(len(unit_tasks)), method=method.engine_method, resume=resume,
                 progress=progress, command=list(command), split={t: split[t] for t in unit_tasks}).path


# -- measurements -----------------------------------------------------------------------------------------------------
def _slice_count(image) -> int:
    axis = choose_slicing_axis(image)
    return 1 if axis is None else image.GetSize()[::-1][axis]


def measure_inference(models: dict[str, Path], tasks: dict[str, TaskDataset], split: dict, device: str) -> dict:
    """Wall time of ``Segmenter.segment`` (normalise, resize, network, resize back, argmax) over the validation
    cases, after one warm-up call per network; reading the files is not timed."""
    seconds, slices = 0.0, 0
    for folder in dict.fromkeys(models.values()):
        segmenter = Segmenter(load_model(folder, device=device))
        warmed_up = False
        for name in (t for t, f in models.items() if f == folder):
            task = tasks[name]
            for case_name in split[name]["validation"]:
                image = task.read_case(task.case(case_name))[0]
                if not warmed_up:
                    segmenter.segment(image, name)
                    warmed_up = True
                start = time.perf_counter()
                segmenter.segment(image, name)
                seconds += time.perf_counter() - start
                slices += _slice_count(image)
    return {"seconds": round(seconds, 3), "slices": slices, "ms_per_slice": round(1000 * seconds / max(1, slices), 3),
            "machine": machine(device), "models": sorted({f.name for f in models.values()})}


def measure_lookalike(models: dict[str, Path], tasks: dict[str, TaskDataset], split: dict,
                      groups: Sequence[Sequence[tuple[str, str]]], device: str) -> list[dict]:
    """The look-alike check: for every pair of grouped labels A:a = B:b (the same structure in two tasks), task A's
    segmentation of B's validation images, scored for label a against B's reference for b.

    A model that maps a structure to one shared label whatever dataset the image resembles scores about as well as
    on A's own images; one that learnt "which dataset is this" from appearance puts the structure on B's shared label
    and scores near 0, which is what a user meets when a new scanner's images look like the other task's.
    """
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (read-out task, images' task) -> label pairs
    for group in groups:
        for task_a, label_a in group:
            for task_b, label_b in group:
                if task_a != task_b:
                    pairs.setdefault((task_a, task_b), []).append((label_a, label_b))
    rows = []
    segmenters: dict[Path, Segmenter] = {}
    for (readout, images_of), label_pairs in pairs.items():
        folder = models[readout]
        segmenter = segmenters.setdefault(folder, Segmenter(load_model(folder, device=device)))
        scores: dict[tuple[str, str], list[float]] = {pair: [] for pair in label_pairs}
        task = tasks[images_of]
        for case_name in split[images_of]["validation"]:
            image, _, reference = task.read_case(task.case(case_name))
            predicted = sitk.GetArrayFromImage(segmenter.segment(image, readout))
            for label_a, label_b in label_pairs:
                scores[(label_a, label_b)].append(dice_per_label(
                    (predicted == tasks[readout].labels[label_a]).astype(np.uint8),
                    (reference == task.labels[label_b]).astype(np.uint8), [1])[1])
        for (label_a, label_b), values in scores.items():
            finite = np.array([v for v in values if v == v])
            rows.append({"task": readout, "label": label_a, "images": images_of, "reference_label": label_b,
                         "n": int(finite.size), "dice_mean": float(finite.mean()) if finite.size else math.nan,
                         "dice_sd": float(finite.std()) if finite.size else math.nan})
    return rows


def _method_result(out: Path, method: BenchmarkMethod, models: dict[str, Path], tasks: dict[str, TaskDataset],
                   split: dict, settings: BenchmarkSettings, progress: Progress) -> MethodResult:
    validation, parameters, training_s = {}, 0, 0.0
    for folder in dict.fromkeys(models.values()):
        config, _ = verify_folder(folder)
        parameters += count_parameters(build_network(config.network))
        training_s += float(read_json(folder / "lineage.json", "model lineage")["elapsed_s"])
        metrics = read_json(folder / "metrics.json", "model metrics")["validation"]
        validation.update({t: metrics[t] for t, f in models.items() if f == folder})
    timing_file = out / method.name / "inference.json"
    timing = read_json(timing_file, "inference timing") if timing_file.is_file() else None
    if timing is None or timing.get("models") != sorted({f.name for f in models.values()}):
        progress.log(f"{method.name}: timing inference on the validation cases")
        timing = measure_inference(models, tasks, split, settings.device)
        atomic_write_json(timing_file, timing)
    lookalike_file = out / method.name / "lookalike.json"
    groups = [parse_group(g) for g in settings.groups]
    lookalike = read_json(lookalike_file, "look-alike check") if lookalike_file.is_file() else None
    if groups and (lookalike is None or lookalike.get("groups") != settings.groups):
        progress.log(f"{method.name}: look-alike check (each grouped task on the other task's validation images)")
        lookalike = {"groups": settings.groups,
                     "rows": measure_lookalike(models, tasks, split, groups, settings.device)}
        atomic_write_json(lookalike_file, lookalike)
    return MethodResult(method=method.name, models=models, validation={t: validation[t] for t in tasks},
                        parameters=parameters, training_s=training_s,
                        inference_ms_per_slice=float(timing["ms_per_slice"]), machine=timing["machine"],
                        lookalike=lookalike["rows"] if groups else [])


# -- outputs ----------------------------------------------------------------------------------------------------------
def write_outputs(result: BenchmarkResult) -> None:
    out = result.out
    atomic_write_text(out / "results.md", render_markdown(result))
    atomic_write_text(out / "results.csv", render_csv(result))
    atomic_write_text(out / "command.txt", shlex.join(result.command) + "\n")
    write_chart(result, out / "results.png")


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _number(value, digits: int) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "n/a"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def render_markdown(result: BenchmarkResult) -> str:
    s = result.settings
    methods = result.methods
    reference = next((m for m in methods if m.method == "per-task"), None)
    lines = ["# Benchmark: label sharing vs per-task, multi-channel and DoD-Net", "",
             f"- command: `{shlex.join(result.command)}`",
             f"- machine: {result.machines}",
             f"- budget: {s.steps_per_task} steps of batch {s.batch_size} per task (a joint model of "
             f"{len(result.tasks)} tasks trains {len(result.tasks) * s.steps_per_task} steps with task-balanced "
             f"batches), {s.steps_per_epoch} steps per epoch, {s.describe_resolution()}, learning rate "
             f"{s.learning_rate} (AdamW, warm-up + polynomial decay), seed {s.seed}",
             f"- split: patient-wise, {100 * s.validation_fraction:.0f} % of each task's cases for validation, the "
             "same for every method: " + ", ".join(f"{t} {len(result.split[t]['validation'])} cases"
                                                   for t in result.tasks),
             "- metrics: per-case Dice and HD95 (MONAI) at native resolution, mean ± sd over validation cases; a "
             "label absent from reference and prediction is left out; HD95 in the images' spacing units",
             ""]
    header = "| task | " + " | ".join(m.method for m in methods) + " |"
    rule = "|---|" + "---|" * len(methods)
    lines += ["## Mean Dice per task (mean over labels)" + (" and difference to per-task" if reference else ""), ""]
    if reference is not None:
        lines += ["In brackets: the difference to per-task ± its standard error, cases paired (per-case Dice "
                  "differences on the same validation cases); a difference within about two standard errors is not "
                  "told apart from the case-to-case noise of this split.", ""]
    lines += [header, rule]
    for task in result.tasks + ["mean over tasks"]:
        cells = []
        for m in methods:
            value = _task_mean(m, result.tasks) if task == "mean over tasks" else m.mean_dice(task)
            cell = _number(value, 3)
            if reference is not None and m is not reference and _finite(value):
                base = _task_mean(reference, result.tasks) if task == "mean over tasks" else reference.mean_dice(task)
                if _finite(base):  # a task's difference carries its standard error; the mean over tasks has none
                    error = "" if task == "mean over tasks" else \
                        f" ± {_number(paired_standard_error(reference.models[task], m.models[task], task), 3)}"
                    cell += f" ({value - base:+.3f}{error})"
            cells.append(cell)
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "## Dice mean ± sd and HD95 per label", "",
              "| task | label | cases | " + " | ".join(m.method for m in methods) + " |",
              "|---|---|---|" + "---|" * len(methods)]
    for task in result.tasks:
        for label in methods[0].validation[task]:
            stats = [m.validation[task][label] for m in methods]
            cells = [f"{_number(x['dice_mean'], 3)} ± {_number(x['dice_sd'], 3)}; HD95 {_number(x['hd95_mean'], 2)}"
                     for x in stats]
            lines.append(f"| {task} | {label} | {stats[0]['n']} | " + " | ".join(cells) + " |")
    if methods[0].lookalike:
        lines += ["", "## Look-alike check: each grouped task read out on the other task's validation images", "",
                  "For every `--group` pair A:a = B:b, the Dice of task A's label a on task B's validation images "
                  "against B's reference label b (mean ± sd over B's cases). Close to the own-task Dice: the model "
                  "puts the structure on one shared label whatever the images look like. Near 0: the model "
                  "recognises the dataset by its appearance and puts the structure on the other task's shared label, "
                  "which the read-out task discards; images from a new scanner can then fail the same way.", "",
                  "| read-out task: label | images: reference label | cases | " + " | ".join(m.method for m in methods)
                  + " |", "|---|---|---|" + "---|" * len(methods)]
        for i, row in enumerate(methods[0].lookalike):
            cells = [f"{_number(m.lookalike[i]['dice_mean'], 3)} ± {_number(m.lookalike[i]['dice_sd'], 3)}"
                     for m in methods]
            lines.append(f"| {row['task']}: {row['label']} | {row['images']}: {row['reference_label']} | {row['n']} | "
                         + " | ".join(cells) + " |")
    lines += ["", "## Cost per method", "",
              "| method | networks | parameters | training time | inference (ms per slice) |", "|---|---|---|---|---|"]
    for m in methods:
        networks = len(set(m.models.values()))
        lines.append(f"| {m.method} | {networks} | {m.parameters / 1e6:.2f} M | {_duration(m.training_s)} | "
                     f"{m.inference_ms_per_slice:.2f} |")
    lines += ["", "Training time is the training loop with its per-epoch validation monitor (not data loading or the "
              "final evaluation); inference time is `Segmenter.segment` on the validation cases (normalisation, "
              "resizing, network, resizing back), per 2D slice.", "", "## Label spaces", "",
              "Size-ranked (the paper; statistics of the training cases):", "", result.spaces["size"].table()]
    if "grouped" in result.spaces:
        lines += ["Grouped (`--group " + " --group ".join(s.groups) + "`):", "", result.spaces["grouped"].table()]
    lines += ["## Methods", ""]
    lines += [f"- **{m.method}**: {METHODS[m.method].description}" for m in methods]
    return "\n".join(lines) + "\n"


def _task_mean(method: MethodResult, tasks: list[str]) -> float:
    return nanmean([method.mean_dice(t) for t in tasks])


def render_csv(result: BenchmarkResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "task", "label", "images", "reference_label", "cases", "dice_mean", "dice_sd",
                     "hd95_mean", "hd95_sd", "parameters", "training_s", "inference_ms_per_slice"])
    for m in result.methods:
        cost = [m.parameters, round(m.training_s, 1), round(m.inference_ms_per_slice, 3)]
        for task in result.tasks:
            for label, x in m.validation[task].items():
                writer.writerow([m.method, task, label, task, label, x["n"]] +
                                [_number(x[k], 4) for k in ("dice_mean", "dice_sd", "hd95_mean", "hd95_sd")] + cost)
        for x in m.lookalike:  # rows whose images are another task's: the look-alike check
            writer.writerow([m.method, x["task"], x["label"], x["images"], x["reference_label"], x["n"],
                             _number(x["dice_mean"], 4), _number(x["dice_sd"], 4), "", ""] + cost)
    return buffer.getvalue()


def write_chart(result: BenchmarkResult, path: Path) -> None:
    """Grouped bars of Dice per task label (mean ± sd over validation cases), one bar per method; the look-alike
    check, when there is one, to the right of a dashed line."""
    columns = [f"{task}\n{label}" for task in result.tasks for label in result.methods[0].validation[task]]
    columns += [f"{x['task']}: {x['label']}\non {x['images']}" for x in result.methods[0].lookalike]
    n = len(result.methods)
    width = 0.8 / n
    colours = matplotlib.colormaps["tab10"]
    figure = Figure(figsize=(max(8.0, 0.9 * len(columns) + 0.12 * n * len(columns)), 4.8))
    axis = figure.subplots()
    x = np.arange(len(columns))
    for i, m in enumerate(result.methods):
        stats = [s for task in result.tasks for s in m.validation[task].values()] + m.lookalike
        means = [s["dice_mean"] if _finite(s["dice_mean"]) else 0.0 for s in stats]
        sds = [s["dice_sd"] if _finite(s["dice_sd"]) else 0.0 for s in stats]
        axis.bar(x - 0.4 + (i + 0.5) * width, means, width, yerr=sds, capsize=1.5, label=m.method,
                 color=colours(i % 10), error_kw={"elinewidth": 0.6})
    if result.methods[0].lookalike:
        axis.axvline(len(columns) - len(result.methods[0].lookalike) - 0.5, color="grey", linestyle="--")
    axis.set_xticks(x)
    axis.set_xticklabels(columns, fontsize=7)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("Dice (validation, native resolution)")
    axis.set_title(f"LabelShare benchmark: {result.settings.steps_per_task} steps per task, "
                   f"{result.settings.describe_resolution()}, seed {result.settings.seed}", fontsize=9)
    axis.legend(fontsize=7, ncol=min(4, n), loc="upper center", bbox_to_anchor=(0.5, -0.16))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")


def main(argv: list[str] | None = None) -> int:
    """``labelshare-bench methods``: the command line of the method comparison."""
    from labelshare.cli import EXIT_ERROR, EXIT_INTERRUPTED, task_arguments
    from labelshare.errors import TrainingInterrupted
    parser = argparse.ArgumentParser(prog="labelshare-bench methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", dest="tasks", action="append", required=True, metavar="NAME=DIR",
                        help="a task: its name and nnU-Net raw folder (repeat for several tasks)")
    parser.add_argument("--methods", default="per-task,multi-channel,dodnet,label-sharing",
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--out", required=True, type=Path, help="benchmark folder (models, table, chart)")
    parser.add_argument("--group", action="append", default=[], metavar="TASK:LABEL=TASK:LABEL",
                        help="label pairs of the grouped methods")
    defaults = BenchmarkSettings()
    parser.add_argument("--steps-per-task", type=int, default=defaults.steps_per_task,
                        help="budget: a per-task model trains this many steps, a joint model of T tasks T times")
    parser.add_argument("--resume", action="store_true", help="continue a half-finished benchmark in --out")
    parser.add_argument("--fixed-size", type=int, default=defaults.fixed_size, metavar="SIZE",
                        help="resize every slice to SIZE x SIZE instead of per-task plans (the first release)")
    for flag in ("steps_per_epoch", "batch_size", "image_pixels", "patch_pixels", "learning_rate",
                 "validation_fraction", "seed", "device"):
        value = getattr(defaults, flag)
        parser.add_argument(f"--{flag.replace('_', '-')}", type=type(value), default=value,
                            help="default: %(default)s")
    parser.add_argument("--progress", choices=("human", "json", "quiet"), default="human")
    args = parser.parse_args(argv)
    progress = Progress(args.progress, min_interval_s=0.5 if args.progress == "human" else 0.0)
    settings = BenchmarkSettings(steps_per_task=args.steps_per_task, steps_per_epoch=args.steps_per_epoch,
                                 batch_size=args.batch_size, image_pixels=args.image_pixels,
                                 patch_pixels=args.patch_pixels, fixed_size=args.fixed_size,
                                 learning_rate=args.learning_rate, seed=args.seed,
                                 validation_fraction=args.validation_fraction, groups=list(args.group),
                                 device=args.device)
    try:
        result = run_benchmark(task_arguments(args), parse_methods(args.methods), args.out, settings,
                               resume=args.resume, progress=progress, command=["labelshare-bench", "methods",
                                                                               *(argv or sys.argv[2:])])
    except TrainingInterrupted as error:
        print(f"labelshare-bench: stopped: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LabelShareError as error:
        print(f"labelshare-bench: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    progress.done(str(result.out / "results.md"), message=f"results written to {result.out / 'results.md'}")
    return 0
