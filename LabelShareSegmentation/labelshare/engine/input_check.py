"""The input check's measurements (what :mod:`labelshare.core.input_check` scores), taken while an image is
segmented, and the statistics a model version carries, made from its training cases.

:class:`InputMeasurer` measures one image from what segmenting it computes anyway: the slices, their normalisation
and the network's windows. The network's bottleneck output of every window of the plain view (not the mirrored
one) is pooled by a forward hook (:func:`labelshare.engine.features.capture_bottleneck` with
:func:`window_vectors`), so the features cost a few reductions per window, not another forward pass.

:func:`input_check_statistics` segments up to :data:`~labelshare.core.input_check.CALIBRATION_CASES` training
cases of every task the same way and calibrates (:func:`labelshare.core.input_check.calibrate`). The statistics are
a version artefact (:mod:`labelshare.engine.artefacts`, :class:`InputCheckArtefact`): every command that publishes a
version writes them into it. A task whose images the command read is measured with the new weights (its training
cases at hand: an update from a folder of new cases only, those); a version with
its parent's weights (``postprocess``, ``memory``) keeps the parent's statistics of a task; a task whose images are
not at hand (``add-task`` from the rehearsal memory) keeps what does not depend on the weights (geometry, intensity,
layout), its threshold calibrated again without the network's parts (:meth:`TaskReference.without`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.input_check import (CALIBRATION_CASES, FEATURES, INPUT_CHECK_ARRAYS, INPUT_CHECK_FILE, INTENSITY,
                                INTENSITY_PERCENTILES, LAYOUT, LAYOUT_GRID, MIN_PATIENTS, ORIENTATION,
                                CaseMeasurement, InputCheckResult, InputCheckStatistics, calibrate, check_input)
from ..core.preprocessing import intensity_sample
from ..core.progress import Progress
from ..core.tasks import TaskDataset, read_image
from .artefacts import VersionContext, register_artefact
from .features import bottleneck_of, capture_bottleneck, pool

def window_vectors(output: torch.Tensor) -> torch.Tensor:
    """Per window of a (windows, C, h, w) bottleneck output, its ``features`` (:func:`~labelshare.engine.features.pool`:
    the mean and standard deviation of every channel over space, 2C) then its ``orientation`` (the mean of the top
    half minus the bottom half's, and of the left half minus the right half's, 2C)."""
    output = output.float()
    rows, columns = max(output.shape[2] // 2, 1), max(output.shape[3] // 2, 1)
    return torch.cat([pool(output),
                      output[:, :, :rows].mean(dim=(2, 3)) - output[:, :, -rows:].mean(dim=(2, 3)),
                      output[:, :, :, :columns].mean(dim=(2, 3)) - output[:, :, :, -columns:].mean(dim=(2, 3))], dim=1)


class InputMeasurer:
    """Measures one image while it is segmented (:meth:`labelshare.engine.inference.Segmenter.segment_case`):
    :meth:`recording` around the plain view's forward pass (the windows' features, by
    :func:`~labelshare.engine.features.capture_bottleneck`), :meth:`add_slices` with every batch of raw slices (the
    layout), :meth:`measurement` at the end."""

    def __init__(self, network: torch.nn.Module, batches: Any, modality: str = ""):
        self.network = network
        self.batches = batches
        self.modality = modality
        try:
            bottleneck_of(network)
            self.has_bottleneck = True
        except ValueError:  # a network of another architecture: the check runs without the network's parts
            self.has_bottleneck = False
        self.windows: list[torch.Tensor] = []
        self.layout = np.zeros((LAYOUT_GRID, LAYOUT_GRID))
        self.slices = 0

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Every window run inside is pooled (:func:`window_vectors`)."""
        if not self.has_bottleneck:
            yield
            return
        with capture_bottleneck(self.network, window_vectors) as captured:
            yield
        self.windows += captured

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
            mean = torch.cat(self.windows).mean(dim=0).numpy().astype(np.float64)
            vectors[FEATURES], vectors[ORIENTATION] = np.split(mean, [mean.size // 2])
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


class InputCheckArtefact:
    """The input check's statistics as a version artefact (see the module docstring)."""

    name = "input_check"
    title = "Input check"

    def write(self, context: VersionContext, folder: Path) -> list[str]:
        from .inference import Segmenter  # inference imports this module (its measurer)
        parent = InputCheckStatistics.read(context.parent) if context.parent is not None else None
        references, missing, to_measure = {}, {}, {}
        for name in context.model.labelspace.task_names:
            kept = parent.tasks.get(name) if parent is not None else None
            # the training cases whose images are at hand (an update from a folder of new cases only: those)
            present = {case.name for case in context.tasks[name].cases} if name in context.tasks else set()
            training = [case for case in context.split.get(name, {}).get("train", []) if case in present]
            if kept is not None and context.same_weights:
                references[name] = kept
            elif training:
                to_measure[name] = training
            elif kept is not None:
                references[name] = kept.without((FEATURES, ORIENTATION))
            else:
                missing[name] = (parent.missing.get(name) if parent is not None else None) or \
                    "its training images were not at hand when the version was made"
        if to_measure:
            measured, skipped = input_check_statistics(
                Segmenter(context.model), {name: context.tasks[name] for name in to_measure}, to_measure,
                context.progress)
            references.update(measured.tasks)
            missing.update(skipped)
        statistics = InputCheckStatistics(references, missing)
        statistics.write(folder)
        return describe(statistics)


def describe(statistics: InputCheckStatistics) -> list[str]:
    """The model card's section on the input check's statistics."""
    lines = [f"Each input is compared with statistics of the training images (`{INPUT_CHECK_FILE}`, "
             f"`{INPUT_CHECK_ARRAYS}`; labelshare/core/input_check.py); an input beyond the threshold is segmented "
             "with a warning.", "", "| task | training cases (patients) | parts | threshold |", "|---|---|---|---|"]
    for name, reference in statistics.tasks.items():
        parts = ", ".join(["geometry", *reference.gaussians])
        lines.append(f"| {name} | {reference.cases} ({reference.patients}) | {parts} | {reference.threshold:.3g} |")
    for name, reason in statistics.missing.items():
        lines.append(f"| {name} | none: {reason} | modality only | - |")
    return lines


register_artefact(InputCheckArtefact())
