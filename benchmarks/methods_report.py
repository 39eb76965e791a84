"""The report of ``labelshare-bench methods`` (:mod:`.methods`): the markdown table (Dice, HD95 and cost of every
method on every task, the difference to per-task with its paired standard error), the CSV, the bar chart and the
exact command, written into the benchmark's output folder."""

from __future__ import annotations

import csv
import io
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
from matplotlib.figure import Figure
import numpy as np

from labelshare.core.fileio import atomic_path, atomic_write_text
from labelshare.core.scores import nanmean

from .paired import paired_standard_error

if TYPE_CHECKING:
    from .methods import BenchmarkResult, MethodResult


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
    lines += [f"- **{m.method}**: {result.description(m.method)}" for m in methods]
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
