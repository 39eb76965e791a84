"""The Qt parts of LabelShare Training besides the module widget (PythonQt: only in a real Slicer).

- :mod:`.annotation_queue`  the "Annotation queue" section: Rank, Next case, the queue table
- :mod:`.training_run`      the "Train" section: Train/Update/Stop, progress, outcome, unfinished runs
- :mod:`.dialogs`           the questions the module asks, and how it shows an error and goes on

The logic behind them is in ``LabelShareTrainingLib`` (no Qt, tested on slicer-core).
"""

from .annotation_queue import AnnotationQueueWidget
from .dialogs import askDuplicate, askRefusedDecision, askSegmentChoices, showErrorAndContinue
from .training_run import TrainingRunWidget

__all__ = ["AnnotationQueueWidget", "TrainingRunWidget", "askDuplicate", "askRefusedDecision", "askSegmentChoices",
           "showErrorAndContinue"]
