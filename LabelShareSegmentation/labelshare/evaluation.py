"""Evaluation: segment a task's cases with a model and score them (Dice and HD95 per case and label,
:mod:`labelshare.scores`)."""

from __future__ import annotations

from collections.abc import Iterable

import SimpleITK as sitk

from .errors import DataError
from .inference import Segmenter
from .metrics import dice_per_label, hd95_per_label
from .models import Model
from .progress import Progress
from .scores import CaseScore, Evaluation
from .tasks import TaskDataset


def evaluate_cases(model: Model, task: TaskDataset, case_names: Iterable[str] | None = None,
                   task_name: str | None = None, progress: Progress | None = None,
                   fraction_range: tuple[float, float] = (0.0, 1.0), segmenter: Segmenter | None = None
                   ) -> Evaluation:
    """Segment every case with the model's full inference pipeline and score it against its label file.

    ``task_name`` is the task in the model (default: the dataset's name).
    """
    task_name = task_name or task.name
    labels = model.task_labels(task_name)
    model_names = {name for _, name in labels}
    if model_names != set(task.labels) or any(task.labels[name] != i for i, name in labels):
        raise DataError(f"{task.root}: labels {task.labels} differ from the labels of task '{task_name}' in the "
                        f"model {dict((n, i) for i, n in labels)}")
    segmenter = segmenter or Segmenter(model)
    names = list(case_names) if case_names is not None else [c.name for c in task.cases]
    result = Evaluation()
    ids = [label_id for label_id, _ in labels]
    for i, name in enumerate(names):
        image, _, reference = task.read_case(task.case(name))
        predicted = sitk.GetArrayFromImage(segmenter.segment(image, task_name))
        spacing = tuple(reversed(image.GetSpacing()))
        dice = dice_per_label(predicted, reference, ids)
        hd95 = hd95_per_label(predicted, reference, ids, spacing)
        for label_id, label_name in labels:
            result.scores.append(CaseScore(task_name, name, label_name, label_id, dice[label_id],
                                           hd95[label_id]))
        if progress is not None:
            start, end = fraction_range
            progress.progress("evaluating", start + (end - start) * (i + 1) / len(names),
                              f"{task_name}: {i + 1}/{len(names)} cases")
    return result
