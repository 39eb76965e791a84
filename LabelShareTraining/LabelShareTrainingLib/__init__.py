"""MRML adapters and background training of the LabelShareTraining module (no Qt: tested on slicer-core).

- :mod:`.matching`  segments → task labels: match by name, merge overlapping masks (smaller structure wins)
- :mod:`.cases`     volume + segmentation nodes → a case of a task folder (segment names → labels, overlaps, missing
  labels, duplicates), and a collected case back into the scene
- :mod:`.runs`      what a training run is: engine command line, model versions, run records, progress
- :mod:`.lock`      one training job at a time, across Slicer instances and crashes
- :mod:`.logic`     the module's logic: tasks, cases, one background run
- :mod:`.annotation_queue`  unlabelled images ranked by uncertainty (in LabelShare Segmentation's worker), the next
  case loaded and segmented, marked done once added; the queue file survives restarts

It uses the shared package ``LabelShareLib`` (geometry adapters, segments, the job runner, the model store; shipped
with LabelShareSegmentation) and the engine's light modules: the task-folder writer ``labelshare.core.taskfolders``,
the forgetting report ``labelshare.core.forgetting`` and the run states of ``labelshare.core.modelfolder``.
"""

from labelshare.core.taskfolders import DuplicateCaseError

from .annotation_queue import AnnotationQueue, AnnotationQueueLogic, why_cannot_rank, why_no_next_case
from .cases import CaseExport, UnmatchedSegmentsError
from .lock import JobLockedError, TrainingLock
from .logic import (TaskRow, TrainingLogic, TrainingOutcome, default_workspace, parse_label_text,
                    why_cannot_add_case, why_cannot_train)
from .runs import BUDGETS, DEFAULT_BUDGET, TrainingRequest

__all__ = [
    "AnnotationQueue", "AnnotationQueueLogic", "BUDGETS", "CaseExport", "DEFAULT_BUDGET", "DuplicateCaseError",
    "JobLockedError",
    "TaskRow", "TrainingLock", "TrainingLogic", "TrainingOutcome", "TrainingRequest", "UnmatchedSegmentsError",
    "default_workspace", "parse_label_text", "why_cannot_add_case", "why_cannot_rank", "why_cannot_train",
    "why_no_next_case",
]
