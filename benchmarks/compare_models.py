"""``labelshare-bench compare-models BASE MODEL``: two versions of a model on the validation cases both evaluated.

Prints a markdown table with each label's mean Dice in both folders and the difference in points, then each task's
mean over cases with the paired difference and its standard error (:mod:`labelshare_benchmarks.paired`), from the
folders' ``evaluation.csv``. With ``--task NAME=DIR`` for the tasks of ``--group`` pairs it also reads every grouped
label out on the other task's validation images with both models (the look-alike check of
:func:`labelshare_benchmarks.methods.measure_lookalike`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import read_json

from .paired import case_means, mean_dice, paired_difference


def comparison_table(base: Path, model: Path) -> str:
    """Markdown: per label both means and the difference (points); per task the paired mean difference ± SE."""
    before, after = mean_dice(base, "label"), mean_dice(model, "label")
    lines = [f"| task | label | {base.name} | {model.name} | difference (points) |", "|---|---|---|---|---|"]
    for (task, label), value in before.items():
        if (task, label) in after:
            lines.append(f"| {task} | {label} | {value:.3f} | {after[task, label]:.3f} | "
                         f"{100 * (after[task, label] - value):+.1f} |")
    cases_before, cases_after = case_means(base), case_means(model)
    for task in dict.fromkeys(task for task, _ in cases_before):
        paired = paired_difference(cases_before, cases_after, task)
        if paired.cases:
            lines.append(f"| {task} | **mean** ({paired.cases} cases) | {paired.before:.3f} | {paired.after:.3f} | "
                         f"{100 * (paired.after - paired.before):+.1f} ± {100 * paired.standard_error:.1f} |")
    return "\n".join(lines) + "\n"


def lookalike_table(models: list[Path], tasks: dict, groups: list[str], device: str) -> str:
    from labelshare.core.labelspace import parse_group

    from .methods import measure_lookalike
    parsed = [parse_group(group) for group in groups]
    lines = ["| model | read-out | on images of | Dice (mean ± sd, cases) |", "|---|---|---|---|"]
    for folder in models:
        split = read_json(folder / "split.json")["tasks"]
        for row in measure_lookalike({name: folder for name in tasks}, tasks, split, parsed, device):
            lines.append(f"| {folder.name} | {row['task']}:{row['label']} | {row['images']}:{row['reference_label']} "
                         f"| {row['dice_mean']:.3f} ± {row['dice_sd']:.3f} ({row['n']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from labelshare.commands import task_arguments
    from labelshare.core.tasks import TaskDataset
    parser = argparse.ArgumentParser(prog="labelshare-bench compare-models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="model folder compared against")
    parser.add_argument("model", type=Path, help="model folder")
    parser.add_argument("--task", dest="tasks", action="append", default=[], metavar="NAME=DIR",
                        help="nnU-Net folder of a task of the --group pairs (the look-alike check)")
    parser.add_argument("--group", action="append", default=[], metavar="TASK:LABEL=TASK:LABEL",
                        help="a look-alike label pair to read out on the other task's images")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        for folder in (args.base, args.model):
            if not (folder / "evaluation.csv").is_file():
                raise LabelShareError(f"{folder}: no evaluation.csv (not an evaluated model folder)")
        print(comparison_table(args.base, args.model))
        if args.group:
            tasks = {name: TaskDataset.open(folder, name) for name, folder in task_arguments(args)}
            print(lookalike_table([args.base, args.model], tasks, args.group, args.device))
    except LabelShareError as error:
        print(f"labelshare-bench: error: {error}", file=sys.stderr)
        return 1
    return 0
