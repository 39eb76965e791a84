"""Segmentation throughput: the engine end to end vs the raw network forward on the same volume, in one run.

    labelshare-bench segmentation-throughput [--device cpu|cuda] [--size 256 256 300] [--image-size 128]

End to end = ``Segmenter.segment`` on a SimpleITK image (normalisation, slicing, resizing to the network size and
back, softmax, argmax, remap, output image). Raw = the network's forward pass alone on the already resized slices,
same batch size and precision. Prints slices/s for both, their ratio (target >= 0.8 on a GPU), wall-clock for the
volume (target <= 60 s for 256x256x300 on 2 CPU cores) and peak memory. ``--large`` also segments a 512x512x600
volume to show that memory stays bounded.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from .common import PeakMemory, default_model, machine, synchronize

from labelshare.inference import Segmenter


def volume(size: tuple[int, int, int]) -> sitk.Image:
    x, y, z = size
    array = np.random.default_rng(0).normal(100, 20, (z, y, x)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    return image


def raw_forward_seconds(segmenter: Segmenter, image: sitk.Image, task: str) -> float:
    model = segmenter.model
    size = model.config.preprocessing.image_size
    slices = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32))[:, None]
    batches = [F.interpolate(slices[i: i + segmenter.batch_size], size=(size, size), mode="bilinear").to(model.device)
               for i in range(0, slices.shape[0], segmenter.batch_size)]
    task_index = torch.zeros(segmenter.batch_size, dtype=torch.int64, device=model.device)
    synchronize(model.device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(model.device.type, dtype=segmenter.autocast_dtype,
                                         enabled=segmenter.autocast_dtype is not None):
        for batch in batches:
            model.network(batch, task_index[: batch.shape[0]])
    synchronize(model.device)
    return time.perf_counter() - start


def measure(segmenter: Segmenter, image: sitk.Image, repeats: int) -> None:
    n_slices = image.GetSize()[2]
    segmenter.segment(volume((64, 64, 8)), "task0")   # warm-up (kernels, allocator)
    end_to_end, raw = [], []
    for _ in range(repeats):
        with PeakMemory() as memory:   # the engine alone: the raw baseline below holds the whole volume as float
            start = time.perf_counter()
            segmenter.segment(image, "task0")
            synchronize(segmenter.device)
            end_to_end.append(time.perf_counter() - start)
        raw.append(raw_forward_seconds(segmenter, image, "task0"))
    e2e, net = min(end_to_end), min(raw)
    size = segmenter.model.config.preprocessing.image_size
    print(f"volume {image.GetSize()} ({n_slices} slices), network input {size}x{size}, batch {segmenter.batch_size}, "
          f"{machine()}")
    print(f"  end to end: {e2e:.2f} s = {n_slices / e2e:.1f} slices/s (best of {repeats})")
    print(f"  raw forward: {net:.2f} s = {n_slices / net:.1f} slices/s")
    print(f"  ratio end-to-end / raw throughput: {net / e2e:.2f}")
    print(f"  end to end: {memory.describe()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 300), metavar=("X", "Y", "Z"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also a 512x512x600 volume (memory bound)")
    args = parser.parse_args(argv)
    segmenter = Segmenter(default_model(args.image_size, args.device), batch_size=args.batch_size)
    measure(segmenter, volume(tuple(args.size)), args.repeats)
    if args.large:
        measure(segmenter, volume((512, 512, 600)), 1)


if __name__ == "__main__":
    main()
