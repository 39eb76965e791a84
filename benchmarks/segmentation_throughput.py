"""Segmentation throughput: the engine end to end vs the raw network forward on the same windows, in one run.

    labelshare-bench segmentation-throughput [--device cpu|cuda] [--size 256 256 300] [--patch 192 192]
        [--plan-spacing 0.8] [--large]

End to end = ``Segmenter.segment`` on a SimpleITK image (normalisation, slicing, resampling to the plan's spacing,
Gaussian-weighted sliding windows, softmax, resampling back, argmax, remap, output image). Raw = the network's
forward pass alone on as many patch-sized inputs as the windows of the volume, same batch size and precision.
Prints slices/s for both, their ratio (target >= 0.8 on a GPU), wall-clock for the volume and peak memory.
``--large`` also segments a 512x512x600 volume to show that memory stays bounded.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import SimpleITK as sitk
import torch

from labelshare.core.config import InferenceConfig
from labelshare.core.plans import TaskPlan
from labelshare.engine.inference import Segmenter
from labelshare.engine.slices import WINDOW_OVERLAP

from .common import PeakMemory, default_model, machine, synchronize

VOLUME_SPACING = (0.8, 0.8, 2.5)  # x, y, z (mm): slices along z


def volume(size: tuple[int, int, int]) -> sitk.Image:
    x, y, z = size
    array = np.random.default_rng(0).normal(100, 20, (z, y, x)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(VOLUME_SPACING)
    return image


def windows_per_slice(shape: tuple[int, int], patch: tuple[int, int]) -> int:
    """Windows of ``patch`` over a slice of ``shape`` at half-patch steps (MONAI's scan, image padded to the patch)."""
    count = 1
    for length, size in zip(shape, patch, strict=True):
        step = max(1, int(size * (1 - WINDOW_OVERLAP)))
        count *= 1 if length <= size else math.ceil((length - size) / step) + 1
    return count


def raw_forward_seconds(segmenter: Segmenter, image: sitk.Image, plan: TaskPlan) -> float:
    model = segmenter.model
    x, y, z = image.GetSize()
    shape = plan.target_shape((y, x), (VOLUME_SPACING[1], VOLUME_SPACING[0]))
    inputs = z * windows_per_slice(shape, plan.patch_size)
    batch = torch.randn(segmenter.batch_size, 1, *plan.patch_size, device=model.device)
    task_index = torch.zeros(segmenter.batch_size, dtype=torch.int64, device=model.device)
    synchronize(model.device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(model.device.type, dtype=segmenter.autocast_dtype,
                                         enabled=segmenter.autocast_dtype is not None):
        for first in range(0, inputs, segmenter.batch_size):
            count = min(segmenter.batch_size, inputs - first)
            model.network(batch[:count], task_index[:count])
    synchronize(model.device)
    return time.perf_counter() - start


def measure(segmenter: Segmenter, image: sitk.Image, plan: TaskPlan, repeats: int) -> None:
    n_slices = image.GetSize()[2]
    segmenter.segment(volume((64, 64, 8)), "task0")   # warm-up (kernels, allocator)
    end_to_end, raw = [], []
    for _ in range(repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            segmenter.segment(image, "task0")
            synchronize(segmenter.device)
            end_to_end.append(time.perf_counter() - start)
        raw.append(raw_forward_seconds(segmenter, image, plan))
    e2e, net = min(end_to_end), min(raw)
    print(f"volume {image.GetSize()} ({n_slices} slices), plan: {plan.describe()}, batch {segmenter.batch_size}, "
          f"{machine()}")
    print(f"  end to end: {e2e:.2f} s = {n_slices / e2e:.1f} slices/s (best of {repeats})")
    print(f"  raw forward of the same windows: {net:.2f} s = {n_slices / net:.1f} slices/s")
    print(f"  ratio end-to-end / raw throughput: {net / e2e:.2f}")
    print(f"  end to end: {memory.describe()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--patch", type=int, nargs=2, default=(192, 192), metavar=("H", "W"))
    parser.add_argument("--plan-spacing", type=float, default=VOLUME_SPACING[0],
                        help="in-plane spacing of the plan (mm); the volume's is %(default)s")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also a 512x512x600 volume (memory bound)")
    args = parser.parse_args(argv)
    plan = TaskPlan(patch_size=tuple(args.patch), spacing=(args.plan_spacing, args.plan_spacing))
    segmenter = Segmenter(default_model(plan, args.device), InferenceConfig(batch_size=args.batch_size))
    measure(segmenter, volume(tuple(args.size)), plan, args.repeats)
    if args.large:
        measure(segmenter, volume((512, 512, 600)), plan, 1)


if __name__ == "__main__":
    main()
