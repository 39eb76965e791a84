"""Segmentation: image in, the chosen task's label image out, on exactly the input's grid.

Every step is the task's plan's scheme (:mod:`labelshare.core.preprocessing`), as in training: slices are cut along the
same axis (each with its neighbours as input channels when the plan takes slice context), normalised with the
per-case statistics of the whole image, resampled to the task's plan (its spacing, aspect ratio kept), predicted with
Gaussian-weighted sliding windows of the plan's patch size (optionally averaged with the left-right mirrored
prediction, which a lateralised task refuses: :func:`labelshare.core.config.check_mirroring`), and the softmax over
the task's channels is resampled back to the slice's own grid before the argmax, so the output has the input's size,
spacing, origin and direction. Memory stays bounded: the input is read once, one batch of slices is converted to float
at a time, and the output is written slice by slice into a uint8/uint16 array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..core.config import InferenceConfig, check_mirroring
from ..core.errors import DataError
from ..core.input_check import CaseMeasurement
from ..core.plans import TaskPlan
from ..core.progress import Progress
from .input_check import InputMeasurer
from .models import Model
from .slices import ENGINE_WINDOWS, Windows, head_probability_views, to_plan
from .uncertainty import SCORES, normalised_entropy


class Segmenter:
    """A model loaded on a device, ready to segment many images (the Slicer worker keeps one alive).

    >>> segmenter = Segmenter(load_model("models/my-model", device="auto"))   # doctest: +SKIP
    >>> label_image = segmenter.segment(sitk.ReadImage("ct.nii.gz"), task="acdc")   # doctest: +SKIP
    """

    def __init__(self, model: Model, config: InferenceConfig | None = None, precision: str = "auto",
                 windows: Windows = ENGINE_WINDOWS):
        """:param config: batch size (slices and windows per forward pass), test-time mirroring (refused for a
        lateralised task: training never flipped those), post-processing and slicing axis; None: the defaults of
        :class:`~labelshare.core.config.InferenceConfig`. :param windows: how the network's windows cover a slice (the
        engine's unless an experiment compares others)."""
        self.windows = windows
        self.config = config or InferenceConfig()
        self.config.check()  # a batch size below 1 would run no batch and leave the output all background
        self.model = model
        self.device = model.device
        self.batch_size = self.config.batch_size_on(self.device.type)
        self.precision = precision
        if precision not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"precision must be auto, float32, bfloat16 or float16, not {precision!r}")
        if self.device.type != "cuda" or precision == "float32":
            self.autocast_dtype = None
        elif precision == "auto":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.autocast_dtype = getattr(torch, precision)

    @torch.no_grad()
    def probability_views(self, stacks: np.ndarray, task: str, normalisation: Any,
                          spacing: tuple[float, float], mirror: bool,
                          plain_view: Callable[[], AbstractContextManager] = nullcontext) -> list[torch.Tensor]:
        """Softmax over the task's channels, (n, K+1, h, w) on the grid of a (n, c, h, w) batch of raw slice stacks
        (:meth:`SliceBatches.raw`) of in-plane ``spacing``: the plain prediction and, with ``mirror`` (refused for a
        lateralised task), the mirrored one flipped back (the plain one runs inside ``plain_view()``)."""
        head = self.model.heads[task]
        entry = self.model.labelspace.task(task)
        if mirror:
            check_mirroring(task, entry.lateralised, "test-time mirroring")
        images = to_plan(normalisation.apply(stacks), spacing, entry.plan, self.device)
        views = head_probability_views(self.model.network, images, head, entry.plan,
                                       mirror=mirror, windows_per_batch=self.batch_size,
                                       autocast_dtype=self.autocast_dtype, windows=self.windows,
                                       plain_view=plain_view)
        resampling = entry.plan.preprocessing.resampling_scheme
        return [resampling.images(view, stacks.shape[-2:]) for view in views]

    def configured(self, **changes) -> Segmenter:
        """A segmenter of the same loaded model with some options of its configuration changed."""
        return Segmenter(self.model, replace(self.config, **changes), self.precision, self.windows)

    def predictions(self, batches: SliceBatches, task: str, mirror: bool,
                    plain_view: Callable[[], AbstractContextManager] = nullcontext) -> Iterator[BatchPrediction]:
        """The network's prediction of every batch of an image's slices, in order: the one loop over an image
        (:meth:`segment_case` writes the labels; ranking scores the probabilities)."""
        for start, stop in batches.ranges():
            views = self.probability_views(batches.raw(start, stop), task, batches.normalisation, batches.spacing,
                                           mirror, plain_view)
            yield BatchPrediction(start, stop, views)

    def labels_of(self, probabilities: torch.Tensor, task: str) -> np.ndarray:
        """Task label ids of (n, K+1, h, w) probabilities."""
        # max(dim=1).indices, not argmax(dim=1): the same result, but torch's CPU argmax over the channel axis of a
        # (n, c, h, w) tensor is ~30x slower (0.8 s vs 27 ms for 16 slices of 512x512, torch 2.13).
        positions = probabilities.max(dim=1).indices.cpu().numpy()
        return self.model.heads[task].output_lut[positions]

    def slice_batches(self, image: sitk.Image, task: str) -> SliceBatches:
        """``image`` checked (scalar, 2D/3D, finite) and cut into the slices the network sees, in batches."""
        plan = self.model.labelspace.task(task).plan
        steps = plan.preprocessing
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"input has {image.GetNumberOfComponentsPerPixel()} components per pixel; a scalar "
                            "(grey) image is needed")
        if image.GetDimension() not in (2, 3) or 0 in image.GetSize():
            raise DataError(f"input of size {image.GetSize()} is not a non-empty 2D or 3D image")
        array = sitk.GetArrayViewFromImage(image)
        normalisation = steps.normalisation_scheme.of(array)
        if not normalisation.finite or (array.dtype.kind == "f" and not np.isfinite(array).all()):
            raise DataError("image contains NaN or infinite values")
        slicing = steps.slicing_scheme
        axis = slicing.axis(image, self.config.slicing_axis)
        return SliceBatches(array.shape, slicing, axis, slicing.slices(array, axis), normalisation,
                            slicing.spacing(image.GetSpacing(), axis), self.batch_size, plan,
                            self.model.config.network.in_channels)

    def segment(self, image: sitk.Image, task: str, progress: Progress | None = None) -> sitk.Image:
        """Label image of ``task`` on the grid of ``image`` (2D, 3D, or a single-slice 3D projection), post-processed
        as the configuration's ``largest_component`` says (:meth:`cleaned_labels`)."""
        return self.segment_case(image, task, progress).labels

    def segment_case(self, image: sitk.Image, task: str, progress: Progress | None = None,
                     uncertainty_map: bool = False, measure_input: bool = False, case_score: bool = False,
                     modality: str = "") -> Segmentation:
        """:meth:`segment`, and from the same forward pass what is asked for: the ``uncertainty_map`` (the
        normalised entropy of the probabilities, of both views averaged with mirroring:
        :func:`~labelshare.engine.uncertainty.normalised_entropy`) on the image's grid, the input check's
        measurement (``measure_input``: :class:`~labelshare.engine.input_check.InputMeasurer`; the image's DICOM
        ``modality``) and the
        ``case_score`` that ``labelshare rank`` uses (``tta`` with mirroring, else ``entropy``:
        :data:`~labelshare.engine.uncertainty.SCORES`)."""
        batches = self.slice_batches(image, task)
        max_id = max(i for i, _ in self.model.task_labels(task))
        output = np.zeros(batches.shape, dtype=np.uint8 if max_id < 256 else np.uint16)
        output_slices = batches.slicing.slices(output, batches.axis)
        entropy = np.zeros(batches.shape, dtype=np.float32) if uncertainty_map else None
        entropy_slices = batches.slicing.slices(entropy, batches.axis) if uncertainty_map else None
        measurer = InputMeasurer(self.model.network, batches, modality) if measure_input else None
        score_name = "tta" if self.config.mirror else "entropy"
        scorer = SCORES[score_name]([label_id for label_id, _ in self.model.task_labels(task)]) if case_score else None
        total = batches.count
        for prediction in self.predictions(batches, task, self.config.mirror,
                                           measurer.recording if measurer is not None else nullcontext):
            start, stop = prediction.start, prediction.stop
            labels = self.labels_of(prediction.probabilities, task)
            output_slices[start:stop] = labels
            if entropy_slices is not None:
                entropy_slices[start:stop] = normalised_entropy(prediction.probabilities).cpu().numpy()
            if measurer is not None:
                measurer.add_slices(np.asarray(batches.slices[start:stop]))
            if scorer is not None:
                scorer.add(prediction, labels, lambda view: self.labels_of(view, task))
            if progress is not None:
                progress.progress("segmenting", stop / total, f"{stop}/{total} slices", slices=stop,
                                  total_slices=total)
        result = sitk.GetImageFromArray(output)
        result.CopyInformation(image)
        cleaned = self.cleaned_labels(task)
        uncertainty_map = None
        if entropy is not None:
            uncertainty_map = sitk.GetImageFromArray(entropy)
            uncertainty_map.CopyInformation(image)
        return Segmentation(keep_largest_components(result, cleaned) if cleaned else result, uncertainty_map,
                            measurer.measurement() if measurer is not None else None,
                            {"score": score_name, "value": round(scorer.value(), 6)} if scorer is not None else None)

    def cleaned_labels(self, task: str) -> list[int]:
        """The ids of the task's labels of which only the largest connected component is kept: those the model chose
        on its validation cases (``config.json``; ``model``), every label (``all``) or none (``none``)."""
        labels = self.model.task_labels(task)
        choice = self.config.largest_component
        chosen = {"model": set(self.model.config.largest_component.get(task, [])),
                  "all": {name for _, name in labels}, "none": set()}[choice]
        return [label_id for label_id, name in labels if name in chosen]


@dataclass(frozen=True)
class Segmentation:
    """What :meth:`Segmenter.segment_case` made of an image: the label image, and what was asked for besides: the
    uncertainty map (float, 0-1, on the image's grid), the input check's measurement and the per-case score of
    ``labelshare rank`` (``{"score": name, "value": v}``)."""

    labels: sitk.Image
    uncertainty_map: sitk.Image | None = None
    measurement: CaseMeasurement | None = None
    case_score: dict | None = None


@dataclass(frozen=True)
class SliceBatches:
    """An image's slices along ``axis`` (a view of its array, cut by the plan's slicing scheme), its normalisation
    and in-plane spacing, in batches of ``batch_size`` slices, each slice as the network's input stack of
    ``channels`` channels (the task's ``plan``: :meth:`~labelshare.core.plans.TaskPlan.stacks`)."""

    shape: tuple[int, ...]  # of the image's array
    slicing: Any  # the plan's slicing scheme
    axis: int | None
    slices: np.ndarray
    normalisation: Any  # the measurement of the plan's normalisation scheme (its apply())
    spacing: tuple[float, float]
    batch_size: int
    plan: TaskPlan
    channels: int

    @property
    def count(self) -> int:
        return self.slices.shape[0]

    def ranges(self) -> list[tuple[int, int]]:
        return [(start, min(self.count, start + self.batch_size)) for start in range(0, self.count, self.batch_size)]

    def raw(self, start: int, stop: int) -> np.ndarray:
        """The raw (n, channels, h, w) input stacks of slices ``start``..``stop``."""
        return self.plan.stacks(self.slices, range(start, stop), self.channels)


@dataclass(frozen=True)
class BatchPrediction:
    """The prediction of slices ``start:stop`` of an image: per view (plain; mirrored and flipped back), the softmax
    over the task's channels, (n, K+1, h, w) on the slices' own grid."""

    start: int
    stop: int
    views: list[torch.Tensor]

    @property
    def probabilities(self) -> torch.Tensor:
        """The views averaged (test-time augmentation)."""
        return self.views[0] if len(self.views) == 1 else sum(self.views) / len(self.views)


def keep_largest_components(label_image: sitk.Image, label_ids: list[int]) -> sitk.Image:
    """Per label, keep only the largest connected component (SimpleITK, full connectivity)."""
    output = sitk.GetArrayFromImage(label_image)
    for label_id in label_ids:
        mask = label_image == label_id
        components = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), sortByObjectSize=True)
        largest = sitk.GetArrayViewFromImage(components) == 1
        output[(output == label_id) & ~largest] = 0
    result = sitk.GetImageFromArray(output)
    result.CopyInformation(label_image)
    return result
