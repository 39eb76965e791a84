"""Label mapping of a task added to a model: each of its labels gets a shared label, keeping both constraints of
the paper (a task label maps to exactly one shared label; a shared label holds at most one label of each task).

Strategies: ``size`` (the paper: the k-th largest label goes to shared label k) and ``overlap`` (the current model
segments the new task's training images; each label goes to the shared label whose prediction overlaps it most, as
Dice, by an optimal one-to-one assignment; a label whose best overlap is below :data:`MIN_OVERLAP_DICE` takes the
lowest free shared label in size order, or a new one). ``--map LABEL=SHARED`` pins labels by hand and the strategy
places the rest. Old mappings never change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ...core.config import STRATEGIES
from ...core.errors import LabelSpaceError
from ...core.labelspace import LabelSpace, TaskStatistics
from ...core.plans import TaskPlan
from ...core.preprocessing import iter_case_slices
from ...core.tasks import TaskDataset
from ..slices import to_plan, window_logits

MIN_OVERLAP_DICE = 0.1  # below this a label's best overlap is noise, not a structure the model already finds
OVERLAP_CASES = 50  # training cases of the new task segmented for the overlap strategy (spread over patients)


@dataclass
class LabelMapping:
    """The shared label of every label of a task being added, and why it went there."""

    task: str
    strategy: str
    shared: dict[str, int]
    reasons: dict[str, str]
    overlap: dict[str, list[float]] | None = None  # label -> Dice with the prediction of shared label 1..n*

    def to_json(self) -> dict:
        return {"task": self.task, "strategy": self.strategy, "shared": self.shared, "reasons": self.reasons,
                **({"overlap_dice": self.overlap} if self.overlap is not None else {})}


def parse_pins(texts: Sequence[str], stats: TaskStatistics, space: LabelSpace) -> dict[str, int]:
    """``--map LABEL=SHARED`` arguments -> {label: shared label}; SHARED is a number or ``TASK:LABEL`` of the model."""
    pins: dict[str, int] = {}
    limit = space.n_shared + len(stats.labels)
    for text in texts:
        label, sep, target = (part.strip() for part in text.partition("="))
        if not sep or not label or not target:
            raise LabelSpaceError(f"--map '{text}': use LABEL=SHARED (a shared label number or TASK:LABEL)")
        if label not in stats.labels:
            raise LabelSpaceError(f"--map '{text}': task '{stats.name}' has no label '{label}' "
                                  f"(labels: {', '.join(stats.labels)})")
        if label in pins:
            raise LabelSpaceError(f"--map '{text}': label '{label}' is mapped twice")
        if ":" in target:
            other_task, _, other_label = target.partition(":")
            shared = space.task(other_task).label(other_label).shared
        else:
            try:
                shared = int(target)
            except ValueError:
                raise LabelSpaceError(f"--map '{text}': '{target}' is neither a shared label number nor "
                                      "TASK:LABEL") from None
            if not 1 <= shared <= limit:
                raise LabelSpaceError(f"--map '{text}': shared label must be 1..{limit} (n* = {space.n_shared}; "
                                      "numbers above n* add shared labels)")
        if shared in pins.values():
            taken = next(name for name, value in pins.items() if value == shared)
            raise LabelSpaceError(f"--map '{text}': shared label {shared} already holds '{taken}'; a shared label "
                                  "holds at most one label of a task")
        pins[label] = shared
    return pins


def map_labels(space: LabelSpace, stats: TaskStatistics, strategy: str, pins: Mapping[str, int] | None = None,
               overlap: np.ndarray | None = None) -> LabelMapping:
    """Shared labels for a new task: explicit pins first, then the strategy.

    ``overlap`` (for ``overlap``): Dice between each label of the task (rows, in ``stats.labels`` order) and the
    prediction of every output channel (columns 0..n*, 0 = background), from :func:`measure_overlap`.
    """
    if strategy not in STRATEGIES:
        raise LabelSpaceError(f"unknown mapping strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    if stats.name in space.tasks:
        raise LabelSpaceError(f"task '{stats.name}' is already in the model; its mapping stays as it is")
    assigned = dict(pins or {})
    reasons = {label: "explicit (--map)" for label in assigned}
    members = space.shared_members()
    names = list(stats.labels)
    overlap_json = None
    if strategy == "overlap":
        if overlap is None or overlap.shape != (len(names), space.n_shared + 1):
            raise ValueError("the overlap strategy needs the Dice of every label with every output channel")
        overlap_json = {label: [round(float(v), 4) for v in overlap[i, 1:]] for i, label in enumerate(names)}
        rows = [i for i, label in enumerate(names) if label not in assigned]
        free = [k for k in range(1, space.n_shared + 1) if k not in assigned.values()]
        if rows and free:
            scores = overlap[np.ix_(rows, free)]
            for r, c in zip(*linear_sum_assignment(scores, maximize=True), strict=True):
                if scores[r, c] >= MIN_OVERLAP_DICE:
                    label, shared = names[rows[r]], free[c]
                    assigned[label] = shared
                    holders = ", ".join(f"{t}:{n}" for t, n in members[shared - 1].items())
                    reasons[label] = f"overlap: Dice {scores[r, c]:.2f} with the prediction of shared label {shared} " \
                                     f"({holders})"
    used = set(assigned.values())
    slot = 1
    for rank, label in enumerate(stats.size_order(), start=1):
        if label in assigned:
            continue
        while slot in used:
            slot += 1
        assigned[label] = slot
        used.add(slot)
        reasons[label] = (f"size rank {rank}" if strategy == "size" else
                          f"{_unmatched(overlap[names.index(label)], assigned, label)}; size rank {rank}") + \
            (f", next free shared label {slot}" if slot <= space.n_shared else f", new shared label {slot}")
    added = sorted(k for k in used if k > space.n_shared)
    if added != list(range(space.n_shared + 1, space.n_shared + 1 + len(added))):
        raise LabelSpaceError(f"--map: new shared labels must follow n* = {space.n_shared} without gaps "
                              f"(got {', '.join(map(str, added))})")
    strategy_used = "explicit" if pins and len(pins) == len(names) else strategy
    return LabelMapping(task=stats.name, strategy=strategy_used, shared={n: assigned[n] for n in names},
                        reasons={n: reasons[n] for n in names}, overlap=overlap_json)


def _unmatched(overlap_row: np.ndarray, assigned: Mapping[str, int], label: str) -> str:
    """Why the overlap strategy did not place a label: its best overlap is too small or went to another label."""
    best = int(np.argmax(overlap_row[1:])) + 1
    holder = next((other for other, shared in assigned.items() if shared == best and other != label), None)
    if overlap_row[best] >= MIN_OVERLAP_DICE and holder is not None:
        return f"its best overlap, shared label {best} (Dice {overlap_row[best]:.2f}), went to {holder}"
    return f"no overlap of Dice >= {MIN_OVERLAP_DICE} (best {overlap_row[best]:.2f}, shared label {best})"


@dataclass
class Overlap:
    """Pixel counts of (task label, predicted output channel) pairs: row 0 is the task's background, then its labels
    in ``task.labels`` order; column c is output channel c (0 = background)."""

    counts: np.ndarray

    @property
    def dice(self) -> np.ndarray:
        """Dice between each label (rows) and the prediction of each channel (columns): what the mapping matches."""
        label_pixels = self.counts[1:].sum(axis=1, keepdims=True)
        predicted_pixels = self.counts.sum(axis=0, keepdims=True)
        return 2 * self.counts[1:] / np.maximum(label_pixels + predicted_pixels, 1)

    @property
    def coverage(self) -> np.ndarray:
        """Fraction of each label's pixels (rows) that each channel (columns) is predicted on."""
        return self.counts[1:] / np.maximum(self.counts[1:].sum(axis=1, keepdims=True), 1)


@torch.no_grad()
def measure_overlap(network: torch.nn.Module, device: torch.device, task: TaskDataset, case_names: Sequence[str],
                    plan: TaskPlan, task_index: int, batch_size: int) -> Overlap:
    """How the current prediction (argmax over all output channels) covers each label of ``task``, over the given
    cases at the task's plan resolution."""
    network.eval()
    label_ids = list(task.labels.values())
    lut = torch.zeros(max(label_ids) + 1, dtype=torch.int64)
    for position, label_id in enumerate(label_ids, start=1):
        lut[label_id] = position
    counts = None
    resampling = plan.preprocessing.resampling_scheme
    for case in iter_case_slices(task, case_names, plan.preprocessing):
        stacks = plan.stacks(case.image, range(len(case.image)), network.config.in_channels)
        images = to_plan(stacks, case.spacing, plan, "cpu")  # moved to the device per batch
        labels = resampling.labels(lut[torch.from_numpy(case.label.astype(np.int64))], images.shape[-2:],
                                   len(label_ids) + 1)
        for start in range(0, images.shape[0], batch_size):
            logits = window_logits(network, images[start: start + batch_size].to(device), task_index,
                                   plan.patch_size, batch_size)
            channels = logits.shape[1]
            pairs = labels[start: start + batch_size] * channels + logits.max(dim=1).indices.cpu()
            found = torch.bincount(pairs.flatten(), minlength=(len(label_ids) + 1) * channels)
            found = found.reshape(len(label_ids) + 1, channels)
            counts = found if counts is None else counts + found
    return Overlap(counts.double().numpy())


PRIOR_RANGE = (1e-4, 0.5)
BACKGROUND_MARGIN = 4.0  # "background" start: e^-4 of the background's odds
PREDICTED_SHIFT = -math.log(2.0)  # "predicted" start: half the odds of the channel it copies


def new_channel_starts(stats: TaskStatistics, shared: Mapping[str, int], n_shared: int, rule: str,
                       coverage: np.ndarray | None = None) -> list[tuple[int, float]]:
    """How every output channel added for a shared label above the old n* starts (the network's
    :func:`~labelshare.engine.networks.expand_output_channels`): (channel to copy, bias shift), in shared-label order.

    ``prior``: the background channel at the label's prior odds (the fraction of the training pixels it covers).
    ``predicted``: the channel the current model predicts on most of the label's pixels (``coverage``, from
    :meth:`Overlap.coverage`; background included), at half its odds. ``background``: the background channel, e^-4
    of its odds. Measured on ACDC added to a hippocampus + Sunnybrook model (docs/incremental/new-labels.md), the
    new RV channel (at the base learning rate) stayed at Dice 0 for 200 steps from ``prior`` and then learnt,
    and for 300 steps from ``predicted``: ``prior`` is the default.
    """
    names = list(stats.labels)
    starts = []
    for k in sorted(k for k in shared.values() if k > n_shared):
        label = next(name for name, value in shared.items() if value == k)
        if rule == "predicted":
            if coverage is None:
                raise ValueError("the 'predicted' start needs the current prediction's coverage of the label")
            starts.append((int(np.argmax(coverage[names.index(label)])), PREDICTED_SHIFT))
        elif rule == "background":
            starts.append((0, -BACKGROUND_MARGIN))
        else:
            pixel_prior = float(np.clip(stats.stats[label].relative_size * stats.stats[label].frequency,
                                        *PRIOR_RANGE))
            starts.append((0, math.log(pixel_prior / (1 - pixel_prior))))
    return starts
