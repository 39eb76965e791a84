"""``labelshare-bench compare-recipes MODEL [MODEL ...] --out DIR``: training recipes compared on one split.

Answers "which plan, slice context or augmentation is better?" with models trained on the same patient-wise split
(their ``split.json`` must be equal), so every difference is paired over the same validation cases. The first
folder is the reference; each other is compared with it. Unlike ``training-budget``, the recipes may differ in
anything: the plans of their label spaces (spacing, patch, slice context), their training settings and their
steps; the table says what each one is.

Writes into ``--out`` (created if missing; files replaced atomically):

- ``recipes.md``: per label, the validation Dice of every model; per task, the mean over cases with the paired
  difference to the first model ± its standard error (:mod:`labelshare_benchmarks.paired`); steps, training time,
  each task's plan and the training settings that differ from the first model's.
- ``recipes.json``: the same numbers and every model's monitor curve (``training_log.jsonl``).
- ``recipes.png``: per task, the monitor cases' mean Dice against training steps, one line per model, the final
  validation mean as a point, and a task's goal (``--goal TASK=DICE``) as a dashed line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import atomic_write_json, atomic_write_text
from labelshare.core.labelspace import LabelSpace

from .training_budget import BudgetRun, budget_record, budget_table, parse_goals, read_run, write_chart


def folder_name(run: BudgetRun) -> str:
    return run.folder.name


def check_one_split(runs: list[BudgetRun]) -> None:
    for run in runs[1:]:
        if run.split != runs[0].split:
            raise LabelShareError(f"{run.folder}: its split.json differs from {runs[0].folder}'s; recipes must be "
                                  "scored on the same validation cases")


def recipe_lines(runs: list[BudgetRun]) -> list[str]:
    """Markdown bullets: every model's steps, plans and the settings it changes against the first."""
    base = runs[0]
    lines = []
    for run in runs:
        space = LabelSpace.load(run.folder / "labelspace.json")
        plans = "; ".join(f"{name}: {entry.plan.describe()}" for name, entry in space.tasks.items())
        changed = [f"{key} {run.recipe[key]}" for key in sorted(set(base.recipe) & set(run.recipe))
                   if base.recipe[key] != run.recipe[key]]
        # settings an older engine did not record (it had only their first value)
        unrecorded = [f"{key} {run.recipe[key]}" for key in sorted(set(run.recipe) - set(base.recipe))]
        settings = ", ".join(changed) or "the same"
        if unrecorded:
            settings += f" (not recorded by `{base.folder.name}`'s engine: {', '.join(unrecorded)})"
        lines.append(f"- `{run.folder.name}`: {run.steps:,} steps; plan {plans}; training settings against "
                     f"`{base.folder.name}`: {settings}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench compare-recipes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="model folders of one split; the first is the reference")
    parser.add_argument("--out", type=Path, required=True, help="folder for recipes.md, recipes.json, recipes.png")
    parser.add_argument("--goal", action="append", default=[], metavar="TASK=DICE",
                        help="a task's target mean Dice, drawn on its chart")
    args = parser.parse_args(argv)
    command = ["labelshare-bench", "compare-recipes", *(argv if argv is not None else sys.argv[2:])]
    try:
        if len(args.models) < 2:
            raise LabelShareError("give at least two model folders")
        if len({folder.name for folder in args.models}) != len(args.models):
            raise LabelShareError("two model folders have the same name; the table and chart name them by it")
        goals = parse_goals(args.goal)
        runs = [read_run(folder) for folder in args.models]
        check_one_split(runs)
        text = budget_table(runs, folder_name) + "\n" + "\n".join(recipe_lines(runs)) + "\n"
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "recipes.md", text)
        atomic_write_json(args.out / "recipes.json", budget_record(runs, command))
        write_chart(runs, args.out / "recipes.png", goals, folder_name)
    except LabelShareError as error:
        print(f"labelshare-bench: error: {error}", file=sys.stderr)
        return 1
    print(text)
    return 0
