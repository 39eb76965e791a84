"""What both LabelShare modules use, without Qt (tested on slicer-core); shipped with LabelShareSegmentation.

- :mod:`.application`   what the running Slicer application provides: PythonSlicer, its temporary folder
- :mod:`.volumes`       volume node ⇄ SimpleITK image with the full geometry (RAS ⇄ LPS, oblique, single slice)
- :mod:`.segments`      task label image → named, coloured segments with terminology; segments → label image
- :mod:`.jobs`          background child processes with progress, capped log, cancel (the process tree)
- :mod:`.shared_worker` the one background worker both modules use, who uses it, and the segment/rank requests
- :mod:`.store`         the model store: the models a user can pick (lineages, newest version first), each checked
  once, and a change notification
- :mod:`.model_info`    what a model is for (its card): per task intended input, modality, data, licence, Dice;
  whether a DICOM volume's modality fits the task
- :mod:`.settings`      the preferences both modules share (models folder, added model folders, device, workspace)
- :mod:`.signals`       the pure-Python change notification the store, the shared worker and jobs use
- :mod:`.dependencies`  first-run install of torch and the engine's packages inside Slicer

Everything here imports only the engine's light modules (no torch, no MONAI: Slicer loads these modules before the
first-run dependency install); Testing/test_slicer_light_imports.py keeps it so. The device words both modules
offer are the engine's (:data:`DEVICES`, read with :func:`parse_device`, which also takes ``gpu`` for ``cuda``;
:func:`device_choice` turns any saved setting into one of them).
"""

from labelshare.core.config import DEFAULT_DEVICE, DEVICES, parse_device

from .application import python_executable, temporary_root
from .dependencies import DependencyError, DependencyInstaller, InstallStep, ensure_dependencies, skip_message
from .jobs import (Job, JobCancelled, JobFailed, JobState, ProcessJob, WorkerJob, WorkerProcess, child_environment,
                   device_choice, engine_command)
from .model_info import ModelInfo, TaskInfo, model_info, modality_warning
from .segments import (EXTENSION_RESOURCES, edited_task_segments, import_task_segments, keep_copy_of_task_segments,
                       new_output_segmentation, place_beside, task_segment_ids)
from .settings import Settings
from .shared_worker import SEGMENTATION, TRAINING, SharedWorker, WorkerBusyError, default_worker
from .signals import Signal
from .store import (ModelStore, available_models, default_store, mirroring_refused, model_title, models_in,
                    task_labels, user_models_dir, version_of)
from .volumes import (check_input_volume, check_scalar_volume, image_to_volume, segmentation_input,
                      set_volume_from_image, volume_to_image)

__all__ = [
    "DEFAULT_DEVICE", "DEVICES", "DependencyError", "DependencyInstaller", "EXTENSION_RESOURCES", "InstallStep", "Job",
    "JobCancelled", "JobFailed", "JobState", "ModelInfo", "ModelStore", "ProcessJob", "SEGMENTATION", "Settings",
    "SharedWorker", "Signal", "TRAINING", "TaskInfo", "WorkerBusyError", "WorkerJob", "WorkerProcess",
    "available_models", "check_input_volume", "check_scalar_volume", "child_environment", "default_store",
    "default_worker", "device_choice", "edited_task_segments", "engine_command", "ensure_dependencies",
    "image_to_volume", "import_task_segments", "keep_copy_of_task_segments", "mirroring_refused", "modality_warning",
    "model_info",
    "model_title", "models_in", "new_output_segmentation", "parse_device", "place_beside", "python_executable",
    "segmentation_input", "set_volume_from_image", "skip_message", "task_labels", "task_segment_ids",
    "temporary_root", "user_models_dir", "version_of", "volume_to_image",
]
