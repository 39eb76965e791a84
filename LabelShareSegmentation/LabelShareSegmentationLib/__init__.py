"""The LabelShareSegmentation module's logic, without Qt (tested on slicer-core).

- :mod:`.logic`  segment a volume with a task: volume → background worker → segments beside the volume

What both modules use (geometry adapters, segments, background jobs, the model store, dependencies) is in the
shared package ``LabelShareLib``, which ships with this module.
"""

from labelshare.config import LARGEST_COMPONENT, InferenceConfig

from .logic import SegmentationLogic, why_not_ready

# the segmentation options the module's widgets offer: their choices and defaults are the engine's
__all__ = ["LARGEST_COMPONENT", "InferenceConfig", "SegmentationLogic", "why_not_ready"]
