"""The LabelShareSegmentation module's logic, without Qt (tested on slicer-core).

- :mod:`.logic`  segment a volume with a task: volume → background worker → segments beside the volume; Apply
  never loses an edit; what the user should know about the input (colour, modality)

What both modules use (geometry adapters, segments, background jobs, the model store, dependencies) is in the
shared package ``LabelShareLib``, which ships with this module.
"""

from labelshare.core.config import LARGEST_COMPONENT, InferenceConfig  # the choices and defaults the widgets offer

from .logic import EditsKept, SegmentationLogic, input_notes, task_info, why_not_ready

__all__ = ["EditsKept", "InferenceConfig", "LARGEST_COMPONENT", "SegmentationLogic", "input_notes", "task_info",
           "why_not_ready"]
