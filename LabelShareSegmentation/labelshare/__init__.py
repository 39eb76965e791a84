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

from .core import __version__ as __version__

# Public name -> submodule. Submodules are imported on first use (PEP 562), so ``import labelshare`` stays light:
# the names of labelshare.core (torch-free) cost no torch, those of labelshare.engine import it when first used.
_EXPORTS = {
    "DataError": "core.errors", "LabelShareError": "core.errors", "LabelSpaceError": "core.errors",
    "ModelError": "core.errors", "TrainingInterrupted": "core.errors", "UnknownTaskError": "core.errors",
    "AddTaskConfig": "core.config", "TrainConfig": "core.config", "SegmentConfig": "core.config",
    "Evaluation": "core.scores", "evaluate_cases": "engine.evaluation",
    "Segmenter": "engine.inference", "segment_file": "engine.segment_run",
    "LabelSpace": "core.labelspace", "TaskStatistics": "core.labelspace", "parse_group": "core.labelspace",
    "compute_statistics": "engine.statistics",
    "list_models": "core.modelfolder", "verify_folder": "core.modelfolder", "run_state": "core.modelfolder",
    "Model": "engine.models", "load_model": "engine.models",
    "add_task": "engine.incremental",
    "default_model_dir": "core.paths", "user_models_dir": "core.paths",
    "train": "engine.training_run",
    "Progress": "core.progress", "parse_event": "core.progress",
    "TaskDataset": "core.tasks",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
