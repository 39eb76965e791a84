"""The training budget of add-task when none is given, and how long it will take. Light (no torch): LabelShare
Training shows both before Train is pressed.

The budget grows with what there is to learn: :data:`BASE_STEPS` for any task, :data:`STEPS_PER_LABEL` for every
label of the task (a label beyond n* starts from an untrained output channel), :data:`STEPS_PER_CASE` for every
training case, capped at :data:`MAX_STEPS` (docs/incremental: the new labels' Dice against steps).

The estimate is the parent model's own training speed (seconds per step, from its ``lineage.json`` and
``training.json``) times the steps, with the distillation's extra forward pass of the old model
(:data:`DISTILLATION_COST`); it is as good as the parent's machine is like this one, which the message says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .modelfolder import read_model_json

BASE_STEPS = 300
STEPS_PER_LABEL = 150
STEPS_PER_CASE = 2
MAX_STEPS = 4000
DISTILLATION_COST = 1.3  # a step with distillation costs about 1.3 plain steps (labelshare-bench incremental-step-cost)


def add_task_epochs(labels: int, training_cases: int, steps_per_epoch: int) -> int:
    """Epochs of ``steps_per_epoch`` for a task with ``labels`` labels and ``training_cases`` training cases."""
    steps = min(MAX_STEPS, BASE_STEPS + STEPS_PER_LABEL * labels + STEPS_PER_CASE * training_cases)
    return max(1, math.ceil(steps / steps_per_epoch))


@dataclass
class Estimate:
    steps: int
    seconds: float | None  # None: the parent model does not record its training speed
    measured_on: str = ""

    def describe(self) -> str:
        if self.seconds is None:
            return f"{self.steps} steps"
        minutes = self.seconds / 60
        duration = f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"
        return f"{self.steps} steps, about {duration} at the speed the parent model trained ({self.measured_on})"


def estimate(parent: str | Path, steps: int, distillation: bool) -> Estimate:
    """How long ``steps`` add-task steps take, from the parent model folder's recorded training speed."""
    parent = Path(parent)
    lineage = read_model_json(parent, "lineage.json", {}) or {}
    recorded = read_model_json(parent, "training.json", {}) or {}
    parent_steps = (recorded.get("epochs") or 0) * (recorded.get("steps_per_epoch") or 0)
    elapsed = lineage.get("elapsed_s")
    if not parent_steps or not isinstance(elapsed, (int, float)) or elapsed <= 0:
        return Estimate(steps=steps, seconds=None)
    per_step = elapsed / parent_steps * (DISTILLATION_COST if distillation else 1.0)
    return Estimate(steps=steps, seconds=per_step * steps,
                    measured_on=str((lineage.get("environment") or {}).get("device", "its machine")))
