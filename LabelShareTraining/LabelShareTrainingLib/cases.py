"""MRML side of collecting cases: volume + segmentation nodes → a case of a task folder, and a case back into the
scene.

Adding a case (:func:`add_case_from_nodes`):

1. segments are matched to the task's labels by name (:func:`.matching.map_segments`: case and
   separators ignored); segments that match no label stop the export with :class:`UnmatchedSegmentsError`, whose
   ``mapping`` lets the caller ask the user to map or skip each of them and call again with ``choices``;
2. every mapped segment is exported as a binary mask on the **volume's** grid (Slicer's
   ``ExportSegmentsToLabelmapNode`` with the volume as reference geometry), and the masks are merged by the
   rule of :func:`.matching.merge_label_masks`: where segments overlap, the smaller structure wins;
   labels no segment provides stay empty and are recorded as missing;
3. the volume becomes a SimpleITK image with its geometry (``LabelShareLib.volumes.volume_to_image``) and the
   engine's task-folder writer stores image and label atomically (:meth:`TaskCollection.add_case`), refusing a
   duplicate unless told to keep or replace it.

Opening a case (:func:`open_case`) loads its image as a volume and its label as one segment per task label, named
like the labels, so that correcting it and adding it again maps every segment by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import slicer
from labelshare.core.errors import DataError
from labelshare.core.taskfolders import TaskCollection
from LabelShareLib.segments import import_task_segments, place_beside
from LabelShareLib.volumes import image_to_volume, volume_to_image

from .matching import SegmentMapping, map_segments, merge_label_masks


class UnmatchedSegmentsError(DataError):
    """Some segments match no label of the task; ``mapping`` has the matched, unmatched and missing names."""

    def __init__(self, task: str, mapping: SegmentMapping):
        self.task = task
        self.mapping = mapping
        super().__init__(f"task '{task}': segment(s) {', '.join(repr(s) for s in mapping.unmatched)} match no label "
                         f"of the task; map each to a label or skip it")


@dataclass
class CaseExport:
    """What :func:`add_case_from_nodes` did: the case name, the segment mapping used and the overlaps resolved."""

    case_name: str
    mapping: SegmentMapping
    overlaps: dict[tuple[str, str], int] = field(default_factory=dict)  # (winning label, losing label) -> voxels


@dataclass(frozen=True)
class CollectionLabel:
    """A task-folder label in the shape the segment import (``LabelShareLib.segments``) expects (id, name, info)."""

    id: int
    name: str
    info: dict


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def plan_mapping(segmentation_node, collection: TaskCollection,
                 choices: Mapping[str, str | None] | None = None) -> SegmentMapping:
    """How the node's segments would map to the task's labels (nothing is written)."""
    if segmentation_node is None:
        raise DataError("no segmentation selected")
    return map_segments(segment_names(segmentation_node), collection.labels, choices)


def segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """Binary mask (K, J, I) of one segment on the volume's grid (Slicer exports only into a labelmap node that is
    in the scene; ``arrayFromSegmentBinaryLabelmap`` adds a temporary one and removes it again)."""
    try:
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node) != 0
    except RuntimeError as error:
        raise DataError(f"could not export segment {segment_id!r} of '{segmentation_node.GetName()}' onto volume "
                        f"'{volume_node.GetName()}' ({error})") from None


def check_same_transform(volume_node, segmentation_node) -> None:
    """The case is stored in the volume's own coordinates; a segmentation under another transform would land in
    the wrong place."""
    if volume_node.GetTransformNodeID() != segmentation_node.GetTransformNodeID():
        raise DataError(f"volume '{volume_node.GetName()}' and segmentation '{segmentation_node.GetName()}' are under "
                        "different transforms; harden the transforms (Data module) before adding the case")


def case_label_array(volume_node, segmentation_node, mapping: SegmentMapping, labels: Mapping[str, int],
                     shape: tuple[int, ...]) -> tuple[np.ndarray, dict[tuple[str, str], int]]:
    """The task label array of the mapped segments on the volume's grid, and the overlaps resolved (by name)."""
    segmentation = segmentation_node.GetSegmentation()
    masks = []
    for index in range(segmentation.GetNumberOfSegments()):
        label = mapping.assignments.get(segmentation.GetNthSegment(index).GetName())
        if label is not None:
            masks.append((labels[label], segment_mask(segmentation_node, segmentation.GetNthSegmentID(index),
                                                      volume_node)))
    label_array, overlaps = merge_label_masks(masks, shape)
    names = {label_id: name for name, label_id in labels.items()}
    return label_array, {(names[winner], names[loser]): count for (winner, loser), count in overlaps.items()}


def add_case_from_nodes(collection: TaskCollection, volume_node, segmentation_node,
                        choices: Mapping[str, str | None] | None = None, duplicate: str = "refuse",
                        name: str | None = None) -> CaseExport:
    """Add the volume and its segmentation as a case of ``collection``.

    :param choices: segment name -> label name, or None to skip the segment (the answers of the mapping dialog).
    :param duplicate: ``refuse`` (raise :class:`labelshare.core.taskfolders.DuplicateCaseError` when the image is
        already collected), ``keep`` (add another case) or ``replace`` (move the old case to the trash first).
    :param name: case name (default: the volume's name); made unique and file-name safe.
    :raises UnmatchedSegmentsError: segments match no label and ``choices`` does not say what to do with them.
    """
    if volume_node is None:
        raise DataError("no volume selected")
    image = volume_to_image(volume_node)  # checks that it is a non-empty scalar volume
    mapping = plan_mapping(segmentation_node, collection, choices)
    if mapping.unmatched:
        raise UnmatchedSegmentsError(collection.name, mapping)
    if not mapping.assignments:
        raise DataError(f"segmentation '{segmentation_node.GetName()}' has no segment for a label of task "
                        f"'{collection.name}' ({', '.join(collection.labels)})")
    check_same_transform(volume_node, segmentation_node)
    labels = collection.labels
    label_array, overlaps = case_label_array(volume_node, segmentation_node, mapping, labels,
                                             tuple(reversed(image.GetSize())))
    details = {"segments": mapping.assignments, "skipped_segments": mapping.skipped,
               "overlaps": [{"kept": winner, "replaced": loser, "voxels": count}
                            for (winner, loser), count in overlaps.items()]}
    case_name = collection.add_case(
        image, label_array, name=name or volume_node.GetName(), duplicate=duplicate, details=details,
        source=f"3D Slicer: volume '{volume_node.GetName()}', segmentation '{segmentation_node.GetName()}'")
    return CaseExport(case_name=case_name, mapping=mapping, overlaps=overlaps)


def collection_labels(collection: TaskCollection) -> list[CollectionLabel]:
    info = (collection.metadata.get("labelshare") or {}).get("label_info") or {}
    return [CollectionLabel(id=label_id, name=name, info=dict(info.get(name) or {}))
            for name, label_id in collection.labels.items()]


def open_case(collection: TaskCollection, case_name: str, scene=None):
    """Load a collected case: (volume node, segmentation node with one segment per task label)."""
    scene = scene or slicer.mrmlScene
    image, label = collection.read_case(case_name)
    volume = image_to_volume(image, scene, f"{collection.name} {case_name}")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{collection.name} {case_name} labels")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.CreateDefaultDisplayNodes()
    import_task_segments(segmentation, label, collection.name, collection_labels(collection), reference_volume=volume)
    place_beside(segmentation, volume)
    return volume, segmentation
