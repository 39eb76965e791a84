"""The rehearsal memory (format: :mod:`labelshare.core.memory`): choosing its exemplars, writing it into every new
version (a version artefact, :mod:`labelshare.engine.artefacts`), and using it in place of a task's folder.

**Choosing.** Per task, from the slices of its training cases (``replay``) and of its validation cases (``gate``),
never the other side of the split, as many as :func:`part_count` says:

- ``replay``: greedy k-center on the network's features (:func:`labelshare.engine.features.slice_features`, one
  window over the whole slice): the first exemplar is the slice nearest the mean, each next one the slice farthest
  from those chosen, so that the exemplars cover what the network sees in the task. Stratified by case (at most
  ``ceil(N / cases)`` slices of a case while other cases are left) and by label presence: every label is held by at
  least ``N / (2 x labels)`` exemplars where the task has that many slices with it, rarest label first, so that a
  small structure is rehearsed too. Features are computed for :data:`CANDIDATES_PER_EXEMPLAR` candidate slices per
  exemplar (at least :data:`MIN_CANDIDATES`), spread over the cases, so that k-center has slices to choose among.
- ``gate``: slices holding a label (they carry the Dice), spread over the validation cases in a seeded order,
  with the same strata: a sample that scores the task like its validation cases do, not its outliers.

**Writing.** The memory artefact writes every task of the new version: a task whose folder the command read is
chosen anew from it (the folder holds more data than any memory, and the network is new), unless the weights are the
parent's and the parent's memory of the task was chosen by the same method with the same sizes (the same choice: it
is copied); a task known only from the parent's memory keeps its exemplars (copied). ``--no-memory`` writes a memory
that says it holds no patient images.

**Using.** :func:`memory_slices` gives a part of a task's memory as the training data of
:mod:`labelshare.engine.sampling` (slices at plan resolution, grouped by case); :func:`gate_evaluation` scores a
network on the gate slices (Dice at plan resolution per label, pooled over the slices as one volume), what add-task's
forgetting report and gate use for a task whose folder is not given.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.config import INFERENCE_BATCH, MEMORY_SIZES, MemoryConfig
from ..core.errors import LabelShareError
from ..core.layouts import TaskHead
from ..core.memory import (MEMORY_DIR, MemorySlice, RehearsalMemory, TaskMemory, dequantise, quantise,
                           write_part)
from ..core.modelfolder import read_memory
from ..core.scores import CaseScore, Evaluation
from .artefacts import VersionContext, register_artefact
from .features import slice_features
from .metrics import dice_per_label
from .sampling import TaskSlices, load_task_slices
from .slices import Windows, head_probabilities

MIN_CANDIDATES = 384  # slices per task whose features are computed to choose the replay exemplars from, at least
CANDIDATES_PER_EXEMPLAR = 4  # and this many per exemplar: 283 of 332 candidates left the choice no choice
SELECTION = {"replay": "k-center on pooled bottleneck features (one window over the whole slice) among "
                       f"{CANDIDATES_PER_EXEMPLAR} candidate slices per exemplar (at least {MIN_CANDIDATES}), "
                       "stratified by case and label presence",
             "gate": "slices holding a label, spread over cases in a seeded order, stratified by label presence"}
FEATURE_WINDOWS = Windows(whole_slice=True)
GATE_DEFINITION = ("Dice at plan resolution on the rehearsal memory's gate slices (validation cases), pooled over "
                   "the slices as one volume")


# -- choosing -------------------------------------------------------------------------------------------------------
def select_exemplars(count: int, case_of: np.ndarray, presence: np.ndarray, features: np.ndarray | None,
                     seed: int) -> list[int]:
    """Indices of ``count`` of the candidates (all when there are fewer), chosen as the module docstring says:
    k-center on ``features`` (m, d), or without features a seeded spread; ``case_of`` (m,) is each candidate's case
    and ``presence`` (m, labels) which labels it holds."""
    m = len(case_of)
    if count >= m:
        return list(range(m))
    rng = np.random.default_rng(seed)
    order = rng.permutation(m)  # the seeded order of the spread, and the tie-break of k-center
    cap = math.ceil(count / len(np.unique(case_of)))
    taken = np.zeros(m, dtype=bool)
    per_case = np.zeros(int(case_of.max()) + 1, dtype=np.int64)
    chosen: list[int] = []
    if features is not None:
        spread = features.std(axis=0)
        points = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        distance = np.full(m, np.inf)

    def pick(eligible: np.ndarray) -> bool:
        candidates = np.flatnonzero(eligible & ~taken & (per_case[case_of] < cap))
        if not len(candidates):  # every case with such a slice holds its share: take more of one
            candidates = np.flatnonzero(eligible & ~taken)
        if not len(candidates):
            return False
        if features is None:
            best = candidates[np.lexsort((order[candidates], per_case[case_of[candidates]]))[0]]
        elif not chosen:
            best = candidates[np.argmin(np.linalg.norm(points[candidates], axis=1))]
        else:
            far = distance[candidates]
            best = candidates[np.lexsort((order[candidates], -far))[0]]
        taken[best] = True
        per_case[case_of[best]] += 1
        chosen.append(int(best))
        if features is not None:
            np.minimum(distance, np.linalg.norm(points - points[best], axis=1), out=distance)
        return True

    labels = presence.shape[1]
    quota = max(1, count // (2 * labels)) if labels else 0
    for label in sorted(range(labels), key=lambda k: presence[:, k].sum()):
        while len(chosen) < count and presence[taken, label].sum() < min(quota, presence[:, label].sum()):
            if not pick(presence[:, label]):
                break
    while len(chosen) < count and pick(np.ones(m, dtype=bool)):
        pass
    return sorted(chosen)


def spread_rows(bank: TaskSlices, rows: np.ndarray, head: TaskHead, limit: int) -> np.ndarray:
    """At most about ``limit`` of ``rows`` (indices into ``bank.rows``), spread over cases: each case gives the same
    number, half of them from its slices that hold a label and the rest from all its slices, evenly spaced through
    its stack (centred, so not its first and last slices, which rarely hold a structure)."""
    if len(rows) <= limit:
        return rows
    by_case: dict[int, list[int]] = {}
    for row in rows:
        by_case.setdefault(int(bank.rows[row][0]), []).append(int(row))
    share = max(1, limit // len(by_case))
    kept: list[int] = []
    for case_rows in by_case.values():
        held = _presence(bank, np.asarray(case_rows), head).any(axis=1)
        picked = _evenly([row for row, holds in zip(case_rows, held, strict=True) if holds], math.ceil(share / 2))
        picked += [row for row in _evenly(case_rows, share) if row not in picked][: share - len(picked)]
        kept += picked
    return np.asarray(sorted(kept))


def _evenly(rows: Sequence[int], count: int) -> list[int]:
    """``count`` of ``rows`` evenly spaced, centred: the middle of ``count`` equal parts."""
    if count >= len(rows):
        return list(rows)
    return [rows[int((k + 0.5) * len(rows) / count)] for k in range(count)]


def _image(bank: TaskSlices, row: int, channels: int) -> np.ndarray:
    """The input stack of a row's slice as (channels, h, w) float32 (by the plan's slicing scheme: with its
    neighbours for a plan of slice context); the memory stores the plan's own context (``channels`` =
    ``plan.slice_context``), the network takes its input channels."""
    case, index = bank.rows[row]
    return bank.plan.stacks(bank.images[case], [int(index)], channels)[0].astype(np.float32)


def _presence(bank: TaskSlices, rows: np.ndarray, head: TaskHead) -> np.ndarray:
    return np.array([[bool((bank.targets[bank.rows[row][0]][bank.rows[row][1]] == position).any())
                      for position in head.label_positions] for row in rows], dtype=bool).reshape(len(rows), -1)


@torch.no_grad()
def candidate_features(network: torch.nn.Module, bank: TaskSlices, rows: np.ndarray, head: TaskHead,
                       device: torch.device) -> np.ndarray:
    """The features of the candidate rows (one window over each whole slice), computed case by case."""
    features = np.zeros((len(rows), 0), dtype=np.float32)
    batch = INFERENCE_BATCH.get(device.type, INFERENCE_BATCH["cpu"])
    by_case: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_case.setdefault(int(bank.rows[row][0]), []).append(i)
    for positions in by_case.values():
        for start in range(0, len(positions), batch):
            chunk = positions[start: start + batch]
            images = torch.from_numpy(np.stack([_image(bank, rows[i], network.config.in_channels)
                                                for i in chunk])).to(device)
            values = slice_features(network, images, head.index, bank.plan.patch_size, batch,
                                    windows=FEATURE_WINDOWS).numpy()
            if not features.shape[1]:
                features = np.zeros((len(rows), values.shape[1]), dtype=np.float32)
            features[chunk] = values
    return features


def choose_part(network: torch.nn.Module | None, bank: TaskSlices, head: TaskHead, part: str, count: int, seed: int,
                device: torch.device) -> tuple[np.ndarray, int]:
    """The rows of ``bank`` (one side of the split) that the part keeps, and how many candidates it chose from."""
    rows = np.arange(len(bank))
    if part == "gate":  # slices that hold a label carry the Dice (memory.md: scored over all slices it moved alike)
        holding = _presence(bank, rows, head).any(axis=1)
        rows = rows[holding] if holding.any() else rows
    else:
        rows = spread_rows(bank, rows, head, max(MIN_CANDIDATES, CANDIDATES_PER_EXEMPLAR * count))
    if not len(rows):
        return rows, 0
    features = candidate_features(network, bank, rows, head, device) if part == "replay" else None
    chosen = select_exemplars(count, bank.rows[rows][:, 0], _presence(bank, rows, head), features, seed)
    return rows[chosen], len(rows)


def part_count(config: MemoryConfig, bank: TaskSlices, part: str) -> int:
    """How many slices a part of a task's memory keeps: ``--memory-slices`` (replay) or ``--memory-gate-slices``
    (gate), or as many of its slices (of their median size at plan resolution) as hold ``--memory-replay-pixels`` or
    ``--memory-gate-pixels``, whichever is more. A fixed count gives a task of small slices few slices for a few
    bytes: the network fitted 48 hippocampus exemplars rather than holding the task (256, +0.4 MB, lost 1.3 points
    instead of 2.4), and 32 gate slices saw a 0.4-point loss as 1.5 (287: 0.8; docs/incremental/memory.md)."""
    slices, pixels_held = ((config.memory_slices, config.replay_pixels) if part == "replay" else
                           (config.gate_slices, config.gate_pixels))
    pixels = float(np.median([image.shape[-2] * image.shape[-1] for image in bank.images]))
    return max(slices, int(pixels_held // pixels))


def write_task_memory(folder: Path, name: str, banks: dict[str, TaskSlices], network: torch.nn.Module,
                      head: TaskHead, space_entry, config: MemoryConfig, seed: int, device: torch.device,
                      source: str) -> TaskMemory:
    """Choose and write both parts of a task's memory from its slices (``banks``: part -> the slices of that side
    of the split); ``source`` names what chose them (the version)."""
    parts, size, channels, candidates = {}, 0, 1, {}
    for part, bank in banks.items():
        count = part_count(config, bank, part)
        rows, candidates[part] = choose_part(network, bank, head, part, count, seed, device)
        if not len(rows):
            continue
        images, labels, records = [], [], []
        for row in rows:
            case, index = bank.rows[row]
            values, low, high = quantise(_image(bank, row, bank.plan.slice_context))
            target = bank.targets[case][index]
            held = [head.position_names[p] for p in head.label_positions if (target == p).any()]
            images.append(values)
            labels.append(head.output_lut[target].astype(np.uint8))
            records.append(MemorySlice(case=bank.cases[case], slice=int(index), shape=tuple(target.shape),
                                       low=round(low, 6), high=round(high, 6), labels=held))
            channels = values.shape[0]
        parts[part], written = write_part(folder, name, part, images, labels, records)
        size += written
    return TaskMemory(labels={label.name: label.id for label in space_entry.labels}, plan=space_entry.plan,
                      channels=channels, licence=space_entry.license,
                      selection={**{part: SELECTION[part] for part in parts}, "chosen_by": source, "seed": seed,
                                 **{size: getattr(config, size) for size in MEMORY_SIZES}, "candidates": candidates},
                      parts=parts, bytes=size)


def copy_task_memory(parent: Path, folder: Path, name: str, task: TaskMemory) -> TaskMemory:
    """A task's memory copied from the parent version (its files and record)."""
    for part in task.parts.values():
        for file in (part.images, part.labels):
            (folder / MEMORY_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(parent / MEMORY_DIR / file, folder / MEMORY_DIR / file)
    return task


# -- the artefact ---------------------------------------------------------------------------------------------------
class MemoryArtefact:
    """The rehearsal memory as a version artefact (see the module docstring, "Writing")."""

    name = "memory"
    title = "Rehearsal memory"

    def write(self, context: VersionContext, folder: Path) -> list[str]:
        config, model, progress = context.memory, context.model, context.progress
        if not config.write_memory:
            memory = RehearsalMemory(patient_images=False)
            memory.save(folder)
            return memory.describe()
        parent = read_memory(context.parent, model.labelspace) if context.parent is not None else None
        memory = RehearsalMemory()
        heads = model.heads
        for i, name in enumerate(model.labelspace.task_names):
            kept = parent.tasks.get(name) if parent is not None and parent.patient_images else None
            same_choice = kept is not None and context.same_weights and \
                tuple(kept.selection.get(size) for size in MEMORY_SIZES) == \
                tuple(getattr(config, size) for size in MEMORY_SIZES) and \
                all(kept.selection.get(part) == SELECTION[part] for part in kept.parts)  # and the same method
            if name in context.tasks and not same_choice:
                progress.progress("memory", i / len(heads), f"{name}: choosing the rehearsal memory's exemplars")
                banks = self._banks(context, name)
                memory.tasks[name] = write_task_memory(folder, name, banks, model.network, heads[name],
                                                       model.labelspace.tasks[name], config, context.seed,
                                                       model.device, context.name)
            elif kept is not None:
                memory.tasks[name] = copy_task_memory(context.parent, folder, name, kept)
            else:
                progress.log(f"{name}: no rehearsal memory (neither its folder nor a memory of the parent version)")
        memory.save(folder)
        progress.progress("memory", 1.0, f"rehearsal memory: {memory.bytes / 1e6:.1f} MB")
        return memory.describe()

    @staticmethod
    def _banks(context: VersionContext, name: str) -> dict[str, TaskSlices]:
        """The task's training and validation slices: those the command holds, else read from its folder."""
        if name in context.slices:
            train, validation = context.slices[name]
        else:
            task = context.tasks[name]
            held = {case.name for case in task.cases}
            split = {side: [c for c in cases if c in held] for side, cases in context.split[name].items()}
            bank = load_task_slices(task, split["train"] + split["validation"], context.model.heads[name],
                                    context.model.labelspace.tasks[name].plan)
            train, validation = bank.select(split["train"]), bank.select(split["validation"])
        return {part: bank for part, bank in (("replay", train), ("gate", validation)) if bank is not None}


register_artefact(MemoryArtefact())


# -- using ----------------------------------------------------------------------------------------------------------
def memory_slices(folder: Path, memory: RehearsalMemory, task: str, part: str, head: TaskHead,
                  flip_allowed: bool) -> TaskSlices:
    """A part of a task's memory as training data: the exemplars at plan resolution, label ids mapped into the task's
    head. Each exemplar is a "case" of its own: the ``channels`` slices of its stored input stack, of which the middle
    one is labelled (``TaskSlices.labelled``), so that the plan's slicing scheme gives the network the stack it was
    stored with (one slice for a 2D plan)."""
    entry = memory.tasks[task]
    images, labels = memory.arrays(folder, task, part)
    middle = (entry.channels - 1) // 2  # the stack's slice offsets are -middle.., centred (context_offsets)
    stacks, targets = [], []
    lut = head.target_lut
    for i, record in enumerate(entry.parts[part].slices):
        h, w = record.shape
        stacks.append(dequantise(images[i, :, :h, :w], record.low, record.high).astype(np.float16))
        target = np.zeros((entry.channels, h, w), dtype=np.uint8)
        target[middle] = lut[labels[i, :h, :w].astype(np.int64)]
        targets.append(target)
    return TaskSlices(task=task, plan=entry.plan, cases=[r.case for r in entry.parts[part].slices], images=stacks,
                      targets=targets, flip_allowed=flip_allowed, labelled=[[middle]] * len(stacks))


@torch.no_grad()
def gate_predictions(network: torch.nn.Module, bank: TaskSlices, head: TaskHead, device: torch.device,
                     autocast_dtype: torch.dtype | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(prediction, reference) of each gate slice at plan resolution, in head positions, predicted with the
    inference windows (no post-processing)."""
    network.eval()
    batch = INFERENCE_BATCH.get(device.type, INFERENCE_BATCH["cpu"])
    for number, (images, targets) in enumerate(zip(bank.images, bank.targets, strict=True)):
        rows = bank.labelled_slices(number)
        tensor = torch.from_numpy(bank.plan.stacks(images, rows, network.config.in_channels).astype(np.float32))
        probabilities = head_probabilities(network, tensor.to(device), head, bank.plan, mirror=False,
                                           windows_per_batch=batch, autocast_dtype=autocast_dtype)
        yield from zip(probabilities.max(dim=1).indices.cpu().numpy(), targets[rows], strict=True)


def pooled_dice(pairs: Sequence[tuple[np.ndarray, np.ndarray]], label_positions: Sequence[int]) -> dict[int, float]:
    """Dice of each label over (prediction, reference) slices pooled as one volume (NaN for a label in neither)."""
    return dice_per_label(np.concatenate([p.ravel() for p, _ in pairs]), np.concatenate([r.ravel() for _, r in pairs]),
                          label_positions)


def gate_evaluation(network: torch.nn.Module, bank: TaskSlices, head: TaskHead, device: torch.device,
                    autocast_dtype: torch.dtype | None = None) -> Evaluation:
    """Dice of every label of the task on the gate slices pooled as one volume (one score per label: the overlaps
    summed over all slices; :func:`gate_predictions`).

    Pooled, not a mean over slices: a slice's Dice of a label it holds a few pixels of, or that a few stray pixels
    predict, is 0 or 1 by a handful of pixels, and the mean over slices magnified such changes several fold
    (``labelshare-bench memory-gate``, docs/incremental/memory.md); a validation case's Dice sums over its slices
    too."""
    dice = pooled_dice(list(gate_predictions(network, bank, head, device, autocast_dtype)), head.label_positions)
    pooled = f"{len(bank)} gate slices, pooled"
    return Evaluation([CaseScore(bank.task, pooled, head.position_names[p], int(head.output_lut[p]), dice[p],
                                 float("nan")) for p in head.label_positions])


def check_sources(model_path: Path, tasks: Sequence[str], memory: RehearsalMemory | None, folders: Sequence[str],
                  what: str) -> None:
    """LabelShareError when some ``tasks`` have neither a folder nor a memory: one line naming them."""
    covered = set(folders) | (set(memory.tasks) if memory is not None else set())
    missing = [name for name in tasks if name not in covered]
    if not missing:
        return
    held = "holds no rehearsal memory" if memory is None else (
        "was made with --no-memory (it holds no patient images)" if not memory.patient_images
        else f"has no rehearsal memory of {', '.join(missing)}")
    raise LabelShareError(f"{model_path}: {held}; give the folder of old task(s) {', '.join(missing)} with "
                          f"--replay-task {missing[0]}=DIR (needed {what})")

