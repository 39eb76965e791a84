"""MRML adapters and background training of the LabelShareTraining module (no Qt: tested on slicer-core).

- :mod:`.cases`  volume + segmentation nodes → a case of a task folder (segment names → labels, overlaps, missing
  labels, duplicates), and a collected case back into the scene
- :mod:`.runs`   what a training run is: engine command line, model versions, run records, progress, forgetting
- :mod:`.lock`   one training job at a time, across Slicer instances and crashes
- :mod:`.logic`  the module's logic: tasks, cases, one background run

It reuses LabelShareSegmentation's adapters (``volumes``, ``segments``), its job runner (``jobs``) and its model
list (``model_choice``), and the engine's task-folder writer ``labelshare.collection``.
"""

from labelshare.collection import DuplicateCaseError

from .cases import CaseExport, UnmatchedSegmentsError
from .lock import JobLockedError, TrainingLock
from .logic import (TaskEntry, TrainingLogic, TrainingOutcome, default_workspace, parse_label_text,
                    why_cannot_add_case, why_cannot_train)
from .runs import BUDGETS, DEVICES, ForgettingReport, TrainingRequest

__all__ = [
    "BUDGETS", "CaseExport", "DEVICES", "DuplicateCaseError", "ForgettingReport", "JobLockedError", "TaskEntry",
    "TrainingLock", "TrainingLogic", "TrainingOutcome", "TrainingRequest", "UnmatchedSegmentsError",
    "default_workspace", "parse_label_text", "why_cannot_add_case", "why_cannot_train",
]
