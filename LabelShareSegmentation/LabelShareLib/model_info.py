"""What a model is for, read from its folder: each task's intended input, modality, training data and licence, the
validation Dice per label and when it was trained; and whether an input volume fits the task's modality.

The facts are the model card's (``README.md`` of a model folder, written by the engine from the same files): the
label space (``labelspace.json``: per task its intended input, licence, citation, cases), ``metrics.json``
(validation Dice per label) and ``lineage.json`` (when the version was made, from which data folders). A model
trained on data whose licence forbids commercial use is flagged (:func:`labelshare.core.modelfolder.is_non_commercial`,
the card's rule).

A volume loaded from DICOM carries its Modality (0008,0060) as the ``DICOM.Modality`` attribute of its
subject-hierarchy item (Slicer's DICOM plugins set it); :func:`modality_warning` compares it with the task's
intended modality, the first part of its intended input ("MRI", "cine MRI (…)", "X-ray (mammography, …)"; the
engine's input check reads it the same way: :func:`labelshare.core.input_check.intended_modalities`), and warns
before Apply: the module still segments.

Usage::

    info = model_info(model_folder)                 # ModelInfo; info.tasks["acdc"].dice["lv_cavity"]
    info.non_commercial_tasks                       # ["acdc", "mammo"]
    modality_warning(volumeNode, info.tasks["acdc"])   # "" or "'CT 1' is CT (DICOM Modality) but task acdc …"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from labelshare.core.input_check import intended_modalities, task_modality
from labelshare.core.modelfolder import is_non_commercial, read_model_json

from .store import ModelStore, default_store, version_of

@dataclass
class TaskInfo:
    """What one task of a model is for (see the module docstring)."""

    task: str
    intended_input: str
    modality: str
    cases: int
    data_folder: str
    licence: str
    non_commercial: bool
    citation: str
    dice: dict[str, float] = field(default_factory=dict)  # label name → mean validation Dice
    validation_cases: int = 0
    trained: str = ""  # date the version holding this training was made (YYYY-MM-DD)

    @property
    def dicom_modalities(self) -> tuple[str, ...]:
        """The DICOM Modality codes of the intended input (empty when its words name none)."""
        return intended_modalities(self.modality)

    def describe(self) -> str:
        """Lines for the module's task information."""
        lines = [f"Intended input: {self.intended_input or 'not described by its dataset'}"]
        data = f"{self.cases} cases" + (f" ({self.data_folder})" if self.data_folder else "")
        lines.append(f"Training data: {data}; licence: {self.licence or 'not stated'}"
                     + (" — NON-COMMERCIAL USE ONLY" if self.non_commercial else ""))
        if self.dice:
            scores = ", ".join(f"{label} {dice:.3f}" for label, dice in self.dice.items())
            lines.append(f"Validation Dice: {scores}"
                         + (f" ({self.validation_cases} cases)" if self.validation_cases else ""))
        if self.trained:
            lines.append(f"Trained: {self.trained}")
        return "\n".join(lines)


@dataclass
class ModelInfo:
    """A model version as its card describes it."""

    path: Path
    lineage: str
    version: int
    created: str
    tasks: dict[str, TaskInfo]

    @property
    def non_commercial_tasks(self) -> list[str]:
        return [name for name, task in self.tasks.items() if task.non_commercial]

    def describe(self) -> str:
        """One or two lines for the module's model information."""
        line = f"{self.path.name}: version {self.version} of {self.lineage}"
        line += f", made {self.created[:10]}" if self.created else ""
        line += f"; tasks: {', '.join(self.tasks)}."
        if self.non_commercial_tasks:
            line += (f"\nNon-commercial use only: trained on {', '.join(self.non_commercial_tasks)}, whose licence "
                     "forbids commercial use; the model inherits that restriction.")
        return line


def model_info(path: str | Path, store: ModelStore | None = None) -> ModelInfo:
    """The card's facts of a model folder (checked by the model store: raises ModelError for an unusable one)."""
    path = Path(path)
    space = (store or default_store()).label_space(path)
    metrics = read_model_json(path, "metrics.json", {}) or {}
    lineage = read_model_json(path, "lineage.json", {}) or {}
    created = str(lineage.get("created", ""))
    data = lineage.get("data") or {}
    tasks = {}
    for name in space.task_names:
        entry = space.task(name)
        validation = (metrics.get("validation") or {}).get(name) or {}
        intended = entry.intended_input or ""
        tasks[name] = TaskInfo(
            task=name, intended_input=intended, modality=task_modality(intended),
            cases=int((data.get(name) or {}).get("cases") or entry.n_cases),
            data_folder=str((data.get(name) or {}).get("folder") or ""), licence=entry.license,
            non_commercial=is_non_commercial(entry.license), citation=entry.citation,
            dice={label: float(scores["dice_mean"]) for label, scores in validation.items() if "dice_mean" in scores},
            validation_cases=max((int(scores.get("n", 0)) for scores in validation.values()), default=0),
            trained=created[:10])
    lineage_name, version = version_of(path.name)
    return ModelInfo(path=path, lineage=lineage_name, version=version, created=created, tasks=tasks)


def dicom_modality(volume_node) -> str:
    """The DICOM Modality of a volume loaded from DICOM ('' for any other volume)."""
    import slicer
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    item = hierarchy.GetItemByDataNode(volume_node) if hierarchy is not None else 0
    if not item:
        return ""
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()  # "DICOM.Modality"
    return hierarchy.GetItemAttribute(item, attribute)


def modality_warning(volume_node, task: TaskInfo) -> str:
    """A warning when a volume from DICOM has another modality than the task's intended input ('' otherwise, also
    when either is unknown). The module segments anyway: the user may know better."""
    if volume_node is None:
        return ""
    modality, expected = dicom_modality(volume_node).strip().upper(), task.dicom_modalities
    if not modality or not expected or modality in expected:
        return ""
    return (f"'{volume_node.GetName()}' is {modality} (its DICOM Modality), but task {task.task} was trained on "
            f"{task.modality} ({'/'.join(expected)}): the result may be meaningless.")
