"""Tables and chart of the incremental-learning experiments (docs/incremental/README.md) from the model folders.

    labelshare-bench incremental-summary RUNS_DIR [--joint MODEL_DIR] [--per-task MODEL_DIR] [--out docs/incremental]

RUNS_DIR is the folder of run_experiments.sh. ``--memory``: the rehearsal-memory experiments instead
(memory-results.md and .json). ``--joint`` is a label-sharing model trained on all four tasks from
scratch and ``--per-task`` a model of the new task alone, both with the same configuration (the benchmark's).
Writes results.md, results.json and dice.png into ``--out``. Every number comes from the model folders: Dice from
metrics.json (validation cases, native resolution), changes from forgetting.json, times from lineage.json and
RUNS_DIR/wallclock.tsv.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..paired import PairedDifference, case_means, paired_difference, paired_standard_error  # noqa: E402

TASKS = ("hippocampus", "acdc", "mammo", "sunnybrook")
RUNS = [  # (folder in RUNS_DIR, description)
    ("base-3task", "3-task model (hippocampus, ACDC, mammography), before adding"),
    ("add-overlap", "+ Sunnybrook: overlap mapping, replay all"),
    ("add-size", "+ Sunnybrook: size mapping (paper), replay all"),
    ("add-overlap-noreplay", "+ Sunnybrook: overlap mapping, no replay (fine-tuning)"),
    ("add-size-noreplay", "+ Sunnybrook: size mapping, no replay (fine-tuning)"),
    ("add-overlap-replay8", "+ Sunnybrook: overlap mapping, replay 8 cases per task"),
    ("add-overlap-distill", "+ Sunnybrook: overlap mapping, replay all, distillation weight 1"),
    ("add-overlap-distill-lr1e-3", "+ Sunnybrook: overlap, replay all, distillation 1, learning rate 1e-3"),
    ("add-overlap-distill-300",
     "+ Sunnybrook: overlap, replay all, distillation 1, 300 steps, new-task share 0.5 (the earlier defaults)"),
    ("add-overlap-distill-300-share25", "+ Sunnybrook: the same, new-task share 0.25 (equal shares: the default)"),
    ("add-overlap-distill-300-lr1e-3", "+ Sunnybrook: the same (share 0.5) with learning rate 1e-3"),
]


def read(folder: Path, name: str, default=None):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else default


def describe(folder: Path, label: str, wallclock: dict[str, float], name: str | None = None) -> dict:
    metrics, lineage = read(folder, "metrics.json"), read(folder, "lineage.json")
    training, forgetting = read(folder, "training.json"), read(folder, "forgetting.json")
    return {
        "model": name or folder.name, "description": label,
        "mean_dice": metrics["mean_dice"],
        "dice": {task: {lab: s["dice_mean"] for lab, s in labels.items()}
                 for task, labels in metrics["validation"].items()},
        "steps": training["epochs"] * training["steps_per_epoch"],
        "training_s": lineage.get("elapsed_s"),
        "wallclock_s": wallclock.get(folder.name),
        "mapping": lineage.get("mapping"),
        "forgetting": forgetting,
        "labelspace": read(folder, "labelspace.json"),
    }


def fmt(value, digits=3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


# The rehearsal-memory experiments (run_experiments.sh: mem-*, mem2-*): (new task, base model, its tasks, prefix)
MEMORY_PAIRS = [("sunnybrook", "base-3task", ("hippocampus", "acdc", "mammo"), "mem-sunnybrook"),
                ("mammo", "base2-3task-mr", ("hippocampus", "acdc", "sunnybrook"), "mem2-mammo")]
# run_experiments.sh's SEED: the suffix of a row's repetitions with other seeds
SEEDS = ("", "-seed1", "-seed2", "-seed3")
# (run suffix, description, the run whose memory replaces the old tasks' folders: a format of base and prefix)
MEMORY_ROWS = [("full", "old tasks' folders (full replay)", None),
               ("16", "memory only, 16 slices per task", "{base}-mem16"),
               ("48", "memory only, 48 slices per task", "{base}-mem48"),
               ("48px", "memory only, 48 slices per task, more for small slices, chosen among 4 candidates per "
                "exemplar (default)", "{base}-mem48px"),
               ("48px384", "memory only, 48 slices per task, more for small slices, chosen among at most 384 "
                "candidates (the previous default)", "{base}-mem48px384"),
               ("48px1m", "memory only, as the default with 1,000,000 pixels of small slices (566 hippocampus "
                "slices)", "{base}-mem48px1m"),
               ("48-hippocampus256", "memory only, 48 slices per task, hippocampus 256", "{base}-mem48-hippocampus256"),
               ("128", "memory only, 128 slices per task", "{base}-mem128"), ("noreplay", "no replay", None),
               ("48-distill-new", "memory only, 48 slices, also distilled on the new task's slices", "{base}-mem48"),
               ("minus20-48", "memory only, 48 slices; the new task without 20 of its cases", "{base}-mem48"),
               ("update-48", "... then updated with those 20 cases, memory only", "{prefix}-minus20-48"),
               ("minus20-48px", "memory only (default); the new task without 20 of its cases", "{base}-mem48px"),
               ("update-48px", "... then updated with those 20 cases, memory only (default)", "{prefix}-minus20-48px")]


def read_wallclock(runs: Path) -> dict[str, float]:
    wallclock = {}
    if (runs / "wallclock.tsv").is_file():
        for line in (runs / "wallclock.tsv").read_text().splitlines():
            name, seconds = line.split("\t")
            wallclock[name] = float(seconds)
    return wallclock


def memory_megabytes(folder: Path) -> float | None:
    memory = read(folder, "memory/memory.json")
    return None if memory is None else memory["bytes"] / 1e6


def change_cell(difference: PairedDifference) -> str:
    """A paired change in Dice points with its standard error; "-" where the two models share no case."""
    if not difference.cases:
        return "-"
    return f"{100 * (difference.after - difference.before):+.1f} ± {100 * difference.standard_error:.1f}"


def seed_means(rows: list[dict], old_tasks: tuple[str, ...], new_task: str) -> list[str]:
    """The table of a pair's ways that ran with more than one seed: per way the mean over its seeds of each old
    task's change (against the base and against full replay of the same seed), the new task's Dice and its change
    against full replay, and how many of its runs the gate passed."""
    by_way: dict[str, list[dict]] = {}
    for row in rows:
        by_way.setdefault(row["way"], []).append(row)
    repeated = {way: runs for way, runs in by_way.items() if len(runs) > 1}
    if not repeated:
        return []

    def mean(values) -> float:
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else math.nan

    def points(value: float) -> str:
        return "-" if value != value else f"{100 * value:+.1f}"

    lines = ["Mean over seeds (Dice points; in brackets against full replay of the same seed):", "",
             "| run | seeds | " + " | ".join(old_tasks) + f" | gate passed | {new_task} Dice (vs full) |",
             "|---|---|" + "---|" * (len(old_tasks) + 2)]
    for way, runs in repeated.items():
        cells = []
        for task in old_tasks:
            change = mean(r["old"][task]["change"] for r in runs)
            versus = mean(r["old"][task]["vs_full"] for r in runs)
            cells.append(points(change) + ("" if way == "full" else f" ({points(versus)})"))
        passed = sum(bool(r["gate"]["passed"]) for r in runs)
        new = fmt(mean(r["new"]["dice"] for r in runs)) + \
            ("" if way == "full" else f" ({points(mean(r['new']['vs_full'] for r in runs))})")
        description = next(text for suffix, text, _ in MEMORY_ROWS if suffix == way)
        lines.append(f"| {description} | {len(runs)} | " + " | ".join(cells) + f" | {passed} of {len(runs)} | {new} |")
    return lines + [""]


def memory_summary(runs: Path, out: Path) -> str:
    """memory-results.md/.json: per pair and way of adding, every old task's change against the base model and
    against full replay (points, paired standard error over its full validation cases), the gate's decision on the
    memory, the new task's Dice, the memory's size, steps and time."""
    wallclock = read_wallclock(runs)
    lines = ["# Rehearsal memory: measured results", "",
             "Generated by `labelshare-bench incremental-summary RUNS --memory` (commands and machine: memory.md). "
             "Every old task is scored on its full validation cases at native resolution, whatever the run itself "
             "used for its gate (`labelshare evaluate`, or the run's own evaluation where it had the folders); "
             "changes in Dice points with the paired standard error over those cases. *vs full*: against the "
             "same task added with the old tasks' folders (full replay). Gate: the run's own decision (1 point), on "
             "the memory's gate slices for memory-only runs (Dice at plan resolution: slice-level for the runs made "
             "before the gate pooled its slices, pooled otherwise; memory.md), on the validation cases otherwise; the "
             "worst change it saw in brackets.", ""]
    results = []
    for new_task, base, old_tasks, prefix in MEMORY_PAIRS:
        if not (runs / base).is_dir():
            continue
        base_means = case_means(runs / base)
        lines += [f"## {base} + {new_task}", "",
                  "| run | memory replayed, MB | " + " | ".join(f"{t}: change (vs full)" for t in old_tasks)
                  + f" | gate (worst change on what it scored) | {new_task} Dice (vs full) | new version's memory, MB "
                  "| steps | wall-clock s |",
                  "|---|---|" + "---|" * (len(old_tasks) + 5)]
        for (suffix, description, memory_of), seed in itertools.product(MEMORY_ROWS, SEEDS):
            folder = runs / f"{prefix}-{suffix}{seed}"
            if not (folder / "evaluation.csv").is_file():
                continue
            full = runs / f"{prefix}-full{seed}"  # against full replay with the same seed
            full_means = case_means(full) if full.is_dir() else None
            description += f" (seed {seed.removeprefix('-seed')})" if seed else ""
            files = sorted((runs / f"{folder.name}.evaluation").glob("*/evaluation.csv"))
            means = case_means(folder, files)
            row = {"pair": f"{base}+{new_task}", "run": folder.name, "way": suffix, "description": description,
                   "memory_mb": memory_megabytes(runs / memory_of.format(base=base, prefix=prefix))
                   if memory_of else None,
                   "new_memory_mb": memory_megabytes(folder), "old": {}, "new": {}}
            cells = []
            for task in old_tasks:
                change = paired_difference(base_means, means, task)
                versus = paired_difference(full_means, means, task) if full_means else None
                row["old"][task] = {"cases": change.cases, "before": change.before, "after": change.after,
                                    "change": change.after - change.before, "se": change.standard_error,
                                    "vs_full": None if versus is None else versus.after - versus.before,
                                    "vs_full_se": None if versus is None else versus.standard_error}
                cell = change_cell(change)
                if versus is not None and folder != full:
                    cell += f" ({change_cell(versus)})"
                cells.append(cell)
            new = paired_difference(full_means, means, new_task) if full_means else None
            dice = read(folder, "metrics.json")["mean_dice"].get(new_task)
            row["new"] = {"dice": dice, "vs_full": None if new is None else new.after - new.before,
                          "vs_full_se": None if new is None else new.standard_error}
            forgetting = read(folder, "forgetting.json") or {}
            worst = forgetting.get("worst") or {}
            scored = "memory" if any("memory" in v for v in (forgetting.get("scored_on") or {}).values()) else \
                "validation"
            row["gate"] = {"passed": forgetting.get("passed"), "worst_task": worst.get("task"),
                           "worst_change": worst.get("change"), "scored_on": scored}
            verdict = "passed" if forgetting.get("passed") else "refused"
            gate = f"{verdict} ({100 * worst.get('change', math.nan):+.1f} {worst.get('task', '')}, {scored})"
            new_cell = fmt(dice) + (f" ({change_cell(new)})" if new is not None and folder != full else "")
            training = read(folder, "training.json")
            row["steps"] = training["epochs"] * training["steps_per_epoch"]
            row["wallclock_s"] = wallclock.get(folder.name)
            size_cell = fmt(row["memory_mb"], 2) if memory_of else "-"
            lines.append(f"| {description} | {size_cell} | " + " | ".join(cells) + f" | {gate} | {new_cell} | "
                         f"{fmt(row['new_memory_mb'], 2)} | {row['steps']} | {fmt(row['wallclock_s'], 0)} |")
            results.append(row)
        lines += [""] + seed_means([r for r in results if r["pair"] == f"{base}+{new_task}"], old_tasks, new_task)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory-results.md").write_text("\n".join(lines) + "\n")
    (out / "memory-results.json").write_text(json.dumps(results, indent=1) + "\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--joint", type=Path, action="append", default=[])
    parser.add_argument("--per-task", type=Path)
    parser.add_argument("--memory", action="store_true",
                        help="the rehearsal-memory experiments only (memory-results.md/.json)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    if args.memory:
        print(memory_summary(args.runs, args.out))
        return
    wallclock = read_wallclock(args.runs)
    rows = [describe(args.runs / name, label, wallclock) for name, label in RUNS if (args.runs / name).is_dir()]
    for joint in args.joint:
        groups = read(joint, "labelspace.json")["groups"]
        mapping = f"size mapping + groups {'; '.join('='.join(g) for g in groups)}" if groups else "size mapping"
        rows.append(describe(joint, f"joint 4-task model from scratch ({mapping})", wallclock,
                             name=f"joint {joint.parent.name}"))
    if args.per_task:
        rows.append(describe(args.per_task, "per-task model of Sunnybrook", wallclock, name="per-task sunnybrook"))
    expansion = describe(args.runs / "add-sunnybrook4", "+ Sunnybrook split into 4 labels (n* 3 -> 4)", wallclock) \
        if (args.runs / "add-sunnybrook4").is_dir() else None

    lines = ["# Incremental learning: measured results", "",
             "Generated by `labelshare-bench incremental-summary` from the model folders (see README.md for the "
             "commands and the machine). Dice: per-case Dice at native resolution on the validation cases, mean over "
             "cases, then over the task's labels. Change: points (x100) against the 3-task model, from "
             "forgetting.json.", "",
             "| model | " + " | ".join(TASKS) + " | worst old-task change | steps | training s | wall-clock s |",
             "|---|" + "---|" * (len(TASKS) + 4)]
    for row in rows:
        forgetting = row["forgetting"]
        worst = forgetting["worst"] if forgetting else None
        change = f"{100 * worst['change']:+.1f} ({worst['task']})" if worst else "-"
        lines.append(f"| {row['description']} | " + " | ".join(fmt(row["mean_dice"].get(t)) for t in TASKS)
                     + f" | {change} | {row['steps']} | {fmt(row['training_s'], 0)} | {fmt(row['wallclock_s'], 0)} |")
    lines += ["", "## Change of every old task (points), with the standard error of the per-case change", "",
              "Cases are paired (the same validation cases before and after), so the standard error shows which "
              "changes are larger than the case-to-case noise.", "",
              "| model | " + " | ".join(TASKS[:3]) + " | mean of the three |", "|---|" + "---|" * 4]
    base_folder = args.runs / "base-3task"
    for row in rows:
        forgetting = row["forgetting"]
        if not forgetting or forgetting.get("parent") != "base-3task":
            continue
        folder = args.runs / row["model"]
        means = forgetting["task_means"]
        cells = [f"{100 * means[t]['change']:+.1f} ± {100 * paired_standard_error(base_folder, folder, t):.1f}"
                 for t in TASKS[:3]]
        average = sum(means[t]["change"] for t in TASKS[:3]) / 3
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {100 * average:+.2f} |")
    lines += ["", "## Per label", "", "| model | task | label | Dice | change (points) |", "|---|---|---|---|---|"]
    for row in rows:
        for task in ("acdc", "sunnybrook"):
            for label, value in row["dice"].get(task, {}).items():
                change = (row["forgetting"] or {}).get("tasks", {}).get(task, {}).get(label, {}).get("change")
                lines.append(f"| {row['model']} | {task} | {label} | {fmt(value)} | "
                             f"{'-' if change is None else f'{100 * change:+.1f}'} |")
    lines += ["", "## Mapping of the new task", "", "| model | strategy | label -> shared label | why |",
              "|---|---|---|---|"]
    for row in rows + ([expansion] if expansion else []):
        mapping = row["mapping"]
        if not mapping or not mapping.get("task"):
            continue
        for label, shared in mapping["shared"].items():
            lines.append(f"| {row['model']} | {mapping['strategy']} | {label} -> {shared} | "
                         f"{mapping['reasons'][label]} |")
    if expansion:
        space = expansion["labelspace"]
        lines += ["", "## More labels than n*", "",
                  f"`{expansion['model']}`: n* = {space['n_shared']} after adding (3 before); Dice of the new task: "
                  + ", ".join(f"{label} {fmt(v)}" for label, v in expansion["dice"]["sunnybrook4"].items())
                  + "; old tasks: " + ", ".join(f"{t} {fmt(expansion['mean_dice'][t])}" for t in TASKS[:3])
                  + f"; worst change {100 * expansion['forgetting']['worst']['change']:+.1f} points "
                  f"({expansion['forgetting']['worst']['task']}); {expansion['steps']} steps, "
                  f"{fmt(expansion['training_s'], 0)} s training, {fmt(expansion['wallclock_s'], 0)} s wall-clock.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"rows": [{k: v for k, v in r.items() if k != "labelspace"} for r in rows],
         "expansion": {k: v for k, v in expansion.items() if k != "labelspace"} if expansion else None},
        indent=1) + "\n")

    figure, axis = plt.subplots(figsize=(12, 7))
    width = 0.8 / len(rows)
    colours = plt.get_cmap("tab20").colors
    for i, row in enumerate(rows):
        values = [row["mean_dice"].get(t, float("nan")) for t in TASKS]
        axis.bar([k + i * width for k in range(len(TASKS))], values, width, label=row["description"],
                 color=colours[i % len(colours)])
    axis.set_xticks([k + 0.4 - width / 2 for k in range(len(TASKS))], TASKS)
    axis.set_ylabel("validation Dice (mean over labels)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    axis.set_title("Adding Sunnybrook to a 3-task label-sharing model (CPU, 96x96 input, seed 0)")
    figure.tight_layout()
    figure.savefig(args.out / "dice.png", dpi=110, bbox_inches="tight")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
