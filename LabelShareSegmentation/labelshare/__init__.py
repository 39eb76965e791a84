"""LabelShare: one network for several segmentation tasks with different label sets (label sharing).

The public Python API; everything here also runs without 3D Slicer::

    import labelshare
    space = labelshare.LabelSpace.build([labelshare.compute_statistics(labelshare.TaskDataset.open(d, n))
                                         for n, d in [("acdc", "data/acdc"), ("hippo", "data/hippo")]])
    model_dir = labelshare.train([("acdc", Path("data/acdc")), ("hippo", Path("data/hippo"))], space, "models/v1").path
    model = labelshare.load_model(model_dir, device="auto")
    label_image = labelshare.Segmenter(model).segment(SimpleITK.ReadImage("case.nii.gz"), task="acdc")
"""

import importlib

# Public name -> submodule. Submodules are imported on first use (PEP 562). The engine has two weights:
# light modules (no torch or MONAI: errors, progress, imagedata, fileio, naming, paths, config, layouts, tasks,
# taskfolders, labelspace, modelfolder, scores, forgetting, synthetic, terminology, inputs, outputs, worker's protocol)
# that Slicer's own process imports, and heavy ones (networks, models, training, training_run, inference, segment_run,
# evaluation, metrics, incremental, demo) that run in the worker or a training child. Testing/test_light_core.py keeps
# the light ones light.
_EXPORTS = {
    "DataError": "errors", "LabelShareError": "errors", "LabelSpaceError": "errors", "ModelError": "errors",
    "TrainingInterrupted": "errors", "UnknownTaskError": "errors",
    "AddTaskConfig": "config", "TrainConfig": "config",
    "Evaluation": "scores", "evaluate_cases": "evaluation",
    "Segmenter": "inference", "segment_file": "segment_run", "SegmentConfig": "config",
    "LabelSpace": "labelspace", "TaskStatistics": "labelspace", "compute_statistics": "labelspace",
    "parse_group": "labelspace",
    "list_models": "modelfolder", "verify_folder": "modelfolder", "run_state": "modelfolder",
    "Model": "models", "load_model": "models",
    "add_task": "incremental",
    "default_model_dir": "paths", "user_models_dir": "paths",
    "train": "training_run",
    "Progress": "progress", "parse_event": "progress",
    "TaskDataset": "tasks",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
