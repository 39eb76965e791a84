"""A task's label statistics and plan, measured on its training cases: the input of the shared label space
(:class:`labelshare.core.labelspace.LabelSpace`). Every case is read and cut into the slices the network sees
(the plan's preprocessing schemes), so this is the part of building a label space that reads data.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..core.errors import LabelSpaceError
from ..core.labelspace import LabelStats, TaskStatistics
from ..core.plans import PlanSettings, SliceGeometry
from ..core.preprocessing import iter_case_slices
from ..core.tasks import TaskDataset


def compute_statistics(task: TaskDataset, case_names: Iterable[str] | None = None,
                       plan_settings: PlanSettings | None = None) -> TaskStatistics:
    """Average relative size, frequency and slice count of every label over the given (default: all) cases, and the
    task's plan from the geometry of the same cases (``plan_settings``: the planning rule, default
    :class:`~labelshare.core.plans.PlanSettings`; its preprocessing cuts the slices)."""
    plan_settings = plan_settings or PlanSettings()
    sums = {name: 0.0 for name in task.labels}
    counts = {name: 0 for name in task.labels}
    geometries = []
    n_slices = n_cases = 0
    for case in iter_case_slices(task, case_names, plan_settings.preprocessing):
        n_cases += 1
        geometries.append(SliceGeometry(shape=tuple(case.label.shape[1:]), spacing=case.spacing,
                                        slices=case.label.shape[0]))
        labels = case.label.reshape(case.label.shape[0], -1)
        n_slices += labels.shape[0]
        pixels = labels.shape[1]
        for name, label_id in task.labels.items():
            per_slice = np.count_nonzero(labels == label_id, axis=1)
            present = per_slice > 0
            counts[name] += int(present.sum())
            sums[name] += float(per_slice[present].sum()) / pixels
    if n_slices == 0 or not any(counts.values()):
        raise LabelSpaceError(f"task '{task.name}' ({task.root}): no case contains any foreground label")
    stats = {name: LabelStats(relative_size=sums[name] / counts[name] if counts[name] else 0.0,
                              frequency=counts[name] / n_slices, slices_with_label=counts[name])
             for name in task.labels}
    return TaskStatistics(name=task.name, labels=dict(task.labels), stats=stats, n_slices=n_slices, n_cases=n_cases,
                          lateralised=task.lateralised, license=task.license, citation=task.citation,
                          label_info=task.label_info, plan=plan_settings.plan(geometries, task.name),
                          intended_input=task.intended_input)
