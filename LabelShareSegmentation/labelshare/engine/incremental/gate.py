"""The regression gate of add-task: score every old task with the old model, compare with the new version's
validation metrics (:class:`labelshare.core.forgetting.ForgettingReport`), then publish the candidate or keep it back.

Every task of the old model is scored on its validation cases by the old and by the new model (per-case Dice at
native resolution, mean over cases, then over labels; the old model's own ``metrics.json`` is reused for tasks whose
validation cases and data are unchanged). When a task loses more than ``max_regression`` Dice points the new
version is refused (:class:`RegressionRefused`) unless ``accept_regression``: the report is written beside the
requested folder as ``<NEW>.forgetting.json`` and ``.md``, and the trained candidate stays in ``.<NEW>.candidate``
so that the same command with ``--accept-regression`` publishes it without training again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...core.config import AddTaskConfig
from ...core.errors import LabelShareError
from ...core.fileio import atomic_write_json, atomic_write_text, publish_dir
from ...core.forgetting import ForgettingReport, Summary
from ...core.modelfolder import write_manifest
from ...core.paths import refused_report_paths
from ...core.progress import Progress
from ...core.scores import Evaluation
from ...core.tasks import TaskDataset
from ..evaluation import evaluate_cases
from ..memory import gate_evaluation
from ..models import Model
from ..sampling import TaskSlices
from ..training_run import TrainingResult


class RegressionRefused(LabelShareError):
    """The new version lost more than the allowed Dice on an old task and was not published; ``report_path`` is
    the JSON report beside the requested folder and ``report`` the report itself."""

    def __init__(self, message: str, report_path: Path, report: ForgettingReport):
        super().__init__(message)
        self.report_path = report_path
        self.report = report


def old_validation_scores(old: Model, candidate: TrainingResult, tasks: Mapping[str, TaskDataset],
                          names: Sequence[str], progress: Progress) -> Summary:
    """The old model's Dice on each task's validation cases of the candidate's split.

    The old model's own ``metrics.json`` is that evaluation when the task's validation cases and the data
    fingerprint of its folder are unchanged and the metric definition is the same; other tasks are evaluated.
    """
    recorded = old.read_json("metrics.json", {}) or {}
    recorded_split = (old.read_json("split.json", {}) or {}).get("tasks", {})
    recorded_data = (old.read_json("lineage.json", {}) or {}).get("data", {})
    scores: dict[str, Mapping[str, Mapping[str, float]]] = {}
    to_evaluate = []
    for name in names:
        unchanged = (recorded.get("definition") == candidate.metrics.get("definition")
                     and name in recorded.get("validation", {})
                     and recorded_split.get(name, {}).get("validation") == candidate.split[name]["validation"]
                     and recorded_data.get(name, {}).get("fingerprint") == candidate.data[name]["fingerprint"])
        if unchanged:
            scores[name] = recorded["validation"][name]
        else:
            to_evaluate.append(name)
    if scores:
        progress.log(f"old scores of {', '.join(scores)} taken from {old.path.name}/metrics.json (same validation "
                     "cases and data)")
    evaluation = Evaluation()
    for i, name in enumerate(to_evaluate):
        evaluation.extend(evaluate_cases(old, tasks[name], candidate.split[name]["validation"], progress=progress,
                                         fraction_range=(i / len(to_evaluate), (i + 1) / len(to_evaluate))))
    return {**scores, **evaluation.summary()}


def apply_gate(old: Model, candidate: TrainingResult, out: Path, tasks: Mapping[str, TaskDataset], task: str,
               operation: str, config: AddTaskConfig, progress: Progress,
               gates: Mapping[str, TaskSlices] | None = None) -> tuple[Path, ForgettingReport]:
    """Compare, then publish ``candidate.path`` as ``out`` with its report; raises :class:`RegressionRefused` (and
    writes the report beside ``out``) when an old task lost too much or a label of the task is below the floor, and
    that is not accepted. ``gates``: the gate slices of the old tasks trained from the rehearsal memory, on which
    both models score them (the candidate's scores are its ``metrics.json``'s ``memory_gate``)."""
    max_regression = config.max_regression
    gates = gates or {}
    old_tasks = [t for t in old.labelspace.task_names
                 if t in gates or (t in tasks and candidate.split.get(t, {}).get("validation"))]
    before = old_validation_scores(old, candidate, tasks, [t for t in old_tasks if t not in gates], progress)
    for name, bank in gates.items():
        before[name] = gate_evaluation(old.network, bank, old.heads[name], old.device).summary()[name]
    after = {**candidate.metrics["validation"], **candidate.metrics.get("memory_gate", {})}
    scored_on = {t: (f"the rehearsal memory's {len(gates[t])} gate slices (validation cases): Dice at plan "
                     "resolution, pooled over the slices" if t in gates else
                     f"{len(candidate.split[t]['validation'])} validation cases: Dice at native resolution")
                 for t in old_tasks}
    report = ForgettingReport.compare(before, after, old_tasks, task, max_regression,
                                      config.accept_regression, config.min_new_dice, scored_on)
    data = report.to_json(old.path.name, out.name, operation)
    markdown = report.to_markdown(old.path.name, out.name)
    worst = data["worst"]
    summary = "no old task was evaluated" if worst is None else \
        f"largest change {100 * worst['change']:+.1f} Dice points on '{worst['task']}'"
    progress.metrics("forgetting", passed=report.passed, threshold=max_regression, worst=worst,
                     task_means=data["task_means"], new_task=data["new_task"],
                     message=f"forgetting: {summary}; gate: {'passed' if report.passed else report.verdict()}")
    if not (report.passed or config.accept_regression):
        json_path, markdown_path = refused_report_paths(out)
        atomic_write_json(json_path, data)
        atomic_write_text(markdown_path, markdown)
        raise RegressionRefused(
            f"{out}: not published: {report.verdict()}; report {markdown_path}; the trained version waits in "
            f"{candidate.path}: repeat the command with --accept-regression to publish it", json_path, report)
    atomic_write_json(candidate.path / "forgetting.json", data)
    atomic_write_text(candidate.path / "forgetting.md", markdown)
    write_manifest(candidate.path)
    published = publish_dir(candidate.path, out)
    for stale in refused_report_paths(out):
        stale.unlink(missing_ok=True)
    return published, report
