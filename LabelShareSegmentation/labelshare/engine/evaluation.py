"""Evaluation: segment a task's cases with a model and score them (Dice and HD95 per case and label,
:mod:`labelshare.core.scores`), and choose the model's post-processing on its validation cases."""

from __future__ import annotations

from collections.abc import Iterable

import SimpleITK as sitk

from ..core.errors import DataError
from ..core.progress import Progress
from ..core.scores import CaseScore, Evaluation, nanmean
from ..core.tasks import TaskDataset
from .inference import Segmenter, keep_largest_components
from .metrics import dice_per_label, hd95_per_label
from .models import Model


def evaluate_cases(model: Model, task: TaskDataset, case_names: Iterable[str] | None = None,
                   task_name: str | None = None, progress: Progress | None = None,
                   fraction_range: tuple[float, float] = (0.0, 1.0), segmenter: Segmenter | None = None
                   ) -> Evaluation:
    """Segment every case with the model's full inference pipeline (its post-processing included) and score it
    against its label file.

    ``task_name`` is the task in the model (default: the dataset's name).
    """
    return _scored_cases(model, task, case_names, task_name, progress, fraction_range, segmenter, False)[0]


def choose_postprocessing(model: Model, task: TaskDataset, case_names: Iterable[str],
                          task_name: str | None = None, progress: Progress | None = None,
                          fraction_range: tuple[float, float] = (0.0, 1.0), segmenter: Segmenter | None = None
                          ) -> tuple[list[str], Evaluation]:
    """nnU-Net's post-processing decision, per label: segment every (validation) case once without clean-up, score
    it as it is and with only the largest connected component of each label kept, and keep the largest component of
    the labels whose mean Dice that raises. Returns those labels (in id order) and the scores of the pipeline with
    that choice, i.e. of what ``labelshare segment`` will output."""
    task_name = task_name or task.name
    plain, cleaned = _scored_cases(model, task, case_names, task_name, progress, fraction_range, segmenter, True)
    chosen = [label for label in plain.labels(task_name)
              if nanmean(cleaned.values(task_name, label)) > nanmean(plain.values(task_name, label))]
    return chosen, Evaluation([kept if kept.label in chosen else as_segmented
                               for as_segmented, kept in zip(plain.scores, cleaned.scores, strict=True)])


def _scored_cases(model: Model, task: TaskDataset, case_names: Iterable[str] | None, task_name: str | None,
                  progress: Progress | None, fraction_range: tuple[float, float], segmenter: Segmenter | None,
                  also_cleaned: bool) -> tuple[Evaluation, Evaluation]:
    """Scores of the cases as the model segments them, or (``also_cleaned``) without its post-processing, and then
    also with only every label's largest connected component kept."""
    task_name = task_name or task.name
    labels = model.task_labels(task_name)
    model_names = {name for _, name in labels}
    if model_names != set(task.labels) or any(task.labels[name] != i for i, name in labels):
        raise DataError(f"{task.root}: labels {task.labels} differ from the labels of task '{task_name}' in the "
                        f"model {dict((n, i) for i, n in labels)}")
    segmenter = segmenter or Segmenter(model)
    if also_cleaned:  # the network's output as it is, then cleaned here label by label
        segmenter = segmenter.configured(largest_component="none")
    names = list(case_names) if case_names is not None else [c.name for c in task.cases]
    plain, cleaned = Evaluation(), Evaluation()
    ids = [label_id for label_id, _ in labels]
    for i, name in enumerate(names):
        image, _, reference = task.read_case(task.case(name))
        predicted = segmenter.segment(image, task_name)
        spacing = tuple(reversed(image.GetSpacing()))
        variants = [(plain, predicted)] + ([(cleaned, keep_largest_components(predicted, ids))] if also_cleaned else [])
        for evaluation, prediction in variants:
            array = sitk.GetArrayFromImage(prediction)
            dice = dice_per_label(array, reference, ids)
            hd95 = hd95_per_label(array, reference, ids, spacing)
            evaluation.scores += [CaseScore(task_name, name, label_name, label_id, dice[label_id], hd95[label_id])
                                  for label_id, label_name in labels]
        if progress is not None:
            start, end = fraction_range
            progress.progress("evaluating", start + (end - start) * (i + 1) / len(names),
                              f"{task_name}: {i + 1}/{len(names)} cases")
    return plain, cleaned
