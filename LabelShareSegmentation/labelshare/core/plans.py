"""Per-task plans: at which in-plane resolution the network sees a task's slices and how large its patches are
(nnU-Net's experiment planning, in 2D). Light (no torch).

A plan is computed from a task's training cases when the label space is built and stored with the task in
``labelspace.json``, so training and inference read the same plan:

1. **Target spacing**: the median in-plane spacing of the task's slices (per axis). Images without a spacing (PNG)
   count their pixels as 1 mm.
2. **Resolution cap**: when the median slice at that spacing has more than ``image_pixels`` pixels, the spacing is
   coarsened by the same factor on both axes until it has ``image_pixels`` (the aspect ratio is kept).
3. **Patch size**: the median slice shape at the target spacing, rounded up to a multiple of the network's
   down-sampling (``patch_multiple``: the product of the U-Net's strides,
   :attr:`labelshare.core.config.NetworkConfig.patch_multiple`); while it has more than ``patch_pixels`` pixels, its
   axis that is largest relative to the median shape shrinks by that multiple (nnU-Net's rule). A patch smaller than the
   slice is slid over it at inference (Gaussian-weighted windows).
4. **Preprocessing**: the schemes of normalisation, slicing and resampling (:mod:`labelshare.core.preprocessing`) the
   task is preprocessed with, recorded so that the code dispatches on them.

Models of the first release resized every slice to one square size whatever its spacing; such a model (or a run
asked for with ``--fixed-size``) has *fixed-size* plans: ``size`` instead of ``spacing``, patch = size. The rule
a label space's plans were made with (:class:`PlanSettings`, with its patch multiple and preprocessing) is stored
with it, so a task added later is planned the same way. Fields that older files lack read as what those files were
made with: patches of multiples of 16 (the five-level U-Net) and the first preprocessing schemes.

A new planning rule (a target spacing finer than the median for small structures, say) is a new field of
:class:`PlanSettings` that :func:`plan_task` applies; what it decides is stored in the :class:`TaskPlan` (its
``spacing``), so models planned before keep their plans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import DEFAULT_FILTERS, NetworkConfig
from .errors import LabelSpaceError
from .options import option
from .preprocessing import DEFAULT_PREPROCESSING, FIRST_PREPROCESSING, Preprocessing

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


@dataclass(frozen=True)
class PlanSettings:
    """The rule plans are made with: the compute budget (chosen by measurement: docs/resolution), or a fixed size
    (the first release's square resize; kept to load its models and to compare against)."""

    image_pixels: int = option(256 * 256, "largest median slice (pixels) at a task's target spacing; larger ones "
                                          "are resampled coarser, aspect ratio kept")
    patch_pixels: int = option(192 * 192, "largest training patch / inference window (pixels)")
    fixed_size: int | None = option(None, "instead of plans, resize every slice to SIZE x SIZE (the first release's "
                                          "preprocessing)", metavar="SIZE")
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
        self.preprocessing.check()

    def plan(self, geometries: Sequence[SliceGeometry]) -> TaskPlan:
        """The plan of a task from the slice geometry of its training cases."""
        self.check()
        if self.fixed_size is not None:
            return fixed_size_plan(self.fixed_size, self.preprocessing)
        return plan_task(geometries, self)

    def to_json(self) -> dict:
        rule = {"fixed_size": self.fixed_size} if self.fixed_size is not None else \
            {"image_pixels": self.image_pixels, "patch_pixels": self.patch_pixels}
        return {**rule, "patch_multiple": self.patch_multiple, "preprocessing": self.preprocessing.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> PlanSettings:
        """The settings a label space records; fields it lacks are what such files were made with."""
        try:
            settings = cls(**{k: int(v) for k, v in data.items() if k in ("image_pixels", "patch_pixels",
                                                                         "fixed_size")},
                           patch_multiple=int(data.get("patch_multiple", FIRST_PATCH_MULTIPLE)),
                           preprocessing=Preprocessing.from_json(data.get("preprocessing")))
        except (TypeError, ValueError, AttributeError) as error:
            raise LabelSpaceError(f"malformed ({error})") from None
        settings.check(as_options=False)
        return settings


@dataclass(frozen=True)
class SliceGeometry:
    """One case's slices: their shape (rows, columns) and in-plane spacing (rows, columns) in mm."""

    shape: tuple[int, int]
    spacing: tuple[float, float]


@dataclass(frozen=True)
class TaskPlan:
    """How a task's slices are brought to the network: preprocessed by the ``preprocessing`` schemes, resampled to
    ``spacing`` (aspect ratio kept) or, for fixed-size plans, to ``size``; trained on ``patch_size`` patches and
    segmented with windows of that size. The patch fits the network it was planned for (checked against a model's
    network when its folder is verified)."""

    patch_size: tuple[int, int]
    spacing: tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    median_shape: tuple[int, int] | None = None      # median slice shape at the target spacing
    source_spacing: tuple[float, float] | None = None  # median spacing of the task's own slices
    preprocessing: Preprocessing = FIRST_PREPROCESSING  # a plan that does not record its schemes was made with these

    def __post_init__(self):
        if (self.spacing is None) == (self.size is None):
            raise LabelSpaceError("a plan has either a target spacing or a fixed size")
        if len(self.patch_size) != 2 or any(p < MIN_PATCH_SIDE or p > MAX_SIDE for p in self.patch_size):
            raise LabelSpaceError(f"patch size {self.patch_size}: two sides in {MIN_PATCH_SIDE}..{MAX_SIDE}")
        if self.spacing is not None and (len(self.spacing) != 2 or not all(
                math.isfinite(s) and 1e-4 < s < 1e4 for s in self.spacing)):
            raise LabelSpaceError(f"target spacing {self.spacing}: two positive finite values are needed")

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
        return f"spacing {spacing} mm{median}, patch {self.patch_size[0]}x{self.patch_size[1]}"

    def to_json(self) -> dict:
        data = {"patch_size": list(self.patch_size)}
        for key in ("spacing", "size", "median_shape", "source_spacing"):
            value = getattr(self, key)
            if value is not None:
                data[key] = [float(v) if key.endswith("spacing") else int(v) for v in value]
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
            return cls(patch_size=pair("patch_size", int), spacing=pair("spacing", float), size=pair("size", int),
                       median_shape=pair("median_shape", int), source_spacing=pair("source_spacing", float),
                       preprocessing=Preprocessing.from_json(data.get("preprocessing")))
        except (TypeError, ValueError) as error:
            raise LabelSpaceError(f"malformed ({error})") from None


def fixed_size_plan(size: int, preprocessing: Preprocessing) -> TaskPlan:
    """The first release's preprocessing: every slice resized to ``size`` x ``size``."""
    return TaskPlan(patch_size=(size, size), size=(size, size), preprocessing=preprocessing)


def _round_up(value: float, multiple: int) -> int:
    return int(max(MIN_PATCH_SIDE, math.ceil(value / multiple) * multiple))


def plan_task(geometries: Sequence[SliceGeometry], budget: PlanSettings) -> TaskPlan:
    """The plan of a task from the slice geometry of its training cases (see the module docstring)."""
    if not geometries:
        raise LabelSpaceError("no training cases to plan from")
    spacings = np.array([g.spacing for g in geometries], dtype=float)
    if not np.isfinite(spacings).all() or (spacings <= 0).any():
        raise LabelSpaceError("a case has a zero, negative or undefined spacing")
    source = tuple(float(v) for v in np.median(spacings, axis=0))
    target = np.array(source)
    shapes = np.array([[n * s / t for n, s, t in zip(g.shape, g.spacing, target, strict=True)] for g in geometries])
    median = np.median(shapes, axis=0)
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
    return TaskPlan(patch_size=(patch[0], patch[1]), spacing=(float(target[0]), float(target[1])),
                    median_shape=(int(round(median[0])), int(round(median[1]))), source_spacing=source,
                    preprocessing=budget.preprocessing)
