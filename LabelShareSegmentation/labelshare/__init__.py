"""LabelShare: one network for several segmentation tasks with different label sets (label sharing).

The public Python API; everything here also runs without 3D Slicer::

    import labelshare
    space = labelshare.LabelSpace.build([labelshare.compute_statistics(labelshare.TaskDataset.open(d, n))
                                         for n, d in [("acdc", "data/acdc"), ("hippo", "data/hippo")]])
    model_dir = labelshare.train([("acdc", Path("data/acdc")), ("hippo", Path("data/hippo"))], space, "models/v1")
    model = labelshare.load_model(model_dir, device="auto")
    label_image = labelshare.Segmenter(model).segment(SimpleITK.ReadImage("case.nii.gz"), task="acdc")
"""

from .errors import DataError, LabelShareError, LabelSpaceError, ModelError, TrainingInterrupted, UnknownTaskError
from .evaluation import Evaluation, evaluate_cases
from .inference import Segmenter, segment_file
from .labelspace import LabelSpace, TaskStatistics, compute_statistics, parse_group
from .models import Model, default_model_dir, list_models, load_model, user_models_dir, verify_folder
from .pipeline import train
from .progress import Progress, parse_event
from .tasks import TaskDataset
from .training import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "DataError", "Evaluation", "LabelShareError", "LabelSpace", "LabelSpaceError", "Model", "ModelError", "Progress",
    "Segmenter", "TaskDataset", "TaskStatistics", "TrainConfig", "TrainingInterrupted", "UnknownTaskError",
    "compute_statistics", "default_model_dir", "evaluate_cases", "list_models", "load_model", "parse_event",
    "parse_group", "segment_file", "train", "user_models_dir", "verify_folder",
]
