"""Training of add-task: the engine's loop with replay of the old tasks and distillation of the old model.

Old tasks train on replay exemplars (:func:`spread_cases`: cases spread over patients, from their training split
only); with a distillation weight > 0 the old model's outputs on the replayed slices are a second target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from ...core.tasks import TaskDataset
from ..networks import output_layer
from ..sampling import TaskBatch
from ..training import Trainer

DISTILL_TEMPERATURE = 2.0


def spread_cases(task: TaskDataset, case_names: Sequence[str], count: int | None, seed: int) -> list[str]:
    """``count`` of the cases (all when None or more), spread over patients: patients in a seeded random order
    give one case each in turn. Used for replay exemplars and for the cases the overlap strategy segments."""
    if count is None or count >= len(case_names):
        return list(case_names)
    patient_of = {case.name: case.patient for case in task.cases}
    by_patient: dict[str, list[str]] = {}
    for name in case_names:
        by_patient.setdefault(patient_of[name], []).append(name)
    patients = sorted(by_patient)
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    chosen: list[str] = []
    turn = 0
    while len(chosen) < count:
        chosen += [by_patient[p][turn] for p in order if turn < len(by_patient[p])][: count - len(chosen)]
        turn += 1
    chosen_names = set(chosen)
    return [name for name in case_names if name in chosen_names]


class IncrementalTrainer(Trainer):
    """The engine's training loop with replay and distillation.

    Old tasks train on their replay exemplars only (``replay``: task -> case names; an empty list drops the task
    from training). ``new_task`` (the task being added or updated) gets ``new_task_share`` of every batch, the old
    tasks the rest in equal parts. With ``distill_weight`` > 0 the old model's outputs on the replayed patches are a
    second target
    (Hinton et al. 2015): KL(old || new) of the softmax at temperature :data:`DISTILL_TEMPERATURE` over the old
    output channels, times T^2, added to the segmentation loss.

    Output channels from ``first_new_channel`` on (those added for labels beyond n*) take ``new_channel_lr_scale``
    times the optimiser's step. AdamW moves every weight by about the learning rate per step, whatever the size of
    its gradient, so a channel that starts at a small label's prior odds (a logit ~6 below the background) needs
    hundreds of steps at the base rate before it wins a pixel: in a short add-task it was never predicted at all
    (docs/incremental/new-labels.md). Scaling the step of those rows only leaves the old channels and the shared
    features at the base rate.
    """

    def __init__(self, network, heads, train_banks, validation_banks, config, workdir, progress, context=None,
                 run_identity=None, fraction_range=(0.0, 1.0), *, replay: Mapping[str, Sequence[str]],
                 teacher: torch.nn.Module | None, distill_weight: float, new_task: str,
                 new_task_share: float | None, first_new_channel: int | None, new_channel_lr_scale: float,
                 distill_new_task: float):
        banks = [bank.select(replay[bank.task]) if bank.task in replay else bank for bank in train_banks]
        self.new_task, self.new_task_share = new_task, new_task_share
        identity = {**(run_identity or {}), "replay": {t: list(c) for t, c in replay.items()},
                    "distill_weight": distill_weight, "new_task_share": new_task_share}
        if distill_new_task:
            identity["distill_new_task"] = distill_new_task
        if first_new_channel is not None:
            identity["new_channels"] = {"first": first_new_channel, "lr_scale": new_channel_lr_scale}
        super().__init__(network, heads, banks, validation_banks, config, workdir, progress, context, identity,
                         fraction_range)
        self.distill_weight, self.distill_new_task = distill_weight, distill_new_task
        self.teacher = None
        if teacher is not None and (distill_weight > 0 or distill_new_task > 0):
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.replayed_tasks = {heads[t].index for t, cases in replay.items() if cases}
        self.new_task_index = heads[new_task].index
        # a task-conditioned teacher knows only its own tasks' codes (not those of a task added now)
        conditioned = teacher is not None and teacher.config.conditioning != "none"
        self.teacher_tasks = teacher.config.n_tasks if conditioned else len(heads)
        self.first_new_channel, self.new_channel_lr_scale = first_new_channel, new_channel_lr_scale

    def train_step(self, step: int) -> float:
        if self.first_new_channel is None or self.new_channel_lr_scale == 1.0:
            return super().train_step(step)
        layer, rows = output_layer(self.network), slice(self.first_new_channel, None)
        before = [parameter[rows].detach().clone() for parameter in (layer.weight, layer.bias)]
        loss = super().train_step(step)
        with torch.no_grad():  # the optimiser's update of the new rows, extended to new_channel_lr_scale times
            for parameter, start in zip((layer.weight, layer.bias), before, strict=True):
                parameter[rows] += (self.new_channel_lr_scale - 1.0) * (parameter[rows] - start)
        return loss

    def task_shares(self, banks) -> list[float] | None:
        tasks = [bank.task for bank in banks]
        if self.new_task not in tasks or self.new_task_share is None or len(tasks) == 1:
            return None
        others = (1 - self.new_task_share) / (len(tasks) - 1)
        return [self.new_task_share if task == self.new_task else others for task in tasks]

    def loss(self, logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        loss = super().loss(logits, batch)
        weight = self.distill_weight if batch.head.index in self.replayed_tasks else \
            self.distill_new_task if batch.head.index == self.new_task_index else 0.0
        if self.teacher is None or weight == 0 or batch.head.index >= self.teacher_tasks:
            return loss
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with torch.no_grad(), autocast:
            old_logits = self.teacher(batch.images, batch.task_index)
        temperature = DISTILL_TEMPERATURE
        new_log_p = F.log_softmax(logits[:, : old_logits.shape[1]].float() / temperature, dim=1)
        old_log_p = F.log_softmax(old_logits.float() / temperature, dim=1)
        divergence = F.kl_div(new_log_p, old_log_p, reduction="none", log_target=True).sum(dim=1).mean()
        return loss + weight * temperature ** 2 * divergence
