"""Task label image → segments of a segmentation node, and segments → label image (for collecting cases).

One segment per label of the task, in label-id order, named with the task's label names, each with a colour
that differs from the task's other labels and, where known, a standard terminology entry (DICOM/SNOMED CT codes
that Slicer shows in the segment list and writes into DICOM SEG and .seg.nrrd). Names, colours and terminology are
the engine's (:func:`labelshare.terminology.label_styles`: the model's ``label_info``, then the extension's table
``Resources/LabelTerminology.csv``, then a palette), so a segmentation made here and a ``.seg.nrrd`` or DICOM SEG
written by ``labelshare segment`` describe a label the same way.

Segments are tagged with the task (``LabelShare.Task``) and label id, so running a task again replaces exactly
that task's segments, in place, and leaves every other segment of the node alone. All of a task's segments share
one labelmap layer, imported in one call (Slicer's ``ImportLabelmapToSegmentationNode``) with the transform from
the volume to the segmentation node, so segments lie on the volume also when either is under a transform.

Usage::

    labels = task_labels(model, task)                   # LabelEntry-like objects: id, name, info (.store)
    node = output_segmentation(volumeNode, task)        # the node of the last run, or a new "<volume> <task>"
    import_task_segments(node, label_image, task, labels, reference_volume=volumeNode)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from labelshare.errors import DataError
from labelshare.outputs import LABEL_ID_TAG, MODEL_TAG, TASK_TAG
from labelshare.terminology import KnownLabel, TaskLabel, label_styles

from .volumes import as_3d, image_to_oriented_image

# <module folder>/../Resources: the repository's Resources/ in a checkout, the installed copy in a built extension
EXTENSION_RESOURCES = Path(__file__).resolve().parents[2] / "Resources"
OUTPUT_TASK_ATTRIBUTE = "LabelShare.OutputTask"  # marks the node LabelShare created for (volume, task)


def task_segment_ids(segmentation_node, task: str) -> list[str]:
    """IDs of the segments LabelShare made for ``task`` in this node, in their order in the node."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())
            if _tag(segmentation.GetNthSegment(index), TASK_TAG) == task]


def _tag(segment, name: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def import_task_segments(segmentation_node, label_image: sitk.Image, task: str, labels: Sequence[TaskLabel],
                         reference_volume=None, model_name: str = "",
                         table: dict[str, KnownLabel] | None = None) -> list[str]:
    """Replace the task's segments in ``segmentation_node`` by the labels of ``label_image``; returns their IDs.

    :param label_image: task label ids (0 = background) on the grid of ``reference_volume``, in its own
        coordinates (LPS geometry, as the engine writes it; the volume's parent transform not applied).
    :param labels: the task's labels (id, name, info); every label gets a segment, also when it is absent.
    :param reference_volume: the input volume: it becomes the segmentation's reference geometry when the node
        has none, and the label image must have its size. The segments cover the volume's voxels in world
        coordinates whatever transforms the volume and the segmentation node are under.
    """
    label_image = as_3d(label_image)
    if reference_volume is not None:
        expected = reference_volume.GetImageData().GetDimensions()
        if tuple(label_image.GetSize()) != tuple(expected):
            raise DataError(f"segmentation result has size {label_image.GetSize()} but volume "
                            f"'{reference_volume.GetName()}' has {expected}")
    styles = label_styles(labels, table)
    values = sitk.GetArrayViewFromImage(label_image)
    if values.dtype.kind not in "ui":
        raise DataError(f"segmentation result of task '{task}' has {values.dtype} voxels; integer labels are needed")
    present = np.flatnonzero(np.bincount(values.ravel()))  # much faster than np.unique on large volumes
    known = np.zeros(int(max(present.max(initial=0), max(s.label_id for s in styles))) + 1, dtype=np.uint16)
    for position, style in enumerate(styles):
        known[style.label_id] = position + 1
    unknown = sorted(set(present.tolist()) - {0} - {s.label_id for s in styles})
    if unknown:
        raise DataError(f"segmentation result of task '{task}' has label values {unknown[:10]} that are not labels "
                        f"of the task ({', '.join(f'{s.label_id} {s.name}' for s in styles)})")
    positions = sitk.GetImageFromArray(known[values].astype(np.uint8 if len(styles) < 256 else np.uint16))
    positions.CopyInformation(label_image)
    labelmap = image_to_oriented_image(positions)
    to_segmentation = _transform_between(reference_volume, segmentation_node)

    segmentation = segmentation_node.GetSegmentation()
    with slicer.util.NodeModify(segmentation_node):
        old_ids = task_segment_ids(segmentation_node, task)
        insert_at = segmentation.GetSegmentIndex(old_ids[0]) if old_ids else None
        for segment_id in old_ids:
            segmentation.RemoveSegment(segment_id)
        if reference_volume is not None and not segmentation_node.GetNodeReference(
                segmentation_node.GetReferenceImageGeometryReferenceRole()):
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        new_ids = vtk.vtkStringArray()
        for offset, style in enumerate(styles):
            segment_id = segmentation.AddEmptySegment("", style.name, list(style.color))
            segment = segmentation.GetSegment(segment_id)
            if style.terminology is not None:
                segment.SetTerminology(style.terminology.slicer_text())
            segment.SetTag(TASK_TAG, task)
            segment.SetTag(LABEL_ID_TAG, str(style.label_id))
            if model_name:
                segment.SetTag(MODEL_TAG, model_name)
            if insert_at is not None:
                segmentation.SetSegmentIndex(segment_id, insert_at + offset)
            new_ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmap, segmentation_node, new_ids, to_segmentation):
            raise DataError(f"could not import the segmentation result into '{segmentation_node.GetName()}'")
    segmentation_node.CreateDefaultDisplayNodes()
    return [new_ids.GetValue(i) for i in range(new_ids.GetNumberOfValues())]


def _transform_between(volume_node, segmentation_node) -> vtk.vtkGeneralTransform | None:
    """The transform from the volume's coordinates to the segmentation's (None when both are under the same
    transform, the usual case: the output node is placed under the volume's transform).

    The labelmap is imported as an image in the volume's own coordinates together with this transform, which
    Slicer applies once. Importing a labelmap *node* instead makes Slicer work out the transform itself, from the
    labelmap node's parent transform (a temporary node has none) to the segmentation's, and apply it twice: a
    volume translated by 20 mm got its segments 40 mm away (Testing/test_slicer_segmentation_adapters.py).
    Between linear transforms the transform is given as one matrix, which Slicer recognises as linear and applies
    to the labelmap's geometry alone; the chain of transforms ``GetTransformBetweenNodes`` builds is not recognised
    as linear and would resample the voxels (losing some at a rotation). Only a warping transform resamples.
    """
    source = volume_node.GetParentTransformNode() if volume_node is not None else None
    target = segmentation_node.GetParentTransformNode()
    if source is target:
        return None
    transform = vtk.vtkGeneralTransform()
    if all(node is None or node.IsTransformToWorldLinear() for node in (source, target)):
        matrix = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source, target, matrix)
        linear = vtk.vtkTransform()
        linear.SetMatrix(matrix)
        transform.Concatenate(linear)
    else:
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source, target, transform)
    return transform


def output_segmentation(volume_node, task: str, scene=None):
    """The segmentation node LabelShare made for this volume and task before, or a new one named
    ``<volume> <task>`` placed beside the volume in the subject hierarchy (under the volume's transform)."""
    scene = scene or volume_node.GetScene()
    for node in slicer.util.getNodesByClass("vtkMRMLSegmentationNode", scene):
        if node.GetAttribute(OUTPUT_TASK_ATTRIBUTE) == task and node.GetNodeReference(
                node.GetReferenceImageGeometryReferenceRole()) is volume_node:
            return node
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume_node.GetName()} {task}")
    node.SetAttribute(OUTPUT_TASK_ATTRIBUTE, task)
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.CreateDefaultDisplayNodes()
    place_beside(node, volume_node)
    return node


def place_beside(node, volume_node) -> None:
    """Put ``node`` under the same subject-hierarchy parent and the same transform as ``volume_node``.

    Slicer's Qt plugins create subject-hierarchy items for new nodes; without them (scripts, tests) the items are
    created here.
    """
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    volume_item = hierarchy.GetItemByDataNode(volume_node) or hierarchy.CreateItem(hierarchy.GetSceneItemID(),
                                                                                    volume_node)
    parent = hierarchy.GetItemParent(volume_item)
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(parent, node)
    hierarchy.SetItemParent(item, parent)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
