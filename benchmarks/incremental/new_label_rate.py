"""Does add-task learn a small label beyond n*? The new output channel's learning-rate scale against its Dice.

    OMP_NUM_THREADS=1 labelshare-bench new-label-rate [--scales 1 3 10 30] [--seeds 0 1 2] [--out DIR]

Synthetic and small enough for a CPU: a base model of ``phantom3d`` + ``xray2d`` (n* = 3; 8 cases each, 40 steps of
6), then ``add-task`` of ``chest`` (:func:`labelshare.core.synthetic.write_chest_task`: 4 labels, the 20-pixel nodule on
a new shared label 4) with add-task's defaults and a test-sized budget (60 steps of 8), once per scale and seed.
Prints the new task's validation Dice per label and the old tasks' worst change (the lowest), and writes
``results.json`` in ``--out`` (default: a temporary folder). The chest task is a look-alike of xray2d, whose single
lung_field label covers both lungs, so the unconditioned network splits the chest's lungs between two shared labels
whatever the scale: read the nodule and heart columns for the new label's learning.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from labelshare.core import synthetic
from labelshare.core.config import AddTaskConfig, TrainConfig
from labelshare.core.fileio import atomic_write_json
from labelshare.core.labelspace import LabelSpace
from labelshare.core.progress import Progress
from labelshare.core.tasks import TaskDataset
from labelshare.engine.incremental import add_task
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training_run import train

OLD_TASKS = ("phantom3d", "xray2d")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 10.0, 30.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="add-task seeds (one base model)")
    parser.add_argument("--out", type=Path, help="folder for the data, the models and results.json")
    args = parser.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="labelshare-new-label-rate-"))
    root.mkdir(parents=True, exist_ok=True)
    tasks = synthetic.write_tasks(root / "data", cases=8, names=OLD_TASKS)
    chest = synthetic.write_chest_task(root / "data" / "chest")
    old = [(name, tasks[name]) for name in OLD_TASKS]
    space = LabelSpace.build([compute_statistics(TaskDataset.open(path, name)) for name, path in old])
    base = train(old, space, root / "base", TrainConfig(batch_size=6, epochs=2, steps_per_epoch=20, device="cpu",
                                                         seed=0), progress=Progress("quiet"),
                 command=["new-label-rate", "base"]).path
    rows = []
    print("| scale | seed | lung_left | lung_right | heart | nodule (new) | old tasks' worst change | s |")
    print("|---|---|---|---|---|---|---|---|")
    for scale in args.scales:
        for seed in args.seeds:
            started = time.monotonic()
            result = add_task(base, ("chest", chest), root / f"scale{scale:g}-seed{seed}",
                              AddTaskConfig.from_options(max_regression=100, epochs=3, steps_per_epoch=20,
                                                         batch_size=8, device="cpu", seed=seed,
                                                         new_label_lr_scale=scale),
                              replay_tasks=old, progress=Progress("quiet"))
            seconds = time.monotonic() - started
            dice = result.report.new_task
            worst = result.report.worst()
            rows.append({"scale": scale, "seed": seed, "dice": dice, "seconds": round(seconds, 1),
                         "worst_old_task": {"task": worst[0], "change": worst[1]["change"]}})
            print(f"| {scale:g} | {seed} | " + " | ".join(f"{dice[label]:.3f}" for label in
                                                          ("lung_left", "lung_right", "heart", "nodule"))
                  + f" | {100 * worst[1]['change']:+.1f} ({worst[0]}) | {seconds:.0f} |", flush=True)
    atomic_write_json(root / "results.json", {"experiment": "new-label-rate", "runs": rows})
    print(f"results: {root / 'results.json'}")
