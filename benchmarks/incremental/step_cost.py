"""Cost of one add-task training step with and without distillation, measured in one process, interleaved, so that
both see the same machine load (the experiment runs shared their machine with other jobs).

    OMP_NUM_THREADS=1 labelshare-bench incremental-step-cost [--image-size 96] [--rounds 3] [--steps 10]

Random slices in four task banks (batch 16, the network of the experiments: 16-256 filters, 4 output channels);
prints milliseconds per step for distillation weight 0 and 1 and their ratio.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from labelshare.core.config import NetworkConfig
from labelshare.core.config import TrainConfig
from labelshare.core.labelspace import LabelSpace, LabelStats, TaskStatistics
from labelshare.core.layouts import task_heads
from labelshare.core.plans import PlanSettings, fixed_size_plan
from labelshare.core.preprocessing import DEFAULT_PREPROCESSING
from labelshare.core.progress import Progress
from labelshare.engine.incremental.trainer import IncrementalTrainer
from labelshare.engine.networks import build_network
from labelshare.engine.sampling import TaskSlices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, default=96, help="side of every task's (square) patch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    size = args.patch
    names = ["old1", "old2", "old3", "new"]
    space = LabelSpace.build([TaskStatistics(name=n, labels={"a": 1, "b": 2, "c": 3}, n_slices=1, n_cases=1,
                                             stats={k: LabelStats(0.1 * i, 1.0, 1) for i, k in enumerate("abc", 1)},
                                             plan=fixed_size_plan(size, DEFAULT_PREPROCESSING))
                              for n in names], plan_settings=PlanSettings(fixed_size=size))
    heads = task_heads("shared", space)
    generator = torch.Generator().manual_seed(0)
    banks = [TaskSlices(task=n, plan=space.task(n).plan, cases=[f"c{i}" for i in range(64)],
                        images=[torch.randn(1, size, size, generator=generator).half().numpy() for _ in range(64)],
                        targets=[torch.randint(0, 4, (1, size, size), generator=generator).to(torch.uint8).numpy()
                                 for _ in range(64)], flip_allowed=True)
             for n in names]
    network = build_network(NetworkConfig(out_channels=4, n_tasks=4))
    teacher = copy.deepcopy(network)
    config = TrainConfig(batch_size=16, epochs=1, steps_per_epoch=args.steps * args.rounds * 2, device="cpu")
    replay = {n: [f"c{i}" for i in range(64)] for n in names[:3]}
    timings: dict[float, list[float]] = {0.0: [], 1.0: []}
    with tempfile.TemporaryDirectory() as workdir:
        trainers = {w: IncrementalTrainer(network, heads, banks, [], config, Path(workdir), Progress("quiet"),
                                          replay=replay, teacher=teacher, distill_weight=w, new_task="new",
                                          new_task_share=None, first_new_channel=None, new_channel_lr_scale=1.0,
                                          distill_new_task=0.0)
                    for w in timings}
        for trainer in trainers.values():
            trainer.train_step(0)  # warm-up
        for _ in range(args.rounds):
            for weight, trainer in trainers.items():
                start = time.perf_counter()
                for step in range(args.steps):
                    trainer.train_step(step)
                timings[weight].append((time.perf_counter() - start) / args.steps)
    plain, distilled = (1000 * float(np.median(timings[w])) for w in (0.0, 1.0))
    print(f"torch threads {torch.get_num_threads()}, patch {size}, batch 16: {plain:.0f} ms/step without "
          f"distillation, {distilled:.0f} ms/step with (x{distilled / plain:.2f})")


if __name__ == "__main__":
    main()
