"""A simulated annotation campaign: does annotating the cases ``labelshare rank`` puts first teach the model more
than annotating cases picked at random? (issue #14; docs/annotation-queue)

    labelshare-bench annotation-campaign --data ../shared/data/msd_hippocampus --out runs/campaign \\
        [--seeds 0 1] [--initial 4] [--per-round 4] [--rounds 4] [--pool 48] [--validation 30] [--fixed-size 48]

The task's patients are split once (seed 1000, independent of the campaign seeds) into a fixed validation set and
an unlabelled pool. For every seed: a model is trained on ``--initial`` patients drawn from the pool; then, for
each strategy, every round adds ``--per-round`` patients to the labelled set (``uncertainty``: the top of
:func:`labelshare.engine.ranking.rank_cases` over the rest of the pool; ``random``: drawn with the seed) and updates the
previous round's model with add-task's update path (:func:`labelshare.engine.incremental.add_task` on the task the model
already has, with the folder of all labelled patients; the fixed validation patients are the model's validation
split throughout, so every version's ``metrics.json`` is its Dice on them). Labelled folders hold symbolic links to
the data, never copies.

Before the first round, every score of :data:`MEASURED_SCORES` is computed over the pool with the
initial model and compared with the model's real error there (1 - Dice against the pool's labels, which the
simulation knows): the Spearman correlation says which score orders cases best by error.

Everything runs in this one process, one training at a time. Results are appended to ``OUT/results.json`` after
every model, so an interrupted campaign keeps what it measured; ``--summarise`` writes ``results.md`` and
``dice.png`` from it (also done at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from labelshare.core.config import AddTaskConfig, RankConfig, TrainConfig
from labelshare.core.fileio import atomic_write_json, atomic_write_text, read_json
from labelshare.core.inputs import InputImage, Inputs
from labelshare.core.plans import PlanSettings
from labelshare.core.progress import Progress

from .common import machine

TASK = "hippocampus"
SPLIT_SEED = 1000
STRATEGIES = ("uncertainty", "random")
MEASURED_SCORES = ("entropy", "tta")  # the candidates of labelshare rank --score ("auto" picks one of them)
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msd_hippocampus"


def patients(data: Path) -> dict[str, list[str]]:
    """{patient: its case names} of the task folder (whole patients go to one side; ACDC has two frames each)."""
    from labelshare.core.tasks import TaskDataset
    grouped: dict[str, list[str]] = {}
    for case in TaskDataset.open(data, TASK).cases:
        grouped.setdefault(case.patient, []).append(case.name)
    return grouped


def link_folder(data: Path, folder: Path, cases: list[str]) -> Path:
    """A task folder of symbolic links to ``cases`` of ``data`` (their images and labels) and its dataset.json."""
    from labelshare.core.tasks import TaskDataset
    source = TaskDataset.open(data, TASK)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in cases:
        case = source.case(name)
        for path, sub in ((case.image_path, "imagesTr"), (case.label_path, "labelsTr")):
            link = folder / sub / path.name
            if not link.is_symlink():
                link.symlink_to(path.resolve())
    if not (folder / "dataset.json").exists():
        (folder / "dataset.json").symlink_to((data / "dataset.json").resolve())
    return folder


class Campaign:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.json"
        self.results = read_json(self.results_path) if self.results_path.exists() else {"rounds": [], "scores": []}
        self.grouped = patients(Path(args.data))
        order = [sorted(self.grouped)[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(self.grouped))]
        self.validation = order[:args.validation]
        self.pool = order[args.validation:args.validation + args.pool]
        self.results["setup"] = {
            "data": str(Path(args.data).resolve()), "task": TASK, "validation_patients": self.validation,
            "pool_patients": self.pool,
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "summarise"},
            "command": "labelshare-bench annotation-campaign " + " ".join(sys.argv[2:] if sys.argv[1:2] == [
                "annotation-campaign"] else sys.argv[1:]),
            "machine": f"{machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"}
        self.save()

    def save(self) -> None:
        atomic_write_json(self.results_path, self.results)

    def cases_of(self, chosen: list[str]) -> list[str]:
        return [case for patient in chosen for case in self.grouped[patient]]

    def done(self, seed: int, strategy: str, round_index: int) -> dict | None:
        return next((r for r in self.results["rounds"] if (r["seed"], r["strategy"], r["round"]) ==
                     (seed, strategy, round_index)), None)

    def record(self, entry: dict) -> None:
        self.results["rounds"].append(entry)
        self.save()
        print(json.dumps({k: v for k, v in entry.items() if k not in ("labelled", "ranking")}), flush=True)

    def initial_model(self, seed: int) -> Path:
        from labelshare.core.labelspace import LabelSpace
        from labelshare.engine.statistics import compute_statistics
        from labelshare.core.tasks import TaskDataset
        from labelshare.engine.training_run import train
        model = self.out / f"seed{seed}" / "round0"
        initial = [self.pool[i] for i in np.random.default_rng(seed).choice(len(self.pool), self.args.initial,
                                                                              replace=False)]
        if self.done(seed, "initial", 0) is None:
            folder = link_folder(Path(self.args.data), self.out / f"seed{seed}" / "data-initial",
                                 self.cases_of(initial + self.validation))
            settings = PlanSettings(fixed_size=self.args.fixed_size)
            space = LabelSpace.build([compute_statistics(TaskDataset.open(folder, TASK), self.cases_of(initial),
                                                         plan_settings=settings)], plan_settings=settings)
            config = TrainConfig(batch_size=self.args.batch_size, epochs=1, steps_per_epoch=self.args.initial_steps,
                                 seed=seed, device="cpu", validation_fraction=0.0)
            started = time.perf_counter()
            split = {TASK: {"train": self.cases_of(initial), "validation": self.cases_of(self.validation)}}
            result = train([(TASK, folder)], space, model, config, progress=Progress("quiet"),
                           command=["annotation-campaign", "initial"], split=split)
            self.record({"seed": seed, "strategy": "initial", "round": 0, "patients": len(initial),
                         "dice": result.metrics["mean_dice"][TASK], "labelled": initial,
                         "train_s": round(time.perf_counter() - started, 1)})
        return model

    def compare_scores(self, seed: int, model_path: Path) -> None:
        """Each score over the pool with the initial model vs the model's real error there (Spearman)."""
        from scipy.stats import spearmanr

        from labelshare.engine.evaluation import evaluate_cases
        from labelshare.engine.models import load_model
        from labelshare.engine.ranking import rank_cases
        from labelshare.core.tasks import TaskDataset
        if any(entry["seed"] == seed for entry in self.results["scores"]):
            return
        model = load_model(model_path, device="cpu")
        initial = self.done(seed, "initial", 0)["labelled"]
        unlabelled = [p for p in self.pool if p not in initial]
        task = TaskDataset.open(self.args.data, TASK)
        evaluation = evaluate_cases(model, task, self.cases_of(unlabelled))
        dice = {case: float(np.nanmean([s.dice for s in evaluation.scores if s.case == case]))
                for case in self.cases_of(unlabelled)}
        entry = {"seed": seed, "cases": len(dice)}
        for score in MEASURED_SCORES:
            started = time.perf_counter()
            ranking = rank_cases(model, self.inputs(unlabelled), RankConfig(task=TASK, score=score, device="cpu"))
            seconds = time.perf_counter() - started
            scores = {case.name: case.score for case in ranking.cases}
            names = sorted(scores)
            rho = spearmanr([scores[n] for n in names], [1 - dice[n] for n in names]).statistic
            entry[score] = {"spearman_vs_error": round(float(rho), 3), "seconds": round(seconds, 1),
                            "cases_per_minute": round(60 * len(names) / seconds, 1)}
        self.results["scores"].append(entry)
        self.save()
        print(json.dumps(entry), flush=True)

    def inputs(self, chosen: list[str]) -> Inputs:
        from labelshare.core.tasks import TaskDataset
        task = TaskDataset.open(self.args.data, TASK)
        return Inputs([InputImage(name, task.case(name).image_path) for name in self.cases_of(chosen)], single=False)

    def run_strategy(self, seed: int, strategy: str, initial_model: Path) -> None:
        from labelshare.engine.incremental import add_task
        from labelshare.engine.models import load_model
        from labelshare.engine.ranking import rank_cases
        labelled = list(self.done(seed, "initial", 0)["labelled"])
        model_path = initial_model
        rng = np.random.default_rng([seed, 1])
        for round_index in range(1, self.args.rounds + 1):
            previous = self.done(seed, strategy, round_index)
            unlabelled = [p for p in self.pool if p not in labelled]
            if previous is not None:
                labelled = previous["labelled"]
                rng.choice(len(unlabelled), self.args.per_round, replace=False)  # a resumed random arm draws alike
                model_path = self.out / f"seed{seed}" / f"{strategy}-round{round_index}"
                continue
            started = time.perf_counter()
            ranking_info = {}
            if strategy == "uncertainty":
                ranking = rank_cases(load_model(model_path, device="cpu"), self.inputs(unlabelled),
                                     RankConfig(task=TASK, score=self.args.score, device="cpu"))
                patient_of = {case: p for p in unlabelled for case in self.grouped[p]}
                chosen = list(dict.fromkeys(patient_of[case.name] for case in ranking.cases))[:self.args.per_round]
                rank_s = time.perf_counter() - started
                ranking_info = {"rank_s": round(rank_s, 1), "cases_per_minute": round(60 * len(ranking.cases) / rank_s,
                                                                                     1),
                                "chosen_scores": [round(c.score, 4) for c in ranking.cases[:self.args.per_round]],
                                "ranking": [[c.name, round(c.score, 4)] for c in ranking.cases]}
            else:
                chosen = [unlabelled[i] for i in rng.choice(len(unlabelled), self.args.per_round, replace=False)]
            labelled = labelled + chosen
            folder = link_folder(Path(self.args.data), self.out / f"seed{seed}" / f"data-{strategy}",
                                 self.cases_of(labelled + self.validation))
            out = self.out / f"seed{seed}" / f"{strategy}-round{round_index}"
            config = AddTaskConfig.from_options(epochs=1, steps_per_epoch=self.args.update_steps,
                                                batch_size=self.args.batch_size, seed=seed, device="cpu",
                                                accept_regression=True)
            trained = time.perf_counter()
            result = add_task(model_path, (TASK, folder), out, config, progress=Progress("quiet"),
                              command=["annotation-campaign", strategy, str(round_index)])
            self.record({"seed": seed, "strategy": strategy, "round": round_index, "patients": len(labelled),
                         "dice": result.metrics["mean_dice"][TASK], "chosen": chosen, "labelled": labelled,
                         "update_s": round(time.perf_counter() - trained, 1), **ranking_info})
            model_path = out

    def run(self) -> None:
        for seed in self.args.seeds:
            initial = self.initial_model(seed)
            self.compare_scores(seed, initial)
            for strategy in STRATEGIES:
                self.run_strategy(seed, strategy, initial)
        summarise(self.out)


def summarise(out: Path) -> None:
    """results.md and dice.png from results.json."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    results = read_json(out / "results.json")
    rounds = results["rounds"]
    seeds = sorted({r["seed"] for r in rounds})
    curves: dict[str, dict[int, dict[int, float]]] = {}  # strategy → patients → seed → Dice
    for strategy in STRATEGIES:
        for r in rounds:
            if r["strategy"] in (strategy, "initial"):
                curves.setdefault(strategy, {}).setdefault(r["patients"], {})[r["seed"]] = r["dice"]
    setup = results["setup"]
    lines = ["# Simulated annotation campaign: uncertainty ranking vs random selection", "",
             f"Data: `{Path(setup['data']).name}` ({TASK}), {len(setup['validation_patients'])} fixed validation "
             f"patients, a pool of {len(setup['pool_patients'])} unlabelled patients. Machine: {setup['machine']}.",
             "", f"Command: `{setup['command']}`", "",
             "Validation Dice (mean over cases, then over labels) of each round's model, per seed and the mean over "
             "seeds:", "", "| annotated patients | " + " | ".join(
                 f"{s} seed {seed}" for s in STRATEGIES for seed in seeds) + " | " + " | ".join(
                 f"{s} mean" for s in STRATEGIES) + " |",
             "|---|" + "---|" * (len(STRATEGIES) * (len(seeds) + 1))]
    means: dict[str, dict[int, float]] = {}
    for patients_count in sorted({p for c in curves.values() for p in c}):
        cells, mean_cells = [], []
        for strategy in STRATEGIES:
            by_seed = curves.get(strategy, {}).get(patients_count, {})
            cells += [f"{by_seed[seed]:.3f}" if seed in by_seed else "" for seed in seeds]
            complete = len(by_seed) == len(seeds)
            if complete:
                means.setdefault(strategy, {})[patients_count] = float(np.mean(list(by_seed.values())))
            mean_cells.append(f"{means[strategy][patients_count]:.3f}" if complete else "")
        lines.append(f"| {patients_count} | " + " | ".join(cells + mean_cells) + " |")
    lines += ["", "Scores over the pool with each seed's initial model: Spearman correlation with the model's real "
              "error (1 - Dice) on those cases, and ranking speed:", "",
              "| seed | cases | " + " | ".join(f"{s}: Spearman vs error | {s}: cases/min" for s in MEASURED_SCORES)
              + " |", "|---|---|" + "---|---|" * len(MEASURED_SCORES)]
    for entry in results["scores"]:
        cells = [f"{entry[s]['spearman_vs_error']:.3f} | {entry[s]['cases_per_minute']:.1f}" for s in MEASURED_SCORES]
        lines.append(f"| {entry['seed']} | {entry['cases']} | " + " | ".join(cells) + " |")
    speeds = [r["cases_per_minute"] for r in rounds if "cases_per_minute" in r]
    if speeds:
        lines += ["", f"Ranking inside the campaign ({setup['arguments']['score']} score): "
                      f"{np.median(speeds):.1f} cases per minute (median of {len(speeds)} rankings)."]
    lines += ["", verdict(means), ""]
    atomic_write_text(out / "results.md", "\n".join(lines))
    figure, axis = plt.subplots(figsize=(6, 4))
    for strategy, colour in zip(STRATEGIES, ("tab:red", "tab:blue"), strict=True):
        for seed in seeds:
            points = np.array(sorted((p, d[seed]) for p, d in curves.get(strategy, {}).items() if seed in d))
            if len(points):
                axis.plot(points[:, 0], points[:, 1], color=colour, alpha=0.3, linewidth=1)
        if strategy in means:
            mean = np.array(sorted(means[strategy].items()))
            axis.plot(mean[:, 0], mean[:, 1], color=colour, marker="o", label=f"{strategy} (mean)")
    axis.set_xlabel("annotated patients")
    axis.set_ylabel("validation Dice")
    axis.set_title(f"{TASK}: uncertainty ranking vs random ({len(seeds)} seeds)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "dice.png", dpi=120)
    print((out / "results.md").read_text())


def verdict(means: dict[str, dict[int, float]]) -> str:
    """Whether uncertainty reached random's final Dice with at least 20 % fewer annotated patients."""
    if not all(strategy in means for strategy in STRATEGIES):
        return "Verdict: the campaign is incomplete."
    final = max(means["random"])
    target = means["random"][final]
    reached = [p for p, dice in sorted(means["uncertainty"].items()) if dice >= target]
    if not reached:
        return (f"Verdict: uncertainty did not reach random's final Dice ({target:.3f} with {final} patients) "
                f"within the campaign (uncertainty's best: {max(means['uncertainty'].values()):.3f}).")
    saving = 1 - reached[0] / final
    goal = "meets" if saving >= 0.2 else "misses"
    return (f"Verdict: uncertainty reached random's final Dice ({target:.3f} with {final} patients) with "
            f"{reached[0]} patients, {100 * saving:.0f} % fewer; this {goal} the goal of at least 20 % fewer.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench annotation-campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the task's nnU-Net raw folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--initial", type=int, default=4, help="patients labelled before the first round")
    parser.add_argument("--per-round", type=int, default=4, help="patients annotated per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pool", type=int, default=48, help="unlabelled patients to choose from")
    parser.add_argument("--validation", type=int, default=30, help="fixed validation patients")
    parser.add_argument("--fixed-size", type=int, default=48, help="slices resized to SIZE x SIZE (plans)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--initial-steps", type=int, default=300)
    parser.add_argument("--update-steps", type=int, default=150, help="add-task steps per round")
    parser.add_argument("--score", choices=MEASURED_SCORES, default="tta", help="the uncertainty strategy's score")
    parser.add_argument("--summarise", action="store_true", help="only write results.md and dice.png")
    args = parser.parse_args(argv)
    if args.summarise:
        summarise(args.out)
    else:
        Campaign(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
