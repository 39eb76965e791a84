"""The LabelShareSegmentation module's logic, without Qt (tested on slicer-core).

- :mod:`.logic`  segment a volume with a task: volume → background worker → segments beside the volume; Apply
  never loses an edit; what the user should know about the input (colour, modality; the engine's input check's
  warning kept with the segments); the uncertainty map over the image

What both modules use (geometry adapters, segments, background jobs, the model store, dependencies) is in the
shared package ``LabelShareLib``, which ships with this module.
"""

from labelshare.core.config import LARGEST_COMPONENT, InferenceConfig  # the choices and defaults the widgets offer

from LabelShareLib.segments import input_warning  # the input check's warning kept on a segmentation node

from .logic import EditsKept, SegmentationLogic, input_notes, task_info, uncertainty_node, why_not_ready

__all__ = ["EditsKept", "InferenceConfig", "LARGEST_COMPONENT", "SegmentationLogic", "input_notes", "input_warning",
           "task_info", "uncertainty_node", "why_not_ready"]
