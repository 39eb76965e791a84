"""Apply-to-segments time of the LabelShareSegmentation module: first run and later runs, with a breakdown.

    labelshare-bench apply-to-segments [--device cpu|cuda|auto] [--size 256 256 300] [--runs 4] [--patch 192 192]
        [--plan-spacing 1.0] [--tta]

Drives the module's adapter layer (``LabelShareSegmentationLib.SegmentationLogic``) on real Slicer MRML
(slicer-core, the scene fixture of ``Testing/slicer_support.py``) exactly as the Apply button does: volume node →
input file → background ``labelshare worker`` → label image → segments in the scene. The model is a model folder
with the default network and one plan for its tasks (untrained: the time does not depend on the weights). The volume is
synthetic int16 volume of the given size (x y z), cut into z slices. ``--tta`` times Apply with the module's
test-time augmentation checked (the task is not lateralised, so it is mirrored).

Prints, per run: Apply to segments on screen (the target: 3 s on a GPU after the first run, 30 s on a laptop CPU),
and where the time goes: writing the input, starting the worker process (interpreter start plus importing torch
and the engine), loading the model, the worker's segmentation (read, network, write), and importing the segments.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "LabelShareSegmentation"), str(REPO / "benchmarks")]

from .common import DEFAULT_PLAN, default_model  # noqa: E402
from LabelShareSegmentationLib import SegmentationLogic  # noqa: E402
from slicer_support import slicer_scene  # noqa: E402

from labelshare.core.config import DEVICES  # noqa: E402
from labelshare.core.plans import TaskPlan  # noqa: E402
from labelshare.engine.models import save_model_folder  # noqa: E402


def synthetic_volume(size: tuple[int, int, int]) -> np.ndarray:
    """int16 (z, y, x) volume: a few bright ellipsoids in noise, like a scan's value range."""
    x, y, z = size
    grid = np.ogrid[:z, :y, :x]
    volume = np.random.default_rng(0).normal(100, 20, (z, y, x)).astype(np.float32)
    for center, radius, value in (((0.5, 0.5, 0.5), (0.35, 0.3, 0.3), 400), ((0.45, 0.4, 0.55), (0.1, 0.12, 0.1), 900)):
        axes = zip(grid, center, radius, (z, y, x), strict=True)
        inside = sum(((g - c * n) / (r * n)) ** 2 for g, c, r, n in axes) <= 1
        volume[inside] += value
    return volume.astype(np.int16)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    parser.add_argument("--patch", type=int, nargs=2, default=DEFAULT_PLAN.patch_size, metavar=("H", "W"))
    parser.add_argument("--plan-spacing", type=float, default=DEFAULT_PLAN.spacing[0],
                        help="in-plane spacing of the plan (mm); the volume's is 0.8")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--runs", type=int, default=4, help="Apply this many times (the first starts the worker)")
    parser.add_argument("--tta", action="store_true", help="with the module's test-time mirroring checked")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="labelshare-bench-") as folder, slicer_scene() as env:
        plan = TaskPlan(patch_size=tuple(args.patch), spacing=(args.plan_spacing, args.plan_spacing))
        model = default_model(plan, device="cuda" if args.device == "cuda" else "cpu")
        model_dir = Path(folder) / "default-config-model"
        save_model_folder(model_dir, model.network, model.config, model.labelspace)
        task = model.labelspace.task_names[0]
        volume = env.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic scan")
        volume.SetSpacing(0.8, 0.8, 1.0)
        slicer.util.updateVolumeFromArray(volume, synthetic_volume(tuple(args.size)))

        logic = SegmentationLogic()
        print(f"volume {args.size[0]}x{args.size[1]}x{args.size[2]} int16 (0.8 x 0.8 x 1.0 mm), task plan: "
              f"{model.labelspace.task(task).plan.describe()}, device {args.device}, "
              f"{'mirrored (--tta)' if args.tta else 'network alone'}")
        print("run | Apply→segments s | check+write input s | worker start+imports s | model load s |"
              " worker segment s | import segments s")
        try:
            for run in range(1, args.runs + 1):
                arrived: dict[str, float] = {}

                def on_event(event, arrived=arrived):
                    if event["event"] == "done":
                        arrived["done"] = time.perf_counter()

                started = time.perf_counter()
                job = logic.start(volume, task, model=model_dir, device=args.device, on_event=on_event,
                                  mirror=args.tta)
                input_written = time.perf_counter()
                job.result_or_raise(600)
                finished = time.perf_counter()
                worker = logic.shared.worker
                cold = run == 1
                print(f"{run:3d} | {finished - started:16.2f} | {input_written - started:19.2f} | "
                      f"{worker.ready_after_s if cold else 0.0:22.2f} | {job.done_event['load_s']:12.2f} | "
                      f"{job.done_event['total_s'] - job.done_event['load_s']:16.2f} | "
                      f"{finished - arrived['done']:17.2f}")
        finally:
            logic.stop()


if __name__ == "__main__":
    main()
