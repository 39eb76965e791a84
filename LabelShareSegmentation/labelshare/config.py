"""Typed configurations and the vocabularies they use: methods, devices, training and add-task settings, networks.

Light (no torch): the Slicer modules read the defaults and the device and method names from here in Slicer's own
process, and the command line builds these objects from its arguments. Library functions take them and
:meth:`check` them; a value a user can get wrong raises :class:`~labelshare.errors.LabelShareError` naming the
option.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from .errors import LabelShareError


@dataclass(frozen=True)
class Method:
    """How a method trains: the output layout (:mod:`labelshare.layouts`) and the task conditioning."""

    name: str
    layout: str
    conditioning: str
    description: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("label-sharing", "shared", "none", "the paper: labels ranked by size, k-th label of every task on shared "
           "label k; the task is not an input"),
    Method("label-sharing-task-channels", "shared", "task_channels", "label sharing with the task as one-hot input "
           "planes (robust when tasks look alike; docs/benchmark)"),
    Method("per-task", "shared", "none", "one network for one task"),
    Method("multi-channel", "concatenated", "none", "one output channel per label of every task"),
    Method("dodnet", "task_slots", "dodnet", "DoD-Net: task-conditioned dynamic head"),
)}
ADDABLE_METHODS = ("label-sharing", "label-sharing-task-channels", "per-task")  # methods add-task can extend
CONDITIONINGS = ("none", "task_channels", "dodnet")

DEVICES = ("auto", "cuda", "cpu")  # what the command line and both Slicer modules offer
_DEVICE_ALIASES = {"gpu": "cuda"}


def parse_device(text: str) -> str:
    """A device word as the engine uses it: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``gpu`` means ``cuda``)."""
    word = str(text).strip().lower()
    word = _DEVICE_ALIASES.get(word, word)
    if word in DEVICES or re.fullmatch(r"cuda:\d+", word):
        return word
    raise LabelShareError(f"unknown device '{text}'; use {', '.join(DEVICES)} (or cuda:N)")


MAX_IMAGE_SIZE = 1024  # network input side: a 1024 x 1024 slice bank of a few thousand slices still fits in memory
# Network shapes a model's config.json may ask for (checked before a network is built): far above what LabelShare
# trains (16..256 filters, 5 levels), far below what would take gigabytes to build.
MAX_FILTERS = 1024
MAX_LEVELS = 8
MAX_CHANNELS = 4096  # output channels (labels of all tasks) and task codes
MAX_INPUT_CHANNELS = 16


def check_at_least(value, minimum, option: str, maximum: int | None = None) -> None:
    """A whole number (not a bool) from ``minimum`` (to ``maximum``), else one error naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        bound = f"of at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise LabelShareError(f"{option} must be a whole number {bound}, not {value!r}")


def _check_finite(value, option: str, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or value > high or (low_open and value == low):
        bound = "(" if low_open else "["
        raise LabelShareError(f"{option} must be a number in {bound}{low:g}, {high:g}], not {value!r}")


@dataclass
class TrainConfig:
    """Budget and settings of one training run (the network and preprocessing come from the model config)."""

    image_size: int = 128
    batch_size: int = 16
    epochs: int = 10
    steps_per_epoch: int = 100
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    validation_fraction: float = 0.2
    foreground_oversampling: float = 0.33
    augment: bool = True
    amp: bool = True
    weights_dtype: str = "float32"

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def check(self) -> None:
        check_image_size(self.image_size, "--image-size")
        for name in ("batch_size", "epochs", "steps_per_epoch"):
            check_at_least(getattr(self, name), 1, f"--{name.replace('_', '-')}")
        _check_finite(self.learning_rate, "--learning-rate", 0.0, 10.0, low_open=True)
        _check_finite(self.validation_fraction, "--validation-fraction", 0.0, 1.0)
        if self.validation_fraction == 1.0:
            raise LabelShareError("--validation-fraction must be below 1: some cases must be left to train on")
        _check_finite(self.weight_decay, "weight_decay", 0.0, 10.0)
        _check_finite(self.foreground_oversampling, "foreground_oversampling", 0.0, 1.0)
        for name in ("augment", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise LabelShareError(f"{name} must be true or false, not {getattr(self, name)!r}")
        self.device = parse_device(self.device)
        if self.weights_dtype not in ("float32", "float16"):
            raise LabelShareError(f"--weights-dtype {self.weights_dtype}: use float32 or float16")

    def to_json(self) -> dict:
        return asdict(self)


def check_image_size(value, option: str) -> None:
    """The network input size: a multiple of 16 (four down-samplings) from 16 to :data:`MAX_IMAGE_SIZE`."""
    check_at_least(value, 16, option, MAX_IMAGE_SIZE)
    if value % 16:
        raise LabelShareError(f"{option} {value}: must be a multiple of 16 (four down-samplings)")


STRATEGIES = ("overlap", "size")  # label mapping of a task added to a model


@dataclass
class AddTaskConfig:
    """Settings of ``labelshare add-task`` (:func:`labelshare.incremental.add_task`); the defaults were chosen by
    measurement (docs/incremental/README.md).

    ``replay_cases`` None replays every training case of every old task; ``max_regression`` is in Dice points.
    """

    strategy: str = "overlap"
    label_map: list[str] = field(default_factory=list)
    replay_cases: int | None = None
    distill_weight: float = 1.0
    max_regression: float = 1.0
    accept_regression: bool = False
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 16
    learning_rate: float = 2e-3
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LabelShareError(f"--strategy {self.strategy}: use one of {', '.join(STRATEGIES)}")
        if self.replay_cases is not None:
            check_at_least(self.replay_cases, 0, "--replay-cases")
        _check_finite(self.distill_weight, "--distill-weight", 0.0, 1e3)
        _check_finite(self.max_regression, "--max-regression", 0.0, 100.0)
        for name in ("batch_size", "epochs", "steps_per_epoch"):
            check_at_least(getattr(self, name), 1, f"--{name.replace('_', '-')}")
        _check_finite(self.learning_rate, "--learning-rate", 0.0, 10.0, low_open=True)
        self.device = parse_device(self.device)


@dataclass
class NetworkConfig:
    """The network of a model: output channels, task conditioning (:data:`CONDITIONINGS`) and U-Net filters."""

    out_channels: int
    n_tasks: int = 1
    conditioning: str = "none"
    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    in_channels: int = 1

    def __post_init__(self):
        """ValueError for a shape no LabelShare network has, before anything is built (config.json is read from
        model folders)."""
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, not {self.conditioning!r}")
        for name, low, high in (("out_channels", 2, MAX_CHANNELS), ("n_tasks", 1, MAX_CHANNELS),
                                ("in_channels", 1, MAX_INPUT_CHANNELS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
        filters = self.filters
        if not isinstance(filters, list) or not 2 <= len(filters) <= MAX_LEVELS or \
                not all(isinstance(f, int) and not isinstance(f, bool) and 1 <= f <= MAX_FILTERS for f in filters):
            shown = repr(filters) if len(repr(filters)) < 80 else repr(filters)[:77] + "..."
            raise ValueError(f"filters must be a list of 2 to {MAX_LEVELS} whole numbers from 1 to {MAX_FILTERS} "
                             f"(one per U-Net level), not {shown}")

    def to_json(self) -> dict:
        return {"architecture": "dynunet2d", **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> NetworkConfig:
        if not isinstance(data, dict):
            raise ValueError(f"network must be a JSON object, not {type(data).__name__}")
        data = dict(data)
        architecture = data.pop("architecture", "dynunet2d")
        if architecture != "dynunet2d":
            raise ValueError(f"unknown architecture {architecture!r}")
        return cls(**data)
