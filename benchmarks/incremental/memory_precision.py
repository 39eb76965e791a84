"""How a rehearsal memory stores its slices (docs/incremental/memory.md): bytes and prediction agreement of the
storage choices for one task's slices at plan resolution.

    labelshare-bench memory-precision --model MODEL --task NAME=DIR [--slices 48] [--device cpu]

Takes ``--slices`` training slices of the task (spread over its training cases, each case's middle slices, as the
training data holds them: float16 at plan resolution) and stores them as float32 NIfTI (.nii.gz), as raw float16
(what safetensors would hold; it does not compress), as float16 compressed with zlib, and as the memory's 8-bit
quantisation per slice in NIfTI (.nii.gz). Prints the bytes of each, the largest intensity error of the 8-bit copy
(in the normalised units, and relative to each slice's range) and how the model's segmentation of the 8-bit copy
agrees with its segmentation of the float16 slices (Dice per label between the two predictions, mean over slices),
beside each one's Dice against the labels.
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from labelshare.commands import task_argument
from labelshare.core.memory import dequantise, quantise
from labelshare.core.tasks import TaskDataset
from labelshare.engine.metrics import dice_per_label
from labelshare.engine.models import load_model
from labelshare.engine.sampling import load_task_slices
from labelshare.engine.slices import head_probabilities


def nifti_bytes(array: np.ndarray, folder: Path, name: str) -> int:
    path = folder / f"{name}.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench memory-precision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--task", required=True, metavar="NAME=DIR")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    name, folder = task_argument(args.task)
    model = load_model(args.model, device=args.device)
    head, plan = model.heads[name], model.labelspace.task(name).plan
    train = (model.read_json("split.json") or {})["tasks"][name]["train"]
    task = TaskDataset.open(folder, name)
    cases = [train[int(i)] for i in np.linspace(0, len(train) - 1, min(len(train), args.slices))]
    bank = load_task_slices(task, sorted(set(cases)), head, plan)
    slices = [(images[len(images) // 2], targets[len(targets) // 2]) for images, targets in
              zip(bank.images, bank.targets, strict=True)][: args.slices]
    height, width = max(s[0].shape[0] for s in slices), max(s[0].shape[1] for s in slices)
    stack16 = np.zeros((len(slices), height, width), dtype=np.float16)
    stack8 = np.zeros((len(slices), height, width), dtype=np.uint8)
    errors, relative, agreement = [], [], {p: [] for p in head.label_positions}
    dice = {"float16": {p: [] for p in head.label_positions}, "uint8": {p: [] for p in head.label_positions}}
    for i, (image, target) in enumerate(slices):
        h, w = image.shape
        stack16[i, :h, :w] = image
        values, low, high = quantise(image.astype(np.float32)[None])
        stack8[i, :h, :w] = values[0]
        restored = dequantise(values[0], low, high)
        errors.append(float(np.abs(restored - image.astype(np.float32)).max()))
        relative.append(errors[-1] / max(high - low, 1e-6))
        predictions = {}
        for kind, pixels in (("float16", image.astype(np.float32)), ("uint8", restored)):
            tensor = torch.from_numpy(pixels)[None, None].to(model.device)
            with torch.no_grad():
                probabilities = head_probabilities(model.network, tensor, head, plan, mirror=False,
                                                   windows_per_batch=16)
            predictions[kind] = probabilities.max(dim=1).indices[0].cpu().numpy()
            for position, value in dice_per_label(predictions[kind], target, head.label_positions).items():
                dice[kind][position].append(value)
        for position, value in dice_per_label(predictions["uint8"], predictions["float16"],
                                              head.label_positions).items():
            agreement[position].append(value)
    with tempfile.TemporaryDirectory() as scratch:
        sizes = {"float32 NIfTI (.nii.gz)": nifti_bytes(stack16.astype(np.float32), Path(scratch), "f32"),
                 "float16 raw (safetensors)": stack16.nbytes,
                 "float16 zlib": len(zlib.compress(stack16.tobytes(), 6)),
                 "uint8 NIfTI (.nii.gz), the memory's": nifti_bytes(stack8, Path(scratch), "u8")}
    print(f"{name}: {len(slices)} slices at plan resolution ({plan.describe()}), padded to {height}x{width}\n")
    print("| storage | bytes | bytes per slice |\n|---|---|---|")
    for kind, size in sizes.items():
        print(f"| {kind} | {size:,} | {size / len(slices):,.0f} |")
    print(f"\n8-bit copy: largest intensity error {max(errors):.4f} (normalised units), "
          f"{100 * max(relative):.2f} % of a slice's range\n")
    print("| label | Dice, float16 input | Dice, 8-bit input | agreement of the two predictions |\n|---|---|---|---|")
    for position in head.label_positions:
        print(f"| {head.position_names[position]} | {np.nanmean(dice['float16'][position]):.4f} | "
              f"{np.nanmean(dice['uint8'][position]):.4f} | {np.nanmean(agreement[position]):.4f} |")
    return 0
