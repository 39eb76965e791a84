"""Typed configurations and the vocabularies they use: devices, training, segmentation, ranking and add-task
settings, networks (the methods are :mod:`labelshare.core.methods`).

Every option a user can set has one owner: a field here holds its default next to its help text
(:func:`labelshare.core.options.option`). The edges a user touches build these objects once: the command line from its
arguments (:func:`labelshare.core.options.add_arguments`), the worker from a request's fields, the Slicer modules from
their widgets; everything below takes the object and holds no default of its own. Library functions
:meth:`check` them; a value a user can get wrong raises :class:`~labelshare.core.errors.LabelShareError` naming the
option. Light (no torch): the Slicer modules read the defaults and the device and method names from here in
Slicer's own process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field

from .errors import LabelShareError
from .methods import conditionings, known_conditioning
from .options import from_values, nested, option, values_of


DEVICES = ("auto", "cuda", "cpu")  # what the command line and both Slicer modules offer
DEFAULT_DEVICE = "auto"  # every configuration's device unless told otherwise (device_option)
WEIGHTS_DTYPES = ("float32", "float16")
# intensity augmentation of training patches (labelshare.engine.sampling.Augmenter)
INTENSITY_AUGMENTATIONS = {
    "standard": "brightness, contrast, gamma, noise",
    "scanner": "also random monotone intensity curves and blur, as films, digitisers and scanners differ "
               "(docs/resolution, \"Mammography\")",
}
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


class Configuration:
    """Shared by the typed configurations: built from options by their plain names (a nested configuration's
    options included), and their options read back the same way (:mod:`labelshare.core.options`)."""

    @classmethod
    def from_options(cls, **values):
        """The configuration with these options set (plain names, e.g. ``batch_size`` of a nested ``train``) and
        the others at their defaults; not checked."""
        return from_values(cls, values)

    def options(self, names: Sequence[str] | None = None) -> dict:
        """The options by plain name (``names``: only these)."""
        return values_of(self, names)


def device_option() -> str:
    """The ``device`` field of every configuration that runs a network (one default, one help)."""
    return option(DEFAULT_DEVICE, "auto, cuda (or cuda:N; gpu means cuda) or cpu (auto: CUDA if available)")


def _check_flag(config, name: str) -> None:
    if not isinstance(getattr(config, name), bool):
        raise LabelShareError(f"{name} must be true or false, not {getattr(config, name)!r}")


@dataclass
class TrainConfig(Configuration):
    """Budget and settings of one training run (the resolution is each task's plan in the label space)."""

    batch_size: int = option(16, "slices per training step")
    epochs: int = option(50, "epochs (validation and checkpoint after each)")
    steps_per_epoch: int = option(100, "training steps per epoch")
    learning_rate: float = option(2e-3, "peak learning rate (AdamW; warm-up, then polynomial decay)")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    seed: int = option(0, "seed of the split, sampling and weights")
    device: str = device_option()
    validation_fraction: float = option(0.2, "fraction of each task's cases (whole patients) held out for "
                                             "validation")
    foreground_oversampling: float = option(0.33, "share of patches centred on a labelled pixel")
    augment: bool = option(True, "spatial and intensity augmentation of the training patches")
    amp: bool = option(True, "mixed precision on CUDA")
    weights_dtype: str = option("float32", "precision of the stored weights (float16 halves the model folder)",
                                choices=WEIGHTS_DTYPES)
    intensity_augmentation: str = option("standard", "; ".join(f"{name}: {text}" for name, text in
                                                               INTENSITY_AUGMENTATIONS.items()),
                                         choices=INTENSITY_AUGMENTATIONS)
    task_weights: dict[str, float] = option({}, "a task's relative share of every batch (repeat per task; tasks not "
                                                "named weigh 1) (default: equal shares)", flag="--task-weight",
                                            metavar="TASK=WEIGHT")

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
            _check_flag(self, name)
        self.device = parse_device(self.device)
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise LabelShareError(f"--weights-dtype {self.weights_dtype}: use {' or '.join(WEIGHTS_DTYPES)}")
        if self.intensity_augmentation not in INTENSITY_AUGMENTATIONS:
            raise LabelShareError(f"--intensity-augmentation {self.intensity_augmentation!r}: use "
                                  f"{' or '.join(INTENSITY_AUGMENTATIONS)}")
        if not isinstance(self.task_weights, dict) or not all(isinstance(task, str) for task in self.task_weights):
            raise LabelShareError(f"task_weights must map task names to weights, not {self.task_weights!r}"[:200])
        for task, weight in self.task_weights.items():
            _check_finite(weight, f"--task-weight {task}", 0.0, 1e3, low_open=True)

    def to_json(self) -> dict:
        return asdict(self)


# The options of TrainConfig that ``labelshare train`` offers, and the budget of ``labelshare demo`` (its own preset:
# a short run on small generated tasks)
TRAIN_OPTIONS = ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "validation_fraction", "seed", "device",
                 "weights_dtype", "task_weights", "intensity_augmentation")
DEMO_BUDGET = {"epochs": 8, "steps_per_epoch": 40}


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
# --largest-component: of which labels only the largest connected component is kept
LARGEST_COMPONENT = {
    "model": "the labels the model chose on its validation cases (where that raised their Dice)",
    "all": "every label",
    "none": "no label (the network's output as it is)",
}
# slices per forward pass at inference when --batch-size is not given, by device type
INFERENCE_BATCH = {"cuda": 64, "cpu": 16}


@dataclass
class InferenceConfig(Configuration):
    """How a loaded model segments an image (:class:`labelshare.engine.inference.Segmenter`)."""

    batch_size: int | None = option(None, "slices per forward pass (default: " + ", ".join(
        f"{size} on {'CUDA' if kind == 'cuda' else 'the CPU'}" for kind, size in INFERENCE_BATCH.items()) + ")")
    mirror: bool = option(False, "test-time augmentation: average with the left-right mirrored prediction (about "
                                 f"twice the time; {MIRROR_RULE})", flag="--tta")
    largest_component: str = option(
        "model", "keep only the largest connected component of the labels chosen by: "
        + "; ".join(f"{name}: {text}" for name, text in LARGEST_COMPONENT.items())
        + " (--largest-component alone: all)", choices=LARGEST_COMPONENT, const="all")
    slicing_axis: int | None = option(None, "image axis to slice along (default: largest spacing)", choices=(0, 1, 2))

    def check(self) -> None:
        if self.batch_size is not None:
            check_at_least(self.batch_size, 1, "--batch-size")
        _check_flag(self, "mirror")
        if self.largest_component not in LARGEST_COMPONENT:
            raise LabelShareError(f"--largest-component {self.largest_component}: use one of "
                                  f"{', '.join(LARGEST_COMPONENT)}")
        if self.slicing_axis is not None and self.slicing_axis not in (0, 1, 2):
            raise LabelShareError(f"--slicing-axis {self.slicing_axis}: use 0, 1 or 2 (x, y, z)")

    def batch_size_on(self, device_type: str) -> int:
        """Slices per forward pass on a device of this type (``cuda``, ``cpu``)."""
        return self.batch_size or INFERENCE_BATCH.get(device_type, INFERENCE_BATCH["cpu"])


def task_option(what: str) -> str:
    """The ``task`` field (required): ``what`` the command does with the task's labels."""
    return option(MISSING, f"the task of the model whose labels to {what}")


def series_option() -> str | None:
    return option(None, "the DICOM series to read from a folder that holds several (DICOM inputs only)", metavar="UID")


@dataclass
class SegmentConfig(Configuration):
    """Settings of ``labelshare segment`` (:func:`labelshare.engine.segment_run.segment_cases`): the task, how it is
    segmented (``inference``), what happens to outputs that exist, the kind of the outputs written into an output
    folder (None: ``nifti``; a single output file's ending names its format), the DICOM series of a folder that holds
    several, the device, where the uncertainty maps go (None: none is made) and whether each input is checked
    against the task's training data (:mod:`labelshare.core.input_check`)."""

    task: str = task_option("segment")
    inference: InferenceConfig = nested(InferenceConfig)
    existing: str = option("refuse", "what to do with outputs that exist: " + ", ".join(EXISTING_OUTPUTS),
                           choices=EXISTING_OUTPUTS)
    output_format: str | None = option(None, "kind of the outputs written into an output folder (default: nifti)",
                                       flag="--format", choices=OUTPUT_FORMATS)
    series: str | None = series_option()
    device: str = device_option()
    uncertainty: str | None = option(
        None, "also write the per-voxel uncertainty (the normalised entropy of the predicted probabilities, 0-1; with "
              "--tta of both views averaged) on the input's grid: a file for one image (.nii.gz, .nii, .nrrd or .mha), "
              "a folder for several (<name>.nii.gz)", metavar="FILE")
    input_check: bool = option(True, "skip the input check (which compares every input with the task's training "
                                     "data and warns when it differs)", flag="--no-input-check")

    def check(self) -> None:
        self.inference.check()
        _check_flag(self, "input_check")
        if self.uncertainty is not None and (not isinstance(self.uncertainty, str) or not self.uncertainty):
            raise LabelShareError(f"--uncertainty must name a file or folder, not {self.uncertainty!r}")
        if self.existing not in EXISTING_OUTPUTS:
            raise LabelShareError(f"existing outputs: use one of {', '.join(EXISTING_OUTPUTS)}, not {self.existing!r}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise LabelShareError(f"--format {self.output_format}: use one of {', '.join(OUTPUT_FORMATS)}")
        self.device = parse_device(self.device)


# --score of ``labelshare rank``: how uncertain the model is about an image (labelshare/engine/ranking.py)
RANK_SCORES = {
    "auto": "tta where the task allows mirroring (it ordered cases by the model's real error best, "
            "docs/annotation-queue), else entropy",
    "entropy": "mean softmax entropy in a band around the predicted label boundaries",
    "tta": "1 - mean Dice between the plain and the left-right mirrored prediction (about twice the time; "
           f"{MIRROR_RULE})",
}


@dataclass
class RankConfig(Configuration):
    """Settings of ``labelshare rank`` (:func:`labelshare.engine.ranking.rank_cases`): the task, the score
    (:data:`RANK_SCORES`) and, as for ``segment``, the slicing axis, batch size, DICOM series and device."""

    task: str = task_option("score")
    score: str = option("auto", "; ".join(f"{name}: {text}" for name, text in RANK_SCORES.items()),
                        choices=RANK_SCORES)
    inference: InferenceConfig = nested(InferenceConfig, ("batch_size", "slicing_axis"))
    series: str | None = series_option()
    device: str = device_option()

    def check(self) -> None:
        if self.score not in RANK_SCORES:
            raise LabelShareError(f"--score {self.score}: use one of {', '.join(RANK_SCORES)}")
        self.inference.check()
        self.device = parse_device(self.device)

    def score_for(self, lateralised: bool) -> str:
        """The score that is computed for a task: ``auto`` resolved (``tta`` where the task may be mirrored, else
        ``entropy``); an explicit ``tta`` for a lateralised task is refused (:func:`check_mirroring`)."""
        if self.score == "auto":
            return "entropy" if lateralised else "tta"
        if self.score == "tta":
            check_mirroring(self.task, lateralised, "--score tta (use --score entropy or auto)")
        return self.score


@dataclass
class MemoryConfig(Configuration):
    """The rehearsal memory a new model version carries (:mod:`labelshare.core.memory`): how many slices per task it
    keeps to replay and to gate on (the default size measured in docs/incremental/memory.md), or none at all."""

    memory_slices: int = option(48, "training slices per task that the version's rehearsal memory keeps for "
                                    "add-task to replay when the task's folder is not given", metavar="N")
    replay_pixels: int = option(500_000, "a task of small slices keeps more training slices than --memory-slices: as "
                                         "many as hold this many pixels (hippocampus: about 280; 0: none more)",
                                flag="--memory-replay-pixels", metavar="PIXELS")
    gate_slices: int = option(32, "validation slices per task that the memory keeps for add-task's forgetting gate",
                              flag="--memory-gate-slices", metavar="N")
    gate_pixels: int = option(500_000, "a task of small slices keeps more validation slices than --memory-gate-slices: "
                                       "as many as hold this many pixels (hippocampus: about 280; 0: none more)",
                              flag="--memory-gate-pixels", metavar="PIXELS")
    write_memory: bool = option(True, "write no rehearsal memory: the version holds no patient images, and adding a "
                                      "task to it needs the folders of all its tasks", flag="--no-memory")

    def check(self) -> None:
        check_at_least(self.memory_slices, 1, "--memory-slices", MAX_MEMORY_SLICES)
        check_at_least(self.gate_slices, 1, "--memory-gate-slices", MAX_MEMORY_SLICES)
        check_at_least(self.replay_pixels, 0, "--memory-replay-pixels")
        check_at_least(self.gate_pixels, 0, "--memory-gate-pixels")
        _check_flag(self, "write_memory")


MAX_MEMORY_SLICES = 10_000
MEMORY_SIZES = ("memory_slices", "replay_pixels", "gate_slices", "gate_pixels")  # the options that set a task's choice
MEMORY_OPTIONS = (*MEMORY_SIZES, "write_memory")


# The options of TrainConfig that ``labelshare add-task`` offers (the others come from the model's training.json)
ADD_TASK_TRAIN_OPTIONS = ("steps_per_epoch", "batch_size", "learning_rate", "seed", "device")
STRATEGIES = ("overlap", "size")  # label mapping of a task added to a model
NEW_LABEL_INITS = ("prior", "predicted", "background")  # how an output channel added for a new label starts


def parse_replay_cases(text: str) -> int | None:
    """``--replay-cases``: a number of cases, or ``all`` (None)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise LabelShareError(f"--replay-cases {text}: give a number of cases or 'all'") from None


@dataclass
class AddTaskConfig(Configuration):
    """Settings of ``labelshare add-task`` (:func:`labelshare.engine.incremental.add_task`); the defaults were chosen by
    measurement (docs/incremental/README.md). ``train`` holds the budget and device (its other settings come from
    the model's own ``training.json``); its epochs are ``epochs``, or a budget that grows with the new task."""

    strategy: str = option("overlap", "label mapping of a new task", choices=STRATEGIES)
    label_map: list[str] = option([], "pin a label to a shared label: a number (above n* adds one) or TASK:LABEL",
                                  flag="--map", metavar="LABEL=SHARED")
    replay_cases: int | None = option(None, "training cases replayed per old task; 0: plain fine-tuning (default: "
                                            "all)", metavar="N|all", parse=parse_replay_cases)
    distill_weight: float = option(1.0, "weight of distillation from the old model on replayed slices")
    distill_new_task: float = option(0.0, "weight of distillation from the old model on the task's own slices: it "
                                          "kept old tasks of the same modality but stopped a new modality from being "
                                          "learned (docs/incremental/memory.md)",
                                   metavar="WEIGHT")
    max_regression: float = option(1.0, "largest allowed loss of an old task's mean Dice, in points",
                                   metavar="POINTS")
    min_new_dice: float | None = option(None, "refuse the version when a label of the task ends below this Dice "
                                              "(0-1) (default: no floor)", metavar="DICE")
    accept_regression: bool = option(False, "publish even when the gate refuses")
    new_task_share: float | None = option(None, "the task's share of every batch; the old tasks share the rest "
                                                "(default: an equal share for every trained task, old or new: "
                                                "1/(old tasks replayed + 1))", metavar="FRACTION")
    new_label_init: str = option("prior", "how the output channel of a label beyond n* starts: a copy of the "
                                          "background channel at the label's prior odds, a copy of the channel the "
                                          "model predicts on most of the label's pixels at half its odds, or the "
                                          "background channel at e^-4 odds", choices=NEW_LABEL_INITS)
    new_label_lr_scale: float = option(10.0, "learning-rate multiplier of the output channels of labels beyond n*, "
                                             "so that a channel starting at a small label's prior rises within a "
                                             "short budget (1: the base rate)", metavar="FACTOR")
    epochs: int | None = option(None, "epochs (default: a budget that grows with the task's labels and cases; "
                                      "printed before training, see labelshare/core/budget.py)")
    train: TrainConfig = nested(TrainConfig, ADD_TASK_TRAIN_OPTIONS)
    memory: MemoryConfig = nested(MemoryConfig)

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LabelShareError(f"--strategy {self.strategy}: use one of {', '.join(STRATEGIES)}")
        if self.new_label_init not in NEW_LABEL_INITS:
            raise LabelShareError(f"--new-label-init {self.new_label_init}: use one of {', '.join(NEW_LABEL_INITS)}")
        if self.replay_cases is not None:
            check_at_least(self.replay_cases, 0, "--replay-cases")
        _check_finite(self.distill_weight, "--distill-weight", 0.0, 1e3)
        _check_finite(self.distill_new_task, "--distill-new-task", 0.0, 1e3)
        _check_finite(self.max_regression, "--max-regression", 0.0, 100.0)
        if self.min_new_dice is not None:
            _check_finite(self.min_new_dice, "--min-new-dice", 0.0, 1.0)
        if self.new_task_share is not None:
            _check_finite(self.new_task_share, "--new-task-share", 0.0, 1.0, low_open=True)
        _check_finite(self.new_label_lr_scale, "--new-label-lr-scale", 1.0, 1e3)
        if self.epochs is not None:
            check_at_least(self.epochs, 1, "--epochs")
        self.train.check()
        self.memory.check()


DEFAULT_FILTERS = (16, 32, 64, 128, 256)  # U-Net filters per level of a new model


def unet_strides(levels: int) -> list[int]:
    """The strides of a U-Net of ``levels`` levels: full resolution first, then a halving per level."""
    return [1] + [2] * (levels - 1)


@dataclass
class NetworkConfig:
    """The network of a model: output channels, task conditioning (:func:`labelshare.core.methods.conditionings`) and
    U-Net filters."""

    out_channels: int
    n_tasks: int = 1
    conditioning: str = "none"
    filters: list[int] = field(default_factory=lambda: list(DEFAULT_FILTERS))
    in_channels: int = 1

    def __post_init__(self):
        """ValueError for a shape no LabelShare network has, before anything is built (config.json is read from
        model folders)."""
        if not known_conditioning(self.conditioning):
            raise ValueError(f"conditioning must be one of {sorted(conditionings())}, not {self.conditioning!r}")
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

    @property
    def strides(self) -> list[int]:
        return unet_strides(len(self.filters))

    @property
    def patch_multiple(self) -> int:
        """What every side of a patch must be a multiple of: the network's total down-sampling."""
        return math.prod(self.strides)

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
