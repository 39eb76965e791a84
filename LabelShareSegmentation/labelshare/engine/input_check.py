"""The input check's measurements (what :mod:`labelshare.core.input_check` scores), taken while an image is
segmented, and the statistics a model version carries, made from its training cases.

:class:`InputMeasurer` measures one image from what segmenting it computes anyway: the slices, their normalisation
and the network's windows. The network's bottleneck output of every window of the plain view (not the mirrored
one) is pooled by a forward hook (:func:`pooled_window_features`), so the features cost a few reductions per
window, not another forward pass. :func:`input_check_statistics` segments up to
:data:`~labelshare.core.input_check.CALIBRATION_CASES` training cases of every task the same way and calibrates
(:func:`labelshare.core.input_check.calibrate`); a command that publishes a version writes them into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..core.input_check import (CALIBRATION_CASES, FEATURES, INTENSITY, INTENSITY_PERCENTILES, LAYOUT, LAYOUT_GRID,
                                MIN_PATIENTS, ORIENTATION, CaseMeasurement, InputCheckResult,
                                InputCheckStatistics, calibrate, check_input)
from ..core.preprocessing import intensity_sample
from ..core.progress import Progress
from ..core.tasks import TaskDataset, read_image

def bottleneck_module(network: torch.nn.Module) -> torch.nn.Module | None:
    """The network's bottleneck (the U-Net's deepest block), or None for a network without one the check knows."""
    unet = getattr(network, "unet", None)
    return getattr(unet, "bottleneck", None)


def pooled_window_features(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window of a (windows, C, h, w) bottleneck output: the ``features`` (mean and standard deviation of every
    channel over space, 2C) and the ``orientation`` (the mean of the top half minus the bottom half's, and the left
    half's minus the right half's, 2C)."""
    output = output.detach().float()
    rows, columns = max(output.shape[2] // 2, 1), max(output.shape[3] // 2, 1)
    features = torch.cat([output.mean(dim=(2, 3)), output.std(dim=(2, 3), correction=0)], dim=1)
    orientation = torch.cat([output[:, :, :rows].mean(dim=(2, 3)) - output[:, :, -rows:].mean(dim=(2, 3)),
                             output[:, :, :, :columns].mean(dim=(2, 3)) - output[:, :, :, -columns:].mean(dim=(2, 3))],
                            dim=1)
    return features, orientation


class InputMeasurer:
    """Measures one image while it is segmented (:meth:`labelshare.engine.inference.Segmenter.segment_case`):
    :meth:`recording` around the plain view's forward pass (the windows' features), :meth:`add_slices` with every
    batch of raw slices (the layout), :meth:`measurement` at the end."""

    def __init__(self, network: torch.nn.Module, batches: Any, modality: str = ""):
        self.batches = batches
        self.modality = modality
        self.bottleneck = bottleneck_module(network)
        self.sums: dict[str, torch.Tensor] = {}
        self.windows = 0
        self.layout = np.zeros((LAYOUT_GRID, LAYOUT_GRID))
        self.slices = 0

    def _record(self, module, inputs, output) -> None:
        for part, values in zip((FEATURES, ORIENTATION), pooled_window_features(output), strict=True):
            total = values.sum(dim=0)
            self.sums[part] = self.sums[part] + total if part in self.sums else total
        self.windows += output.shape[0]

    @contextmanager
    def recording(self) -> Iterator[None]:
        """The bottleneck's output of every window run inside is pooled (none when the network has no bottleneck)."""
        handle = self.bottleneck.register_forward_hook(self._record) if self.bottleneck is not None else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    def add_slices(self, raw: np.ndarray) -> None:
        """A batch of the image's raw slices (n, h, w): the mean normalised intensity on the layout grid."""
        normalised = self.batches.normalisation.apply(raw)
        row_edges = np.linspace(0, normalised.shape[1], LAYOUT_GRID + 1).astype(int)[:-1]
        column_edges = np.linspace(0, normalised.shape[2], LAYOUT_GRID + 1).astype(int)[:-1]
        sums = np.add.reduceat(np.add.reduceat(normalised.sum(axis=0, dtype=np.float64), row_edges, axis=0),
                               column_edges, axis=1)
        counts = np.outer(np.diff([*row_edges, normalised.shape[1]]), np.diff([*column_edges, normalised.shape[2]]))
        self.layout += sums / np.maximum(counts, 1)
        self.slices += normalised.shape[0]

    def measurement(self) -> CaseMeasurement:
        batches = self.batches
        count, rows, columns = batches.slices.shape
        geometry = {"spacing_rows": batches.spacing[0], "spacing_columns": batches.spacing[1],
                    "extent_rows": rows * batches.spacing[0], "extent_columns": columns * batches.spacing[1],
                    "slices": float(count)}
        sample = batches.normalisation.apply(intensity_sample(np.asarray(batches.slices)))
        vectors = {INTENSITY: np.percentile(sample, INTENSITY_PERCENTILES),
                   LAYOUT: (self.layout / max(self.slices, 1)).ravel()}
        if self.windows:
            vectors.update({part: (total / self.windows).cpu().numpy().astype(np.float64)
                            for part, total in self.sums.items()})
        return CaseMeasurement(geometry, vectors, self.modality)


def input_check_statistics(segmenter: Any, tasks: Mapping[str, TaskDataset], training_cases: Mapping[str, list[str]],
                           progress: Progress | None = None,
                           fraction_range: tuple[float, float] = (0.0, 1.0)) -> tuple[InputCheckStatistics,
                                                                                      dict[str, str]]:
    """The statistics of every task from up to :data:`CALIBRATION_CASES` of its training cases (spread over its
    patients: :func:`~labelshare.engine.incremental.trainer.spread_cases`), measured as ``segmenter`` (a
    :class:`~labelshare.engine.inference.Segmenter`) segments them; and, per task that gets none, why (too few
    patients)."""
    from .incremental.trainer import spread_cases  # the incremental package imports inference, which imports this
    progress = progress or Progress("quiet")
    references, skipped = {}, {}
    start, end = fraction_range
    for index, (name, task) in enumerate(tasks.items()):
        names = spread_cases(task, training_cases.get(name, []), CALIBRATION_CASES, seed=0)
        measurements, patients = [], []
        for number, case_name in enumerate(names):
            case = task.case(case_name)
            segmentation = segmenter.segment_case(read_image(case.image_path, "image"), name, measure_input=True)
            measurements.append(segmentation.measurement)
            patients.append(case.patient)
            progress.progress("input check", start + (end - start) * (index + (number + 1) / len(names)) / len(tasks),
                              f"{name}: {number + 1}/{len(names)} training cases measured")
        try:
            references[name] = calibrate(measurements, patients)
        except ValueError as error:
            skipped[name] = f"its training cases hold too few patients for the check ({error}; at least " \
                            f"{MIN_PATIENTS})"
    return InputCheckStatistics(references), skipped


# what the check says of a model made before its statistics existed
NO_STATISTICS = ("the model has no input check statistics (it was made before LabelShare wrote them); "
                 "labelshare memory gives an older model them, as a new version")


def check_case(model: Any, task: str, measurement: CaseMeasurement) -> InputCheckResult:
    """The check of one image of ``task``, measured as it was segmented, against the loaded ``model``'s statistics
    (:attr:`labelshare.engine.models.Model.input_statistics`) and the task's intended input."""
    statistics = model.input_statistics
    reason = NO_STATISTICS if statistics is None else f"the model's input check statistics have no task {task}"
    reference = statistics.tasks.get(task) if statistics is not None else None
    return check_input(reference, measurement, task, model.labelspace.task(task).intended_input, reason)
