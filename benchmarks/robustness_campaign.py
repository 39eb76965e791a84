"""Robustness campaign (issue #11): bad inputs and kills over every command and the worker, each outcome classified.

    labelshare-bench robustness [--out DIR] [--jobs 1] [--seed 0] [--timeout 180] [--only TEXT]

On small synthetic tasks (:mod:`labelshare.synthetic`) it runs

- **bad inputs**: every command (``labelspace build/show``, ``train``, ``segment``, ``evaluate``, ``postprocess``,
  ``add-task``, ``models``, ``demo``) and the worker with damaged, tampered, truncated, oversized or contradictory
  input, each in a ``labelshare`` process of its own (the worker: one process answering all its requests), plus a
  full and a read-only disk where a small tmpfs can be mounted (root); and a few good inputs as controls;
- **kills**: ``train``, ``add-task``, ``segment``, ``labelspace build``, ``evaluate``, the worker and the case
  collection stopped by SIGKILL or SIGTERM at a random moment of a normal run; then the folder is checked and the
  interrupted work continued (``--resume``, or the same command again).

Every probe ends in one outcome:

``clear error``       status 1 (2 for a usage error, 4 when some images of a batch failed, 75 when stopped by a
                      signal) and one last line ``labelshare: error|stopped: ...`` (the worker: an ``error``
                      event), no traceback
``unclear error``     such a line that does not say what the probe's finding asks it to say, or that comes after
                      other lines (ITK's warnings)
``done``              a control, or a killed run whose folder was intact and whose work was continued
``traceback``         a Python traceback, or a failure without the one-line message (a crash)
``wrongly accepted``  success for an input that must be refused
``hang``              no end within ``--timeout`` seconds
``damaged``           a pre-existing output or model changed, a half-written file under a final name, a temporary
                      file left behind, or a staging folder that blocks the next run

Issue 31's probes (stops that stop, outputs only when something was done, a first contact without waiting) are in
:mod:`.robustness_stops_and_checks` (``--only 31.``).

It prints one line per probe and the totals, writes ``robustness.json`` to ``--out``, and exits with status 0
when tracebacks, unclear errors, wrongly accepted, hangs and damaged are all 0.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelshare import synthetic
from labelshare.config import OUTPUT_FORMATS, TrainConfig
from labelshare.fileio import TEMPORARY_NAME
from labelshare.inputs import image_file_name
from labelshare.labelspace import LabelSpace, compute_statistics
from labelshare.modelfolder import list_models, verify_folder, write_manifest
from labelshare.outputs import DEFAULT_FORMAT
from labelshare.paths import BUNDLED_MODELS_DIR
from labelshare.plans import PlanSettings
from labelshare.progress import Progress, parse_event
from labelshare.tasks import TaskDataset, read_image
from labelshare.training_run import train

OUTCOMES = ("clear error", "done", "traceback", "unclear error", "wrongly accepted", "hang", "damaged")
BAD_OUTCOMES = ("traceback", "unclear error", "wrongly accepted", "hang", "damaged")
ONE_LINE = re.compile(r"^labelshare[\w -]*: (error|stopped|refused): \S")
FIXED_SIZE = 32  # the fixtures' label spaces have fixed-size plans (labelspace build --fixed-size 32): quick runs
TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# -- fixtures ---------------------------------------------------------------------------------------------------------
@dataclass
class Fixtures:
    """What the probes start from (never changed by a probe: each copies what it damages)."""

    root: Path
    tasks: dict[str, Path]
    space2: Path       # label space of phantom3d + xray2d (the base model's), fixed-size plans (FIXED_SIZE)
    space3: Path       # label space of all three tasks, fixed-size plans
    model: Path        # base model: phantom3d + xray2d
    image: Path        # a phantom3d image to segment

    def task_args(self, *names: str) -> list[str]:
        return [arg for name in names for arg in ("--task", f"{name}={self.tasks[name]}")]


def make_fixtures(root: Path) -> Fixtures:
    tasks = synthetic.write_tasks(root / "data", cases=6)
    spaces = {}
    settings = PlanSettings(fixed_size=FIXED_SIZE)
    statistics = {name: compute_statistics(TaskDataset.open(path, name), plan_settings=settings)
                  for name, path in tasks.items()}
    for key, names in (("space2", ("phantom3d", "xray2d")), ("space3", tuple(tasks))):
        spaces[key] = root / f"{key}.json"
        LabelSpace.build([statistics[n] for n in names], plan_settings=settings).save(spaces[key])
    config = TrainConfig(batch_size=4, epochs=1, steps_per_epoch=3, device="cpu")
    model = train([(n, tasks[n]) for n in ("phantom3d", "xray2d")], LabelSpace.load(spaces["space2"]),
                  root / "models" / "base", config, progress=Progress("quiet"), command=["(campaign fixture)"]).path
    image = sorted((tasks["phantom3d"] / "imagesTr").iterdir())[0]
    return Fixtures(root=root, tasks=tasks, space2=spaces["space2"], space3=spaces["space3"], model=model,
                    image=image)


# -- damage made on purpose -------------------------------------------------------------------------------------------
def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path``), to see whether anything changed."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


def copy_task(fixtures: Fixtures, name: str, folder: Path) -> Path:
    return Path(shutil.copytree(fixtures.tasks[name], folder / name))


def first(folder: Path, sub: str = "imagesTr") -> Path:
    return sorted((folder / sub).iterdir())[0]


def cut(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    """Change a JSON file in place (``change`` mutates the parsed object; what it returns is ignored)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def write_array(path: Path, array: np.ndarray, like: Path | None = None, vector: bool = False) -> None:
    image = sitk.GetImageFromArray(array, isVector=vector)
    if like is not None:
        image.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(image, str(path))


def huge_header(path: Path) -> None:
    """Rewrite a NIfTI or NRRD file's header to claim 30000 x 30000 x 4 voxels over the data it has."""
    if path.name.endswith(".nrrd"):
        text = path.read_bytes()
        path.write_bytes(re.sub(rb"sizes: [0-9 ]+", b"sizes: 30000 30000 4", text, count=1))
        return
    data = bytearray(gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes())
    struct.pack_into("<8h", data, 40, 3, 30000, 30000, 4, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))


def copy_model(fixtures: Fixtures, folder: Path) -> Path:
    return Path(shutil.copytree(fixtures.model, folder / "model"))


def tamper_model(model: Path, name: str, change: Callable[[dict], object] | None = None, rehash: bool = True,
                 replace_with: object = None) -> None:
    """Change (or replace) a JSON file of a model folder; with ``rehash`` the manifest is rewritten to match, so
    that only the content checks can find it."""
    if change is not None:
        edit_json(model / name, change)
    else:
        (model / name).write_text(json.dumps(replace_with))
    if rehash:
        write_manifest(model)


def nan_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              str(model / "model.safetensors"), metadata={"format": "labelshare.model", "dtype": "float32"})
    write_manifest(model)


def a_file(folder: Path) -> Path:
    """A plain file where a folder or a new file is expected."""
    path = folder / "a_file"
    path.write_text("not a folder")
    return path


def nan_nifti_case(path: Path) -> None:
    """One NaN voxel in a NIfTI case (niftilib would read it as 0)."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    array.reshape(-1)[7] = np.nan
    write_array(path, array, like=path)


def volume(path: Path, shape=(6, 32, 32)) -> None:
    """A float volume to segment."""
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random(shape).astype(np.float32)), str(path),
                    useCompression=True)


def with_nan(path: Path) -> None:
    array = np.random.default_rng(0).random((6, 32, 32)).astype(np.float32)
    array[2, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


# -- probes -----------------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """One bad input (or a control): ``build(fixtures, folder)`` prepares the input in the probe's own folder and
    returns the ``labelshare`` arguments."""

    name: str
    build: Callable[[Fixtures, Path], list[str]]
    expect: str = "error"                    # "error", or "done" for a control
    protect: tuple[str, ...] = ()            # files/folders (relative to the probe's folder) that must not change
    absent: tuple[str, ...] = ()             # outputs that must not appear when the command fails
    needs: str = ""                          # "tmpfs" (a small file system at <folder>/disk) or "no-cuda"
    verify: Callable[[Fixtures, Path], str] | None = None  # a control's output: '' when right, else the problem
    says: str = ""                           # what the one-line error must say
    alone: bool = False                      # the one line is all of stderr (no warnings before it)


def with_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` with ``--option value`` pairs set (replaced where present, else added)."""
    argv = list(argv)
    for name, value in zip(options[::2], options[1::2], strict=True):
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    return argv


def build_argv(f: Fixtures, d: Path, *names: str, output: Path | None = None) -> list[str]:
    return ["labelspace", "build", *f.task_args(*(names or ("xray2d",))), "-o", str(output or d / "ls.json")]


def train_argv(f: Fixtures, d: Path, *options: str, out: Path | None = None, tasks: dict | None = None) -> list[str]:
    folders = {"phantom3d": f.tasks["phantom3d"], "xray2d": f.tasks["xray2d"], **(tasks or {})}
    argv = ["train", "--labelspace", str(f.space2),
            *[arg for name, folder in folders.items() for arg in ("--task", f"{name}={folder}")],
            "--out", str(out or d / "m"), *TINY]
    return with_options(argv, options)


def segment_argv(f: Fixtures, d: Path, *options: str, model: Path | None = None, image: Path | None = None,
                 output: Path | None = None) -> list[str]:
    return with_options(["segment", "--model", str(model or f.model), "--task", "phantom3d", str(image or f.image),
                         "-o", str(output or d / "o.nii.gz"), "--device", "cpu"], options)


def evaluate_argv(f: Fixtures, d: Path, *options: str, model: Path | None = None, task: str = "xray2d",
                  data: Path | None = None, output: Path | None = None) -> list[str]:
    return with_options(["evaluate", "--model", str(model or f.model), "--task", task, "--data",
                         str(data or f.tasks[task]), "-o", str(output or d / "evaluation"), "--device", "cpu"],
                        options)


def add_task_argv(f: Fixtures, d: Path, *options: str, model: Path | None = None, replay: bool = True,
                  task: str | None = None, out: Path | None = None) -> list[str]:
    replays = ["--replay-task", f"phantom3d={f.tasks['phantom3d']}", "--replay-task", f"xray2d={f.tasks['xray2d']}"]
    return with_options(["add-task", "--model", str(model or f.model), "--task",
                         task or f"sides3d={f.tasks['sides3d']}", "--out", str(out or d / "v2"),
                         *(replays if replay else []), "--max-regression", "100", *TINY], options)


def on_task(name: str, damage: Callable[[Path], object], command: str = "build") -> Callable:
    """A probe builder: a copy of synthetic task ``name`` with ``damage`` applied, read by ``command``."""
    def build(f: Fixtures, d: Path) -> list[str]:
        task = copy_task(f, name, d)
        damage(task)
        if command == "evaluate":
            return evaluate_argv(f, d, task=name, data=task) + ["--all-cases"]
        if command == "train":
            return train_argv(f, d, tasks={name: task})
        return ["labelspace", "build", "--task", f"{name}={task}", "-o", str(d / "ls.json")]
    return build


def postprocess_argv(f: Fixtures, d: Path, model: Path | None = None, out: Path | None = None,
                     tasks: tuple[str, ...] = ("phantom3d", "xray2d")) -> list[str]:
    return ["postprocess", "--model", str(model or f.model), *f.task_args(*tasks), "--out", str(out or d / "pp")]


def on_model(change: Callable[[Path], object], command: str = "segment") -> Callable:
    """A probe builder: a copy of the base model with ``change`` applied, used by ``command``."""
    def build(f: Fixtures, d: Path) -> list[str]:
        model = copy_model(f, d)
        change(model)
        if command == "show":
            return ["labelspace", "show", str(model)]
        if command in ("add-task", "add-task from lineage"):
            return add_task_argv(f, d, model=model, replay=command == "add-task")
        if command == "evaluate":
            return evaluate_argv(f, d, model=model)
        if command == "postprocess":
            return postprocess_argv(f, d, model=model)
        return segment_argv(f, d, model=model)
    return build


def on_first_release_model(change: Callable[[Path], object]) -> Callable:
    """A probe builder: ``segment`` with a copy of the bundled first-release model (format 1: no plans, one fixed
    ``preprocessing.image_size`` in config.json) with ``change`` applied, on one of its own tasks."""
    def build(f: Fixtures, d: Path) -> list[str]:
        bundled = BUNDLED_MODELS_DIR / "labelshare-4tasks-v1"
        if not bundled.is_dir():
            raise FileNotFoundError(f"{bundled}: the bundled first-release model is not installed")
        model = Path(shutil.copytree(bundled, d / bundled.name))
        task = next(iter(json.loads((model / "labelspace.json").read_text())["tasks"]))
        change(model)
        return with_options(segment_argv(f, d, model=model), ("--task", task))
    return build


def on_input(name: str, make: Callable[[Path], object]) -> Callable:
    """A probe builder: ``segment`` of an input file ``name`` made by ``make``."""
    def build(f: Fixtures, d: Path) -> list[str]:
        make(d / name)
        return segment_argv(f, d, image=d / name)
    return build


def first_image(step: Callable[[Path], object]) -> Callable[[Path], None]:
    return lambda task: step(first(task))


def first_label(step: Callable[[Path], object]) -> Callable[[Path], None]:
    return lambda task: step(first(task, "labelsTr"))


def in_dataset_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda task: edit_json(task / "dataset.json", change)


def in_json(name: str, change: Callable[[dict], object] | None = None, rehash: bool = True,
            replace_with: object = None) -> Callable[[Path], None]:
    return lambda model: tamper_model(model, name, change, rehash, replace_with)


def label_space_file(change: Callable[[dict], object]) -> Callable:
    def build(f: Fixtures, d: Path) -> list[str]:
        shutil.copy(f.space2, d / "ls.json")
        edit_json(d / "ls.json", change)
        return ["labelspace", "show", str(d / "ls.json")]
    return build


def then(*steps: Callable[[Path], object]) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        for step in steps:
            step(path)
    return run


def replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def move_weights_outside(model: Path) -> None:
    shutil.move(model / "model.safetensors", model.parent / "outside.safetensors")
    (model / "model.safetensors").symlink_to(model.parent / "outside.safetensors")


def same_shared_label(data: dict, task: str) -> None:
    """Put a task's second label on the shared label of its first (a constraint of the paper broken)."""
    labels = data["tasks"][task]["labels"]
    labels[1]["shared"] = labels[0]["shared"]


def rename_task(data: dict, old: str, new: str) -> None:
    data["tasks"][new] = data["tasks"].pop(old)



def segmentation_problem(output: Path, image: Path, label_ids: set[int]) -> str:
    """'' when ``output`` is a complete label image on the grid of ``image`` holding only ``label_ids``."""
    try:
        result = read_image(output, "segmentation", is_label=True)
    except Exception as error:  # noqa: BLE001 (any failure here is the finding)
        return f"the output cannot be read: {error}"
    source = sitk.ReadImage(str(image))
    if result.GetSize() != source.GetSize() or not np.allclose(result.GetSpacing(), source.GetSpacing()):
        return f"the output has size {result.GetSize()}, not the input's {source.GetSize()}"
    values = set(np.unique(sitk.GetArrayViewFromImage(result)).tolist())
    return "" if values <= label_ids else f"the output holds labels {sorted(values - label_ids)} the task lacks"


def segment_output_problem(f: Fixtures, d: Path) -> str:
    return segmentation_problem(d / "o.nii.gz", f.image, {0, 1, 2, 3})


def output_name(image: Path) -> str:
    """The file name ``labelshare segment`` gives the output of ``image`` in an output folder."""
    return image_file_name(image) + OUTPUT_FORMATS[DEFAULT_FORMAT]


def folder_segmentations_problem(f: Fixtures, d: Path) -> str:
    """'' when the output folder holds one good segmentation per image of phantom3d's imagesTr."""
    images = sorted((f.tasks["phantom3d"] / "imagesTr").iterdir())
    for image in images:
        problem = segmentation_problem(d / "out" / output_name(image), image, {0, 1, 2, 3})
        if problem:
            return problem
    return "" if len(list((d / "out").glob("*.nii.gz"))) == len(images) else "not one output per image"


def evaluation_problem(f: Fixtures, d: Path) -> str:
    """'' when evaluation.csv scores every label of the xray2d validation cases with a Dice in [0, 1]."""
    rows = (d / "evaluation" / "evaluation.csv").read_text().splitlines()
    if rows[0] != "task,case,label,label_id,dice,hd95" or len(rows) < 3:
        return f"evaluation.csv is incomplete: {rows[:2]}"
    dice = [float(row.split(",")[4]) for row in rows[1:]]
    return "" if all(0.0 <= value <= 1.0 for value in dice) else f"Dice outside [0, 1]: {dice}"


def label_space_problem(f: Fixtures, d: Path) -> str:
    tasks = sorted(LabelSpace.load(d / "ls.json").tasks)
    return "" if tasks == ["sides3d", "xray2d"] else f"the label space has tasks {tasks}"


def bad_input_probes() -> list[Probe]:
    """The bad inputs (at least 100) over every command, and the controls (good inputs that must work)."""
    phantom_nan = first_image(nan_nifti_case)
    probes = [
        # labelspace build: task arguments, dataset.json, case files
        Probe("build: task folder missing", lambda f, d: ["labelspace", "build", "--task", f"x={d / 'absent'}", "-o",
                                                          str(d / "ls.json")]),
        Probe("build: task folder is a file", lambda f, d: ["labelspace", "build", "--task", f"x={a_file(d)}", "-o",
                                                            str(d / "ls.json")]),
        Probe("build: bare --task NAME, no =DIR", lambda f, d: ["labelspace", "build", "--task", "acdc", "-o",
                                                                str(d / "ls.json")]),
        Probe("build: empty task name", lambda f, d: ["labelspace", "build", "--task", f"={f.tasks['xray2d']}", "-o",
                                                      str(d / "ls.json")]),
        Probe("build: task name with a path", lambda f, d: ["labelspace", "build", "--task",
                                                            f"../x={f.tasks['xray2d']}", "-o", str(d / "ls.json")]),
        Probe("build: same task twice", lambda f, d: build_argv(f, d, "xray2d", "xray2d")),
        Probe("build: dataset.json missing", on_task("xray2d", lambda t: (t / "dataset.json").unlink())),
        Probe("build: dataset.json not JSON", on_task("xray2d", lambda t: (t / "dataset.json").write_text("{"))),
        Probe("build: dataset.json a list", on_task("xray2d", lambda t: (t / "dataset.json").write_text("[]"))),
        Probe("build: dataset.json nested 100000 deep", on_task(
            "xray2d", lambda t: (t / "dataset.json").write_text("[" * 100000 + "]" * 100000))),
        Probe("build: labels not an object", on_task("xray2d", in_dataset_json(lambda j: j.update(labels=[1])))),
        Probe("build: label id a string", on_task("xray2d", in_dataset_json(lambda j: j["labels"].update(heart="2")))),
        Probe("build: no background label", on_task("xray2d", in_dataset_json(
            lambda j: j["labels"].pop("background")))),
        Probe("build: two labels share an id", on_task("xray2d", in_dataset_json(
            lambda j: j["labels"].update(heart=1)))),
        Probe("build: 'labelshare' block a list", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare=["x"])))),
        Probe("build: 'labelshare' block a string", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare="yes")))),
        Probe("build: patient_regex not a regex", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare={"patient_regex": "(unclosed"})))),
        Probe("build: patient_regex a number", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare={"patient_regex": 5})))),
        Probe("build: lateralised not true/false", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare={"lateralised": "no"})))),
        Probe("build: channel_names a list", on_task("xray2d", in_dataset_json(
            lambda j: j.update(channel_names=[0])))),
        Probe("build: two input channels", on_task("xray2d", in_dataset_json(
            lambda j: j.update(channel_names={"0": "a", "1": "b"})))),
        Probe("build: imagesTr missing", on_task("xray2d", lambda t: shutil.rmtree(t / "imagesTr"))),
        Probe("build: label without image", on_task("xray2d", first_image(Path.unlink))),
        Probe("build: image without label", on_task("xray2d", first_label(Path.unlink))),
        Probe("build: a second channel file", on_task("xray2d", lambda t: shutil.copy(
            first(t), t / "imagesTr" / first(t).name.replace("_0000", "_0001")))),
        Probe("build: image is a folder", on_task("xray2d", first_image(replace_with_folder))),
        Probe("build: .nii.gz image cut in half", on_task("phantom3d", first_image(lambda p: cut(p, 0.5)))),
        Probe("build: .nii.gz image cut to 1000 bytes", on_task("phantom3d", first_image(lambda p: cut(p, 1000)))),
        Probe("build: .nii.gz label cut in half", on_task("phantom3d", first_label(lambda p: cut(p, 0.5)))),
        Probe("build: .nii.gz with a bad checksum", on_task("phantom3d", first_image(
            lambda p: p.write_bytes(p.read_bytes()[:-8] + b"\0\0\0\0" + p.read_bytes()[-4:])))),
        Probe("build: .nrrd image cut in half", on_task("sides3d", first_image(lambda p: cut(p, 0.5)))),
        Probe("build: .png image cut in half", on_task("xray2d", first_image(lambda p: cut(p, 0.5)))),
        Probe("build: empty image file", on_task("xray2d", first_image(lambda p: p.write_bytes(b"")))),
        Probe("build: random bytes under an image name", on_task("xray2d", first_image(
            lambda p: p.write_bytes(os.urandom(4096))))),
        Probe("build: NIfTI header claims 30000x30000x4", on_task("phantom3d", first_image(huge_header))),
        Probe("build: NRRD header claims 30000x30000x4", on_task("sides3d", first_image(huge_header))),
        Probe("build: image and label sizes differ", on_task("phantom3d", first_image(
            lambda p: write_array(p, np.zeros((10, 48, 40), np.float32))))),
        Probe("build: image and label geometry differ", on_task("phantom3d", first_image(
            lambda p: write_array(p, sitk.GetArrayFromImage(sitk.ReadImage(str(p))))))),
        Probe("build: label value not in dataset.json", on_task("xray2d", first_label(
            lambda p: write_array(p, np.full((64, 96), 9, np.uint8))))),
        Probe("build: label with fractional values", on_task("sides3d", first_label(
            lambda p: write_array(p, np.full((40, 40, 8), 0.5, np.float32), like=p)))),
        Probe("build: NaN in a NRRD image", on_task("sides3d", first_image(
            lambda p: write_array(p, np.full((40, 40, 8), np.nan, np.float32), like=p)))),
        Probe("build: NaN in a NIfTI image", on_task("phantom3d", phantom_nan)),
        Probe("build: no foreground in any case", on_task("xray2d", lambda t: [
            write_array(p, np.zeros((64, 96), np.uint8)) for p in (t / "labelsTr").iterdir()])),
        Probe("build: RGB label in colours", on_task("xray2d", first_label(lambda p: write_array(
            p, np.dstack([np.ones((64, 96), np.uint8), np.zeros((64, 96), np.uint8), np.zeros((64, 96), np.uint8)]),
            vector=True)))),
        Probe("build: 4D image", on_task("sides3d", first_image(
            lambda p: sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(p))))),
        # labelspace build: options and the output
        Probe("build: group of an unknown task", lambda f, d: build_argv(f, d) + ["--group", "liver:x=xray2d:heart"]),
        Probe("build: group of an unknown label", lambda f, d: build_argv(f, d, "xray2d", "sides3d") + [
            "--group", "xray2d:lung=sides3d:left_blob"]),
        Probe("build: group without TASK:LABEL", lambda f, d: build_argv(f, d) + ["--group", "heart"]),
        Probe("build: -o is a folder", lambda f, d: build_argv(f, d, output=d)),
        Probe("build: -o under a file", lambda f, d: build_argv(f, d, output=a_file(d) / "ls.json"),
              protect=("a_file",)),
        Probe("build: -o an unrelated existing file", lambda f, d: build_argv(f, d, output=a_file(d)),
              protect=("a_file",)),
        # labelspace show
        Probe("show: path missing", lambda f, d: ["labelspace", "show", str(d / "absent.json")]),
        Probe("show: an image, not JSON", lambda f, d: ["labelspace", "show", str(f.image)]),
        Probe("show: task name with a path", label_space_file(lambda j: rename_task(j, "xray2d", "../../x"))),
        Probe("show: another format", label_space_file(lambda j: j.update(format="other"))),
        Probe("show: n_shared contradicts the labels", label_space_file(lambda j: j.update(n_shared=9))),
        Probe("show: two labels on one shared label", label_space_file(lambda j: same_shared_label(j, "phantom3d"))),
        Probe("show: labels a string", label_space_file(lambda j: j["tasks"]["xray2d"].update(labels="x"))),
        Probe("show: label id not a number", label_space_file(
            lambda j: j["tasks"]["xray2d"]["labels"][0].update(id="one"))),
        Probe("show: nested 100000 deep", lambda f, d: (d / "ls.json").write_text("[" * 100000) and [
            "labelspace", "show", str(d / "ls.json")]),
        Probe("show: model with a modified file", on_model(lambda m: (m / "split.json").write_text("{}"), "show")),
        # train
        Probe("train: label space missing", lambda f, d: with_options(train_argv(f, d), (
            "--labelspace", str(d / "absent.json")))),
        Probe("train: task not in the label space", lambda f, d: train_argv(f, d, tasks={
            "sides3d": f.tasks["sides3d"]})),
        Probe("train: label-space task without data", lambda f, d: ["train", "--labelspace", str(f.space2),
                                                                    *f.task_args("xray2d"), "--out", str(d / "m"),
                                                                    *TINY]),
        Probe("train: labels differ from the label space", lambda f, d: train_argv(f, d, tasks={
            "xray2d": f.tasks["sides3d"]})),
        Probe("train: --device cuda without a GPU", lambda f, d: train_argv(f, d, "--device", "cuda"),
              needs="no-cuda"),
        Probe("train: --out is an existing model", lambda f, d: train_argv(f, d, out=copy_model(f, d)),
              protect=("model",)),
        Probe("train: --out under a file", lambda f, d: train_argv(f, d, out=a_file(d) / "m"), protect=("a_file",)),
        Probe("train: NaN in a NIfTI case", on_task("phantom3d", phantom_nan, "train")),
        Probe("train: truncated case", on_task("phantom3d", first_image(lambda p: cut(p, 0.5)), "train")),
        Probe("train: run of other settings in the staging folder", lambda f, d: stale_checkpoint(f, d),
              protect=(".m.partial",)),
    ]
    for option, value in (("--fixed-size", "65536"), ("--fixed-size", "50"), ("--fixed-size", "0"),
                          ("--fixed-size", "x"), ("--patch-pixels", "10"), ("--patch-pixels", "x"),
                          ("--image-pixels", "0")):  # the plans are the label space's (labelspace build)
        probes.append(Probe(f"build: {option} {value}", lambda f, d, o=(option, value): build_argv(f, d) + list(o)))
    for option, value in (("--learning-rate", "nan"), ("--learning-rate", "-1"),
                          ("--learning-rate", "inf"), ("--epochs", "0"), ("--batch-size", "-5"),
                          ("--steps-per-epoch", "0"), ("--validation-fraction", "1"),
                          ("--validation-fraction", "nan"), ("--device", "tpu"), ("--device", "cuda:x"),
                          ("--weights-dtype", "int8"), ("--method", "magic"), ("--seed", "-1.5")):
        probes.append(Probe(f"train: {option} {value}", lambda f, d, o=(option, value): train_argv(f, d, *o)))
    probes += [
        # segment
        Probe("segment: input missing", lambda f, d: segment_argv(f, d, image=d / "absent.nii.gz")),
        Probe("segment: input .nii.gz cut in half", on_input("in.nii.gz", then(volume, lambda p: cut(p, 0.5))),
              absent=("o.nii.gz",)),
        Probe("segment: input .nii.gz cut to 1000 bytes", on_input("in.nii.gz", then(
            lambda p: volume(p, (40, 128, 128)), lambda p: cut(p, 1000))), absent=("o.nii.gz",)),
        Probe("segment: input .nii cut", on_input("in.nii", then(volume, lambda p: cut(p, 0.9))),
              absent=("o.nii.gz",)),
        Probe("segment: input header claims 30000x30000x4", on_input("in.nii.gz", then(volume, huge_header)),
              absent=("o.nii.gz",)),
        Probe("segment: NaN in a .mha input", on_input("in.mha", with_nan), absent=("o.nii.gz",)),
        Probe("segment: NaN in a NIfTI input", on_input("in.nii.gz", with_nan), absent=("o.nii.gz",)),
        Probe("segment: 4D input", on_input("in.nii.gz", lambda p: sitk.WriteImage(
            sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(p)))),
        Probe("segment: vector input", on_input("in.mha", lambda p: write_array(
            p, np.zeros((3, 8, 8, 2), np.float32), vector=True))),
        Probe("segment: empty input file", on_input("in.nii.gz", lambda p: p.write_bytes(b""))),
        Probe("segment: unknown task", lambda f, d: with_options(segment_argv(f, d), ("--task", "liver"))),
        Probe("segment: model folder missing", lambda f, d: segment_argv(f, d, model=d / "absent")),
        Probe("segment: model folder is a file", lambda f, d: segment_argv(f, d, model=a_file(d))),
        Probe("segment: weights modified", on_model(lambda m: (m / "model.safetensors").write_bytes(
            (m / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0"))),
        Probe("segment: weights truncated, manifest rewritten", on_model(
            then(lambda m: cut(m / "model.safetensors", 0.5), write_manifest))),
        Probe("segment: weights missing", on_model(lambda m: (m / "model.safetensors").unlink())),
        Probe("segment: weights linked from outside the folder", on_model(move_weights_outside)),
        Probe("segment: manifest names ../../../etc/hostname", on_model(in_json(
            "manifest.json", lambda j: j["files"].update({"../../../etc/hostname": "0" * 64}), rehash=False))),
        Probe("segment: manifest names /etc/hostname", on_model(in_json(
            "manifest.json", lambda j: j["files"].update({"/etc/hostname": "0" * 64}), rehash=False))),
        Probe("segment: manifest a list", on_model(lambda m: (m / "manifest.json").write_text("[]"))),
        Probe("segment: config with 65536 filters", on_model(in_json(
            "config.json", lambda c: c["network"].update(filters=[65536] * 5)))),
        Probe("segment: config with 40 levels", on_model(in_json(
            "config.json", lambda c: c["network"].update(filters=[16] * 40)))),
        # the fixed size of a first-release model (config.json preprocessing.image_size) ...
        Probe("segment: first-release config image_size 0", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].update(image_size=0)))),
        Probe("segment: first-release config image_size '128'", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].update(image_size="128")))),
        Probe("segment: first-release config image_size 65536", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].update(image_size=65536)))),
        Probe("segment: first-release config without image_size", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].pop("image_size")))),
        # ... and the plans of a newer one (labelspace.json: each task's plan, the plan settings)
        Probe("segment: plan patch_size [8, 8]", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(patch_size=[8, 8])))),
        Probe("segment: plan patch_size 65536", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(patch_size=[65536, 65536])))),
        Probe("segment: plan patch_size one side", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(patch_size=[32])))),
        Probe("segment: plan spacing 0", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].update(plan={"patch_size": [32, 32],
                                                                              "spacing": [0.0, 1.0]})))),
        Probe("segment: plan spacing NaN", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].update(plan={"patch_size": [32, 32],
                                                                              "spacing": [float("nan"), 1.0]})))),
        Probe("segment: plan with spacing and size", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(spacing=[1.0, 1.0])))),
        Probe("segment: plan a string", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].update(plan="big")))),
        Probe("segment: plan missing", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].pop("plan")))),
        Probe("segment: plan_settings fixed_size 50", on_model(in_json(
            "labelspace.json", lambda j: j.update(plan_settings={"fixed_size": 50})))),
        Probe("segment: plan_settings patch_pixels 'x'", on_model(in_json(
            "labelspace.json", lambda j: j.update(plan_settings={"patch_pixels": "x"})))),
        Probe("segment: config network a list", on_model(in_json("config.json", lambda c: c.update(network=[1])))),
        Probe("segment: config out_channels a string", on_model(in_json(
            "config.json", lambda c: c["network"].update(out_channels="4")))),
        Probe("segment: config out_channels 10**9", on_model(in_json(
            "config.json", lambda c: c["network"].update(out_channels=10**9)))),
        Probe("segment: label-space task named ../../x", on_model(in_json(
            "labelspace.json", lambda j: rename_task(j, "xray2d", "../../x")))),
        Probe("segment: NaN weights", on_model(nan_weights)),
        Probe("segment: output exists", lambda f, d: segment_argv(f, d, output=earlier_result(f, d)),
              protect=("earlier.nii.gz",)),
        Probe("segment: a folder of images to -o o.nii.gz", lambda f, d: segment_argv(
            f, d, image=f.tasks["phantom3d"] / "imagesTr"), absent=("o.nii.gz",)),
        Probe("segment: output format .txt", lambda f, d: segment_argv(f, d, output=d / "o.txt")),
        Probe("segment: output under a file", lambda f, d: segment_argv(f, d, output=a_file(d) / "o.nii.gz"),
              protect=("a_file",)),
        Probe("segment: --device tpu", lambda f, d: segment_argv(f, d, "--device", "tpu")),
        Probe("segment: 3D volume to .png", lambda f, d: segment_argv(f, d, output=d / "o.png"), absent=("o.png",)),
        Probe("segment: --batch-size -5", lambda f, d: segment_argv(f, d, "--batch-size", "-5"),
              absent=("o.nii.gz",)),
        Probe("segment: --batch-size 0", lambda f, d: segment_argv(f, d, "--batch-size", "0"), absent=("o.nii.gz",)),
        # evaluate
        Probe("evaluate: labels differ from the model's", lambda f, d: evaluate_argv(f, d, task="phantom3d",
                                                                                     data=f.tasks["sides3d"])),
        Probe("evaluate: -o is a file", lambda f, d: evaluate_argv(f, d, output=a_file(d)), protect=("a_file",)),
        Probe("evaluate: an evaluation is there", lambda f, d: earlier_evaluation(d) and evaluate_argv(f, d),
              protect=("evaluation",)),
        Probe("evaluate: model split.json a list", on_model(in_json("split.json", replace_with=[1]), "evaluate")),
        Probe("evaluate: data folder missing", lambda f, d: evaluate_argv(f, d, data=d / "absent")),
        Probe("evaluate: truncated case", on_task("phantom3d", first_image(lambda p: cut(p, 0.5)), "evaluate")),
        Probe("evaluate: unknown task", lambda f, d: evaluate_argv(f, d, "--task", "liver")),
        Probe("evaluate: --device tpu", lambda f, d: evaluate_argv(f, d, "--device", "tpu")),
        # postprocess
        Probe("postprocess: --out exists", lambda f, d: (d / "pp").mkdir() or postprocess_argv(f, d),
              protect=("pp",)),
        Probe("postprocess: a task of the model missing", lambda f, d: postprocess_argv(f, d, tasks=("xray2d",)),
              absent=("pp",)),
        Probe("postprocess: model labelspace.json tampered", on_model(
            lambda m: (m / "labelspace.json").write_text("{}"), "postprocess"), absent=("pp",)),
        Probe("postprocess: model split.json a list", on_model(in_json("split.json", replace_with=[1]),
                                                               "postprocess"), absent=("pp",)),
    ]
    for option, value in (("--learning-rate", "nan"), ("--epochs", "0"), ("--device", "tpu"),
                          ("--replay-cases", "x"), ("--distill-weight", "inf"), ("--max-regression", "-1"),
                          ("--map", "left_blob=99"), ("--map", "nolabel=1"), ("--strategy", "magic"),
                          ("--new-label-lr-scale", "0.5")):
        probes.append(Probe(f"add-task: {option} {value}",
                            lambda f, d, o=(option, value): add_task_argv(f, d, *o)))
    probes += [
        Probe("add-task: --replay-task of a task the model lacks", lambda f, d: add_task_argv(f, d) + [
            "--replay-task", f"liver={f.tasks['xray2d']}"]),
        Probe("add-task: --replay-task folder missing", lambda f, d: with_options(add_task_argv(f, d), (
            "--replay-task", f"phantom3d={d / 'absent'}"))),
        Probe("add-task: training.json weight_decay 'x'", on_model(in_json(
            "training.json", lambda t: t.update(weight_decay="x")), "add-task")),
        Probe("add-task: training.json a list", on_model(in_json("training.json", replace_with=[1]), "add-task")),
        Probe("add-task: lineage task_folders a list", on_model(in_json(
            "lineage.json", lambda t: t.update(task_folders=["/a"])), "add-task from lineage")),
        Probe("add-task: old task folders unknown", lambda f, d: add_task_argv(f, d, replay=False)),
        Probe("add-task: --out exists", lambda f, d: add_task_argv(f, d, out=copy_model(f, d)), protect=("model",)),
        Probe("add-task: update with other labels", lambda f, d: add_task_argv(
            f, d, task=f"xray2d={f.tasks['sides3d']}", replay=False) + [
            "--replay-task", f"phantom3d={f.tasks['phantom3d']}"]),
        Probe("add-task: config modified, manifest kept", on_model(in_json(
            "config.json", lambda c: c.update(method="per-task"), rehash=False), "add-task")),
        Probe("add-task: split.json missing", on_model(then(lambda m: (m / "split.json").unlink(), write_manifest),
                                                       "add-task")),
        Probe("add-task: bare --task NAME", lambda f, d: add_task_argv(f, d, task="sides3d")),
        # demo
        Probe("demo: --out not empty", lambda f, d: a_file(d) and ["demo", "--out", str(d), "--fixed-size", "32"],
              protect=("a_file",)),
        Probe("demo: --out is a file", lambda f, d: ["demo", "--out", str(a_file(d)), "--fixed-size", "32"],
              protect=("a_file",)),
        Probe("demo: task folder missing", lambda f, d: ["demo", "--out", str(d / "run"), "--task",
                                                         f"x={d / 'absent'}", "--fixed-size", "32"]),
        Probe("demo: --fixed-size 65536", lambda f, d: ["demo", "--out", str(d / "run"), "--fixed-size", "65536"]),
        Probe("demo: --patch-pixels 10", lambda f, d: ["demo", "--out", str(d / "run"), "--patch-pixels", "10"]),
        Probe("demo: --epochs -1", lambda f, d: ["demo", "--out", str(d / "run"), "--epochs", "-1"]),
        # models
        Probe("models: --root is a file", lambda f, d: ["models", "--root", str(a_file(d))]),
        Probe("models: --root missing", lambda f, d: ["models", "--root", str(d / "absent")]),
        # full and read-only disks: a small tmpfs at <probe folder>/disk
        Probe("full disk: segment .nii.gz over a result", lambda f, d: full_disk_segment(f, d, ".nii.gz"),
              protect=("disk/result.nii.gz",), needs="tmpfs"),
        Probe("full disk: segment .nii over a result", lambda f, d: full_disk_segment(f, d, ".nii"),
              protect=("disk/result.nii",), needs="tmpfs"),
        Probe("full disk: labelspace build", lambda f, d: fill(d / "disk") or build_argv(
            f, d, output=d / "disk" / "ls.json"), needs="tmpfs"),
        Probe("full disk: evaluate", lambda f, d: fill(d / "disk") or evaluate_argv(
            f, d, output=d / "disk" / "evaluation"), needs="tmpfs"),
        Probe("full disk: train", lambda f, d: fill(d / "disk") or train_argv(f, d, out=d / "disk" / "m"),
              needs="tmpfs"),
        Probe("read-only disk: labelspace build", lambda f, d: read_only(d / "disk") or build_argv(
            f, d, output=d / "disk" / "ls.json"), needs="tmpfs"),
        Probe("read-only disk: train", lambda f, d: read_only(d / "disk") or train_argv(f, d, out=d / "disk" / "m"),
              needs="tmpfs"),
        # controls
        Probe("control: labelspace build", lambda f, d: build_argv(f, d, "xray2d", "sides3d"), expect="done",
              verify=label_space_problem),
        Probe("control: labelspace show", lambda f, d: ["labelspace", "show", str(f.model)], expect="done"),
        Probe("control: models --progress json", lambda f, d: ["models", "--root", str(f.model.parent),
                                                               "--progress", "json"], expect="done"),
        Probe("control: segment", lambda f, d: segment_argv(f, d), expect="done", verify=segment_output_problem),
        Probe("control: segment into an existing folder", lambda f, d: segment_argv(f, d, output=d), expect="done",
              verify=lambda f, d: segmentation_problem(d / output_name(f.image), f.image, {0, 1, 2, 3})),
        Probe("control: segment a folder of images", lambda f, d: segment_argv(
            f, d, image=f.tasks["phantom3d"] / "imagesTr", output=d / "out"), expect="done",
              verify=folder_segmentations_problem),
        Probe("control: evaluate", lambda f, d: evaluate_argv(f, d), expect="done", verify=evaluation_problem),
    ]
    from .robustness_stops_and_checks import bad_input_probes as issue_31_probes
    return probes + issue_31_probes()


def earlier_evaluation(folder: Path) -> Path:
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "evaluation.md").write_text("an earlier evaluation")
    return folder / "evaluation"


def stale_checkpoint(f: Fixtures, d: Path) -> list[str]:
    """A staging folder whose checkpoint belongs to a run with other settings, and the command that meets it."""
    checkpoint = d / ".m.partial" / ".checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint.json").write_text(json.dumps({"tag": "step00000001", "identity": {"other": 1}}))
    (d / ".m.partial" / "split.json").write_text(json.dumps({"tasks": {}}))
    return train_argv(f, d) + ["--resume"]


def fill(folder: Path, leave: int = 0) -> None:
    stats = os.statvfs(folder)
    with open(folder / "filler", "wb") as stream:
        stream.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def full_disk_segment(f: Fixtures, d: Path, ending: str) -> list[str]:
    """A good earlier result on a disk with 8 KB left, and a segment of a larger volume over it."""
    result = d / "disk" / f"result{ending}"
    subprocess.run([sys.executable, "-m", "labelshare", *segment_argv(f, d, output=result), "--progress", "quiet"],
                   check=True, env=ENV, capture_output=True)
    large = d / f"large{ending}"
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 128, 128)).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(image, str(large))
    fill(d / "disk", 8192)
    return segment_argv(f, d, image=large, output=result) + ["--overwrite"]


# -- running a probe --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    kind: str               # "bad input", "control", "worker", "kill"
    outcome: str
    detail: str = ""
    seconds: float = 0.0


def labelshare(argv: list[str], cwd: Path, timeout: float, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelshare", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV, **options)


def exit_outcome(expect: str, status: int, stderr: str) -> tuple[str, str]:
    """The outcome of a finished command from its status and stderr (damage is checked apart)."""
    lines = stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    if "Traceback (most recent call last)" in stderr:
        return "traceback", last[:200]
    if expect == "done":
        return ("done", "") if status == 0 else ("control failed", f"status {status}: {last[:200]}")
    if status == 0:
        return "wrongly accepted", "exit status 0"
    if status in (1, 2, 3, 4, 75) and ONE_LINE.match(last):
        return "clear error", last[:240]
    return "traceback", f"status {status} without a one-line message: {last[:160]}"


def leftovers(folder: Path) -> list[str]:
    """What a finished command must not leave: temporary files of atomic writes, and staging folders that hold
    nothing to resume (they would block the next run)."""
    found = [str(p.relative_to(folder)) for p in folder.rglob(".*") if TEMPORARY_NAME.match(p.name)]
    for staging in [*folder.rglob(".*.partial"), *folder.rglob(".*.candidate")]:
        resumable = (staging / ".checkpoint" / "checkpoint.json").is_file() or (staging / "manifest.json").is_file()
        if staging.is_dir() and not resumable:
            found.append(f"{staging.relative_to(folder)} (a staging folder with nothing to resume)")
    return found


def damage(folder: Path, protected: dict[str, dict], absent: tuple[str, ...], failed: bool) -> str:
    changed = [name for name, before in protected.items() if digest(folder / name) != before]
    if changed:
        return f"changed: {', '.join(changed)}"
    appeared = [name for name in absent if failed and (folder / name).exists()]
    if appeared:
        return f"written although the command failed: {', '.join(appeared)}"
    left = leftovers(folder)
    return f"left behind: {', '.join(left)}" if left else ""


@contextmanager
def small_disk(folder: Path, size: str = "2m"):
    """A tmpfs at ``folder`` for the full- and read-only-disk probes (needs root); yields False where none can be
    mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    can = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None
    mounted = can and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                     capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def run_probe(probe: Probe, fixtures: Fixtures, folder: Path, timeout: float) -> Result | None:
    """Prepare, run and classify one probe; None when it cannot run here (no tmpfs, or a GPU present)."""
    folder.mkdir(parents=True)
    kind = "control" if probe.expect == "done" else "bad input"
    if probe.needs == "no-cuda":
        import torch
        if torch.cuda.is_available():
            return None
    with small_disk(folder / "disk") if probe.needs == "tmpfs" else nullcontext(True) as ready:
        if not ready:
            return None
        argv = probe.build(fixtures, folder)
        protected = {name: digest(folder / name) for name in probe.protect}
        start = time.monotonic()
        try:
            result = labelshare(argv, folder, timeout)
        except subprocess.TimeoutExpired:
            return Result(probe.name, kind, "hang", f"no end within {timeout:.0f} s", timeout)
        outcome, detail = exit_outcome(probe.expect, result.returncode, result.stderr)
        if outcome == "done" and "--progress" in argv and argv[argv.index("--progress") + 1] == "json":
            if not all(parse_event(line) for line in result.stdout.splitlines() if line.strip()):
                outcome, detail = "control failed", "stdout holds lines that are not JSON events"
        if outcome == "done" and probe.verify is not None:
            wrong = probe.verify(fixtures, folder)
            outcome, detail = ("wrongly accepted", wrong) if wrong else (outcome, detail)
        lines = result.stderr.strip().splitlines()
        if outcome == "clear error" and (probe.says not in lines[-1] or probe.alone and len(lines) > 1):
            outcome = "unclear error"
            detail = detail if probe.says not in lines[-1] else f"{len(lines)} lines on stderr: {lines[0][:120]}"
        harm = damage(folder, protected, probe.absent, result.returncode != 0)
        if harm and outcome not in ("traceback", "hang"):
            outcome, detail = "damaged", harm
        return Result(probe.name, kind, outcome, detail, time.monotonic() - start)


# -- the worker -------------------------------------------------------------------------------------------------------
@dataclass
class WorkerProbe:
    """One request line for a ``labelshare worker``: ``build(fixtures, folder)`` returns a request (a dict, sent
    with an id) or a raw line; ``anonymous`` requests are answered by an error without a request id."""

    name: str
    build: Callable[[Fixtures, Path], dict | str]
    expect: str = "error"
    anonymous: bool = False
    protect: tuple[str, ...] = ()
    absent: tuple[str, ...] = ("out.nii.gz",)
    verify: Callable[[Fixtures, Path], str] | None = None  # a control's output: '' when right, else the problem


def request(**changes) -> Callable[[Fixtures, Path], dict]:
    """A segment request with ``changes`` (values may be functions of the fixtures and folder; None drops a
    field)."""
    def build(f: Fixtures, d: Path) -> dict:
        fields = {"command": "segment", "model": str(f.model), "task": "phantom3d", "input": str(f.image),
                  "output": str(d / "out.nii.gz"), "device": "cpu"}
        for key, value in changes.items():
            value = value(f, d) if callable(value) else value
            if value is None:
                fields.pop(key, None)
            else:
                fields[key] = value
        return fields
    return build


def made(name: str, make: Callable[[Path], object]) -> Callable[[Fixtures, Path], str]:
    def build(f: Fixtures, d: Path) -> str:
        make(d / name)
        return str(d / name)
    return build


def model_copy_with(change: Callable[[Path], object]) -> Callable[[Fixtures, Path], str]:
    def build(f: Fixtures, d: Path) -> str:
        model = copy_model(f, d)
        change(model)
        return str(model)
    return build


def worker_probes() -> list[WorkerProbe]:
    return [
        WorkerProbe("worker: not JSON", lambda f, d: "this is not json", anonymous=True),
        WorkerProbe("worker: a JSON list", lambda f, d: "[1, 2]", anonymous=True),
        WorkerProbe("worker: nested 100000 deep", lambda f, d: "[" * 100000 + "]" * 100000, anonymous=True),
        WorkerProbe("worker: a 3 MB line", lambda f, d: json.dumps({"task": "x" * 3_000_000}), anonymous=True),
        WorkerProbe("worker: id an object", request(id={"a": 1}, input=None), anonymous=True),
        WorkerProbe("worker: unknown command", request(command="train")),
        WorkerProbe("worker: input and output missing", request(input=None, output=None)),
        WorkerProbe("worker: largest_component 'no'", request(largest_component="no")),
        WorkerProbe("worker: overwrite 'yes'", request(overwrite="yes")),
        WorkerProbe("worker: task a list", request(task=["phantom3d"])),
        WorkerProbe("worker: unknown field", request(largest_components=True)),
        WorkerProbe("worker: device tpu", request(device="tpu")),
        WorkerProbe("worker: model missing", request(model=lambda f, d: str(d / "absent"))),
        WorkerProbe("worker: input .nii.gz cut in half", request(input=made("in.nii.gz", then(
            volume, lambda p: cut(p, 0.5)))), absent=("out.nii.gz",)),
        WorkerProbe("worker: NaN in a NIfTI input", request(input=made("in.nii.gz", with_nan))),
        WorkerProbe("worker: input header claims 30000x30000x4", request(input=made("in.nii.gz", then(
            volume, huge_header)))),
        WorkerProbe("worker: output exists", request(output=lambda f, d: str(earlier_result(f, d))),
                    protect=("earlier.nii.gz",)),
        WorkerProbe("worker: output format .txt", request(output=lambda f, d: str(d / "out.txt"))),
        WorkerProbe("worker: 3D volume to .png", request(output=lambda f, d: str(d / "out.png")), absent=("out.png",)),
        WorkerProbe("worker: output under a file", request(output=lambda f, d: str(a_file(d) / "o.nii.gz")),
                    protect=("a_file",)),
        WorkerProbe("worker: manifest names ../../../etc/hostname", request(model=model_copy_with(in_json(
            "manifest.json", lambda j: j["files"].update({"../../../etc/hostname": "0" * 64}), rehash=False)))),
        WorkerProbe("worker: NaN weights", request(model=model_copy_with(nan_weights))),
        WorkerProbe("worker: config with 65536 filters", request(model=model_copy_with(in_json(
            "config.json", lambda c: c["network"].update(filters=[65536] * 5))))),
        WorkerProbe("worker control: a good request", request(), expect="done", absent=(),
                    verify=lambda f, d: segmentation_problem(d / "out.nii.gz", f.image, {0, 1, 2, 3})),
        WorkerProbe("worker control: overwrite true", request(output=lambda f, d: str(earlier_result(f, d)),
                                                              overwrite=True), expect="done", absent=(),
                    verify=lambda f, d: segmentation_problem(d / "earlier.nii.gz", f.image, {0, 1, 2, 3})),
        WorkerProbe("worker control: output is a folder", request(output=lambda f, d: str(d)), expect="done",
                    absent=(), verify=lambda f, d: segmentation_problem(d / output_name(f.image), f.image,
                                                                        {0, 1, 2, 3})),
    ] + issue_31_worker_probes()


def issue_31_worker_probes() -> list[WorkerProbe]:
    from .robustness_stops_and_checks import worker_probes as probes
    return probes()


def earlier_result(f: Fixtures, d: Path) -> Path:
    shutil.copy(f.image, d / "earlier.nii.gz")
    return d / "earlier.nii.gz"


def run_worker_probes(probes: list[WorkerProbe], fixtures: Fixtures, folder: Path, timeout: float) -> list[Result]:
    """Every request to one worker process, then ``exit``; each answer classified like a command's outcome."""
    lines, prepared = [], []
    for index, probe in enumerate(probes):
        d = folder / f"{index:03d}"
        d.mkdir(parents=True)
        built = probe.build(fixtures, d)
        if isinstance(built, dict) and not probe.anonymous:
            built = {**built, "id": index}
        lines.append(built if isinstance(built, str) else json.dumps(built))
        prepared.append((probe, d, {name: digest(d / name) for name in probe.protect}))
    lines.append(json.dumps({"id": "end", "command": "exit"}))
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "labelshare", "worker"], cwd=folder, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        stdout, stderr = process.communicate("\n".join(lines) + "\n", timeout=timeout * 2)
        hung = False
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        hung = True
    seconds = (time.monotonic() - start) / len(probes)
    events = [e for e in (parse_event(line) for line in stdout.splitlines()) if e]
    anonymous = iter([e for e in events if e.get("request") is None and e["event"] == "error"])
    results = []
    for index, (probe, d, protected) in enumerate(prepared):
        if probe.anonymous:
            answer = next(anonymous, None)
        else:
            answer = next((e for e in reversed(events) if e.get("request") == index and e["event"] in
                           ("done", "error")), None)
        if answer is None:
            outcome, detail = "hang", ("the worker ended without answering (status "
                                       f"{process.returncode}; {stderr.strip().splitlines()[-1:] or ''})"
                                       if not hung else "no answer in time")
        elif answer["event"] == "error":
            internal = "internal error" in answer["message"]
            outcome = "traceback" if internal else ("clear error" if probe.expect == "error" else "control failed")
            detail = answer["message"][:240]
        else:
            outcome, detail = ("done", "") if probe.expect == "done" else ("wrongly accepted", "answered done")
            wrong = probe.verify(fixtures, d) if outcome == "done" and probe.verify is not None else ""
            outcome, detail = ("wrongly accepted", wrong) if wrong else (outcome, detail)
        harm = damage(d, protected, probe.absent, answer is None or answer["event"] == "error")
        if harm and outcome not in ("traceback", "hang"):
            outcome, detail = "damaged", harm
        results.append(Result(probe.name, "control" if probe.expect == "done" else "worker", outcome, detail,
                              seconds))
    if not hung and process.returncode != 0:
        results.append(Result("worker: exit after the requests", "worker", "traceback",
                              f"status {process.returncode}"))
    return results


# -- kills ------------------------------------------------------------------------------------------------------------
@dataclass
class Kill:
    """A normal run stopped by ``signal_number`` after ``delay`` seconds, then checked and continued.

    ``prepare(fixtures, folder)`` returns the command (``labelshare`` arguments, or a Python program for the case
    collection); ``check(fixtures, folder)`` returns the problem found after the kill, or ''; ``resume`` the
    command that continues the work (returning None: nothing to continue, e.g. the version was published before
    the signal; no ``resume``: opening the folder in the check continues it)."""

    name: str
    kind: str
    prepare: Callable[[Fixtures, Path], list[str]]
    check: Callable[[Fixtures, Path], str]
    resume: Callable[[Fixtures, Path], list[str] | None] | None
    signal_number: int = signal.SIGKILL
    delay: float = 0.0
    python: bool = False  # the command is a Python program (the case collection), not labelshare arguments


def model_problem(folder: Path) -> str:
    """'' when ``folder`` is absent or a complete, verified model version with nothing hidden in it."""
    if not folder.exists():
        return ""
    try:
        verify_folder(folder)
    except Exception as error:  # noqa: BLE001 (any failure here is the finding)
        return f"{folder.name} is not a complete model: {error}"
    hidden = [p.name for p in folder.rglob(".*")]
    return f"{folder.name} holds {', '.join(hidden)}" if hidden else ""


def run_folder_problem(out: Path) -> str:
    """After a killed ``train``/``add-task``: the version is absent or complete, nothing lies beside it under a
    final name, and ``models`` lists that version alone (never a work folder). (What the hidden work folders hold is
    judged by continuing: the next run must not be blocked.)"""
    visible = [p.name for p in out.parent.iterdir() if not p.name.startswith(".") and p.name != out.name]
    listed = [s.path.name for s in list_models([out.parent]) if s.path != out]
    return model_problem(out) or (f"unexpected files beside the version: {visible}" if visible else "") or \
        (f"models lists more than the version: {listed}" if listed else "")


def image_problem(path: Path, earlier: dict[str, str]) -> str:
    """A segmentation output after a kill: the earlier file unchanged, or a complete new image."""
    if not path.exists() or digest(path) == earlier:
        return ""
    try:
        read_image(path, "segmentation", is_label=True)
    except Exception as error:  # noqa: BLE001
        return f"{path.name} is neither the earlier result nor a complete new one: {error}"
    return ""


def kills(seed: int, durations: dict[str, float]) -> list[Kill]:
    """24 runs stopped at random moments of their normal duration: SIGKILL and SIGTERM alternate."""
    rng = random.Random(seed)

    def moment(kind: str) -> float:  # from 1 s: before then Python is still starting and no handler can exist
        return rng.uniform(1.0, max(1.5, durations[kind]))

    plans = [("train", 8), ("add-task", 4), ("segment", 4), ("labelspace build", 2), ("evaluate", 2),
             ("worker", 2), ("collection", 2)]
    result = []
    for kind, count in plans:
        for index in range(count):
            number = (signal.SIGKILL, signal.SIGTERM)[index % 2]
            make = KILLS[kind]
            result.append(Kill(f"kill: {kind} #{index + 1} ({signal.Signals(number).name})", kind, *make,
                               signal_number=number, delay=moment(kind), python=kind == "collection"))
    return result


def _train_command(f: Fixtures, d: Path) -> list[str]:
    return train_argv(f, d, "--epochs", "2", "--steps-per-epoch", "3", out=d / "m")


def _add_task_command(f: Fixtures, d: Path) -> list[str]:
    return add_task_argv(f, d, "--epochs", "2", "--steps-per-epoch", "3", out=d / "v2")


def _segment_command(f: Fixtures, d: Path) -> list[str]:
    earlier = d / "result.nii.gz"
    if not earlier.exists():  # a valid earlier result that differs from the new one
        label = sitk.GetImageFromArray(np.ones(sitk.GetArrayFromImage(sitk.ReadImage(str(f.image))).shape, np.uint8))
        label.CopyInformation(sitk.ReadImage(str(f.image)))
        sitk.WriteImage(label, str(earlier), useCompression=True)
        (d / "earlier.sha").write_text(json.dumps(digest(earlier)))
    return segment_argv(f, d, output=earlier) + ["--overwrite"]


def _segment_check(f: Fixtures, d: Path) -> str:
    return image_problem(d / "result.nii.gz", json.loads((d / "earlier.sha").read_text()))


def _build_command(f: Fixtures, d: Path) -> list[str]:
    output = d / "ls.json"
    if not output.exists():
        shutil.copy(f.space2, output)  # an earlier label space, replaced with --overwrite
    return build_argv(f, d, "phantom3d", "xray2d", "sides3d", output=output) + ["--overwrite"]


def _build_check(f: Fixtures, d: Path) -> str:
    try:
        LabelSpace.load(d / "ls.json")
    except Exception as error:  # noqa: BLE001
        return f"ls.json is no longer a label space: {error}"
    return ""


def _evaluate_check(f: Fixtures, d: Path) -> str:
    for path in (d / "evaluation").glob("evaluation.*"):
        text = path.read_text()
        if not text.strip() or (path.suffix == ".csv" and not text.startswith("task,case,label")):
            return f"{path.name} is incomplete"
    return ""


WORKER_DRIVER = """
import json, subprocess, sys
request = json.loads(sys.argv[1])
worker = subprocess.Popen([sys.executable, "-m", "labelshare", "worker"], stdin=subprocess.PIPE, text=True)
worker.stdin.write(json.dumps(request) + "\\n" + json.dumps({"command": "exit"}) + "\\n")
worker.stdin.flush()
sys.exit(worker.wait())
"""


def _worker_command(f: Fixtures, d: Path) -> list[str]:
    """A worker driven by a small parent (the kill goes to the parent's process group: worker and parent)."""
    output = d / "out.nii.gz"
    return ["-c", WORKER_DRIVER, json.dumps({"id": 1, "model": str(f.model), "task": "phantom3d",
                                             "input": str(f.image), "output": str(output), "device": "cpu",
                                             "overwrite": True})]


COLLECTOR = """
import sys
import numpy as np, SimpleITK as sitk
from labelshare.taskfolders import TaskCollection
collection = TaskCollection.open(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
for index in range(60):
    image = sitk.GetImageFromArray(rng.normal(size=(6, 64, 64)).astype(np.float32))
    label = (rng.random((6, 64, 64)) > 0.7).astype(np.uint8)
    collection.add_case(image, label, name=f"case{index:03d}")
"""


def _collection_command(f: Fixtures, d: Path) -> list[str]:
    from labelshare.taskfolders import create_task
    if not (d / "workspace" / "liver").exists():
        create_task(d / "workspace", "liver", ["liver"])
    return ["-c", COLLECTOR, str(d / "workspace" / "liver"), str(d.stat().st_ino % 1000)]


def _collection_check(f: Fixtures, d: Path) -> str:
    """Open (which finishes or undoes an interrupted add): every case then has its image, label and record."""
    from labelshare.taskfolders import TaskCollection
    try:
        collection = TaskCollection.open(d / "workspace" / "liver")
        names = collection.case_names()
        if set(names) != set(collection.records):
            return f"cases and records differ: {sorted(set(names) ^ set(collection.records))[:4]}"
        for name in names:
            collection.read_case(name)
    except Exception as error:  # noqa: BLE001
        return f"the collection is damaged: {error}"
    visible = [p.name for p in (d / "workspace" / "liver").rglob("*") if TEMPORARY_NAME.match(p.name)
               and ".trash" not in p.parts]
    return f"temporary files outside the trash: {visible[:3]}" if visible else ""


KILLS: dict[str, tuple[Callable, Callable, Callable | None]] = {
    "train": (_train_command, lambda f, d: run_folder_problem(d / "m"),
              lambda f, d: None if (d / "m").is_dir() else _train_command(f, d) + ["--resume"]),
    "add-task": (_add_task_command, lambda f, d: run_folder_problem(d / "v2"),
                 lambda f, d: None if (d / "v2").is_dir() else _add_task_command(f, d) + ["--resume"]),
    "segment": (_segment_command, _segment_check, _segment_command),
    "labelspace build": (_build_command, _build_check, _build_command),
    "evaluate": (lambda f, d: evaluate_argv(f, d) + ["--overwrite"], _evaluate_check,
                 lambda f, d: evaluate_argv(f, d) + ["--overwrite"]),
    "worker": (_worker_command, lambda f, d: image_problem(d / "out.nii.gz", {}), _worker_command),
    "collection": (_collection_command, _collection_check, None),
}


def run_kill(kill: Kill, fixtures: Fixtures, folder: Path, timeout: float) -> Result:
    folder.mkdir(parents=True)
    argv = kill.prepare(fixtures, folder)
    command = [sys.executable, *argv] if kill.python or kill.kind == "worker" else \
        [sys.executable, "-m", "labelshare", *argv]
    start = time.monotonic()
    with open(folder / "stderr.txt", "w") as errors:
        process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=errors, env=ENV,
                                   start_new_session=True)
        try:
            process.wait(timeout=kill.delay)
            finished_first = True
        except subprocess.TimeoutExpired:
            finished_first = False
            os.killpg(process.pid, kill.signal_number)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return Result(kill.name, "kill", "hang", f"no end {timeout:.0f} s after {kill.signal_number!r}",
                          time.monotonic() - start)
    stderr = (folder / "stderr.txt").read_text()
    (folder / "stderr.txt").unlink()
    when = "finished before the signal" if finished_first else f"signal after {kill.delay:.1f} s"
    if "Traceback (most recent call last)" in stderr:
        return Result(kill.name, "kill", "traceback", f"{when}: {stderr.strip().splitlines()[-1][:160]}",
                      time.monotonic() - start)
    if kill.signal_number == signal.SIGTERM and not finished_first and kill.kind != "worker" and not (
            (status == 75 and ONE_LINE.match(stderr.strip().splitlines()[-1] if stderr.strip() else ""))
            or status == 0 or (kill.python and status in (1, -signal.SIGTERM))):
        return Result(kill.name, "kill", "traceback", f"{when}: status {status} without 'labelshare: stopped:'",
                      time.monotonic() - start)
    problem = kill.check(fixtures, folder)
    if not problem and kill.signal_number == signal.SIGTERM and not kill.python and kill.kind != "worker":
        left = leftovers(folder)  # SIGTERM lets the command clean up: no temporary files, no empty staging folder
        problem = f"left behind after SIGTERM: {left}" if left else ""
    if problem:
        return Result(kill.name, "kill", "damaged", f"{when}: {problem}", time.monotonic() - start)
    again = kill.resume(fixtures, folder) if kill.resume is not None else None
    if again is not None:
        command = [sys.executable, *again] if kill.kind == "worker" else [sys.executable, "-m", "labelshare", *again]
        try:
            continued = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout, env=ENV)
        except subprocess.TimeoutExpired:
            return Result(kill.name, "kill", "hang", f"{when}; continuing did not end", time.monotonic() - start)
        problem = kill.check(fixtures, folder)
        if continued.returncode != 0 or problem:
            last = (continued.stderr.strip().splitlines() or [""])[-1]
            return Result(kill.name, "kill", "damaged", f"{when}; continuing failed: {problem or last[:200]}",
                          time.monotonic() - start)
        if kill.kind in ("train", "add-task") and not (folder / ("m" if kill.kind == "train" else "v2")).is_dir():
            return Result(kill.name, "kill", "damaged", f"{when}; continuing published nothing",
                          time.monotonic() - start)
    return Result(kill.name, "kill", "done", f"{when}; intact and continued", time.monotonic() - start)


# -- the campaign -----------------------------------------------------------------------------------------------------
def timing_runs(fixtures: Fixtures, folder: Path, timeout: float) -> tuple[dict[str, float], list[Result]]:
    """One normal run of every command that is killed later (a control each): how long it takes."""
    durations, results = {}, []
    for kind, (prepare, check, _) in KILLS.items():
        d = folder / kind.replace(" ", "-")
        d.mkdir(parents=True)
        argv = prepare(fixtures, d)
        command = [sys.executable, *argv] if kind in ("worker", "collection") else \
            [sys.executable, "-m", "labelshare", *argv]
        start = time.monotonic()
        run = subprocess.run(command, cwd=d, capture_output=True, text=True, timeout=timeout, env=ENV)
        durations[kind] = time.monotonic() - start
        problem = check(fixtures, d) if run.returncode == 0 else run.stderr.strip()[-300:]
        results.append(Result(f"control: {kind} (timing run)", "control", "control failed" if problem else "done",
                              problem, durations[kind]))
    return durations, results


def fixture_problem(fixtures: Fixtures, before: dict[str, str]) -> str:
    after = {str(p): h for folder in (fixtures.root / "data", fixtures.model) for p, h in digest(folder).items()}
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return f"shared fixtures changed: {changed[:5]}" if changed else ""


def result_line(result: Result) -> str:
    mark = "  " if result.outcome in ("clear error", "done") else "!!"
    return f"{mark} {result.name:<52} {result.outcome:<16} {result.seconds:5.1f} s  {result.detail[:150]}"


def print_report(results: list[Result], seconds: float) -> dict:
    problems = [r for r in results if r.outcome not in ("clear error", "done")]
    if problems:
        print("\nproblems:")
        for r in problems:
            print(result_line(r))
    totals = Counter(r.outcome for r in results)
    kinds = Counter(r.kind for r in results)
    print(f"\ntotals ({seconds / 60:.1f} min):")
    for label, value in (("bad inputs", kinds["bad input"] + kinds["worker"]),
                         ("  to commands", kinds["bad input"]), ("  to the worker", kinds["worker"]),
                         ("kills", kinds["kill"]), ("controls", kinds["control"]),
                         ("clear errors", totals["clear error"]), ("tracebacks", totals["traceback"]),
                         ("unclear errors", totals["unclear error"]),
                         ("wrongly accepted", totals["wrongly accepted"]), ("hangs", totals["hang"]),
                         ("files damaged", totals["damaged"]), ("controls failed", totals["control failed"])):
        print(f"  {label:<17} {value}")
    return {"totals": dict(totals), "kinds": dict(kinds), "seconds": round(seconds, 1),
            "results": [vars(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="working folder (kept; default: a temporary folder, removed at the end)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="probes run at the same time; more than one only with a core each "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds after which a probe counts as a hang (default: %(default)s)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only probes whose name contains this text (repeat for several)")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        print(f"labelshare-bench robustness: error: {args.out}: not empty; choose a new --out", file=sys.stderr)
        return 1
    root = (args.out or Path(tempfile.mkdtemp(prefix="labelshare-robustness-"))).resolve()  # probes run elsewhere
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(f"fixtures in {root} ...", flush=True)
    fixtures = make_fixtures(root / "fixtures")
    before = {str(p): h for folder in (fixtures.root / "data", fixtures.model) for p, h in digest(folder).items()}
    # the normal runs time the kills; a selection (--only) without kills needs none
    def chosen(name: str) -> bool:
        return not args.only or any(text in name for text in args.only)

    if any(chosen(kill.name) for kill in kills(args.seed, dict.fromkeys(KILLS, 1.0))):
        durations, results = timing_runs(fixtures, root / "timing", args.timeout)
        print("normal runs (s): " + ", ".join(f"{k} {v:.1f}" for k, v in durations.items()), flush=True)
    else:
        durations, results = {}, []
    probes = [p for p in bad_input_probes() if chosen(p.name)]
    planned_kills = [k for k in kills(args.seed, durations) if chosen(k.name)] if durations else []
    workers = [p for p in worker_probes() if chosen(p.name)]
    tasks = [("probe", index, probe) for index, probe in enumerate(probes)] + \
        [("kill", index, kill) for index, kill in enumerate(planned_kills)]
    skipped = []

    def run(task) -> Result | None:
        kind, index, item = task
        folder = root / kind / f"{index:03d}"
        if kind == "kill":
            return run_kill(item, fixtures, folder, args.timeout)
        outcome = run_probe(item, fixtures, folder, args.timeout)
        if outcome is None:
            skipped.append(item.name)
        return outcome

    for result in results:
        print(result_line(result), flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for result in pool.map(run, tasks):  # in order, each printed as soon as it and those before it end
            if result is not None:
                results.append(result)
                print(result_line(result), flush=True)
    if workers:
        answers = run_worker_probes(workers, fixtures, root / "worker", args.timeout)
        results += answers
        for result in answers:
            print(result_line(result), flush=True)
    from .robustness_stops_and_checks import run_probes as issue_31_runs
    for result in issue_31_runs(fixtures, root / "stops", args.timeout, chosen):
        results.append(result)
        print(result_line(result), flush=True)
    problem = fixture_problem(fixtures, before)
    if problem:
        results.append(Result("shared fixtures unchanged", "control", "damaged", problem))
    report = print_report(results, time.monotonic() - start)
    if skipped:
        print(f"\nskipped here ({len(skipped)}; they need a tmpfs (root) or a machine without CUDA): "
              + "; ".join(skipped))
    report["skipped"] = skipped
    (root / "robustness.json").write_text(json.dumps(report, indent=1))
    print(f"\nreport: {root / 'robustness.json'}")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    bad = sum(report["totals"].get(outcome, 0) for outcome in (*BAD_OUTCOMES, "control failed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
