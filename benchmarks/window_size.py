"""Sliding-window choices at inference: validation Dice and CPU time of one model.

    labelshare-bench window-size --model DIR --task NAME=DIR [--overlaps 0.5 0.25 0]

Scores the model's validation cases of the task (its ``split.json``) with the full inference pipeline: with the
plan's patch-sized windows at each overlap of ``--overlaps`` (the engine uses
:data:`labelshare.engine.slices.WINDOW_OVERLAP`, nnU-Net's half-patch steps; less overlap means fewer windows) and with
one window per slice, padded to the network's patch multiple (fewer, larger windows: faster on a CPU, but the network
sees inputs unlike its training patches). The choices are the segmenter's public ``windows`` option
(:class:`labelshare.engine.slices.Windows`). Prints the mean Dice per label and the process CPU seconds of each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from labelshare.core.fileio import read_json
from labelshare.core.tasks import TaskDataset
from labelshare.engine.evaluation import evaluate_cases
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import load_model
from labelshare.engine.slices import WINDOW_OVERLAP, Windows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder with a split.json")
    parser.add_argument("--task", required=True, metavar="NAME=DIR", help="the task and its nnU-Net folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overlaps", type=float, nargs="+", default=[WINDOW_OVERLAP],
                        help="overlaps of neighbouring patch windows to score, each in [0, 1)")
    args = parser.parse_args(argv)
    if not all(0 <= overlap < 1 for overlap in args.overlaps):
        parser.error(f"--overlaps {args.overlaps}: each in [0, 1)")
    name, folder = args.task.split("=", 1)
    model = load_model(args.model, device=args.device)
    validation = read_json(model.path / "split.json")["tasks"][name]["validation"]
    dataset = TaskDataset.open(folder, name)
    print(f"{model.path.name}, task {name}: {len(validation)} validation cases, plan "
          f"{model.labelspace.task(name).plan.describe()}")
    runs = [(f"patch windows, overlap {overlap:g}", Windows(overlap=overlap)) for overlap in args.overlaps]
    for title, windows in [*runs, ("whole-slice window", Windows(whole_slice=True))]:
        started = time.process_time()
        evaluation = evaluate_cases(model, dataset, validation, task_name=name,
                                    segmenter=Segmenter(model, windows=windows))
        seconds = time.process_time() - started
        per_label: dict[str, list[float]] = {}
        for score in evaluation.scores:
            per_label.setdefault(score.label, []).append(score.dice)
        print(f"{title}: " + ", ".join(f"{label} {np.nanmean(values):.3f}" for label, values in per_label.items())
              + f"; {seconds:.0f} CPU s", flush=True)
