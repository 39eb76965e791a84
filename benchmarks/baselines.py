"""The baselines of the method comparison (docs/benchmark), registered into the engine's public registries: they are
research, not the product (``labelshare train --method`` offers the product's methods only).

``multi-channel``  one output channel per label of every task (layout ``concatenated``: 1 + the sum of the label
                   counts; a task's softmax covers the background channel and its own block only, so a task is
                   never penalised for labels it does not annotate: the fairest version of this baseline).
``dodnet``         DoD-Net (Zhang et al., CVPR 2021) adapted to 2D multi-label tasks (:mod:`.dodnet`; layout
                   ``task_slots``: max label count + 1 channels from the task-conditioned head, task t uses the
                   first K_t + 1).

:func:`register` runs when this module is imported and, through the entry point ``labelshare.methods`` of this
package, whenever the engine meets a model folder of one of these methods. Light: DoD-Net's network is imported
when one is built.
"""

from __future__ import annotations

from labelshare.core.labelspace import LabelSpace
from labelshare.core.layouts import Layout, register_layout
from labelshare.core.methods import Method, register_method


def concatenated_channels(space: LabelSpace) -> dict[str, tuple[list[int], dict[int, int]]]:
    """Each task: the background channel and a block of its own, one channel per label in label order."""
    channels, offset = {}, 1
    for name, task in space.tasks.items():
        channels[name] = ([0, *range(offset, offset + len(task.labels))],
                          {label.id: position for position, label in enumerate(task.labels, start=1)})
        offset += len(task.labels)
    return channels


def task_slot_channels(space: LabelSpace) -> dict[str, tuple[list[int], dict[int, int]]]:
    """Each task: the first K_t + 1 channels of the task-conditioned head, its labels in label order."""
    return {name: (list(range(len(task.labels) + 1)),
                   {label.id: position for position, label in enumerate(task.labels, start=1)})
            for name, task in space.tasks.items()}


LAYOUTS = (
    Layout("concatenated", lambda space: 1 + sum(len(t.labels) for t in space.tasks.values()), concatenated_channels),
    Layout("task_slots", lambda space: 1 + max(len(t.labels) for t in space.tasks.values()), task_slot_channels),
)
METHODS = (
    Method("multi-channel", "concatenated", "none", "one output channel per label of every task"),
    Method("dodnet", "task_slots", "dodnet", "DoD-Net: task-conditioned dynamic head",
           network="labelshare_benchmarks.dodnet:DoDNet"),
)


def register() -> None:
    """Register the baselines' layouts and methods with the engine (again: nothing changes)."""
    for layout in LAYOUTS:
        register_layout(layout)
    for method in METHODS:
        register_method(method)


register()
