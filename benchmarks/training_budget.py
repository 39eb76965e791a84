"""``labelshare-bench training-budget MODEL [MODEL ...] --out DIR``: one recipe trained for several budgets.

Answers "would more training steps close the gap?" with models that differ only in their number of steps: the same
training settings apart from the epochs (learning rate, batch, seed; the schedule decays over each model's own
steps) and the same validation split, so every difference is paired over the same cases. Give the folders as
``labelshare train`` (or ``labelshare postprocess``) wrote them, in any order; they are sorted by steps and compared
with the smallest budget.

Writes into ``--out`` (created if missing; files replaced atomically):

- ``budget.md``: per label, the validation Dice of every budget; per task, the mean over cases with the paired
  difference to the smallest budget ± its standard error (:mod:`labelshare_benchmarks.paired`); training time.
- ``budget.json``: the same numbers and every model's monitor curve (``training_log.jsonl``).
- ``budget.png``: per task, the monitor cases' mean Dice against training steps, one line per budget, the final
  validation mean of every budget as a point, and a task's goal (``--goal TASK=DICE``) as a dashed line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import atomic_path, atomic_write_json, atomic_write_text, read_json

from .paired import case_means, mean_dice, paired_difference

# Training settings that may differ between the budgets of one recipe: the number of steps is what is compared, and
# the device and run identity do not change the recipe.
BUDGET_KEYS = ("epochs", "steps_per_epoch", "device", "run_identity")


@dataclass(frozen=True)
class BudgetRun:
    """One model folder: its budget, validation Dice and monitor curve."""

    folder: Path
    steps: int
    device: str
    training_s: float
    recipe: dict
    split: dict
    label_dice: dict[tuple[str, str], float]
    case_dice: dict[tuple[str, str], float]
    curve: list[dict]  # per epoch: step and the monitor cases' mean Dice per task

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(task for task, _ in self.label_dice))

    def task_mean(self, task: str) -> float:
        """Mean over the task's validation cases of their mean Dice over labels."""
        values = [value for (case_task, _), value in self.case_dice.items() if case_task == task]
        return statistics.fmean(values) if values else math.nan


def read_run(folder: Path) -> BudgetRun:
    """A trained (or post-processed) model folder; a missing or unreadable file is named in the error."""
    for name in ("training.json", "split.json", "evaluation.csv", "training_log.jsonl"):
        if not (folder / name).is_file():
            raise LabelShareError(f"{folder}: no {name} (not a model folder written by labelshare train)")
    training = read_json(folder / "training.json", "training settings")
    log_file = folder / "training_log.jsonl"
    try:
        history = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelShareError(f"{log_file}: unreadable training log ({error})") from error
    if not history:
        raise LabelShareError(f"{log_file}: empty training log")
    try:
        curve = [{"step": record["step"],
                  "dice": {task: sum(labels.values()) / len(labels)
                           for task, labels in record.get("validation_dice", {}).items() if labels}}
                 for record in history]
        return BudgetRun(folder=folder, steps=training["epochs"] * training["steps_per_epoch"],
                         device=training["device"], training_s=float(history[-1]["elapsed_s"]),
                         recipe={k: v for k, v in training.items() if k not in BUDGET_KEYS},
                         split=read_json(folder / "split.json", "split")["tasks"],
                         label_dice=mean_dice(folder, "label"), case_dice=case_means(folder), curve=curve)
    except (KeyError, TypeError, ValueError) as error:
        raise LabelShareError(f"{folder}: training.json, training_log.jsonl, split.json or evaluation.csv lacks or "
                              f"mangles a field ({type(error).__name__}: {error})") from error


def check_one_recipe(runs: list[BudgetRun]) -> None:
    """Budgets of one recipe: the same settings but the steps, the same split, distinct step counts."""
    first = runs[0]
    for run in runs[1:]:
        changed = sorted(k for k in set(first.recipe) | set(run.recipe) if first.recipe.get(k) != run.recipe.get(k))
        if changed:
            raise LabelShareError(f"{run.folder} was trained with other {', '.join(changed)} than {first.folder}; "
                                  "a budget comparison needs one recipe")
        if run.split != first.split:
            raise LabelShareError(f"{run.folder}: its split.json differs from {first.folder}'s; the budgets must be "
                                  "scored on the same validation cases")
    steps = [run.steps for run in runs]
    if len(set(steps)) != len(steps):
        raise LabelShareError(f"two models were trained for the same number of steps ({steps}); give one per budget")


def steps_name(run: BudgetRun) -> str:
    return f"{run.steps:,} steps"


def budget_table(runs: list[BudgetRun], name: Callable[[BudgetRun], str] = steps_name) -> str:
    """Markdown: per label the Dice of every run (a column named ``name(run)``); per task the mean and the paired
    difference to the first."""
    base = runs[0]
    header = " | ".join(name(run) for run in runs)
    lines = [f"| task | label | {header} |", "|---|---|" + "---|" * len(runs)]
    for task in base.tasks:
        for label_task, label in base.label_dice:
            if label_task == task:
                cells = [f"{run.label_dice.get((task, label), math.nan):.3f}" for run in runs]
                lines.append(f"| {task} | {label} | {' | '.join(cells)} |")
        cells = [f"{base.task_mean(task):.3f}"]
        for run in runs[1:]:
            paired = paired_difference(base.case_dice, run.case_dice, task)
            cells.append(f"{paired.after:.3f} ({100 * (paired.after - paired.before):+.1f} ± "
                         f"{100 * paired.standard_error:.1f})")
        cases = sum(case_task == task for case_task, _ in base.case_dice)
        lines.append(f"| {task} | **mean** ({cases} cases) | {' | '.join(cells)} |")
    lines.append(f"| | training time | {' | '.join(f'{run.training_s / 60:.1f} min' for run in runs)} |")
    return "\n".join(lines) + "\n"


def budget_record(runs: list[BudgetRun], command: list[str]) -> dict:
    base = runs[0]
    models = []
    for run in runs:
        means = {}
        for task in base.tasks:
            paired = paired_difference(base.case_dice, run.case_dice, task)
            means[task] = {"cases": paired.cases, "dice": paired.after,
                           "difference_to_first": paired.after - paired.before,
                           "standard_error": None if math.isnan(paired.standard_error) else paired.standard_error}
        models.append({"folder": run.folder.name, "steps": run.steps,
                       "device": run.device, "training_s": run.training_s,
                       "label_dice": {f"{task}/{label}": value for (task, label), value in run.label_dice.items()},
                       "task_mean": means, "curve": run.curve})
    return {"command": command, "recipe": base.recipe, "models": models}


def write_chart(runs: list[BudgetRun], path: Path, goals: dict[str, float],
                name: Callable[[BudgetRun], str] = steps_name) -> None:
    tasks = runs[0].tasks
    colours = matplotlib.colormaps["viridis"]
    figure = Figure(figsize=(4.2 * len(tasks), 3.6))
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for axis, task in zip(axes, tasks, strict=True):
        for i, run in enumerate(runs):
            colour = colours(i / max(1, len(runs) - 1) * 0.85)
            points = [(record["step"], record["dice"][task]) for record in run.curve if task in record["dice"]]
            axis.plot([s for s, _ in points], [d for _, d in points], color=colour, linewidth=1.2,
                      label=f"{name(run)} (monitor)")
            axis.plot([run.steps], [run.task_mean(task)], "o", color=colour, markersize=6)
        if task in goals:
            axis.axhline(goals[task], color="grey", linestyle="--", linewidth=1, label=f"goal {goals[task]:.3f}")
        axis.set_title(f"{task}: points = validation mean", fontsize=9)
        axis.set_xlabel("training step")
        axis.set_ylabel("mean Dice")
        axis.grid(alpha=0.3)
        # the first epochs' low Dice would squash the differences between budgets that the chart is for
        axis.set_ylim(max(0.0, min(run.task_mean(task) for run in runs) - 0.15), 1.0)
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")


def parse_goals(texts: list[str]) -> dict[str, float]:
    goals = {}
    for text in texts:
        task, _, value = text.partition("=")
        try:
            goals[task] = float(value)
        except ValueError:
            raise LabelShareError(f"--goal {text}: expected TASK=DICE, e.g. acdc=0.90") from None
        if not task or not 0 <= goals[task] <= 1:
            raise LabelShareError(f"--goal {text}: expected TASK=DICE with a Dice between 0 and 1")
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench training-budget", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="model folders of one recipe, one per budget")
    parser.add_argument("--out", type=Path, required=True, help="folder for budget.md, budget.json, budget.png")
    parser.add_argument("--goal", action="append", default=[], metavar="TASK=DICE",
                        help="a task's target mean Dice, drawn on its chart")
    args = parser.parse_args(argv)
    command = ["labelshare-bench", "training-budget", *(argv if argv is not None else sys.argv[2:])]
    try:
        if len(args.models) < 2:
            raise LabelShareError("give at least two model folders (two budgets of one recipe)")
        goals = parse_goals(args.goal)
        runs = sorted((read_run(folder) for folder in args.models), key=lambda run: run.steps)
        check_one_recipe(runs)
        table = budget_table(runs)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "budget.md", table)
        atomic_write_json(args.out / "budget.json", budget_record(runs, command))
        write_chart(runs, args.out / "budget.png", goals)
    except LabelShareError as error:
        print(f"labelshare-bench: error: {error}", file=sys.stderr)
        return 1
    print(table)
    return 0
