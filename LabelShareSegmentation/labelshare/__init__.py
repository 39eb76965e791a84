"""LabelShare: one network for several segmentation tasks with different label sets (label sharing).

The public Python API; everything here also runs without 3D Slicer::

    import labelshare
    space = labelshare.LabelSpace.build([labelshare.compute_statistics(labelshare.TaskDataset.open(d, n))
                                         for n, d in [("acdc", "data/acdc"), ("hippo", "data/hippo")]])
    model_dir = labelshare.train([("acdc", Path("data/acdc")), ("hippo", Path("data/hippo"))], space, "models/v1")
    model = labelshare.load_model(model_dir, device="auto")
    label_image = labelshare.Segmenter(model).segment(SimpleITK.ReadImage("case.nii.gz"), task="acdc")
"""

import importlib

# Public name -> submodule. Submodules are imported on first use (PEP 562) so that light parts of the engine
# (errors, progress, fileio) load without torch: the Slicer modules import them at start-up, before the first-run
# dependency install, and parse progress events without paying for torch in Slicer's own process.
_EXPORTS = {
    "DataError": "errors", "LabelShareError": "errors", "LabelSpaceError": "errors", "ModelError": "errors",
    "TrainingInterrupted": "errors", "UnknownTaskError": "errors",
    "Evaluation": "evaluation", "evaluate_cases": "evaluation",
    "Segmenter": "inference", "segment_file": "inference",
    "LabelSpace": "labelspace", "TaskStatistics": "labelspace", "compute_statistics": "labelspace",
    "parse_group": "labelspace",
    "Model": "models", "list_models": "models", "load_model": "models", "verify_folder": "models",
    "default_model_dir": "paths", "user_models_dir": "paths",
    "train": "pipeline",
    "Progress": "progress", "parse_event": "progress",
    "TaskDataset": "tasks",
    "TrainConfig": "training",
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
