"""What both LabelShare modules use, without Qt (tested on slicer-core); shipped with LabelShareSegmentation.

- :mod:`.application`   what the running Slicer application provides: PythonSlicer, its temporary folder
- :mod:`.volumes`       volume node ⇄ SimpleITK image with the full geometry (RAS ⇄ LPS, oblique, single slice)
- :mod:`.segments`      task label image → named, coloured segments with terminology; segments → label image
- :mod:`.jobs`          background child processes with progress, capped log, cancel (the process tree)
- :mod:`.store`         the model store: the models a user can pick, each checked once, and a change notification
- :mod:`.signals`       the pure-Python change notification the store uses
- :mod:`.dependencies`  first-run install of torch and the engine's packages inside Slicer

Everything here imports only the engine's light modules (no torch, no MONAI: Slicer loads these modules before the
first-run dependency install); Testing/test_slicer_light_imports.py keeps it so. The device words both modules
offer are the engine's (:data:`DEVICES`, read with :func:`parse_device`, which also takes ``gpu`` for ``cuda``;
:func:`device_choice` turns any saved setting into one of them).
"""

from labelshare.config import DEFAULT_DEVICE, DEVICES, parse_device

from .application import python_executable, temporary_root
from .dependencies import DependencyError, DependencyInstaller, skip_message
from .jobs import (Job, JobCancelled, JobFailed, JobState, ProcessJob, WorkerJob, WorkerProcess, child_environment,
                   device_choice, engine_command)
from .segments import EXTENSION_RESOURCES, import_task_segments, output_segmentation, place_beside, task_segment_ids
from .signals import Signal
from .store import (ModelStore, available_models, default_store, model_title, models_in, task_labels,
                    user_models_dir)
from .volumes import check_scalar_volume, image_to_volume, set_volume_from_image, volume_to_image

__all__ = [
    "DEFAULT_DEVICE", "DEVICES", "DependencyError", "DependencyInstaller", "EXTENSION_RESOURCES", "Job", "JobCancelled",
    "JobFailed", "JobState", "ModelStore", "ProcessJob", "Signal", "WorkerJob", "WorkerProcess", "available_models",
    "check_scalar_volume", "child_environment", "default_store", "device_choice", "engine_command", "image_to_volume",
    "import_task_segments", "model_title", "models_in", "output_segmentation", "parse_device", "place_beside",
    "python_executable", "set_volume_from_image", "skip_message", "task_labels",
    "task_segment_ids", "temporary_root", "user_models_dir", "volume_to_image",
]
