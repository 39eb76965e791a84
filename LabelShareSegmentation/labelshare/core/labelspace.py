"""The shared label space: the grouping strategies over label statistics, the mapping and its JSON file
(``labelspace.json``). The statistics are measured on a task's cases by
:func:`labelshare.engine.statistics.compute_statistics`.

Method (Anand et al. 2024): every task's labels are ranked by their *average relative size* and the k-th label of
every task is mapped to shared label k. Definition used here, on the 2D images the network sees (slices of 3D
volumes, or projections):

    relative_size(label) = mean over training slices that contain the label of (label pixels / slice pixels)

Ties are broken by the task's label id. Two constraints always hold: each task label maps to exactly one shared
label, and a shared label holds at most one label of each task. Explicit groups (``acdc:lv_cavity=sunnybrook:
lv_cavity``) pin labels of different tasks to one shared label; they take the lowest shared labels, in order of
their members' mean size rank, and every other label fills its task's free shared labels in size order.
n* (``n_shared``) is the number of shared labels used, which is the largest label count of any task unless
groups force more.

Each task also carries its plan (:mod:`labelshare.core.plans`: the resolution and patch size the network sees it at),
computed from the same training cases as its statistics; the rule the plans were made with is stored too, so a task
added later is planned the same way. Format version 1 (the first release) had no plans.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import DataError, LabelSpaceError, UnknownTaskError
from .fileio import atomic_write_json, read_json
from .naming import check_task_name
from .plans import FIRST_PATCH_MULTIPLE, PlanSettings, TaskPlan
from .preprocessing import FIRST_PREPROCESSING

FORMAT = "labelshare.labelspace"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class LabelStats:
    relative_size: float
    frequency: float
    slices_with_label: int


@dataclass
class LabelEntry:
    name: str
    id: int
    shared: int
    stats: LabelStats
    info: dict = field(default_factory=dict)


@dataclass
class TaskEntry:
    name: str
    labels: list[LabelEntry]
    n_slices: int = 0
    n_cases: int = 0
    lateralised: bool = False
    license: str = ""
    citation: str = ""
    strategy: str = "size"
    plan: TaskPlan | None = None  # None: a first-release label space (the model's fixed size applies)
    intended_input: str = ""

    def label(self, name: str) -> LabelEntry:
        for entry in self.labels:
            if entry.name == name:
                return entry
        raise LabelSpaceError(f"task '{self.name}' has no label '{name}' "
                              f"(labels: {', '.join(e.name for e in self.labels)})")


@dataclass
class TaskStatistics:
    """Label statistics of one task, the input of the grouping strategies."""

    name: str
    labels: dict[str, int]
    stats: dict[str, LabelStats]
    n_slices: int
    n_cases: int
    lateralised: bool = False
    license: str = ""
    citation: str = ""
    label_info: dict = field(default_factory=dict)
    plan: TaskPlan | None = None
    intended_input: str = ""

    def size_order(self) -> list[str]:
        """Label names, largest average relative size first; ties by label id."""
        return sorted(self.labels, key=lambda n: (-self.stats[n].relative_size, self.labels[n]))


def parse_group(text: str) -> list[tuple[str, str]]:
    """``a:x=b:y[=c:z]`` -> [("a", "x"), ("b", "y"), ...]."""
    members = []
    for token in text.split("="):
        task, sep, label = token.strip().partition(":")
        if not sep or not task or not label:
            raise LabelSpaceError(f"group '{text}': each member is TASK:LABEL, got '{token}'")
        members.append((task, label))
    return members


class LabelSpace:
    """Mapping of every task's labels to shared labels 1..n_shared (0 is the shared background)."""

    def __init__(self, tasks: Mapping[str, TaskEntry], strategy: str = "size",
                 groups: Sequence[Sequence[tuple[str, str]]] = (), plan_settings: PlanSettings | None = None):
        self.tasks: dict[str, TaskEntry] = dict(tasks)
        self.strategy = strategy
        self.plan_settings = plan_settings  # None: a first-release label space without plans
        self.groups = [list(g) for g in groups]
        self.check()

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, statistics: Sequence[TaskStatistics], groups: Sequence[Sequence[tuple[str, str]]] = (),
              plan_settings: PlanSettings | None = None) -> LabelSpace:
        """The paper's size strategy with optional explicit groups (see module docstring); ``plan_settings`` is the
        rule the statistics' plans were made with."""
        by_name = {s.name: s for s in statistics}
        if len(by_name) != len(statistics):
            raise LabelSpaceError("a task name is given twice")
        plan_settings = plan_settings or PlanSettings()
        plan_settings.check_tasks(by_name)
        ranks = {(s.name, label): rank for s in statistics for rank, label in enumerate(s.size_order())}
        grouped: set[tuple[str, str]] = set()
        for group in groups:
            seen_tasks = set()
            for task, label in group:
                if task not in by_name:
                    raise UnknownTaskError(task, list(by_name))
                if label not in by_name[task].labels:
                    raise LabelSpaceError(f"group {_group_text(group)}: task '{task}' has no label '{label}' "
                                          f"(labels: {', '.join(by_name[task].labels)})")
                if task in seen_tasks:
                    raise LabelSpaceError(f"group {_group_text(group)}: two labels of task '{task}' cannot share "
                                          "one shared label")
                if (task, label) in grouped:
                    raise LabelSpaceError(f"label '{task}:{label}' is in more than one group")
                seen_tasks.add(task)
                grouped.add((task, label))
        assignment: dict[tuple[str, str], int] = {}
        used: dict[str, set[int]] = {s.name: set() for s in statistics}
        ordered_groups = sorted(groups, key=lambda g: (np.mean([ranks[m] for m in g]), _group_text(g)))
        for group in ordered_groups:
            slot = 1
            while any(slot in used[task] for task, _ in group):
                slot += 1
            for member in group:
                assignment[member] = slot
                used[member[0]].add(slot)
        for stats in statistics:
            slot = 1
            for label in stats.size_order():
                if (stats.name, label) in assignment:
                    continue
                while slot in used[stats.name]:
                    slot += 1
                assignment[(stats.name, label)] = slot
                used[stats.name].add(slot)
        tasks = {s.name: _task_entry(s, {label: assignment[(s.name, label)] for label in s.labels}, "size")
                 for s in statistics}
        return cls(tasks, strategy="size", groups=ordered_groups, plan_settings=plan_settings)

    def with_task(self, stats: TaskStatistics, mapping: Mapping[str, int], strategy: str) -> LabelSpace:
        """A new label space with one task added or replaced; every other task's mapping is unchanged.

        ``mapping`` gives the shared label of each label of the task; shared labels above n_shared extend the space.
        A replaced task keeps its plan (the network learnt it at that resolution).
        """
        missing = [label for label in stats.labels if label not in mapping]
        if missing:
            raise LabelSpaceError(f"task '{stats.name}': no shared label given for {', '.join(missing)}")
        tasks = dict(self.tasks)
        entry = _task_entry(stats, dict(mapping), strategy)
        if stats.name in self.tasks:
            entry.plan = self.tasks[stats.name].plan
        tasks[stats.name] = entry
        return LabelSpace(tasks, strategy=self.strategy, groups=self.groups, plan_settings=self.plan_settings)

    # -- queries --------------------------------------------------------------------------------------------------
    @property
    def n_shared(self) -> int:
        return max((e.shared for t in self.tasks.values() for e in t.labels), default=0)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def task(self, name: str) -> TaskEntry:
        if name not in self.tasks:
            raise UnknownTaskError(name, self.task_names)
        return self.tasks[name]

    def shared_members(self) -> list[dict[str, str]]:
        """For shared label k (index k-1): {task: label name}."""
        members: list[dict[str, str]] = [{} for _ in range(self.n_shared)]
        for task in self.tasks.values():
            for label in task.labels:
                members[label.shared - 1][task.name] = label.name
        return members

    def check(self) -> None:
        """Raise if either paper constraint is violated."""
        for task in self.tasks.values():
            if not task.labels:
                raise LabelSpaceError(f"task '{task.name}' has no labels")
            shared = [e.shared for e in task.labels]
            if min(shared) < 1:
                raise LabelSpaceError(f"task '{task.name}': every label needs a shared label >= 1")
            if len(set(shared)) != len(shared):
                raise LabelSpaceError(f"task '{task.name}': two of its labels map to one shared label")
            names = [e.name for e in task.labels]
            if len(set(names)) != len(names):
                raise LabelSpaceError(f"task '{task.name}': label names are not unique")

    # -- files ----------------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "strategy": self.strategy,
            "definition": "relative_size = mean over training slices containing the label of label pixels / "
                          "slice pixels; shared label k holds the k-th largest label of every task",
            "n_shared": self.n_shared,
            "groups": [[f"{t}:{label}" for t, label in g] for g in self.groups],
            "plan_settings": self.plan_settings.to_json() if self.plan_settings else None,
            "tasks": {
                task.name: {
                    "strategy": task.strategy,
                    "n_cases": task.n_cases,
                    "n_slices": task.n_slices,
                    "lateralised": task.lateralised,
                    "license": task.license,
                    "citation": task.citation,
                    "intended_input": task.intended_input,
                    **({"plan": task.plan.to_json()} if task.plan else {}),
                    "labels": [{"name": e.name, "id": e.id, "shared": e.shared,
                                "relative_size": e.stats.relative_size, "frequency": e.stats.frequency,
                                "slices_with_label": e.stats.slices_with_label, **({"info": e.info} if e.info else {})}
                               for e in task.labels],
                } for task in self.tasks.values()},
            "shared_labels": [{"shared": k + 1, "members": members} for k, members in enumerate(self.shared_members())],
        }

    @classmethod
    def from_json(cls, data: dict, where: str = "labelspace.json") -> LabelSpace:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LabelSpaceError(f"{where}: not a LabelShare label space (missing \"format\": \"{FORMAT}\")")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise LabelSpaceError(f"{where}: format version {version} is not supported (this LabelShare reads "
                                  f"versions {', '.join(map(str, READABLE_VERSIONS))})")
        try:
            plan_settings = _read_plan(PlanSettings, data["plan_settings"], where, "plan_settings") \
                if version >= 2 else None
            tasks = {}
            for name, task in data["tasks"].items():
                check_task_name(name)  # task names become folder names (collected tasks, demo outputs)
                labels = [LabelEntry(name=e["name"], id=int(e["id"]), shared=int(e["shared"]),
                                     stats=LabelStats(float(e["relative_size"]), float(e["frequency"]),
                                                      int(e["slices_with_label"])), info=e.get("info", {}))
                          for e in task["labels"]]
                tasks[name] = TaskEntry(name=name, labels=labels, n_slices=int(task.get("n_slices", 0)),
                                        n_cases=int(task.get("n_cases", 0)), lateralised=bool(task["lateralised"]),
                                        license=task.get("license", ""), citation=task.get("citation", ""),
                                        strategy=task.get("strategy", data.get("strategy", "size")),
                                        plan=_read_plan(TaskPlan, task["plan"], where, f"task '{name}': plan")
                                        if version >= 2 else None,
                                        intended_input=str(task.get("intended_input", "")))
            groups = [parse_group("=".join(g)) for g in data.get("groups", [])]
            space = cls(tasks, strategy=data.get("strategy", "size"), groups=groups, plan_settings=plan_settings)
        except DataError as error:
            raise LabelSpaceError(f"{where}: {error}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise LabelSpaceError(f"{where}: malformed label space ({type(error).__name__}: {error})") from None
        if data.get("n_shared") != space.n_shared:
            raise LabelSpaceError(f"{where}: n_shared {data.get('n_shared')} does not match its labels "
                                  f"({space.n_shared})")
        return space

    def with_fixed_size_plans(self, size: int) -> LabelSpace:
        """A first-release label space (no plans) with the plans its models used: every slice resized to ``size``,
        the first preprocessing schemes."""
        settings = PlanSettings(fixed_size=size, patch_multiple=FIRST_PATCH_MULTIPLE,
                                preprocessing=FIRST_PREPROCESSING)
        tasks = {name: dataclasses.replace(entry, plan=entry.plan or settings.plan([]))
                 for name, entry in self.tasks.items()}
        return LabelSpace(tasks, strategy=self.strategy, groups=self.groups, plan_settings=settings)

    def save(self, path: str | Path, overwrite: bool = True) -> None:
        atomic_write_json(path, self.to_json(), overwrite)

    @classmethod
    def load(cls, path: str | Path) -> LabelSpace:
        return cls.from_json(read_json(path, "label space", LabelSpaceError), str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSpace) and self.to_json() == other.to_json()

    def table(self) -> str:
        """Markdown table: one row per shared label, one column per task (label name and relative size)."""
        header = ["shared"] + self.task_names
        rows = []
        for k, members in enumerate(self.shared_members(), start=1):
            cells = [str(k)]
            for task in self.task_names:
                if task in members:
                    entry = self.tasks[task].label(members[task])
                    cells.append(f"{entry.name} (id {entry.id}, {100 * entry.stats.relative_size:.2f}%, "
                                 f"in {100 * entry.stats.frequency:.0f}% of slices)")
                else:
                    cells.append("-")
            rows.append(cells)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        details = [f"strategy: {self.strategy}; n* = {self.n_shared}; relative size = mean over slices containing the "
                   "label of label pixels / slice pixels"]
        if self.groups:
            details.append("groups: " + "; ".join(_group_text(g) for g in self.groups))
        for task in self.tasks.values():
            details.append(f"{task.name}: {task.n_cases} cases, {task.n_slices} slices, mapped by {task.strategy}"
                           + (", lateralised (no left-right flips)" if task.lateralised else "")
                           + (f"; plan: {task.plan.describe()}" if task.plan else ""))
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {d}" for d in details) + "\n"


def _read_plan(kind: type[PlanSettings] | type[TaskPlan], data, where: str, what: str):
    """A task's plan or the plan settings from a label space file; a bad value is one error naming the file and
    the entry."""
    try:
        return kind.from_json(data)
    except LabelSpaceError as error:
        raise LabelSpaceError(f"{where}: {what}: {error}") from None


def _group_text(group: Sequence[tuple[str, str]]) -> str:
    return "=".join(f"{t}:{label}" for t, label in group)


def _task_entry(stats: TaskStatistics, mapping: dict[str, int], strategy: str) -> TaskEntry:
    labels = [LabelEntry(name=name, id=label_id, shared=int(mapping[name]), stats=stats.stats[name],
                         info=stats.label_info.get(name, {}))
              for name, label_id in stats.labels.items()]
    return TaskEntry(name=stats.name, labels=labels, n_slices=stats.n_slices, n_cases=stats.n_cases,
                     lateralised=stats.lateralised, license=stats.license, citation=stats.citation, strategy=strategy,
                     plan=stats.plan, intended_input=stats.intended_input)


def statistics_of(entry: TaskEntry) -> TaskStatistics:
    """The statistics a label space recorded for a task (to rebuild or extend it)."""
    return TaskStatistics(name=entry.name, labels={e.name: e.id for e in entry.labels},
                          stats={e.name: e.stats for e in entry.labels}, n_slices=entry.n_slices,
                          n_cases=entry.n_cases, lateralised=entry.lateralised, license=entry.license,
                          citation=entry.citation, label_info={e.name: e.info for e in entry.labels if e.info},
                          plan=entry.plan, intended_input=entry.intended_input)

