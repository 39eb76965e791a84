"""A rehearsal memory of a plan with slice context (2.5D): each exemplar is stored with the neighbours its plan's
slicing scheme gives, and replayed and gated with exactly that input stack (labelshare.engine.memory)."""

from __future__ import annotations

import numpy as np
import torch

from labelshare.core.config import MemoryConfig, NetworkConfig
from labelshare.core.labelspace import LabelEntry, LabelSpace, LabelStats, TaskEntry
from labelshare.core.layouts import task_heads
from labelshare.core.memory import RehearsalMemory
from labelshare.core.plans import PlanSettings
from labelshare.engine.memory import gate_evaluation, memory_slices, write_task_memory
from labelshare.engine.networks import build_network
from labelshare.engine.sampling import PatchSampler, TaskSlices

from test_slice_context import context_plan, numbered_slices

COUNT = 7  # slices of the one case; slice i holds the value i everywhere and the label in a square


def test_a_memory_of_a_plan_with_context_keeps_each_exemplar_with_its_neighbours(tmp_path):
    plan = context_plan(3)
    stats = LabelStats(relative_size=0.1, frequency=1.0, slices_with_label=COUNT)
    entry = TaskEntry(name="blob", labels=[LabelEntry("blob", 1, 1, stats)], plan=plan)
    space = LabelSpace({"blob": entry}, plan_settings=PlanSettings(slice_context=3))
    head = task_heads("shared", space)["blob"]
    targets = np.zeros((COUNT, 20, 20), np.uint8)
    targets[:, 5:15, 5:15] = 1
    bank = TaskSlices(task="blob", plan=plan, cases=["c"], images=[numbered_slices(COUNT, (20, 20)).astype(np.float16)],
                      targets=[targets], flip_allowed=True)
    torch.manual_seed(0)
    network = build_network(NetworkConfig(out_channels=2, in_channels=3, filters=[8, 16, 32])).eval()
    task = write_task_memory(tmp_path, "blob", {"replay": bank, "gate": bank}, network, head, entry,
                             MemoryConfig(memory_slices=4, gate_slices=3, replay_pixels=0, gate_pixels=0), 0,
                             torch.device("cpu"), "test")
    assert task.channels == 3 and task.count("replay") == 4 and task.count("gate") == 3
    memory = RehearsalMemory(tasks={"blob": task})

    replay = memory_slices(tmp_path, memory, "blob", "replay", head, flip_allowed=True)
    sampler = PatchSampler([replay], [head], 1, foreground_fraction=0.0, rng=np.random.default_rng(0), channels=3)
    records = task.parts["replay"].slices
    for number, record in enumerate(records):
        assert replay.labelled_slices(number) == [1]  # the middle of the stored stack, the only row
        stack = replay.plan.stacks(replay.images[number], [1], 3)[0].astype(np.float32)
        expected = [max(record.slice - 1, 0), record.slice, min(record.slice + 1, COUNT - 1)]
        assert np.allclose(stack[:, 10, 10], expected, atol=0.02), (record.slice, stack[:, 10, 10])
        assert np.array_equal(replay.targets[number][1], targets[record.slice])
    seen = set()
    for _ in range(30):  # the sampler gives a stored stack and its labelled slice's target
        image, target = sampler.patch(replay)
        centre = image[:, 16, 16]
        index = int(round(float(centre[1])))
        assert np.allclose(centre, [max(index - 1, 0), index, min(index + 1, COUNT - 1)], atol=0.02)
        assert (target[11:21, 11:21] == 1).all()
        seen.add(index)
    assert seen == {r.slice for r in records}

    gate = memory_slices(tmp_path, memory, "blob", "gate", head, flip_allowed=True)
    scores = gate_evaluation(network, gate, head, torch.device("cpu")).scores
    assert [score.case for score in scores] == ["3 gate slices, pooled"] * len(head.label_positions)  # per label
