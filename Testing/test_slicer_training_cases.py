"""Collecting cases from MRML nodes (LabelShareTrainingLib.cases) on real Slicer MRML (slicer-core): export into a
task folder and read back through the engine with identical labels and geometry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):
    sys.path.insert(0, str(REPO_ROOT / module_folder))

import slicer  # noqa: E402
import vtk  # noqa: E402
from LabelShareTrainingLib.cases import (UnmatchedSegmentsError, add_case_from_nodes, open_case,  # noqa: E402
                                         plan_mapping)
from slicer_support import slicer_scene  # noqa: E402

from labelshare.core.errors import DataError  # noqa: E402
from labelshare.core.preprocessing import DEFAULT_PREPROCESSING, case_slices  # noqa: E402
from labelshare.core.taskfolders import TRASH_DIR, DuplicateCaseError, create_task  # noqa: E402
from labelshare.core.tasks import TaskDataset  # noqa: E402

SHAPE = (5, 18, 22)  # K, J, I
ANGLE = 0.35


def oblique_volume(scene, name="patient01_frame02", shape=SHAPE):
    """A scalar volume with anisotropic spacing, an origin and a direction rotated about two axes (RAS)."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    c, s = np.cos(ANGLE), np.sin(ANGLE)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    volume.SetIJKToRASDirections(rotation.tolist())
    volume.SetSpacing(0.7, 0.9, 2.5)
    volume.SetOrigin(12.5, -30.0, 44.0)
    voxels = np.random.default_rng(0).normal(200, 40, shape).astype(np.int16)
    slicer.util.updateVolumeFromArray(volume, voxels)
    return volume


def add_segment(segmentation, volume, name, mask):
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", name)
    if mask.any():
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segmentation, segment_id, volume)
    return segment_id


def masks(shape=SHAPE):
    organ = np.zeros(shape, bool)
    organ[1:4, 3:15, 4:18] = True
    lesion = np.zeros(shape, bool)
    lesion[2, 6:10, 8:12] = True
    ruler = np.zeros(shape, bool)
    ruler[0, 0, :] = True
    return organ, lesion, ruler


def segmentation_for(scene, volume, names=("liver", "TUMOUR", "ruler"), shape=SHAPE):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "corrected")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.CreateDefaultDisplayNodes()
    for name, mask in zip(names, masks(shape)[:len(names)], strict=True):
        add_segment(segmentation, volume, name, mask)
    return segmentation


def ijk_to_ras(volume) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def expected_lps_geometry(volume):
    """Spacing, origin and direction in LPS computed here from the node's RAS matrix (independent of the adapter)."""
    matrix = ijk_to_ras(volume)
    flip = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return spacing, flip @ matrix[:3, 3], (flip @ (matrix[:3, :3] / spacing)).ravel()


@pytest.fixture
def scene():
    """A real MRML scene with Slicer's module logics (see slicer_support)."""
    with slicer_scene() as env:
        yield env.scene


@pytest.fixture
def liver(tmp_path):
    return create_task(tmp_path / "workspace", "liver", ["Liver", "tumour"])


def test_case_exported_from_nodes_reads_back_with_identical_labels_and_geometry(scene, liver):
    volume = oblique_volume(scene)
    segmentation = segmentation_for(scene, volume)
    with pytest.raises(UnmatchedSegmentsError) as unmatched:
        add_case_from_nodes(liver, volume, segmentation)
    assert unmatched.value.mapping.unmatched == ["ruler"] and "ruler" in str(unmatched.value)
    assert liver.case_names() == []
    export = add_case_from_nodes(liver, volume, segmentation, choices={"ruler": None})
    assert export.case_name == "patient01_frame02"
    assert export.mapping.assignments == {"liver": "Liver", "TUMOUR": "tumour"}
    organ, lesion, _ = masks()
    assert export.overlaps == {("tumour", "Liver"): int(lesion.sum())}

    dataset = TaskDataset.open(liver.root, "liver")
    assert dataset.labels == {"Liver": 1, "tumour": 2}
    [case] = dataset.cases
    assert case.patient == "patient01"
    image, image_array, label_array = dataset.read_case(case)
    expected = np.where(lesion, 2, np.where(organ, 1, 0))
    np.testing.assert_array_equal(label_array, expected)
    np.testing.assert_array_equal(image_array, slicer.util.arrayFromVolume(volume))
    spacing, origin, direction = expected_lps_geometry(volume)
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), direction, atol=1e-5)
    record = json.loads((liver.root / "dataset.json").read_text())["labelshare"]["collection"]["cases"][case.name]
    assert record["skipped_segments"] == ["ruler"] and record["missing_labels"] == []
    assert record["overlaps"] == [{"kept": "tumour", "replaced": "Liver", "voxels": int(lesion.sum())}]
    assert "volume 'patient01_frame02'" in record["source"]


def test_segment_mapped_by_choice_and_missing_labels_recorded(scene, liver):
    volume = oblique_volume(scene)
    segmentation = segmentation_for(scene, volume, names=("Organ outline", "tumour", "ruler"))
    mapping = plan_mapping(segmentation, liver, {"Organ outline": "Liver", "ruler": None})
    assert mapping.assignments == {"Organ outline": "Liver", "tumour": "tumour"} and mapping.unmatched == []
    export = add_case_from_nodes(liver, volume, segmentation, choices={"Organ outline": "Liver", "ruler": None})
    [summary] = liver.cases()
    organ, lesion, _ = masks()
    assert summary.name == export.case_name
    assert summary.label_voxels == {"Liver": int(organ.sum() - lesion.sum()), "tumour": int(lesion.sum())}
    only_organ = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organ only")
    add_segment(only_organ, volume, "liver", organ)
    add_segment(only_organ, volume, "tumour", np.zeros(SHAPE, bool))  # an empty segment: the label is missing
    second = oblique_volume(scene, "second", SHAPE)
    slicer.util.updateVolumeFromArray(second, slicer.util.arrayFromVolume(second) + 1)
    add_case_from_nodes(liver, second, only_organ)
    assert {c.name: c.missing_labels for c in liver.cases()} == {export.case_name: [], "second": ["tumour"]}


def test_same_case_twice_is_detected_and_replaced_only_when_asked(scene, liver):
    volume = oblique_volume(scene)
    segmentation = segmentation_for(scene, volume, names=("liver", "tumour"))
    first = add_case_from_nodes(liver, volume, segmentation).case_name
    with pytest.raises(DuplicateCaseError) as duplicate:
        add_case_from_nodes(liver, volume, segmentation)
    assert duplicate.value.existing == first and duplicate.value.same_label
    tumour_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    segmentation.GetSegmentation().RemoveSegment(tumour_id)  # the annotator corrected the case
    with pytest.raises(DuplicateCaseError) as corrected:
        add_case_from_nodes(liver, volume, segmentation)
    assert not corrected.value.same_label
    assert add_case_from_nodes(liver, volume, segmentation, duplicate="replace").case_name == first
    assert liver.case_names() == [first] and liver.cases()[0].missing_labels == ["tumour"]
    assert len(list((liver.root / TRASH_DIR).iterdir())) == 1


def test_single_slice_projection_round_trip(scene, tmp_path):
    xray = create_task(tmp_path, "xray", ["lung field", "heart"])
    shape = (1, 30, 40)
    volume = oblique_volume(scene, "chest", shape)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chest labels")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    lung = np.zeros(shape, bool)
    lung[0, 5:25, 3:18] = True
    add_segment(segmentation, volume, "Lung_Field", lung)
    name = add_case_from_nodes(xray, volume, segmentation).case_name
    dataset = TaskDataset.open(xray.root)
    _, _, label = dataset.read_case(dataset.case(name))
    np.testing.assert_array_equal(label, lung.astype(np.uint8))
    assert case_slices(dataset, dataset.case(name), DEFAULT_PREPROCESSING).image.shape == (1, 30, 40), "one projection"


def test_opened_case_comes_back_as_named_segments_and_maps_by_name(scene, liver):
    volume = oblique_volume(scene)
    name = add_case_from_nodes(liver, volume, segmentation_for(scene, volume), choices={"ruler": None}).case_name
    opened_volume, opened_segmentation = open_case(liver, name)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(opened_volume), slicer.util.arrayFromVolume(volume))
    np.testing.assert_allclose(ijk_to_ras(opened_volume), ijk_to_ras(volume), atol=1e-4)
    assert [opened_segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)] == ["Liver", "tumour"]
    with pytest.raises(DuplicateCaseError) as duplicate:
        add_case_from_nodes(liver, opened_volume, opened_segmentation)
    assert duplicate.value.existing == name and duplicate.value.same_label, "segments map back by name, unchanged"


def test_bad_inputs_are_refused_with_the_reason(scene, liver):
    volume = oblique_volume(scene)
    segmentation = segmentation_for(scene, volume, names=("liver", "tumour"))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(DataError, match="different transforms"):
        add_case_from_nodes(liver, volume, segmentation)
    segmentation.SetAndObserveTransformNodeID(None)
    with pytest.raises(DataError, match="no segment for a label"):
        add_case_from_nodes(liver, volume, segmentation, choices={"liver": None, "tumour": None})
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    slicer.util.updateVolumeFromArray(vector, np.zeros(SHAPE + (3,), np.uint8))
    with pytest.raises(DataError, match="scalar"):
        add_case_from_nodes(liver, vector, segmentation)
    with pytest.raises(DataError, match="no volume"):
        add_case_from_nodes(liver, None, segmentation)
    assert liver.case_names() == []
