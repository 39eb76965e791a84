"""Training throughput: the engine's full training step vs a raw train step on the same network, in one run.

    labelshare-bench training-throughput [--device cpu|cuda] [--patch 128] [--batch-size 16] [--steps 20]

Full step = ``Trainer.train_step``: task-balanced patch sampling with foreground oversampling, cropping, on-device
augmentation, a forward and backward per task (three synthetic tasks, all planned at ``--patch`` pixels square so
that the raw step can use the same input), mixed precision on CUDA, the engine's loss, clipping, optimiser step.
Raw step = forward, the same loss, backward and optimiser step on one fixed batch already on the device, so the ratio
is what the data pipeline and the per-task passes cost. Prints steps/s of both, their ratio (target >= 0.8 on a GPU)
and peak memory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from .common import PeakMemory, machine, synchronize

from labelshare.core import synthetic
from labelshare.core.config import NetworkConfig
from labelshare.core.config import TrainConfig
from labelshare.core.labelspace import LabelSpace
from labelshare.core.layouts import task_heads
from labelshare.core.plans import PlanSettings
from labelshare.core.progress import Progress
from labelshare.core.tasks import TaskDataset
from labelshare.engine.networks import build_network
from labelshare.engine.sampling import TaskBatch, load_task_slices
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training import Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, default=128, help="side of every task's (square) patch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        tasks = {name: TaskDataset.open(path, name) for name, path in synthetic.write_tasks(Path(folder), 8).items()}
        settings = PlanSettings(fixed_size=args.patch)
        space = LabelSpace.build([compute_statistics(task, plan_settings=settings) for task in tasks.values()],
                                 plan_settings=settings)
        heads = task_heads("shared", space)
        banks = [load_task_slices(task, [c.name for c in task.cases], heads[name], space.task(name).plan)
                 for name, task in tasks.items()]
        config = TrainConfig(batch_size=args.batch_size, epochs=1, steps_per_epoch=10 * args.steps,
                             device=args.device)
        network = build_network(NetworkConfig(out_channels=space.n_shared + 1))
        trainer = Trainer(network, heads, banks, [], config, Path(folder), Progress("quiet"))
        device = trainer.device

        def engine_step(step: int) -> None:
            trainer.train_step(step)

        images = torch.randn(args.batch_size, 1, args.patch, args.patch, device=device)
        targets = torch.randint(0, space.n_shared + 1, (args.batch_size, args.patch, args.patch), device=device)
        fixed_batch = TaskBatch(head=heads[banks[0].task], images=images, targets=targets, flip_allowed=True)

        def raw_step(step: int) -> None:
            with torch.autocast(device.type, dtype=trainer.autocast_dtype, enabled=trainer.autocast_dtype is not None):
                logits = network(fixed_batch.images, fixed_batch.task_index)
            loss = trainer.loss(logits, fixed_batch)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()

        results = {}
        for name, step_function in (("raw", raw_step), ("engine", engine_step)):
            for step in range(3):   # warm-up
                step_function(step)
            synchronize(device)
            with PeakMemory() as memory:
                start = time.perf_counter()
                for step in range(args.steps):
                    step_function(step)
                synchronize(device)
                rate = args.steps / (time.perf_counter() - start)
            results[name] = (rate, memory.describe())
    print(f"training step, batch {args.batch_size} of {args.patch}x{args.patch}, {machine()}")
    for name in ("engine", "raw"):
        print(f"  {name}: {results[name][0]:.2f} steps/s ({results[name][0] * args.batch_size:.1f} slices/s); "
              f"{results[name][1]}")
    print(f"  ratio engine / raw throughput: {results['engine'][0] / results['raw'][0]:.2f}")


if __name__ == "__main__":
    main()
