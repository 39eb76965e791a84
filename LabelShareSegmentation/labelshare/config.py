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
    """Budget and settings of one training run (the resolution is each task's plan in the label space)."""

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


# The one rule of test-time mirroring, for ``segment --tta``, the worker's ``"mirror": true``, ``evaluate --tta`` and
# ``rank --score tta`` (:func:`check_mirroring`); the command line's help states it.
MIRROR_RULE = ("a lateralised task (its labels tell left from right) is never mirrored, and asking to mirror it is "
               "refused")


def check_mirroring(task: str, lateralised: bool, requested_by: str) -> None:
    """Refuse test-time mirroring of a lateralised task: training never flipped it, so its mirrored prediction
    swaps left and right. ``requested_by`` names what asked for mirroring (``--tta``, ``--score tta``, ...)."""
    if lateralised:
        raise LabelShareError(f"task '{task}' is lateralised (its labels tell left from right), so mirroring is not "
                              f"a valid augmentation for it: {requested_by} cannot be used for it")


# --format of ``labelshare segment``: name → ending of the outputs written into an output folder
OUTPUT_FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "png": ".png", "seg-nrrd": ".seg.nrrd",
                  "dicom-seg": ".dcm"}
# What ``labelshare segment`` does with an output that exists: refuse (the default), overwrite it, or continue an
# interrupted run (skip complete outputs, write the others)
EXISTING_OUTPUTS = ("refuse", "overwrite", "continue")


@dataclass
class SegmentConfig:
    """Settings of ``labelshare segment`` (:func:`labelshare.segment_run.segment_cases`).

    ``batch_size`` None takes the segmenter's default for the device; ``output_format`` None writes ``nifti`` into
    an output folder (a single output file's ending names its format); ``series`` picks the DICOM series of a folder
    that holds several; ``mirror`` averages with the left-right mirrored prediction (test-time augmentation, for
    tasks that are not lateralised); ``largest_component`` keeps only the largest connected component of every label,
    not only of the labels the model chose on its validation cases (which it always does).
    """

    task: str
    largest_component: bool = False
    mirror: bool = False
    slicing_axis: int | None = None
    batch_size: int | None = None
    existing: str = "refuse"
    output_format: str | None = None
    series: str | None = None
    device: str = "auto"

    def check(self) -> None:
        if self.batch_size is not None:
            check_at_least(self.batch_size, 1, "--batch-size")
        if self.existing not in EXISTING_OUTPUTS:
            raise LabelShareError(f"existing outputs: use one of {', '.join(EXISTING_OUTPUTS)}, not {self.existing!r}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise LabelShareError(f"--format {self.output_format}: use one of {', '.join(OUTPUT_FORMATS)}")
        self.device = parse_device(self.device)


# --score of ``labelshare rank``: how uncertain the model is about an image (labelshare/ranking.py)
RANK_SCORES = {
    "auto": "tta where the task allows mirroring (it ordered cases by the model's real error best, "
            "docs/annotation-queue), else entropy",
    "entropy": "mean softmax entropy in a band around the predicted label boundaries",
    "tta": "1 - mean Dice between the plain and the left-right mirrored prediction (about twice the time; "
           f"{MIRROR_RULE})",
}
DEFAULT_RANK_SCORE = "auto"


@dataclass
class RankConfig:
    """Settings of ``labelshare rank`` (:func:`labelshare.ranking.rank_cases`): the task, the score
    (:data:`RANK_SCORES`) and, as for ``segment``, the slicing axis, batch size, DICOM series and device."""

    task: str
    score: str = DEFAULT_RANK_SCORE
    slicing_axis: int | None = None
    batch_size: int | None = None
    series: str | None = None
    device: str = "auto"

    def check(self) -> None:
        if self.score not in RANK_SCORES:
            raise LabelShareError(f"--score {self.score}: use one of {', '.join(RANK_SCORES)}")
        if self.batch_size is not None:
            check_at_least(self.batch_size, 1, "--batch-size")
        self.device = parse_device(self.device)

    def score_for(self, lateralised: bool) -> str:
        """The score that is computed for a task: ``auto`` resolved (``tta`` where the task may be mirrored, else
        ``entropy``); an explicit ``tta`` for a lateralised task is refused (:func:`check_mirroring`)."""
        if self.score == "auto":
            return "entropy" if lateralised else "tta"
        if self.score == "tta":
            check_mirroring(self.task, lateralised, "--score tta (use --score entropy or auto)")
        return self.score


STRATEGIES = ("overlap", "size")  # label mapping of a task added to a model
NEW_LABEL_INITS = ("prior", "predicted", "background")  # how an output channel added for a new label starts


@dataclass
class AddTaskConfig:
    """Settings of ``labelshare add-task`` (:func:`labelshare.incremental.add_task`); the defaults were chosen by
    measurement (docs/incremental/README.md).

    ``replay_cases`` None replays every training case of every old task; ``max_regression`` is in Dice points;
    ``epochs`` None: a budget that grows with the new task (:func:`labelshare.budget.add_task_epochs`);
    ``new_task_share``: the task's share of every batch (the old tasks share the rest equally; None: every trained
    task, old or new, an equal share, as in joint training);
    ``new_label_init``: how the output channel of a label beyond n* starts; ``new_label_lr_scale``: the learning-rate
    multiplier of those channels (:class:`~labelshare.incremental.trainer.IncrementalTrainer`); ``min_new_dice``:
    refuse the version when a label of the task ends below this Dice (0-1; None: no floor).
    """

    strategy: str = "overlap"
    label_map: list[str] = field(default_factory=list)
    replay_cases: int | None = None
    distill_weight: float = 1.0
    max_regression: float = 1.0
    min_new_dice: float | None = None
    accept_regression: bool = False
    new_task_share: float | None = None
    new_label_init: str = "prior"
    new_label_lr_scale: float = 10.0
    epochs: int | None = None
    steps_per_epoch: int = 100
    batch_size: int = 16
    learning_rate: float = 2e-3
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LabelShareError(f"--strategy {self.strategy}: use one of {', '.join(STRATEGIES)}")
        if self.new_label_init not in NEW_LABEL_INITS:
            raise LabelShareError(f"--new-label-init {self.new_label_init}: use one of {', '.join(NEW_LABEL_INITS)}")
        if self.replay_cases is not None:
            check_at_least(self.replay_cases, 0, "--replay-cases")
        _check_finite(self.distill_weight, "--distill-weight", 0.0, 1e3)
        _check_finite(self.max_regression, "--max-regression", 0.0, 100.0)
        if self.min_new_dice is not None:
            _check_finite(self.min_new_dice, "--min-new-dice", 0.0, 1.0)
        if self.new_task_share is not None:
            _check_finite(self.new_task_share, "--new-task-share", 0.0, 1.0, low_open=True)
        _check_finite(self.new_label_lr_scale, "--new-label-lr-scale", 1.0, 1e3)
        for name in ("batch_size", "steps_per_epoch") + (("epochs",) if self.epochs is not None else ()):
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
