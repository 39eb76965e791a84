"""How well the forgetting gate, scoring an old task on its rehearsal memory's gate slices, sees the change that the
task's full validation cases show (docs/incremental/memory.md).

    labelshare-bench memory-gate --base BASE RUN [RUN ...] [--task NAME=DIR ...] [--out DIR] [--device cpu]

BASE is the model the runs were added to, with its rehearsal memory (run_experiments.sh: ``base-3task-mem48``);
each RUN a new version made from it (``mem-sunnybrook-48``), scored on the validation cases of every old task
(its ``evaluation.csv``, or ``RUN.evaluation/<task>/evaluation.csv`` beside it) as BASE's parent was (BASE's own
``evaluation.csv``). Per run and old task it prints the change in Dice points seen three ways: on the validation
cases (per-case Dice at native resolution, mean over cases, with the paired standard error), and on the memory's
gate slices at plan resolution with Dice as a mean over slices (the gate's first definition) and pooled over the
slices as one volume (the gate's definition: :func:`labelshare.engine.memory.gate_evaluation`), and, pooled the same
way, on the memory's replay slices (the training exemplars a memory-only run fitted). With ``--task``
(an old task's folder) also on that task's validation cases at plan resolution, each case's Dice pooled over all
its slices and over only its slices that hold a label (what the gate slices are drawn from), mean over cases: what
separates the gate from the validation, the resolution and post-processing or the choice of slices. Writes
memory-gate.md and .json into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from labelshare.commands import task_argument
from labelshare.core.modelfolder import read_memory
from labelshare.core.tasks import TaskDataset
from labelshare.engine.memory import gate_predictions, memory_slices, pooled_dice
from labelshare.engine.metrics import dice_per_label
from labelshare.engine.models import Model, load_model
from labelshare.engine.sampling import load_task_slices

from ..paired import case_means, paired_difference


def predictions(model: Model, bank, head) -> list[tuple[np.ndarray, np.ndarray]]:
    """The model's (prediction, reference) of each slice of ``bank``, once, for every score below."""
    return list(gate_predictions(model.network, bank, head, model.device))


def mean_over_labels(per_label: dict[int, list[float]]) -> float:
    return statistics.fmean(statistics.fmean(values) for values in per_label.values() if values)


def slice_mean_dice(pairs, head) -> float:
    """The gate's first definition: per label, the mean over the slices where it is predicted or present of that
    slice's Dice; then the mean over labels."""
    per_label: dict[int, list[float]] = {p: [] for p in head.label_positions}
    for prediction, reference in pairs:
        for position, dice in dice_per_label(prediction, reference, head.label_positions).items():
            if dice == dice:  # NaN: the label is in neither
                per_label[position].append(dice)
    return mean_over_labels(per_label)


def pooled_mean(pairs, head) -> float:
    """The gate's definition (:func:`labelshare.engine.memory.pooled_dice`), mean over labels."""
    return statistics.fmean(pooled_dice(pairs, head.label_positions).values())


def gate_scores(model: Model, bank, head) -> tuple[float, float]:
    """The gate's first definition and its definition, from one prediction of each gate slice."""
    pairs = predictions(model, bank, head)
    return slice_mean_dice(pairs, head), pooled_mean(pairs, head)


def case_dice(model: Model, bank, head) -> tuple[float, float]:
    """Per case, Dice pooled over its slices at plan resolution: over all of them and over those whose reference
    holds a label; each the mean over cases, then over labels."""
    pairs = gate_predictions(model.network, bank, head, model.device)  # lazily: a folder's cases are large
    scores: dict[str, dict[int, list[float]]] = {kind: {p: [] for p in head.label_positions}
                                                 for kind in ("all", "labelled")}
    for targets in bank.targets:  # gate_predictions gives a folder's cases slice by slice, in order
        case = [next(pairs) for _ in range(targets.shape[0])]
        for kind, kept in (("all", case), ("labelled", [(p, r) for p, r in case if r.any()])):
            for position, value in pooled_dice(kept, head.label_positions).items():
                if value == value:
                    scores[kind][position].append(value)
    return mean_over_labels(scores["all"]), mean_over_labels(scores["labelled"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench memory-gate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="the model the runs were added to, with its memory")
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--task", action="append", default=[], metavar="NAME=DIR",
                        help="an old task's folder: also score its validation cases at plan resolution")
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    base = load_model(args.base, args.device)
    memory = read_memory(base.path, base.labelspace)
    tasks = [t for t in base.labelspace.task_names if t in memory.tasks]
    banks = {t: memory_slices(base.path, memory, t, "gate", base.heads[t], flip_allowed=False) for t in tasks}
    replayed = {t: memory_slices(base.path, memory, t, "replay", base.heads[t], flip_allowed=False) for t in tasks
                if "replay" in memory.tasks[t].parts}
    before = {t: gate_scores(base, banks[t], base.heads[t]) for t in tasks}
    before_replay = {t: pooled_mean(predictions(base, bank, base.heads[t]), base.heads[t])
                     for t, bank in replayed.items()}
    validation_banks = {}
    for name, folder in map(task_argument, args.task):
        cases = (base.read_json("split.json") or {})["tasks"][name]["validation"]
        validation_banks[name] = load_task_slices(TaskDataset.open(folder, name), cases, base.heads[name],
                                                  base.labelspace.task(name).plan)
    before_cases = {t: case_dice(base, bank, base.heads[t]) for t, bank in validation_banks.items()}
    base_means = case_means(base.path)
    rows = []
    lines = ["# The memory's gate against the validation cases", "",
             f"Generated by `labelshare-bench memory-gate --base {base.path.name} RUN ...`. Change in Dice points "
             "of each old task after adding a task: on its full validation cases (native resolution, mean over "
             "cases, ± paired standard error), and on the base's rehearsal memory's gate slices at plan resolution "
             "as a mean over slices and pooled over the slices (the gate's definition); with the task's folder, on "
             "its validation cases at plan resolution, each case pooled over all its slices and over its slices that "
             "hold a label; and pooled on the memory's replay slices, the exemplars a memory-only run trained on.",
             "", "| run | task | gate slices | validation cases | change on the validation cases | gate: mean over "
             "slices | gate: pooled | validation at plan resolution: all slices | slices holding a label | replay "
             "slices: pooled |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in args.runs:
        model = load_model(run, args.device)
        files = sorted(run.parent.joinpath(f"{run.name}.evaluation").glob("*/evaluation.csv"))
        means = case_means(run, files)
        for task in tasks:
            head = model.heads[task]
            after = gate_scores(model, banks[task], head)
            validation = paired_difference(base_means, means, task)
            row = {"run": run.name, "task": task, "gate_slices": len(banks[task]), "validation_cases":
                   validation.cases, "validation_change": validation.after - validation.before,
                   "validation_se": validation.standard_error, "slice_mean_change": after[0] - before[task][0],
                   "pooled_change": after[1] - before[task][1]}
            if task in replayed:
                row["replay_change"] = pooled_mean(predictions(model, replayed[task], head), head) - before_replay[task]
            if task in validation_banks:
                now = case_dice(model, validation_banks[task], head)
                row.update(plan_all_change=now[0] - before_cases[task][0],
                           plan_labelled_change=now[1] - before_cases[task][1])
            rows.append(row)
            line = (f"| {run.name} | {task} | {row['gate_slices']} | {validation.cases} | "
                    f"{100 * row['validation_change']:+.1f} ± {100 * validation.standard_error:.1f} | "
                    f"{100 * row['slice_mean_change']:+.1f} | {100 * row['pooled_change']:+.1f} | "
                    + " | ".join(f"{100 * row[k]:+.1f}" if k in row else "-"
                                 for k in ("plan_all_change", "plan_labelled_change", "replay_change")) + " |")
            lines.append(line)
            print(line, flush=True)
    gaps = {kind: np.abs([r[f"{kind}_change"] - r["validation_change"] for r in rows if f"{kind}_change" in r])
            for kind in ("slice_mean", "pooled", "plan_all", "plan_labelled")
            if any(f"{kind}_change" in r for r in rows)}
    lines += ["", "Distance from the validation change, points: " + "; ".join(
        f"{kind.replace('_', ' ')}: mean {100 * gap.mean():.1f}, largest {100 * gap.max():.1f}"
        for kind, gap in gaps.items()), ""]
    print(lines[-2])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory-gate.md").write_text("\n".join(lines))
    (args.out / "memory-gate.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0
