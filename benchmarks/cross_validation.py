"""``labelshare-bench cross-validation``: k-fold cross-validation by patient, and recipes compared fold by fold.

One validation set of a small task (12 mammograms) gives a noisy reference; k folds validate every case once.

``cross-validation folds --task NAME=DIR [--task ...] --folds 5 --seed 0 --out DIR`` writes ``fold-1.split.json``
... ``fold-K.split.json``: each task's patients are shuffled with the seed and dealt to the fold with the fewest
cases so far (all images of a patient in one fold); fold i validates its own cases and trains on the others. Train
one model per fold and recipe with ``labelshare train ... --split DIR/fold-i.split.json``.

``cross-validation summary --recipe NAME=MODEL,MODEL,... [--recipe ...] --out DIR`` reads the fold models of each
recipe (their ``split.json`` and ``evaluation.csv``), checks that each recipe's folds validate disjoint cases and
that every recipe has the same folds, and writes ``cv.md`` and ``cv.json``:

- per recipe and label, the mean Dice over all validated cases (every case once);
- per recipe and task, each fold's mean over its cases and the mean of the fold means (the figure papers report as
  "mean Dice over k folds");
- per later recipe, the paired difference to the first: over the cases (mean ± standard error of the per-case
  differences) and over the folds (mean ± standard error of the k fold differences).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import atomic_write_json, atomic_write_text, read_json

from .paired import case_means, dice_values


def patient_folds(cases: list[tuple[str, str]], folds: int, seed: int) -> list[list[str]]:
    """(case, patient) pairs dealt into ``folds`` lists of case names, whole patients, case counts balanced."""
    patients: dict[str, list[str]] = {}
    for case, patient in cases:
        patients.setdefault(patient, []).append(case)
    if len(patients) < folds:
        raise LabelShareError(f"{len(patients)} patients cannot fill {folds} folds")
    order = sorted(patients)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    dealt: list[list[str]] = [[] for _ in range(folds)]
    for patient in order:
        min(dealt, key=len).extend(patients[patient])
    return [sorted(fold) for fold in dealt]


def write_folds(tasks: dict, folds: int, seed: int, out: Path) -> list[Path]:
    from labelshare.core.tasks import TaskDataset
    per_task = {}
    for name, folder in tasks.items():
        task = TaskDataset.open(folder, name)
        per_task[name] = patient_folds([(case.name, case.patient) for case in task.cases], folds, seed)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(folds):
        split = {name: {"train": sorted(case for other, fold in enumerate(dealt) if other != index for case in fold),
                        "validation": dealt[index]} for name, dealt in per_task.items()}
        path = out / f"fold-{index + 1}.split.json"
        atomic_write_json(path, {"seed": seed, "fold": index + 1, "folds": folds,
                                 "rule": "patients shuffled with the seed, dealt to the fold with the fewest cases",
                                 "tasks": split})
        written.append(path)
    return written


def read_recipe(text: str) -> tuple[str, list[Path]]:
    name, _, folders = text.partition("=")
    models = [Path(folder) for folder in folders.split(",") if folder]
    if not name or not models:
        raise LabelShareError(f"--recipe {text}: expected NAME=MODEL,MODEL,... (one model folder per fold)")
    for folder in models:
        for file in ("split.json", "evaluation.csv"):
            if not (folder / file).is_file():
                raise LabelShareError(f"{folder}: no {file} (not an evaluated model folder)")
    return name, models


def ordered_folds(recipes: list[tuple[str, list[Path]]]) -> list[list[Path]]:
    """Each recipe's fold models in the order of the first recipe's folds (fold i of every recipe validates the same
    cases); refused when a recipe's folds share a validation case or differ from the first recipe's folds."""
    def validation(folder: Path) -> tuple:
        tasks = read_json(folder / "split.json")["tasks"]
        return tuple(sorted((task, tuple(sorted(sides["validation"]))) for task, sides in tasks.items()))

    reference = [validation(model) for model in recipes[0][1]]
    ordered = []
    for name, models in recipes:
        by_cases = {validation(model): model for model in models}
        seen: set[tuple[str, str]] = set()
        for model, fold in zip(models, map(validation, models), strict=True):
            cases = {(task, case) for task, names in fold for case in names}
            if seen & cases:
                raise LabelShareError(f"{model}: validates case '{sorted(seen & cases)[0][1]}' that another fold "
                                      f"of recipe '{name}' validates too")
            seen |= cases
        if sorted(by_cases) != sorted(reference):
            raise LabelShareError(f"recipe '{name}' ({models[0]}, ...) has other folds than recipe "
                                  f"'{recipes[0][0]}'")
        ordered.append([by_cases[fold] for fold in reference])
    return ordered


def summarise(recipes: list[tuple[str, list[Path]]]) -> dict:
    """Pooled and fold-wise Dice of every recipe, and the paired differences to the first (module docstring)."""
    result: dict = {"recipes": {}}
    base: tuple[dict, dict] | None = None
    for (name, _), models in zip(recipes, ordered_folds(recipes), strict=True):
        cases: dict[tuple[str, str], float] = {}
        labels: dict[tuple[str, str], list[float]] = {}
        fold_means: dict[str, list[float]] = {}
        for model in models:
            own = case_means(model)
            cases.update(own)
            for task in dict.fromkeys(task for task, _ in own):
                fold_means.setdefault(task, []).append(statistics.fmean(v for (t, _), v in own.items() if t == task))
            for key, values in dice_values(model, "label").items():
                labels.setdefault(key, []).extend(values)
        record = {"models": [str(model) for model in models],
                  "label_dice": {f"{task}/{label}": statistics.fmean(v) for (task, label), v in labels.items()},
                  "tasks": {}}
        for task, means in fold_means.items():
            values = [v for (t, _), v in cases.items() if t == task]
            entry = {"cases": len(values), "case_mean": statistics.fmean(values), "fold_means": means,
                     "mean_of_fold_means": statistics.fmean(means)}
            if base is not None:
                base_cases, base_folds = base
                differences = [cases[key] - base_cases[key] for key in cases if key[0] == task and key in base_cases]
                fold_differences = [a - b for a, b in zip(means, base_folds[task], strict=True)]
                entry["paired_to_first"] = {"cases": len(differences), "difference": statistics.fmean(differences),
                                            "standard_error": _standard_error(differences),
                                            "fold_differences": fold_differences,
                                            "fold_standard_error": _standard_error(fold_differences)}
            record["tasks"][task] = entry
        result["recipes"][name] = record
        base = base or (cases, fold_means)
    return result


def _standard_error(values: list[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else None


def summary_table(result: dict) -> str:
    names = list(result["recipes"])
    first = result["recipes"][names[0]]
    lines = [f"| task | label | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    for key in first["label_dice"]:
        task, label = key.split("/", 1)
        lines.append(f"| {task} | {label} | "
                     + " | ".join(f"{result['recipes'][n]['label_dice'].get(key, math.nan):.3f}" for n in names) + " |")
    for task, entry in first["tasks"].items():
        cells, fold_cells, difference_cells = [], [], []
        for name in names:
            own = result["recipes"][name]["tasks"][task]
            cells.append(f"{own['case_mean']:.3f}")
            fold_cells.append(f"{own['mean_of_fold_means']:.3f} ({', '.join(f'{m:.3f}' for m in own['fold_means'])})")
            paired = own.get("paired_to_first")
            difference_cells.append("" if paired is None else
                                    f"{100 * paired['difference']:+.1f} ± {100 * paired['standard_error']:.1f} "
                                    f"(folds: {100 * statistics.fmean(paired['fold_differences']):+.1f} ± "
                                    f"{100 * paired['fold_standard_error']:.1f})")
        lines.append(f"| {task} | **mean over {entry['cases']} cases** | {' | '.join(cells)} |")
        lines.append(f"| {task} | mean of fold means (each fold) | {' | '.join(fold_cells)} |")
        lines.append(f"| {task} | paired difference to {names[0]}, points (cases; folds) | "
                     f"{' | '.join(difference_cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench cross-validation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    folds = commands.add_parser("folds", help="write one split file per fold")
    folds.add_argument("--task", dest="tasks", action="append", required=True, metavar="NAME=DIR")
    folds.add_argument("--folds", type=int, default=5)
    folds.add_argument("--seed", type=int, default=0)
    folds.add_argument("--out", type=Path, required=True, help="folder for fold-N.split.json")
    summary = commands.add_parser("summary", help="pool the fold models of each recipe and compare the recipes")
    summary.add_argument("--recipe", action="append", required=True, metavar="NAME=MODEL,MODEL,...",
                         help="a recipe and its fold models (the first recipe is the reference)")
    summary.add_argument("--out", type=Path, required=True, help="folder for cv.md and cv.json")
    args = parser.parse_args(argv)
    command = ["labelshare-bench", "cross-validation", *(argv if argv is not None else sys.argv[2:])]
    try:
        if args.command == "folds":
            from labelshare.commands import task_arguments
            if args.folds < 2:
                raise LabelShareError(f"--folds {args.folds}: at least 2")
            for path in write_folds(dict(task_arguments(args)), args.folds, args.seed, args.out):
                print(path)
            return 0
        recipes = [read_recipe(text) for text in args.recipe]
        if len({name for name, _ in recipes}) != len(recipes):
            raise LabelShareError("two recipes have the same name")
        result = summarise(recipes)
        text = summary_table(result)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "cv.md", text)
        atomic_write_json(args.out / "cv.json", {"command": command, **result})
    except LabelShareError as error:
        print(f"labelshare-bench: error: {error}", file=sys.stderr)
        return 1
    print(text)
    return 0
