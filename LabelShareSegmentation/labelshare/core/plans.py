"""Per-task plans: at which in-plane resolution the network sees a task's slices and how large its patches are
(nnU-Net's experiment planning, in 2D). Light (no torch).

A plan is computed from a task's training cases when the label space is built and stored with the task in
``labelspace.json``, so training and inference read the same plan:

1. **Target spacing**: the median in-plane spacing of the task's slices (per axis). Images without a spacing (PNG)
   count their pixels as 1 mm.
2. **Small structures** (``min_image_side``, off unless set): when the median slice's shorter side at that spacing
   is below ``min_image_side`` pixels, the spacing is refined by the same factor on both axes until it reaches it,
   so that a task of small crops (hippocampus: 50x35 at 1 mm) is seen enlarged, as the first release's square
   resize did (docs/resolution, "Plans for small structures").
3. **Resolution cap**: when the median slice at that spacing has more than ``image_pixels`` pixels, the spacing is
   coarsened by the same factor on both axes until it has ``image_pixels`` (the aspect ratio is kept).
4. **Patch size**: the median slice shape at the target spacing, rounded up to a multiple of the network's
   down-sampling (``patch_multiple``: the product of the U-Net's strides,
   :attr:`labelshare.core.config.NetworkConfig.patch_multiple`); while it has more than ``patch_pixels`` pixels, its
   axis that is largest relative to the median shape shrinks by that multiple (nnU-Net's rule). A patch smaller than the
   slice is slid over it at inference (Gaussian-weighted windows).
5. **Slice context** (2.5D): a task of volumes (more than one slice per case, median over cases) sees each slice
   with its neighbours, ``slice_context`` slices centred on it as input channels, or the number
   ``task_slice_context`` gives for that task; a task of 2D images or projections takes one slice. A plan of more
   than one slice records the slicing scheme that stacks neighbours (``largest-spacing`` v2,
   :mod:`labelshare.core.preprocessing`); a model's network has one input channel per slice of its widest plan.
6. **Preprocessing**: the schemes of normalisation, slicing and resampling (:mod:`labelshare.core.preprocessing`) the
   task is preprocessed with, recorded so that the code dispatches on them.

Models of the first release resized every slice to one square size whatever its spacing; such a model (or a run
asked for with ``--fixed-size``) has *fixed-size* plans: ``size`` instead of ``spacing``, patch = size. The rule
a label space's plans were made with (:class:`PlanSettings`, with its patch multiple and preprocessing) is stored
with it, so a task added later is planned the same way. Fields that older files lack read as what those files were
made with: patches of multiples of 16 (the five-level U-Net), the first preprocessing schemes and one slice per
input (a plan of the issue-29 prototype that records ``slice_context`` but no schemes was made with the neighbours'
stacks: it reads as ``largest-spacing`` v2).

A new planning rule is a new field of :class:`PlanSettings` that :func:`plan_task` applies (``min_image_side``,
``slice_context``); what it decides is stored in the :class:`TaskPlan` (its ``spacing``, its ``slice_context``), so
models planned before keep their plans. Fields at their neutral value are not written, so a label space of the
earlier rule is written as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .config import DEFAULT_FILTERS, NetworkConfig
from .errors import LabelSpaceError
from .options import option
from .preprocessing import (CONTEXT_SLICING, DEFAULT_PREPROCESSING, FIRST_PREPROCESSING, MAX_SLICE_CONTEXT,
                            Preprocessing)

MIN_PATCH_SIDE = 32
MAX_SIDE = 2048  # larger planned images or patches are refused: a spacing error, not an image to train on
# patches of the network a new model gets (the default filters: one level per filter count)
DEFAULT_PATCH_MULTIPLE = NetworkConfig(out_channels=2, filters=list(DEFAULT_FILTERS)).patch_multiple
FIRST_PATCH_MULTIPLE = 16  # what label spaces that do not record it were planned for (the five-level U-Net)


def check_fixed_size(value, option: str, multiple: int) -> None:
    """A fixed size (the first release's square resize, ``--fixed-size``): a whole number, a multiple of the
    network's ``multiple`` in :data:`MIN_PATCH_SIDE`..:data:`MAX_SIDE`, else one error naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value % multiple \
            or not MIN_PATCH_SIDE <= value <= MAX_SIDE:
        raise LabelSpaceError(f"{option} {value!r}: a multiple of {multiple} in {MIN_PATCH_SIDE}..{MAX_SIDE}")


def check_patch_multiple(plan: TaskPlan, multiple: int, where: str) -> None:
    """LabelSpaceError unless the plan's patch fits a network whose down-sampling is ``multiple``."""
    if any(side % multiple for side in plan.patch_size):
        raise LabelSpaceError(f"{where}: patch size {plan.patch_size[0]}x{plan.patch_size[1]} is not a multiple of "
                              f"{multiple}, the down-sampling of the network")


def check_slice_context(value, what: str) -> None:
    """A slice context: an odd whole number in 1..:data:`MAX_SLICE_CONTEXT`, else one error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value % 2 == 0 or not 1 <= value <= MAX_SLICE_CONTEXT:
        raise LabelSpaceError(f"{what} {value!r}: an odd number of slices in 1..{MAX_SLICE_CONTEXT}")


class SliceContextArgument(argparse.Action):
    """``--slice-context K`` (every task of volumes) or ``TASK=K`` (one task; repeat): K sets ``slice_context``,
    TASK=K adds to ``task_slice_context`` (the values are checked with the settings: :meth:`PlanSettings.check`)."""

    def __call__(self, parser, namespace, text, option_string=None):
        task, _, value = text.rpartition("=")
        try:
            context = int(value)
        except ValueError:
            raise argparse.ArgumentError(self, f"{text}: expected K or TASK=K, e.g. 5 or hippocampus=5") from None
        if task:
            namespace.task_slice_context = {**getattr(namespace, "task_slice_context", {}), task: context}
        else:
            setattr(namespace, self.dest, context)


@dataclass(frozen=True)
class PlanSettings:
    """The rule plans are made with: the compute budget (chosen by measurement: docs/resolution), or a fixed size
    (the first release's square resize; kept to load its models and to compare against)."""

    image_pixels: int = option(256 * 256, "largest median slice (pixels) at a task's target spacing; larger ones "
                                          "are resampled coarser, aspect ratio kept")
    patch_pixels: int = option(192 * 192, "largest training patch / inference window (pixels)")
    fixed_size: int | None = option(None, "instead of plans, resize every slice to SIZE x SIZE (the first release's "
                                          "preprocessing)", metavar="SIZE")
    min_image_side: int | None = option(None, "smallest shorter side (pixels) of a task's median slice: a task of "
                                              "smaller slices is resampled finer, aspect ratio kept (default: never "
                                              "finer than the median spacing)", metavar="PIXELS")
    slice_context: int = option(1, "slices per input for tasks of volumes: each slice with its neighbours as K "
                                   "input channels (odd); TASK=K for one task (repeat); 2D images and projections "
                                   "keep 1", metavar="K|TASK=K", action=SliceContextArgument)
    task_slice_context: dict[str, int] = option({}, "tasks that take another slice context than slice_context "
                                                    "(set with --slice-context TASK=K)")
    patch_multiple: int = DEFAULT_PATCH_MULTIPLE  # the down-sampling of the network the plans are made for
    preprocessing: Preprocessing = DEFAULT_PREPROCESSING  # the schemes every plan records

    def check(self, as_options: bool = True) -> None:
        """One error naming the value as its command-line option (``--fixed-size``), or as its field in a file
        (``fixed_size``) when not ``as_options``."""
        def named(field: str) -> str:
            return f"--{field.replace('_', '-')}" if as_options else field

        for name in ("image_pixels", "patch_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not MIN_PATCH_SIDE ** 2 <= value <= MAX_SIDE ** 2:
                raise LabelSpaceError(f"{named(name)} {value!r}: must be a whole number of pixels in "
                                      f"{MIN_PATCH_SIDE ** 2}..{MAX_SIDE ** 2}")
        if isinstance(self.patch_multiple, bool) or not isinstance(self.patch_multiple, int) \
                or not 1 <= self.patch_multiple <= MIN_PATCH_SIDE:
            raise LabelSpaceError(f"patch_multiple {self.patch_multiple!r}: a whole number from 1 to {MIN_PATCH_SIDE}")
        if self.fixed_size is not None:
            check_fixed_size(self.fixed_size, named("fixed_size"), self.patch_multiple)
        if self.min_image_side is not None and (isinstance(self.min_image_side, bool) or not isinstance(
                self.min_image_side, int) or not MIN_PATCH_SIDE <= self.min_image_side <= MAX_SIDE):
            raise LabelSpaceError(f"{named('min_image_side')} {self.min_image_side!r}: must be a whole number of "
                                  f"pixels in {MIN_PATCH_SIDE}..{MAX_SIDE}")
        check_slice_context(self.slice_context, named("slice_context"))
        if not isinstance(self.task_slice_context, dict):
            raise LabelSpaceError(f"task_slice_context must map task names to slice contexts, not "
                                  f"{self.task_slice_context!r}"[:200])
        for task, context in self.task_slice_context.items():
            check_slice_context(context, f"{named('slice_context')} of task '{task}'")
        self.preprocessing.check()

    def check_tasks(self, tasks: Iterable[str]) -> None:
        """Every task the rule names (``--slice-context TASK=K``) is one of ``tasks``, those of the label space it
        plans."""
        tasks = list(tasks)
        unknown = [task for task in self.task_slice_context if task not in tasks]
        if unknown:
            raise LabelSpaceError(f"--slice-context {unknown[0]}=...: not a task given with --task "
                                  f"({', '.join(tasks)})")

    def slice_context_of(self, task: str | None) -> int:
        """The slice context of the task ``task`` (None: a task the rule does not name) if it is a task of volumes."""
        return self.task_slice_context.get(task, self.slice_context)

    def plan(self, geometries: Sequence[SliceGeometry], task: str | None = None) -> TaskPlan:
        """The plan of the task ``task`` (None: a task the rule does not name) from the slice geometry of its
        training cases."""
        self.check()
        if self.fixed_size is not None:
            return fixed_size_plan(self.fixed_size, self.preprocessing)
        return plan_task(geometries, self, task)

    def to_json(self) -> dict:
        """The rule; the fields added after the first plans (``min_image_side``, ``slice_context``,
        ``task_slice_context``) only when they are not neutral, so a rule without them is written as before."""
        rule = {"fixed_size": self.fixed_size} if self.fixed_size is not None else \
            {"image_pixels": self.image_pixels, "patch_pixels": self.patch_pixels}
        later = {"min_image_side": self.min_image_side, "slice_context": self.slice_context,
                 "task_slice_context": dict(self.task_slice_context)}
        return {**rule, **{key: value for key, value in later.items() if value not in (None, 1, {})},
                "patch_multiple": self.patch_multiple, "preprocessing": self.preprocessing.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> PlanSettings:
        """The settings a label space records; fields it lacks are what such files were made with."""
        try:
            settings = cls(**{k: int(v) for k, v in data.items() if k in ("image_pixels", "patch_pixels",
                                                                         "fixed_size", "min_image_side",
                                                                         "slice_context")},
                           task_slice_context={str(task): int(context) for task, context in
                                               data.get("task_slice_context", {}).items()},
                           patch_multiple=int(data.get("patch_multiple", FIRST_PATCH_MULTIPLE)),
                           preprocessing=Preprocessing.from_json(data.get("preprocessing")))
        except (TypeError, ValueError, AttributeError) as error:
            raise LabelSpaceError(f"malformed ({error})") from None
        settings.check(as_options=False)
        return settings


@dataclass(frozen=True)
class SliceGeometry:
    """One case's slices: their shape (rows, columns), in-plane spacing (rows, columns) in mm and number."""

    shape: tuple[int, int]
    spacing: tuple[float, float]
    slices: int = 1  # one: a 2D image or a projection


@dataclass(frozen=True)
class TaskPlan:
    """How a task's slices are brought to the network: preprocessed by the ``preprocessing`` schemes, resampled to
    ``spacing`` (aspect ratio kept) or, for fixed-size plans, to ``size``; trained on ``patch_size`` patches and
    segmented with windows of that size, each slice with ``slice_context`` slices centred on it as input channels.
    The patch fits the network it was planned for, and the context its input channels (both checked against a
    model's network when its folder is verified)."""

    patch_size: tuple[int, int]
    spacing: tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    median_shape: tuple[int, int] | None = None      # median slice shape at the target spacing
    source_spacing: tuple[float, float] | None = None  # median spacing of the task's own slices
    preprocessing: Preprocessing = FIRST_PREPROCESSING  # a plan that does not record its schemes was made with these
    slice_context: int = 1  # slices per input, centred on the one segmented (a plan without it takes one)

    def __post_init__(self):
        if (self.spacing is None) == (self.size is None):
            raise LabelSpaceError("a plan has either a target spacing or a fixed size")
        if len(self.patch_size) != 2 or any(p < MIN_PATCH_SIDE or p > MAX_SIDE for p in self.patch_size):
            raise LabelSpaceError(f"patch size {self.patch_size}: two sides in {MIN_PATCH_SIDE}..{MAX_SIDE}")
        if self.spacing is not None and (len(self.spacing) != 2 or not all(
                math.isfinite(s) and 1e-4 < s < 1e4 for s in self.spacing)):
            raise LabelSpaceError(f"target spacing {self.spacing}: two positive finite values are needed")
        check_slice_context(self.slice_context, "slice context")
        most = self.preprocessing.slicing_scheme.max_context
        if self.slice_context > most:
            raise LabelSpaceError(f"slice context {self.slice_context}: the slicing scheme "
                                  f"{self.preprocessing.slicing} takes {most} slice(s) per input")

    @property
    def fixed_size(self) -> bool:
        return self.size is not None

    def target_shape(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int]:
        """The shape of a slice of ``shape`` and ``spacing`` (rows, columns) at this plan's resolution."""
        if self.size is not None:
            return tuple(self.size)
        return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, self.spacing, strict=True))

    def describe(self) -> str:
        if self.size is not None:
            return f"every slice resized to {self.size[0]}x{self.size[1]}"
        spacing = "x".join(f"{s:.3g}" for s in self.spacing)
        median = f", median slice {self.median_shape[0]}x{self.median_shape[1]}" if self.median_shape else ""
        context = f", {self.slice_context} slices per input" if self.slice_context > 1 else ""
        return f"spacing {spacing} mm{median}, patch {self.patch_size[0]}x{self.patch_size[1]}{context}"

    def stacks(self, slices: np.ndarray, indices: Sequence[int], channels: int) -> np.ndarray:
        """The (len(indices), channels, h, w) input of a network of ``channels`` input channels for the slices at
        ``indices`` of the (n, h, w) ``slices`` of one image: by the plan's slicing scheme, with its context."""
        return self.preprocessing.slicing_scheme.stacks(slices, indices, self.slice_context, channels)

    def to_json(self) -> dict:
        data = {"patch_size": list(self.patch_size)}
        for key in ("spacing", "size", "median_shape", "source_spacing"):
            value = getattr(self, key)
            if value is not None:
                data[key] = [float(v) if key.endswith("spacing") else int(v) for v in value]
        if self.slice_context != 1:
            data["slice_context"] = self.slice_context
        return {**data, "preprocessing": self.preprocessing.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> TaskPlan:
        def pair(key, kind):
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or len(value) != 2:
                raise LabelSpaceError(f"'{key}' must be a list of two numbers")
            return tuple(kind(v) for v in value)
        try:
            context = data.get("slice_context", 1)
            if isinstance(context, bool) or not isinstance(context, int):
                raise ValueError(f"slice_context {context!r} is not a whole number")
            preprocessing = Preprocessing.from_json(data.get("preprocessing"))
            if "preprocessing" not in data and context > 1:  # the issue-29 prototype: neighbours, before the schemes
                preprocessing = dataclasses.replace(preprocessing, slicing=CONTEXT_SLICING)
            return cls(patch_size=pair("patch_size", int), spacing=pair("spacing", float), size=pair("size", int),
                       median_shape=pair("median_shape", int), source_spacing=pair("source_spacing", float),
                       preprocessing=preprocessing, slice_context=context)
        except (TypeError, ValueError) as error:
            raise LabelSpaceError(f"malformed ({error})") from None


def fixed_size_plan(size: int, preprocessing: Preprocessing) -> TaskPlan:
    """The first release's preprocessing: every slice resized to ``size`` x ``size``."""
    return TaskPlan(patch_size=(size, size), size=(size, size), preprocessing=preprocessing)


def _round_up(value: float, multiple: int) -> int:
    # the tolerance keeps a side that is a multiple up to rounding (64.00000000000001 after refining) at that multiple
    return int(max(MIN_PATCH_SIDE, math.ceil(value / multiple - 1e-9) * multiple))


def plan_task(geometries: Sequence[SliceGeometry], budget: PlanSettings, task: str | None = None) -> TaskPlan:
    """The plan of the task ``task`` from the slice geometry of its training cases (see the module docstring)."""
    if not geometries:
        raise LabelSpaceError("no training cases to plan from")
    spacings = np.array([g.spacing for g in geometries], dtype=float)
    if not np.isfinite(spacings).all() or (spacings <= 0).any():
        raise LabelSpaceError("a case has a zero, negative or undefined spacing")
    source = tuple(float(v) for v in np.median(spacings, axis=0))
    target = np.array(source)
    shapes = np.array([[n * s / t for n, s, t in zip(g.shape, g.spacing, target, strict=True)] for g in geometries])
    median = np.median(shapes, axis=0)
    if budget.min_image_side is not None and median.min() < budget.min_image_side:
        factor = budget.min_image_side / median.min()
        target, median = target / factor, median * factor
    if median.prod() > budget.image_pixels:
        factor = math.sqrt(median.prod() / budget.image_pixels)
        target, median = target * factor, median / factor
    if median.max() > MAX_SIDE:
        raise LabelSpaceError(f"the median slice would be {median[0]:.0f}x{median[1]:.0f} pixels at the plan's "
                              "spacing; check the images' spacing")
    multiple = budget.patch_multiple
    patch = [_round_up(side, multiple) for side in median]
    while patch[0] * patch[1] > budget.patch_pixels and max(patch) > MIN_PATCH_SIDE:
        axis = int(np.argmax([p / m for p, m in zip(patch, median, strict=True)]))
        if patch[axis] <= MIN_PATCH_SIDE:
            axis = 1 - axis
        patch[axis] -= multiple
    volumes = np.median([g.slices for g in geometries]) > 1
    context = budget.slice_context_of(task) if volumes else 1
    preprocessing = budget.preprocessing
    if context > preprocessing.slicing_scheme.max_context:
        preprocessing = dataclasses.replace(preprocessing, slicing=CONTEXT_SLICING)
    return TaskPlan(patch_size=(patch[0], patch[1]), spacing=(float(target[0]), float(target[1])),
                    median_shape=(int(round(median[0])), int(round(median[1]))), source_spacing=source,
                    preprocessing=preprocessing, slice_context=context)
