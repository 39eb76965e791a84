"""Output layouts (light: no torch): which output channels a task's softmax covers and how task labels map to them,
as a registry (:func:`register_layout`; the benchmarks' baselines register theirs: ``labelshare_benchmarks.baselines``).

``shared``        label sharing (and a per-task model, which is label sharing with one task): n*+1 channels, every
                  task uses all of them; task label -> its shared label, shared labels the task lacks -> background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .labelspace import LabelSpace
from .methods import load_plugins

# task -> (its output channels, position 0 the background; task label id -> position in those channels)
TaskChannels = dict[str, tuple[list[int], dict[int, int]]]


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


@dataclass(frozen=True)
class Layout:
    """An output layout: the network's output channels for a label space, and each task's channels."""

    name: str
    out_channels: Callable[[LabelSpace], int]
    task_channels: Callable[[LabelSpace], TaskChannels]


LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Add a layout to the registry (registering the same layout again changes nothing)."""
    if LAYOUTS.get(layout.name, layout) != layout:
        raise ValueError(f"another layout is registered as {layout.name!r}")
    LAYOUTS[layout.name] = layout
    return layout


def layout_named(name: str) -> Layout:
    if name not in LAYOUTS:
        load_plugins()
    if name not in LAYOUTS:
        raise ValueError(f"unknown output layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def shared_channels(space: LabelSpace) -> TaskChannels:
    """Every task: all n*+1 channels, each label on its shared label."""
    channels = list(range(space.n_shared + 1))
    return {name: (channels, {label.id: label.shared for label in task.labels}) for name, task in space.tasks.items()}


SHARED = register_layout(Layout("shared", lambda space: space.n_shared + 1, shared_channels))


def out_channels(layout: str, space: LabelSpace) -> int:
    return layout_named(layout).out_channels(space)


def task_heads(layout: str, space: LabelSpace) -> dict[str, TaskHead]:
    """Every task's head in the output of ``layout`` for ``space``, in the label space's task order."""
    heads = {}
    for index, (name, (channels, positions)) in enumerate(layout_named(layout).task_channels(space).items()):
        task = space.tasks[name]
        target_lut = np.zeros(max(e.id for e in task.labels) + 1, dtype=np.int64)
        output_lut = np.zeros(len(channels), dtype=np.int64)
        for label in task.labels:
            target_lut[label.id] = positions[label.id]
            output_lut[positions[label.id]] = label.id
        names = {positions[label.id]: label.name for label in task.labels}
        heads[name] = TaskHead(task=name, index=index, channels=channels, target_lut=target_lut,
                               output_lut=output_lut, label_positions=sorted(names), position_names=names)
    return heads
