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

from ..tasks import TaskDataset
from ..training import Batch, Trainer

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
    from training). With ``distill_weight`` > 0 the old model's outputs on the replayed slices are a second target
    (Hinton et al. 2015): KL(old || new) of the softmax at temperature :data:`DISTILL_TEMPERATURE` over the old
    output channels, times T^2, added to the segmentation loss.
    """

    def __init__(self, network, heads, train_banks, validation_banks, config, workdir, progress, context=None,
                 run_identity=None, fraction_range=(0.0, 1.0), *, replay: Mapping[str, Sequence[str]],
                 teacher: torch.nn.Module | None = None, distill_weight: float = 0.0):
        banks = []
        for bank in train_banks:
            if bank.task in replay:
                bank = bank.select(np.isin(np.array(bank.case_of_slice), list(replay[bank.task])))
            if len(bank):
                banks.append(bank)
        identity = {**(run_identity or {}), "replay": {t: list(c) for t, c in replay.items()},
                    "distill_weight": distill_weight}
        super().__init__(network, heads, banks, validation_banks, config, workdir, progress, context, identity,
                         fraction_range)
        self.distill_weight = distill_weight
        self.teacher = None
        if teacher is not None and distill_weight > 0:
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.replayed_tasks = torch.tensor([heads[t].index for t, cases in replay.items() if cases],
                                           device=self.device, dtype=torch.int64)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        loss = super().loss(logits, batch)
        if self.teacher is None:
            return loss
        replayed = torch.isin(batch.task_index, self.replayed_tasks)
        if not bool(replayed.any()):
            return loss
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else nullcontext())
        with torch.no_grad(), autocast:
            old_logits = self.teacher(batch.images[replayed], batch.task_index[replayed])
        temperature = DISTILL_TEMPERATURE
        new_log_p = F.log_softmax(logits[replayed, : old_logits.shape[1]].float() / temperature, dim=1)
        old_log_p = F.log_softmax(old_logits.float() / temperature, dim=1)
        divergence = F.kl_div(new_log_p, old_log_p, reduction="none", log_target=True).sum(dim=1).mean()
        return loss + self.distill_weight * temperature ** 2 * divergence
