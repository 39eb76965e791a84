"""The forgetting report of an add-task run and its regression gate: every old task's Dice per label before and
after, the new task's Dice, and whether the new version may be published (no old task lost more than the threshold,
and, when a floor is set, no label of the new task ended below it). Light (no torch): the engine writes the
report (``forgetting.json``/``.md``) and LabelShareTraining reads it with the same class.

Dice are on the 0-1 scale; ``threshold`` is in Dice points (0-100) and applies to each old task's mean over its
labels; ``change`` = after - before.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabelShareError
from .fileio import read_json
from .scores import format_number, nanmean

REPORT_FORMAT = "labelshare.forgetting"
Summary = Mapping[str, Mapping[str, Mapping[str, float]]]  # task -> label -> {"dice_mean": ...} (metrics.json)


def format_points(change: float | None) -> str:
    """A Dice change (0-1 scale) in signed Dice points, '-' where unknown."""
    return "-" if change is None or change != change else f"{100 * change:+.1f}"


_dice = functools.partial(format_number, digits=3, missing="-")


@dataclass
class ForgettingReport:
    """Dice of every label of every old task before and after (``tasks``: task -> label -> before/after/change) and
    of the new task's labels after (``new_task``: label -> Dice)."""

    threshold: float
    tasks: dict[str, dict[str, dict[str, float]]]
    new_task: dict[str, float]
    new_task_name: str
    min_new_dice: float | None  # floor for every label of the new task (0-1), or none
    accepted: bool = False
    scored_on: dict[str, str] = field(default_factory=dict)  # task -> what it was scored on (validation cases, memory)

    @classmethod
    def compare(cls, before: Summary, after: Summary, old_tasks: Sequence[str], new_task: str, threshold: float,
                accepted: bool, min_new_dice: float | None,
                scored_on: Mapping[str, str] | None = None) -> ForgettingReport:
        """The report from the old model's and the new model's validation summaries (as in ``metrics.json``);
        ``scored_on`` says per task what both were scored on."""
        tasks = {}
        for task in old_tasks:
            tasks[task] = {}
            for label, scores in before[task].items():
                old, new = scores["dice_mean"], after[task][label]["dice_mean"]
                tasks[task][label] = {"before": old, "after": new, "change": new - old}
        new_scores = {label: s["dice_mean"] for label, s in after.get(new_task, {}).items()}
        return cls(threshold=threshold, tasks=tasks, new_task=new_scores, new_task_name=new_task, accepted=accepted,
                   min_new_dice=min_new_dice, scored_on=dict(scored_on or {}))

    def task_means(self) -> dict[str, dict[str, float]]:
        means = {}
        for task, labels in self.tasks.items():
            before = nanmean([v["before"] for v in labels.values()])
            after = nanmean([v["after"] for v in labels.values()])
            means[task] = {"before": before, "after": after, "change": after - before}
        return means

    def regressions(self) -> list[tuple[str, dict[str, float]]]:
        """Old tasks that lost more than the threshold, worst first."""
        over = [(task, m) for task, m in self.task_means().items()
                if m["change"] == m["change"] and m["change"] * 100 < -self.threshold - 1e-9]
        return sorted(over, key=lambda item: item[1]["change"])

    def worst(self) -> tuple[str, dict[str, float]] | None:
        scored = [(t, m) for t, m in self.task_means().items() if m["change"] == m["change"]]
        return min(scored, key=lambda item: item[1]["change"]) if scored else None

    def below_floor(self) -> dict[str, float]:
        """Labels of the new task whose Dice ended below ``min_new_dice`` (an unscored label counts as 0)."""
        if self.min_new_dice is None:
            return {}
        return {label: value for label, value in self.new_task.items()
                if not value == value or value < self.min_new_dice - 1e-9}

    @property
    def passed(self) -> bool:
        return not self.regressions() and not self.below_floor()

    def verdict(self) -> str:
        """Why the gate refuses, in one sentence (every task over the limit, every new label under the floor), or
        '' when it passes."""
        reasons = []
        over = self.regressions()
        if over:
            listed = ", ".join(f"'{task}' {100 * m['change']:+.1f} (mean {m['before']:.3f} -> {m['after']:.3f})"
                               for task, m in over)
            noun = "task" if len(over) == 1 else "tasks"
            points = "point" if self.threshold == 1 else "points"
            reasons.append(f"{len(over)} old {noun} lost more than the {self.threshold:g} Dice {points} allowed: "
                           f"{listed}")
        low = self.below_floor()
        if low:
            listed = ", ".join(f"{label} {_dice(value)}" for label, value in low.items())
            reasons.append(f"{len(low)} label(s) of '{self.new_task_name}' below the floor of {self.min_new_dice:g}: "
                           f"{listed}")
        return "; ".join(reasons)

    # -- files ------------------------------------------------------------------------------------------------------
    def to_json(self, parent: str, model: str, operation: str) -> dict:
        worst = self.worst()
        return {"format": REPORT_FORMAT, "threshold": self.threshold, "min_new_dice": self.min_new_dice,
                "passed": self.passed,
                "accepted": self.accepted or self.passed, "parent": parent, "model": model, "operation": operation,
                "definition": "per-case Dice at native resolution on each task's validation cases, mean over cases "
                              "(a task scored on the rehearsal memory's gate slices: Dice at plan resolution, "
                              "pooled over the slices as one volume; scored_on says which); change = after - before "
                              "in Dice (0-1); threshold in Dice points (0-100), applied to each task's mean over its "
                              "labels",
                "scored_on": self.scored_on, "tasks": self.tasks, "task_means": self.task_means(),
                "worst": {"task": worst[0], **worst[1]} if worst else None,
                "new_task": {"name": self.new_task_name, "dice": self.new_task}}

    @classmethod
    def from_json(cls, data: dict, where: str) -> ForgettingReport:
        try:
            tasks = {str(task): {str(label): {key: _number(values.get(key)) for key in ("before", "after", "change")}
                                 for label, values in labels.items()} for task, labels in data["tasks"].items()}
            new = data.get("new_task") or {}
            floor = data.get("min_new_dice")
            return cls(threshold=float(data["threshold"]), tasks=tasks,
                       new_task={str(k): _number(v) for k, v in (new.get("dice") or {}).items()},
                       new_task_name=str(new.get("name", "")), accepted=bool(data.get("accepted", False)),
                       min_new_dice=None if floor is None else float(floor),
                       scored_on={str(k): str(v) for k, v in (data.get("scored_on") or {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise LabelShareError(f"{where}: malformed forgetting report ({type(error).__name__}: {error})") from None

    @classmethod
    def read(cls, path: str | Path) -> ForgettingReport:
        return cls.from_json(read_json(path, "forgetting report"), str(path))

    @classmethod
    def of_model(cls, model_dir: str | Path) -> ForgettingReport | None:
        """The report a published add-task version carries, or None (a first model has none)."""
        path = Path(model_dir) / "forgetting.json"
        return cls.read(path) if path.is_file() else None

    def table(self) -> list[tuple[str, str, str, str, str]]:
        """Rows as a GUI shows them: task, label, Dice before, Dice after, change in Dice points ('-' unknown)."""
        rows = [(task, label, _dice(v["before"]), _dice(v["after"]), format_points(v["change"]))
                for task, labels in self.tasks.items() for label, v in labels.items()]
        rows += [(self.new_task_name, label, "-", _dice(value), "new") for label, value in self.new_task.items()]
        return rows

    def to_markdown(self, parent: str, model: str) -> str:
        verdict = "passed" if self.passed else ("REGRESSION accepted (--accept-regression)" if self.accepted
                                               else "REFUSED")
        floor = (f"; every label of `{self.new_task_name}` must reach Dice {self.min_new_dice:g}"
                 if self.min_new_dice is not None else "")
        lines = [f"# Forgetting report: `{parent}` -> `{model}`", "",
                 f"Gate: no old task may lose more than {self.threshold:g} Dice points (mean over its labels){floor}. "
                 f"Verdict: **{verdict}**" + (f" ({self.verdict()})" if not self.passed else "") + ".", "",
                 ("Scored on: " + "; ".join(f"`{task}`: {what}" for task, what in self.scored_on.items())
                  if self.scored_on else "Per-case Dice at native resolution on each task's validation cases")
                 + "; mean over cases (slices).", "",
                 "| task | label | before | after | change (points) |", "|---|---|---|---|---|"]
        means = self.task_means()
        for task, labels in self.tasks.items():
            for label, v in labels.items():
                lines.append(f"| {task} | {label} | {_dice(v['before'])} | {_dice(v['after'])} | "
                             f"{format_points(v['change'])} |")
            m = means[task]
            lines.append(f"| **{task}** | *mean* | {_dice(m['before'])} | {_dice(m['after'])} | "
                         f"**{format_points(m['change'])}** |")
        for label, value in self.new_task.items():
            lines.append(f"| {self.new_task_name} (new) | {label} | - | {_dice(value)} | - |")
        return "\n".join(lines) + "\n"


def _number(value) -> float:
    return float("nan") if value is None else float(value)
