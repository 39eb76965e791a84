"""The rehearsal memory of a model version (light: numpy and SimpleITK): per task a few labelled training slices to
replay and a few labelled validation slices to gate on, so that ``add-task`` and an update can keep the old tasks
without their datasets (the exemplar memory of continual learning, as in iCaRL). Reading, verifying and describing it
needs no torch; choosing and writing it is :mod:`labelshare.engine.memory`.

In a model folder::

    memory/memory.json                  what the memory holds (below); absent in versions made before it existed
    memory/<task>.<part>.images.nii.gz  uint8, (slices x channels, height, width): the part's exemplars
    memory/<task>.<part>.labels.nii.gz  uint8, (slices, height, width): their labels (task label ids)

``<part>`` is ``replay`` (slices of training cases, replayed when a task is added or updated) or ``gate`` (slices of
validation cases, on which the forgetting report and the regression gate score a task whose folder is not given).
Every file is listed and hashed in ``manifest.json`` like every other file of the version, so a changed byte is
refused by the manifest check (:func:`labelshare.core.modelfolder.verify_folder`), naming the file.

Slices are stored as the network is trained on them: at the task's plan resolution, normalised by the plan's scheme,
then quantised per exemplar to 8 bits (``value = low + q * (high - low) / 255``, ``low``/``high`` recorded per
exemplar; the step is about 1/255 of the slice's normalised range, below the intensity noise training adds, and half
the bytes of float16 before compression: measured in docs/incremental/memory.md). Every slice of a part is padded to
the part's largest slice; its own shape is recorded. An exemplar has the plan's input channels (1 for a 2D plan; a
plan with 2.5D slice context stores the stack of neighbouring slices the plan's slicing scheme gives: ``channels``),
so a memory holds what the network needs for its slice.

``memory.json``::

    {"format": "labelshare.memory", "format_version": 1, "patient_images": true,
     "tasks": {"acdc": {"labels": {"rv_cavity": 1, ...}, "plan": {...the task's plan...}, "channels": 1,
                        "licence": "...", "selection": {"method": "k-center", ...},
                        "parts": {"replay": {"images": "acdc.replay.images.nii.gz", "labels": "...",
                                             "split": "train",
                                             "slices": [{"case": "patient001_frame01", "slice": 4, "shape": [216, 256],
                                                         "low": -1.9, "high": 4.2, "labels": ["myocardium"]}, ...]},
                                  "gate": {..., "split": "validation", ...}},
                        "bytes": 123456}},
     "bytes": 1234567}

A model that must hold no patient images (a model leaving a site) has ``"patient_images": false`` and no tasks; it
needs the folders of its tasks to be extended, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LabelSpaceError, ModelError
from .fileio import atomic_write_json, read_format_json, write_image_atomic
from .imagedata import format_bytes
from .labelspace import LabelSpace
from .naming import check_task_name
from .plans import TaskPlan

MEMORY_DIR = "memory"
MEMORY_FILE = f"{MEMORY_DIR}/memory.json"
MEMORY_FORMAT = "labelshare.memory"
MEMORY_FORMAT_VERSION = 1
PARTS = {"replay": "train", "gate": "validation"}  # part -> the side of the split its cases come from
LEVELS = 255  # 8-bit quantisation of the normalised intensities


@dataclass
class MemorySlice:
    """One exemplar: its case, its index in the case's slices, its shape at plan resolution, the range its 8-bit
    values span and the labels it holds."""

    case: str
    slice: int
    shape: tuple[int, int]
    low: float
    high: float
    labels: list[str]

    def to_json(self) -> dict:
        return {"case": self.case, "slice": self.slice, "shape": list(self.shape), "low": self.low,
                "high": self.high, "labels": self.labels}

    @classmethod
    def from_json(cls, data: dict) -> MemorySlice:
        shape = tuple(int(v) for v in data["shape"])
        low, high = float(data["low"]), float(data["high"])
        if len(shape) != 2 or min(shape) < 1 or not (math.isfinite(low) and math.isfinite(high)) or high < low:
            raise ValueError(f"slice {data.get('case')}:{data.get('slice')} has shape {shape} and range {low}..{high}")
        return cls(case=str(data["case"]), slice=int(data["slice"]), shape=shape, low=low, high=high,
                   labels=[str(label) for label in data["labels"]])


@dataclass
class MemoryPart:
    """The ``replay`` or ``gate`` exemplars of a task: their two files and one record per slice."""

    images: str
    labels: str
    slices: list[MemorySlice]

    @property
    def cases(self) -> list[str]:
        return list(dict.fromkeys(s.case for s in self.slices))

    def to_json(self, part: str) -> dict:
        return {"images": self.images, "labels": self.labels, "split": PARTS[part],
                "slices": [s.to_json() for s in self.slices]}


@dataclass
class TaskMemory:
    """One task's memory: the labels (name -> id) and the plan its slices are stored for, the channels of an
    exemplar, the licence of the task's data, how the exemplars were chosen, its parts and their bytes."""

    labels: dict[str, int]
    plan: TaskPlan
    channels: int
    licence: str
    selection: dict
    parts: dict[str, MemoryPart]
    bytes: int = 0

    def count(self, part: str) -> int:
        return len(self.parts[part].slices) if part in self.parts else 0

    def to_json(self) -> dict:
        return {"labels": self.labels, "plan": self.plan.to_json(), "channels": self.channels,
                "licence": self.licence, "selection": self.selection,
                "parts": {name: part.to_json(name) for name, part in self.parts.items()}, "bytes": self.bytes}


@dataclass
class RehearsalMemory:
    """What ``memory/memory.json`` of a model folder describes (:meth:`read`), or a memory being written."""

    tasks: dict[str, TaskMemory] = field(default_factory=dict)
    patient_images: bool = True

    @property
    def bytes(self) -> int:
        return sum(task.bytes for task in self.tasks.values())

    def to_json(self) -> dict:
        return {"format": MEMORY_FORMAT, "format_version": MEMORY_FORMAT_VERSION,
                "patient_images": self.patient_images,
                "tasks": {name: task.to_json() for name, task in self.tasks.items()}, "bytes": self.bytes}

    # -- reading and checking ----------------------------------------------------------------------------------------
    @classmethod
    def read(cls, folder: Path, space: LabelSpace, split: Mapping | None = None,
             listed: Mapping[str, str] | None = None) -> RehearsalMemory | None:
        """The memory of a model folder, checked against its label space (tasks, labels and plans), its split (the
        replay part holds training cases only, the gate part validation cases only: ``split`` as in ``split.json``)
        and its manifest (``listed``: every file must be in it); None for a version without one. Raises
        :class:`ModelError` naming ``memory.json`` and the problem. The arrays are read by :meth:`arrays`."""
        path = folder / MEMORY_FILE
        if not path.is_file():
            return None
        data = read_format_json(path, "rehearsal memory", MEMORY_FORMAT, MEMORY_FORMAT_VERSION, ModelError)
        try:
            memory = cls(tasks={str(name): _task_from_json(task) for name, task in data["tasks"].items()},
                         patient_images=bool(data.get("patient_images", True)))
        except (KeyError, TypeError, ValueError, AttributeError, LabelSpaceError) as error:
            reason = f"{error} missing" if isinstance(error, KeyError) else str(error)
            raise ModelError(f"{path}: malformed rehearsal memory ({reason})") from None
        memory.check(path, space, split, listed)
        return memory

    def check(self, path: Path, space: LabelSpace, split: Mapping | None, listed: Mapping[str, str] | None) -> None:
        """The checks of :meth:`read` (``path``: the memory.json named in the errors)."""
        if not self.patient_images and self.tasks:
            raise ModelError(f"{path}: says it holds no patient images but holds tasks {', '.join(self.tasks)}")
        for name, task in self.tasks.items():
            if name not in space.tasks:
                raise ModelError(f"{path}: holds task '{name}', which the model's label space does not have")
            expected = {label.name: label.id for label in space.tasks[name].labels}
            if task.labels != expected:
                raise ModelError(f"{path}: task '{name}' holds labels {task.labels}, but the model's label space has "
                                 f"{expected}")
            if task.plan != space.tasks[name].plan:
                raise ModelError(f"{path}: task '{name}' is stored for another plan than the model's "
                                 f"({task.plan.describe()} vs {space.tasks[name].plan.describe()})")
            if task.parts and task.channels != task.plan.slice_context:
                raise ModelError(f"{path}: task '{name}' stores {task.channels} slice(s) per exemplar, but its plan "
                                 f"takes {task.plan.slice_context}")
            for part_name, part in task.parts.items():
                if part_name not in PARTS:
                    raise ModelError(f"{path}: task '{name}' has an unknown part '{part_name}' (known: "
                                     f"{', '.join(PARTS)})")
                for file in (part.images, part.labels):
                    if Path(file).name != file or not file.startswith(f"{name}.{part_name}."):
                        raise ModelError(f"{path}: task '{name}' names the file '{file}'; a memory file is "
                                         f"{MEMORY_DIR}/{name}.{part_name}.<images|labels>.nii.gz")
                    if listed is not None and f"{MEMORY_DIR}/{file}" not in listed:
                        raise ModelError(f"{folder_of(path) / MEMORY_DIR / file}: not listed in manifest.json; a "
                                         "memory file must be hashed like every file of the model")
                unknown = {label for s in part.slices for label in s.labels} - set(expected)
                if unknown:
                    raise ModelError(f"{path}: task '{name}' has slices with labels {sorted(unknown)}, which the task "
                                     "does not have")
                side = PARTS[part_name]
                if split is not None:
                    allowed = set((split.get(name) or {}).get(side, []))
                    outside = [case for case in part.cases if case not in allowed]
                    if outside:
                        raise ModelError(f"{path}: the {part_name} part of task '{name}' holds case '{outside[0]}', "
                                         f"which is not a {'training' if side == 'train' else 'validation'} case of "
                                         "split.json")

    def arrays(self, folder: Path, task: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        """The part's exemplars as stored: uint8 images (n, channels, H, W) and uint8 labels (n, H, W), checked
        against ``memory.json`` (sizes, label ids). Raises :class:`ModelError` naming the file."""
        entry = self.tasks[task]
        record = entry.parts[part]
        images = _read_array(folder / MEMORY_DIR / record.images)
        labels = _read_array(folder / MEMORY_DIR / record.labels)
        n, channels = len(record.slices), entry.channels
        height = max((s.shape[0] for s in record.slices), default=0)
        width = max((s.shape[1] for s in record.slices), default=0)
        if images.shape != (n * channels, height, width):
            raise ModelError(f"{folder / MEMORY_DIR / record.images}: holds {images.shape}, but memory.json describes "
                             f"{n} slices x {channels} channels of at most {height}x{width}")
        if labels.shape != (n, height, width):
            raise ModelError(f"{folder / MEMORY_DIR / record.labels}: holds {labels.shape}, but memory.json describes "
                             f"{n} slices of at most {height}x{width}")
        unknown = set(np.unique(labels).tolist()) - {0, *entry.labels.values()}
        if unknown:
            raise ModelError(f"{folder / MEMORY_DIR / record.labels}: holds label ids {sorted(unknown)}, which task "
                             f"'{task}' does not have ({entry.labels})")
        return images.reshape(n, channels, height, width), labels

    # -- describing ------------------------------------------------------------------------------------------------
    def describe(self) -> list[str]:
        """The model card's lines about the memory: its size, and per task what it holds and the data's licence."""
        if not self.patient_images:
            return ["This version holds **no rehearsal memory** (made with `--no-memory`: it carries no patient "
                    "images). Adding a task to it or updating one needs the folders of all its tasks "
                    "(`--replay-task NAME=DIR`)."]
        lines = [f"{format_bytes(self.bytes)} in `{MEMORY_DIR}/`: per task a few labelled training slices that "
                 "`add-task` replays and a few labelled validation slices on which its forgetting gate scores the "
                 "task when the task's folder is not given. These are slices of patient images: the memory carries "
                 "the licence of each task's data.", "",
                 "| task | replay slices (cases) | gate slices (cases) | channels | bytes | licence of the data |",
                 "|---|---|---|---|---|---|"]
        for name, task in self.tasks.items():
            replay, gate = task.parts.get("replay"), task.parts.get("gate")
            lines.append(f"| {name} | {task.count('replay')} ({len(replay.cases) if replay else 0}) | "
                         f"{task.count('gate')} ({len(gate.cases) if gate else 0}) | {task.channels} | "
                         f"{format_bytes(task.bytes)} | {task.licence or 'not stated'} |")
        return lines

    # -- writing ---------------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write ``memory/memory.json`` (after the arrays: :func:`write_part`); the model folder's manifest is
        written after it."""
        atomic_write_json(folder / MEMORY_FILE, self.to_json())


def folder_of(memory_file: Path) -> Path:
    """The model folder of a ``memory/memory.json``."""
    return memory_file.parent.parent


def part_files(task: str, part: str) -> tuple[str, str]:
    """The file names (inside ``memory/``) of a task's part: images, labels."""
    check_task_name(task)
    return f"{task}.{part}.images.nii.gz", f"{task}.{part}.labels.nii.gz"


def quantise(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """An exemplar's normalised intensities (channels, h, w) as uint8 with the range they span."""
    low, high = float(np.min(image)), float(np.max(image))
    scale = (high - low) or 1.0
    return np.rint((image - low) * (LEVELS / scale)).astype(np.uint8), low, high


def dequantise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The float32 intensities of a :func:`quantise`d exemplar."""
    return (values.astype(np.float32) * np.float32(((high - low) or 1.0) / LEVELS) + np.float32(low))


def write_part(folder: Path, task: str, part: str, images: list[np.ndarray], labels: list[np.ndarray],
               records: list[MemorySlice]) -> tuple[MemoryPart, int]:
    """Write a part's exemplars (``images``: uint8 (channels, h, w), ``labels``: uint8 (h, w) task label ids, in
    the order of ``records``) padded to the largest, compressed; returns the part and its bytes on disk."""
    image_file, label_file = part_files(task, part)
    channels = images[0].shape[0] if images else 1
    height = max((r.shape[0] for r in records), default=0)
    width = max((r.shape[1] for r in records), default=0)
    image_stack = np.zeros((len(records) * channels, height, width), dtype=np.uint8)
    label_stack = np.zeros((len(records), height, width), dtype=np.uint8)
    for i, (image, label, record) in enumerate(zip(images, labels, records, strict=True)):
        h, w = record.shape
        image_stack[i * channels: (i + 1) * channels, :h, :w] = image
        label_stack[i, :h, :w] = label
    size = 0
    for name, stack in ((image_file, image_stack), (label_file, label_stack)):
        target = folder / MEMORY_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image_atomic(sitk.GetImageFromArray(stack), target)
        size += target.stat().st_size
    return MemoryPart(images=image_file, labels=label_file, slices=records), size


def _read_array(path: Path) -> np.ndarray:
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise ModelError(f"{path}: the memory file cannot be read ({str(error).strip().splitlines()[-1][:200]})") \
            from None
    if array.dtype != np.uint8:
        raise ModelError(f"{path}: holds {array.dtype} values; a memory file holds uint8")
    return array.reshape((-1, *array.shape[-2:])) if array.ndim == 3 else array.reshape((1, *array.shape))


def _task_from_json(data: dict) -> TaskMemory:
    labels = {str(name): int(value) for name, value in data["labels"].items()}
    channels = int(data["channels"])
    if channels < 1:
        raise ValueError(f"channels {channels}")
    return TaskMemory(labels=labels, plan=TaskPlan.from_json(data["plan"]), channels=channels,
                      licence=str(data.get("licence", "")), selection=dict(data.get("selection") or {}),
                      parts={str(part): MemoryPart(images=str(record["images"]), labels=str(record["labels"]),
                                                   slices=[MemorySlice.from_json(s) for s in record["slices"]])
                             for part, record in data["parts"].items()},
                      bytes=int(data.get("bytes", 0)))
