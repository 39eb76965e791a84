"""Preprocessing: how an image becomes the slices the network sees, as named, versioned schemes a task's plan records.

Three steps, each a registry of schemes that the code dispatches on:

``normalisation``  ``percentile-zscore`` v1: per case, clip to the 0.5/99.5 percentiles, then z-score with the clipped
                   mean and standard deviation (uint8 volumes and float volumes whose maxima differ by 10^4 end up
                   on one scale).
``slicing``        ``largest-spacing`` v1: a 3D volume is cut into slices along its through-plane axis, the axis of
                   largest spacing (ties: the last image axis, z); a 2D image or a single-slice volume is one
                   projection. The network sees each slice alone (in a network of more input channels, the slice
                   fills every channel).
                   ``largest-spacing`` v2: the same slices, each with its neighbours: the plan's ``slice_context``
                   slices centred on it are the network's input channels (2.5D), the edge slice repeated past a
                   volume's ends (:func:`slice_stacks`).
``resampling``     ``index-linear`` v1: in-plane, in index space (the field of view kept): images bilinearly
                   (anti-aliased when shrinking), labels as one-hot maps resampled linearly then argmax'ed,
                   probabilities bilinearly back to the slice's grid (:mod:`labelshare.engine.slices`, torch).

A task's plan (:class:`labelshare.core.plans.TaskPlan`) names one scheme of each step (:class:`Preprocessing`) and is
stored in ``labelspace.json``, so a model keeps the schemes it was trained with when the code's default
(:data:`DEFAULT_PREPROCESSING`) moves on. Plans written before the schemes were recorded (the bundled models v1-v3)
read as :data:`FIRST_PREPROCESSING`, the v1 schemes, which is what they were made with.

A new way of doing a step is a new scheme: a class registered under a new name, or a new version of a name, with the
methods of its step (below); the old ones stay, so every model still runs as it was trained. A scheme that takes a
per-task value reads it from a field of the task's plan: ``largest-spacing`` v2 takes the number of slices per input
from the plan's ``slice_context`` (a plan of one slice records v1, which every LabelShare since the schemes reads).

Light (numpy, SimpleITK): resampling schemes are registered by the import path of their class, imported only when a
resampling is done.

Usage::

    steps = plan.preprocessing                                  # a TaskPlan's schemes
    axis = steps.slicing_scheme.axis(image, override=None)
    slices = steps.slicing_scheme.slices(array, axis)
    normalised = steps.normalisation_scheme.of(array).apply(slices)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import DataError, LabelSpaceError
from .tasks import Case, TaskDataset

STEPS = ("normalisation", "slicing", "resampling")


@dataclass(frozen=True)
class Scheme:
    """One way of doing one preprocessing step: a name and the version of what that name does."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version}

    @classmethod
    def from_json(cls, data: Any) -> Scheme:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) \
                or isinstance(data.get("version"), bool) or not isinstance(data.get("version"), int):
            raise LabelSpaceError(f"a scheme is {{\"name\": ..., \"version\": N}}, not {data!r}"[:200])
        return cls(data["name"], data["version"])


class SchemeRegistry:
    """The schemes of one step: (name, version) -> the class that does it, or the import path of that class
    (``"module:Class"``, imported on first use)."""

    def __init__(self, step: str):
        self.step = step
        self._entries: dict[Scheme, Any] = {}

    def register(self, name: str, version: int, implementation: Any = None):
        """Register ``implementation`` (or, as a decorator, the decorated class) as scheme ``name`` v``version``."""
        scheme = Scheme(name, version)
        if scheme in self._entries:
            raise ValueError(f"{self.step} scheme {scheme} is registered twice")

        def add(target: Any) -> Any:
            self._entries[scheme] = target
            return target
        return add if implementation is None else add(implementation)

    def __contains__(self, scheme: Scheme) -> bool:
        return scheme in self._entries

    @property
    def schemes(self) -> list[Scheme]:
        return list(self._entries)

    def check(self, scheme: Scheme) -> None:
        """LabelSpaceError for a scheme this LabelShare does not know (nothing is imported)."""
        if scheme not in self._entries:
            known = ", ".join(map(str, self._entries))
            raise LabelSpaceError(f"{self.step} scheme {scheme} is unknown to this LabelShare (it knows {known}); the "
                                  "plan was made by a newer LabelShare: update it")

    def get(self, scheme: Scheme) -> Any:
        """The class that does ``scheme``; LabelSpaceError for a scheme this LabelShare does not know."""
        self.check(scheme)
        target = self._entries[scheme]
        if isinstance(target, str):
            module, _, name = target.partition(":")
            target = self._entries[scheme] = getattr(importlib.import_module(module), name)
        return target


NORMALISATIONS = SchemeRegistry("normalisation")
SLICINGS = SchemeRegistry("slicing")
RESAMPLINGS = SchemeRegistry("resampling")
REGISTRIES = {"normalisation": NORMALISATIONS, "slicing": SLICINGS, "resampling": RESAMPLINGS}


@dataclass(frozen=True)
class Preprocessing:
    """The schemes of one task's plan, one per step (:data:`STEPS`)."""

    normalisation: Scheme
    slicing: Scheme
    resampling: Scheme

    def check(self) -> None:
        for step in STEPS:
            REGISTRIES[step].check(getattr(self, step))

    @property
    def normalisation_scheme(self) -> Any:
        return NORMALISATIONS.get(self.normalisation)

    @property
    def slicing_scheme(self) -> Any:
        return SLICINGS.get(self.slicing)

    @property
    def resampling_scheme(self) -> Any:
        """The resampling class (imports torch)."""
        return RESAMPLINGS.get(self.resampling)

    def describe(self) -> str:
        return ", ".join(f"{step} {getattr(self, step)}" for step in STEPS)

    def to_json(self) -> dict:
        return {step: getattr(self, step).to_json() for step in STEPS}

    @classmethod
    def from_json(cls, data: Any) -> Preprocessing:
        """The schemes a plan records; a plan without them (written before they were recorded) and a step it does
        not name are the first schemes, which such plans were made with. Unknown schemes are refused."""
        if data is None:
            return FIRST_PREPROCESSING
        if not isinstance(data, dict) or set(data) - set(STEPS):
            raise LabelSpaceError(f"preprocessing must map {', '.join(STEPS)} to schemes, not {data!r}"[:200])
        steps = {step: Scheme.from_json(data[step]) if step in data else getattr(FIRST_PREPROCESSING, step)
                 for step in STEPS}
        preprocessing = cls(**steps)
        preprocessing.check()
        return preprocessing


# -- normalisation ----------------------------------------------------------------------------------------------------
# A normalisation scheme: ``of(array)`` measures a whole image (any shape) and returns an object whose ``apply(array)``
# normalises any part of it, and whose ``finite`` says whether the measurement is finite (no NaN or infinity).
NORMALISATION_PERCENTILES = (0.5, 99.5)
_PERCENTILE_SAMPLE = 1_000_000


def intensity_sample(array: np.ndarray) -> np.ndarray:
    """An evenly strided sample of at most a million of an image's voxels (float64): what a normalisation measures
    (and the input check's intensity distribution), bounded on large volumes."""
    flat = array.reshape(-1)
    return flat[:: max(1, flat.size // _PERCENTILE_SAMPLE)].astype(np.float64)


@NORMALISATIONS.register("percentile-zscore", 1)
@dataclass(frozen=True)
class PercentileZScore:
    """Per-case intensity normalisation: clip to the 0.5/99.5 percentiles, then z-score with the clipped mean and
    standard deviation.

    The statistics come from an evenly strided sample of at most a million voxels, and :meth:`apply` works on any
    part of the image, so memory stays bounded on large volumes.
    """

    low: float
    high: float
    mean: float
    std: float

    @classmethod
    def of(cls, array: np.ndarray) -> PercentileZScore:
        sample = intensity_sample(array)
        low, high = np.percentile(sample, NORMALISATION_PERCENTILES)
        clipped = np.clip(sample, low, high)
        return cls(float(low), float(high), float(clipped.mean()), float(max(clipped.std(), 1e-6)))

    @property
    def finite(self) -> bool:
        return bool(np.isfinite([self.low, self.high, self.mean, self.std]).all())

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.clip(array.astype(np.float32), self.low, self.high)
        out -= np.float32(self.mean)
        out /= np.float32(self.std)
        return out


# -- slicing ----------------------------------------------------------------------------------------------------------
# A slicing scheme: ``axis(image, override)`` chooses the numpy axis slices are cut along (None: a 2D image),
# ``slices(array, axis)`` is the (n, h, w) view of the slices and ``spacing(image_spacing, axis)`` their in-plane
# spacing (rows, columns); ``stacks(slices, indices, context, channels)`` is the network's input of the slices at
# ``indices``, (len(indices), channels, h, w), for a plan of ``context`` slices per input (at most ``max_context``).
MAX_SLICE_CONTEXT = 15  # odd; far beyond what helps a 2D network (docs/resolution, "Slice context")
def choose_slicing_axis(image: sitk.Image, override: int | None = None) -> int | None:
    """Numpy axis (of the K,J,I array) along which 2D slices are cut, or None for a 2D image.

    ``override`` is an image axis (0 = x/I, 1 = y/J, 2 = z/K). Otherwise: a size-1 axis makes the image a single
    projection; else the axis of largest spacing; ties go to the last image axis.
    """
    if image.GetDimension() == 2:
        return None
    size, spacing = image.GetSize(), image.GetSpacing()
    if override is not None:
        if override not in (0, 1, 2):
            raise DataError(f"slicing axis must be 0, 1 or 2 (x, y, z), not {override}")
        image_axis = override
    elif 1 in size:
        image_axis = max(i for i in range(3) if size[i] == 1)
    else:
        largest = max(spacing)
        image_axis = max(i for i in range(3) if np.isclose(spacing[i], largest, rtol=1e-3))
    return 2 - image_axis


def to_slices(array: np.ndarray, axis: int | None) -> np.ndarray:
    """(n, h, w) view of a 2D (h, w) or 3D array, slices along ``axis``."""
    if axis is None:
        return array[np.newaxis]
    return np.moveaxis(array, axis, 0)


def slice_spacing(image_spacing: Sequence[float], axis: int | None) -> tuple[float, float]:
    """In-plane (rows, columns) spacing of the slices cut along numpy ``axis`` (None: a 2D image) of an image with
    SimpleITK ``spacing`` (x, y[, z])."""
    numpy_order = list(reversed([float(s) for s in image_spacing]))
    if axis is not None:
        del numpy_order[axis]
    return numpy_order[0], numpy_order[1]


def context_offsets(slice_context: int, channels: int) -> np.ndarray:
    """The slice offset of each of a network's ``channels`` input channels for a plan of ``slice_context`` slices per
    input: -h..h centred on the slice, clipped to the plan's own context, so that a task of fewer slices than the
    network has channels fills the outer channels with its outermost slices (one slice: that slice everywhere)."""
    half = (slice_context - 1) // 2
    return np.clip(np.arange(channels) - (channels - 1) // 2, -half, half)


def slice_stacks(slices: np.ndarray, indices: Sequence[int], offsets: np.ndarray) -> np.ndarray:
    """(len(indices), len(offsets), h, w): for each slice index of the (n, h, w) ``slices``, the slices at
    index + offset along the slicing axis (index space: the neighbours in the image array, whatever the volume's
    orientation or slice spacing), the first or last slice repeated past the ends.

    Repeated, not zeros: after the per-case z-score a zero slice is a uniform grey image the network would meet only
    at a volume's edges; a repeated slice is what a structure that does not change across slices looks like, and it
    makes a 2D image, one slice, simply that image in every channel."""
    neighbours = np.clip(np.asarray(indices, dtype=np.int64)[:, None] + offsets[None, :], 0, len(slices) - 1)
    return slices[neighbours]


@SLICINGS.register("largest-spacing", 1)
class LargestSpacingSlicing:
    """Slices along the axis of largest spacing (ties: z); 2D images and single-slice volumes are one projection.
    Each slice is seen alone: the input of a network of several channels is the slice in every channel."""

    max_context = 1
    axis = staticmethod(choose_slicing_axis)
    slices = staticmethod(to_slices)
    spacing = staticmethod(slice_spacing)

    @staticmethod
    def stacks(slices: np.ndarray, indices: Sequence[int], context: int, channels: int) -> np.ndarray:
        """The network's (len(indices), channels, h, w) input of the slices at ``indices`` of the (n, h, w)
        ``slices``, for a plan of ``context`` slices per input, at most :attr:`max_context` (checked by the plan:
        :class:`labelshare.core.plans.TaskPlan`; :func:`slice_stacks`)."""
        return slice_stacks(slices, indices, context_offsets(context, channels))


@SLICINGS.register("largest-spacing", 2)
class NeighbourSlicing(LargestSpacingSlicing):
    """v1's slices, each with its neighbours: the plan's ``slice_context`` slices centred on it (2.5D)."""

    max_context = MAX_SLICE_CONTEXT


# -- resampling (torch: imported when used) ---------------------------------------------------------------------------
# A resampling scheme: ``images(images, shape)`` brings (n, c, h, w) float images (or probabilities) to ``shape``,
# ``labels(labels, shape, classes)`` (n, h, w) integer labels.
RESAMPLINGS.register("index-linear", 1, "labelshare.engine.slices:IndexLinearResampling")

FIRST_PREPROCESSING = Preprocessing(normalisation=Scheme("percentile-zscore", 1),
                                    slicing=Scheme("largest-spacing", 1), resampling=Scheme("index-linear", 1))
DEFAULT_PREPROCESSING = FIRST_PREPROCESSING  # what a new plan records (the first schemes are still the best ones)
CONTEXT_SLICING = Scheme("largest-spacing", 2)  # what a plan of more than one slice per input records


# -- a task's cases as slices -----------------------------------------------------------------------------------------
@dataclass
class CaseData:
    """One validated case as numpy slices: ``image`` float32 (n, h, w) normalised per case, ``label`` (n, h, w) of
    task label ids, the numpy axis they were cut along and their in-plane spacing (rows, columns)."""

    name: str
    patient: str
    image: np.ndarray
    label: np.ndarray
    slicing_axis: int | None
    spacing: tuple[float, float]


def case_slices(task: TaskDataset, case: Case, preprocessing: Preprocessing) -> CaseData:
    """One validated case of a task as normalised 2D slices, by the plan's schemes."""
    image, image_array, label_array = task.read_case(case)
    slicing = preprocessing.slicing_scheme
    axis = slicing.axis(image, None)
    normalised = preprocessing.normalisation_scheme.of(image_array).apply(image_array)
    return CaseData(name=case.name, patient=case.patient, image=slicing.slices(normalised, axis),
                    label=slicing.slices(label_array, axis), slicing_axis=axis,
                    spacing=slicing.spacing(image.GetSpacing(), axis))


def iter_case_slices(task: TaskDataset, names: Iterable[str] | None, preprocessing: Preprocessing
                     ) -> Iterator[CaseData]:
    """:func:`case_slices` of the named cases (None: all), in the task's order."""
    wanted = None if names is None else set(names)
    for case in task.cases:
        if wanted is None or case.name in wanted:
            yield case_slices(task, case, preprocessing)
