"""MRML adapters and background jobs of the LabelShareSegmentation module (no Qt: tested on slicer-core).

- :mod:`.volumes`       volume node ⇄ SimpleITK image with the full geometry (RAS ⇄ LPS, oblique, single slice)
- :mod:`.segments`      task label image → named, coloured segments with terminology; segments → label image
- :mod:`.jobs`          background child processes with progress, capped log, cancel (the process tree)
- :mod:`.model_choice`  the models a user can pick, each checked by the engine
- :mod:`.logic`         segment a volume with a task: the module's logic
- :mod:`.dependencies`  first-run install of torch and the engine's packages inside Slicer

The LabelShareTraining module reuses volumes, segments and jobs.
"""

from .dependencies import DependencyError, DependencyInstaller
from .jobs import (Job, JobCancelled, JobFailed, JobState, ProcessJob, Worker, WorkerJob, child_environment,
                   engine_command, python_executable)
from .logic import SegmentationLogic, why_not_ready
from .model_choice import available_models, model_title, models_in, task_labels, user_models_dir
from .segments import (EXTENSION_RESOURCES, import_task_segments, output_segmentation,
                       place_beside, segment_styles, task_segment_ids)
from .volumes import check_scalar_volume, image_to_volume, set_volume_from_image, volume_to_image

__all__ = [
    "DependencyError", "DependencyInstaller", "EXTENSION_RESOURCES", "Job", "JobCancelled", "JobFailed", "JobState",
    "ProcessJob", "SegmentationLogic", "Worker", "WorkerJob", "available_models", "check_scalar_volume",
    "child_environment", "engine_command", "image_to_volume", "import_task_segments",
    "model_title", "models_in", "output_segmentation", "place_beside", "python_executable", "segment_styles",
    "set_volume_from_image", "task_labels", "task_segment_ids", "user_models_dir", "volume_to_image",
    "why_not_ready",
]
