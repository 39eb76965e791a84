"""Many images in one ``labelshare segment`` call vs one call per image (issue #13's target: one call at least 3x
faster for 50 hippocampus volumes).

    labelshare-bench batch-segmentation [--data ../shared/data/msd_hippocampus] [--cases 50] [--device cpu]

Both sides run the real command line in fresh processes, as a user would, with the bundled model (or ``--model``):
one call with every volume as an input (one interpreter and torch start-up, one model load, the next volume read
while the current one is segmented) against one call per volume (each pays the start-up and the model load). The
outputs of both are compared voxel by voxel. Prints the machine, its load average before and after (other work on a
shared machine slows both sides), both wall-clock times, seconds per volume and the ratio; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .common import machine

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msd_hippocampus"


def segment_command(inputs: list[Path], output: Path, task: str, device: str, model: str | None) -> list[str]:
    return [sys.executable, "-m", "labelshare", "segment", "--task", task, *map(str, inputs), "-o", str(output),
            "--device", device, "--progress", "quiet", *(["--model", model] if model else [])]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench batch-segmentation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="nnU-Net raw folder (default: %(default)s)")
    parser.add_argument("--task", default="hippocampus", help="task of the model (default: %(default)s)")
    parser.add_argument("--cases", type=int, default=50, help="volumes to segment (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="device of both sides (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    args = parser.parse_args(argv)
    images = sorted((args.data / "imagesTr").glob("*.nii.gz"))[: args.cases]
    if len(images) < args.cases:
        parser.error(f"{args.data / 'imagesTr'}: {len(images)} volumes, {args.cases} asked for")
    print(f"machine: {machine()}; load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="labelshare-batch-") as work:
        work = Path(work)
        one_call = timed(segment_command(images, work / "one_call", args.task, args.device, args.model))
        per_call = sum(timed(segment_command([image], work / "per_call" / image.name, args.task, args.device,
                                             args.model)) for image in images)
        for image in images:
            batch = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "one_call" / image.name)))
            single = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "per_call" / image.name)))
            if not np.array_equal(batch, single):
                raise SystemExit(f"{image.name}: the outputs of one call and of its own call differ")
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{len(images)} volumes of {args.data.name}, device {args.device}; outputs identical on both sides")
    print(f"one call:         {one_call:7.1f} s ({one_call / len(images):.2f} s per volume)")
    print(f"one call each:    {per_call:7.1f} s ({per_call / len(images):.2f} s per volume)")
    print(f"ratio:            {per_call / one_call:7.1f}x faster in one call (target >= 3x)")
    return 0
