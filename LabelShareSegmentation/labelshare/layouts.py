"""Output layouts (light: no torch): which output channels a task's softmax covers and how task labels map to them.

``shared``        label sharing (and a per-task model, which is label sharing with one task): n*+1 channels, every
                  task uses all of them; task label -> its shared label, shared labels the task lacks -> background.
``concatenated``  the merged multi-channel baseline: 1 + sum of label counts channels; a task's softmax covers the
                  background channel and its own block only, so a task is never penalised for labels it does not
                  annotate (the fairest version of this baseline; see docs/benchmark/README.md).
``task_slots``    DoD-Net: max label count + 1 channels produced by the task-conditioned head; task t uses the
                  first K_t + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .labelspace import LabelSpace

LAYOUTS = ("shared", "concatenated", "task_slots")


@dataclass
class TaskHead:
    task: str
    index: int
    channels: list[int]          # output channels of the task's softmax; position 0 is background
    target_lut: np.ndarray       # task label id -> position in ``channels``
    output_lut: np.ndarray       # position in ``channels`` -> task label id
    label_positions: list[int]   # positions holding one of the task's labels (the Dice terms)
    position_names: dict[int, str]  # position -> task label name

    @property
    def all_channels(self) -> bool:
        return self.channels == list(range(len(self.channels)))


def out_channels(layout: str, space: LabelSpace) -> int:
    if layout == "shared":
        return space.n_shared + 1
    if layout == "concatenated":
        return 1 + sum(len(t.labels) for t in space.tasks.values())
    if layout == "task_slots":
        return 1 + max(len(t.labels) for t in space.tasks.values())
    raise ValueError(f"unknown output layout {layout!r}; known: {LAYOUTS}")


def task_heads(layout: str, space: LabelSpace) -> dict[str, TaskHead]:
    heads = {}
    offset = 1
    for index, (name, task) in enumerate(space.tasks.items()):
        max_id = max(e.id for e in task.labels)
        target_lut = np.zeros(max_id + 1, dtype=np.int64)
        if layout == "shared":
            channels = list(range(space.n_shared + 1))
            for label in task.labels:
                target_lut[label.id] = label.shared
        elif layout in ("concatenated", "task_slots"):
            start = offset if layout == "concatenated" else 1
            channels = [0] + list(range(start, start + len(task.labels)))
            for position, label in enumerate(task.labels, start=1):
                target_lut[label.id] = position
            offset += len(task.labels)
        else:
            raise ValueError(f"unknown output layout {layout!r}; known: {LAYOUTS}")
        output_lut = np.zeros(len(channels), dtype=np.int64)
        for label in task.labels:
            output_lut[target_lut[label.id]] = label.id
        names = {int(target_lut[label.id]): label.name for label in task.labels}
        heads[name] = TaskHead(task=name, index=index, channels=channels, target_lut=target_lut,
                               output_lut=output_lut, label_positions=sorted(names), position_names=names)
    return heads
