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
The report (table, CSV, chart) is :mod:`.methods_report`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelshare.core.config import TrainConfig
from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import atomic_write_json, now_iso, read_json
from labelshare.core.labelspace import LabelSpace, parse_group, statistics_of
from labelshare.core.modelfolder import verify_folder
from labelshare.core.paths import staging_dir_for
from labelshare.core.plans import PlanSettings
from labelshare.core.preprocessing import choose_slicing_axis
from labelshare.core.progress import Progress
from labelshare.core.scores import nanmean
from labelshare.core.tasks import TaskDataset, open_tasks
from labelshare.engine.inference import Segmenter
from labelshare.engine.metrics import dice_per_label
from labelshare.engine.models import load_model
from labelshare.engine.networks import build_network, count_parameters
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training_run import make_split, train

from . import baselines  # noqa: F401  (registers multi-channel and DoD-Net with the engine)
from .common import machine
from .methods_report import write_outputs

BENCHMARK_FORMAT = "labelshare.benchmark"
JOINT_FOLDER = "all"


@dataclass(frozen=True)
class BenchmarkMethod:
    name: str
    engine_method: str   # the method of the engine's registry (labelshare.core.methods) that trains it
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

    @staticmethod
    def description(name: str) -> str:
        return METHODS[name].description

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
                                   "rule": "patient-wise; see labelshare.core.tasks.patient_of", "tasks": split})
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


def main(argv: list[str] | None = None) -> int:
    """``labelshare-bench methods``: the command line of the method comparison."""
    from labelshare.commands import EXIT_ERROR, task_arguments
    from labelshare.core.errors import EXIT_INTERRUPTED, TrainingInterrupted
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
