"""Tiny model folders of the formats older code wrote (``Testing/data/format-<name>/``) and the labels that code gave
on fixed inputs (``Testing/data/format-<name>-outputs.npz``): the tests load each folder with today's code and
compare its labels (Testing/test_model_formats.py), so the loading of every format stays tested whichever models are
bundled.

================= ======= ========= ============================================================================
fixture           made by labels of what the format holds
================= ======= ========= ============================================================================
``first-release`` 234a18c ba18d2e   format version 1: no plans (every slice resized to one size, ``image_size``
                                    in config.json), the task as input planes (``label-sharing-task-channels``),
                                    float32 weights
``plans``         ba18d2e ba18d2e   format version 2: per-task plans without preprocessing schemes (the models
                                    v2, v3), a grouped label space, float16 weights
``prototype``     0f81202 0f81202   the issue-29 prototype that trains model v4: plans with ``slice_context`` (3
                                    slices for one task of volumes, ``task_slice_context``), ``min_image_side``,
                                    a network of 3 input channels, ``task_weights`` and
                                    ``intensity_augmentation`` in training.json, float16 weights
================= ======= ========= ============================================================================

Each is three synthetic tasks (``labelshare.synthetic``: a volume, 2D projections, a lateralised oblique volume
cut along x), trained for 30 steps as the command line of its commit would, with a small U-Net (filters 4-32, a
few tens of kB) instead of the default one. The labels are those of the code before issue 30 (its preprocessing
schemes and configurations) or, for the prototype, of the prototype itself; the first release's own labels differ
where a slice is smaller than the fixed size, since issue 15 anti-aliases the probabilities shrunk back to it. To
make a fixture again, with the code of each commit::

    git archive COMMIT LabelShareSegmentation/labelshare | tar -x -C /tmp/old-COMMIT
    PYTHONPATH=/tmp/old-234a18c/LabelShareSegmentation python Testing/format_fixtures.py build first-release \
        Testing/data
    PYTHONPATH=/tmp/old-ba18d2e/LabelShareSegmentation python Testing/format_fixtures.py record --inputs fixture \
        Testing/data/format-first-release-outputs.npz Testing/data/format-first-release

The bundled models' labels on :func:`bundled_input` images are recorded the same way, with the code that made the
models (``Testing/data/bundled-model-outputs.npz``, compared by Testing/test_bundled_outputs.py)::

    PYTHONPATH=/tmp/old-COMMIT/LabelShareSegmentation python Testing/format_fixtures.py record \
        Testing/data/bundled-model-outputs.npz LabelShareSegmentation/Resources/Models/*

The inputs (:func:`fixture_inputs`, :func:`bundled_input`) are smooth, deterministic images (no random numbers), so
they are the same wherever the tests run. This file imports only numpy and SimpleITK at module level: the code that
builds a fixture or records outputs is the old one, imported inside :func:`build` and :func:`record`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).parent / "data"
FIRST_RELEASE_FIXTURE = DATA / "format-first-release"  # format 1: one fixed size (64), task planes, no plans
PLANS_FIXTURE = DATA / "format-plans"  # format 2: per-task plans without schemes, as the models v2 and v3
PROTOTYPE_FIXTURE = DATA / "format-prototype"  # the issue-29 prototype's format, as model v4
FILTERS = [4, 8, 16, 32]
TRAINING = dict(batch_size=8, epochs=2, steps_per_epoch=15, learning_rate=3e-3, seed=0, device="cpu")
TASK_CASES = 8


def _smooth(shape, centres) -> np.ndarray:
    """A gradient with ellipsoidal blobs ((centre, radii, value) in -1..1 coordinates of the array's axes)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    array = 0.1 * (1 + grids[-1]) + 0.05 * np.sin(3 * grids[-2])
    for centre, radii, value in centres:
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
        array = array + value * np.exp(-distance ** 2)
    return array


def fixture_inputs() -> dict[str, sitk.Image]:
    """One input per synthetic task, with that task's geometry (spacing, orientation, file kind)."""
    volume = _smooth((10, 48, 48), [((0, 0, 0), (0.9, 0.75, 0.7), 0.4), ((0, -0.15, 0.1), (0.6, 0.3, 0.3), 0.3),
                                    ((0.1, 0.25, -0.2), (0.4, 0.13, 0.13), 0.4)]) * 900
    phantom = sitk.GetImageFromArray(volume.astype(np.float32))
    phantom.SetSpacing((1.2, 1.2, 4.0))
    phantom.SetOrigin((-30.0, 12.5, 100.0))
    xray = _smooth((64, 96), [((-0.05, -0.42), (0.7, 0.27), -0.6), ((-0.05, 0.42), (0.7, 0.27), -0.6),
                              ((0.3, 0.08), (0.35, 0.22), 0.3)])
    projection = sitk.GetImageFromArray(np.clip(200 + 200 * (xray - xray.mean()), 0, 255).astype(np.uint8))
    sides = _smooth((40, 40, 8), [((0, -0.35, 0), (0.4, 0.3, 0.9), 1.0), ((0, 0.4, 0), (0.3, 0.25, 0.9), 1.0)])
    oblique = sitk.GetImageFromArray(sides.astype(np.float32))
    oblique.SetSpacing((5.0, 0.9, 0.9))
    oblique.SetOrigin((3.0, -7.0, 11.0))
    oblique.SetDirection(sitk.VersorTransform((0, 0, 1), np.pi / 9).GetMatrix())
    return {"phantom3d": phantom, "xray2d": projection, "sides3d": oblique}


def bundled_input(dimension: int) -> sitk.Image:
    """A smooth, deterministic test image: ellipsoidal blobs of different brightness on a gradient."""
    shape = (10, 36, 40) if dimension == 3 else (80, 96)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    array = 200 * (1 + grids[-1]) + 50 * np.sin(3 * grids[-2])
    for k, (centre, radius, value) in enumerate((((0.2, -0.3), 0.35, 900), ((-0.4, 0.4), 0.25, 600),
                                                  ((0.5, 0.5), 0.15, 1200))):
        distance = sum(((g - c) / radius) ** 2 for g, c in zip(grids[-2:], centre, strict=True))
        array = array + value * np.exp(-distance * (1 + 0.1 * k))
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing((1.2, 1.2, 4.0) if dimension == 3 else (0.8, 0.8))
    return image


# the options of a recorded variant, as today's InferenceConfig takes them
VARIANTS = {"model": {}, "mirror": {"mirror": True}, "all": {"largest_component": "all"},
            "none": {"largest_component": "none"}}


def task_input(entry) -> sitk.Image:
    """The :func:`bundled_input` of a task of a label space: 2D for a task whose cases are single slices."""
    return bundled_input(2 if entry.n_slices == entry.n_cases else 3)


def record(npz: Path, folders: list[Path], inputs: Callable[[Any], sitk.Image] = task_input) -> None:
    """The labels every model folder gives on ``inputs(its task's label-space entry)``, with each of
    :data:`VARIANTS` that its code has (mirroring only for tasks that are not lateralised), keyed
    ``<folder name>:<variant>:<task>``, added to ``npz`` (the entries of other folders are kept)."""
    from labelshare.inference import Segmenter
    from labelshare.models import load_model

    mirrors = "mirror" in inspect.signature(Segmenter).parameters  # the first release had no test-time mirroring
    outputs = dict(np.load(npz)) if npz.is_file() else {}
    for folder in folders:
        model = load_model(folder, device="cpu")
        outputs = {key: value for key, value in outputs.items() if not key.startswith(f"{folder.name}:")}
        for task in model.tasks:
            entry = model.labelspace.task(task)
            image = inputs(entry)
            for name, options in VARIANTS.items():
                if "mirror" in options and (entry.lateralised or not mirrors):
                    continue
                segmenter = Segmenter(model, mirror=True) if "mirror" in options else Segmenter(model)
                # the model's choice (None), every label (True) or none (False), as that code took it
                clean = {"model": None, "all": True, "none": False}[options.get("largest_component", "model")]
                outputs[f"{folder.name}:{name}:{task}"] = sitk.GetArrayFromImage(
                    segmenter.segment(image, task, largest_component=clean))
    np.savez_compressed(npz, **outputs)
    print(json.dumps({key: np.bincount(value.ravel()).tolist() for key, value in outputs.items()
                      if key.split(":")[0] in {folder.name for folder in folders}}))


def build(fixture: str, data: Path) -> None:
    """Train the fixture's model folder with the code on the path (that of the fixture's commit); a fixture of
    plans also gets its labels on :func:`fixture_inputs` (those of the first release: :func:`record`)."""
    from labelshare import labelspace, modelfolder, synthetic
    from labelshare.config import NetworkConfig, TrainConfig
    from labelshare.progress import Progress
    from labelshare.tasks import TaskDataset
    from labelshare.training_run import train

    out = data / f"format-{fixture}"

    @dataclasses.dataclass
    class SmallNetwork(NetworkConfig):
        filters: list[int] = dataclasses.field(default_factory=lambda: list(FILTERS))

    modelfolder.NetworkConfig = SmallNetwork  # the command line's train(), with a small U-Net
    with tempfile.TemporaryDirectory() as scratch:
        tasks = synthetic.write_tasks(Path(scratch) / "tasks", cases=TASK_CASES)
        datasets = [TaskDataset.open(path, name) for name, path in tasks.items()]
        if fixture == "first-release":
            space = labelspace.LabelSpace.build([labelspace.compute_statistics(task) for task in datasets])
            config = TrainConfig(image_size=64, **TRAINING)
            method, command = "label-sharing-task-channels", ["--image-size", "64"]
        else:
            from labelshare.plans import PlanSettings
            if fixture == "plans":
                rule = PlanSettings(patch_pixels=64 * 64)
                groups = [[("phantom3d", "organ"), ("xray2d", "heart")]]
                config = TrainConfig(weights_dtype="float16", **TRAINING)
                command = ["--patch-pixels", "4096", "--group", "phantom3d:organ=xray2d:heart",
                           "--weights-dtype", "float16"]
            else:
                rule = PlanSettings(patch_pixels=64 * 64, min_image_side=56, task_slice_context=(("phantom3d", 3),))
                groups = []
                config = TrainConfig(weights_dtype="float16", task_weights={"phantom3d": 2.0}, **TRAINING)
                command = ["--patch-pixels", "4096", "--min-image-side", "56", "--slice-context", "phantom3d=3",
                           "--task-weight", "phantom3d=2", "--weights-dtype", "float16"]
            statistics = [labelspace.compute_statistics(task, plan_settings=rule) for task in datasets]
            space = labelspace.LabelSpace.build(statistics, groups, rule)
            method = "label-sharing"
        train(list(tasks.items()), space, out, config, method=method, progress=Progress("quiet"),
              command=["train", "--method", method, *command, "(Testing/format_fixtures.py)"])
    if fixture != "first-release":
        record(data / f"format-{fixture}-outputs.npz", [out], fixture_task_input)


def fixture_task_input(entry) -> sitk.Image:
    """The :func:`fixture_inputs` image of a task of a label space."""
    return fixture_inputs()[entry.name]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="train a fixture's model folder (and record its labels)")
    make.add_argument("fixture", choices=("first-release", "plans", "prototype"))
    make.add_argument("data", type=Path, help="the folder of the fixtures (Testing/data)")
    labels = commands.add_parser("record", help="record the labels of model folders")
    labels.add_argument("--inputs", choices=("bundled", "fixture"), default="bundled",
                        help="bundled_input images, or each synthetic task's fixture_inputs image")
    labels.add_argument("npz", type=Path)
    labels.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.fixture, args.data)
    else:
        record(args.npz, args.folders, fixture_task_input if args.inputs == "fixture" else task_input)


if __name__ == "__main__":
    main(sys.argv[1:])
