"""LabelShareSegmentation's MRML adapters on real Slicer C++ (slicer-core): volume geometry, segments, subject
hierarchy, replace-on-rerun and bad inputs."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
import vtk.util.numpy_support

from labelshare.core.errors import DataError
from labelshare.core.preprocessing import choose_slicing_axis
from labelshare.core.terminology import MIN_COLOUR_DISTANCE, load_label_table

pytest_plugins = ["slicer_support"]  # fixtures: mrml_scene, slicer_env
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LabelShareSegmentation"))
from LabelShareLib import segments, volumes  # noqa: E402

ROTATION = sitk.VersorTransform((1, 2, 3), 0.4).GetMatrix()  # an oblique direction: no axis is aligned


def scalar_volume(scene, array: np.ndarray, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0),
                  ras_direction=None, name: str = "volume"):
    """A scalar volume node with the given voxels (K, J, I) and RAS geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    if ras_direction is not None:
        node.SetIJKToRASDirectionMatrix(slicer.util.vtkMatrixFromArray(_as4x4(ras_direction)))
    slicer.util.updateVolumeFromArray(node, array)
    node.CreateDefaultDisplayNodes()
    return node


def _as4x4(matrix3: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = matrix3
    return matrix


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def label(id_: int, name: str, **info) -> SimpleNamespace:
    return SimpleNamespace(id=id_, name=name, info=info)


def segment_voxels(segmentation_node, segment_id: str, volume) -> np.ndarray:
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume)


# -- geometry ---------------------------------------------------------------------------------------------------------
def test_oblique_volume_to_image_is_lps_and_slicer_reads_it_back_identically(mrml_scene, slicer_env, tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    direction = np.asarray(ROTATION).reshape(3, 3)
    node = scalar_volume(mrml_scene, array, ras_direction=direction)

    image = volumes.volume_to_image(node)
    assert image.GetSize() == (6, 5, 4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, 2.5))
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, 30.0))  # RAS → LPS flips x and y
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.diag([-1, -1, 1]) @ direction, atol=1e-12)

    # independent oracle: the reader Slicer itself uses interprets the file SimpleITK wrote
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    loaded = slicer_env.logic("Volumes").AddArchetypeVolume(str(path), "loaded", 0)
    np.testing.assert_allclose(ijk_to_ras(loaded), ijk_to_ras(node), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), array)


def test_image_to_volume_round_trip_keeps_voxels_and_geometry(mrml_scene):
    array = np.random.default_rng(0).normal(size=(7, 6, 5)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 0.5, 3.0))
    image.SetOrigin((4.0, 5.0, -6.0))
    image.SetDirection(ROTATION)

    node = volumes.image_to_volume(image, mrml_scene, "from image")
    back = volumes.volume_to_image(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    for attribute in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, attribute)(), getattr(image, attribute)(), atol=1e-12)
    assert node.GetDisplayNode() is not None


def test_2d_projection_is_a_single_slice_volume_segmented_as_one_projection(mrml_scene, slicer_env, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, size=(64, 96), dtype=np.uint8)
    projection = sitk.GetImageFromArray(pixels)  # a 2D image file (slicer-core's ITK has no PNG reader: NRRD)
    sitk.WriteImage(projection, str(tmp_path / "xray.nrrd"))
    loaded = slicer_env.logic("Volumes").AddArchetypeVolume(str(tmp_path / "xray.nrrd"), "xray", 0)
    assert loaded.GetImageData().GetDimensions() == (96, 64, 1)

    image = volumes.volume_to_image(loaded)
    assert image.GetSize() == (96, 64, 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], pixels)
    assert choose_slicing_axis(image) == 0  # the engine sees one projection, not 64 rows of slices

    node = volumes.image_to_volume(projection, mrml_scene, "2D image")  # a 2D SimpleITK image becomes one slice
    assert node.GetImageData().GetDimensions() == (96, 64, 1)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[0], pixels)


@pytest.mark.parametrize("kind", ["vector", "4d", "empty", "no voxels", "labelmap"])
def test_unusable_volumes_are_refused_with_the_reason(mrml_scene, kind):
    if kind == "vector":
        node = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour photo")
        slicer.util.updateVolumeFromArray(node, np.zeros((1, 4, 4, 3), dtype=np.uint8))
        expected = "3 values per voxel"
    elif kind == "4d":  # a multi-volume (e.g. a cine series) keeps its frames as components of one scalar volume
        node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cine")
        image_data = vtk.vtkImageData()
        image_data.SetDimensions(4, 4, 3)
        image_data.AllocateScalars(vtk.VTK_SHORT, 10)
        node.SetAndObserveImageData(image_data)
        expected = "10 values per voxel"
    elif kind == "empty":
        node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "nothing")
        expected = "empty"
    elif kind == "no voxels":
        node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "zero size")
        image_data = vtk.vtkImageData()
        image_data.SetDimensions(0, 0, 0)
        node.SetAndObserveImageData(image_data)
        expected = "empty"
    else:
        node = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
        slicer.util.updateVolumeFromArray(node, np.zeros((2, 2, 2), dtype=np.uint8))
        expected = "vtkMRMLLabelMapVolumeNode"
    with pytest.raises(DataError, match=expected) as error:
        volumes.volume_to_image(node)
    assert node.GetName() in str(error.value)


# -- segments ---------------------------------------------------------------------------------------------------------
def phantom(mrml_scene):
    """A volume and a task label image on its grid: label 1 a block, label 3 a smaller block, label 2 absent."""
    volume = scalar_volume(mrml_scene, np.zeros((6, 8, 10), dtype=np.int16), ras_direction=np.asarray(ROTATION)
                           .reshape(3, 3), name="patient 7")
    values = np.zeros((6, 8, 10), dtype=np.uint8)
    values[1:5, 2:6, 2:8] = 1
    values[2:4, 3:5, 3:5] = 3
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(volumes.volume_to_image(volume))
    return volume, image, values


TASK_LABELS = [label(3, "lesion"), label(1, "body"), label(2, "organ")]


def test_task_labels_become_named_segments_in_id_order_on_the_volume_grid(mrml_scene):
    volume, image, values = phantom(mrml_scene)
    node = segments.new_output_segmentation(volume, "phantom3d")
    ids = segments.import_task_segments(node, image, "phantom3d", TASK_LABELS, reference_volume=volume,
                                        model_name="tiny-v1")
    segmentation = node.GetSegmentation()
    assert node.GetName() == "patient 7 phantom3d"
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        ["body", "organ", "lesion"]
    assert ids == [segmentation.GetNthSegmentID(i) for i in range(3)]
    for segment_id, label_id in zip(ids, (1, 2, 3), strict=True):
        np.testing.assert_array_equal(segment_voxels(node, segment_id, volume), (values == label_id).astype(np.uint8))
        assert segments._tag(segmentation.GetSegment(segment_id), segments.LABEL_ID_TAG) == str(label_id)
        assert segments._tag(segmentation.GetSegment(segment_id), segments.MODEL_TAG) == "tiny-v1"
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    assert segmentation.GetNumberOfLayers() == 1  # one shared labelmap, not one copy per segment


def test_colours_differ_within_a_task_and_known_names_get_terminology(mrml_scene):
    volume, image, _ = phantom(mrml_scene)
    labels = [label(1, "LV cavity"), label(2, "myocardium", color=[0.1, 0.2, 0.9]),
              label(3, "kidney-left", terminology="Custom~SCT^1^a~SCT^2^b~^^~~^^~^^")]
    node = segments.new_output_segmentation(volume, "cardiac")
    ids = segments.import_task_segments(node, image, "cardiac", labels, reference_volume=volume)
    found = [node.GetSegmentation().GetSegment(i) for i in ids]
    colors = np.array([s.GetColor() for s in found])
    assert min(np.linalg.norm(colors[i] - colors[j]) for i in range(3) for j in range(i)) >= MIN_COLOUR_DISTANCE
    np.testing.assert_allclose(colors[0], np.array([152, 55, 13]) / 255)  # table colour, name matched loosely
    np.testing.assert_allclose(colors[1], [0.1, 0.2, 0.9])  # dataset.json label_info wins over the table
    assert "^87878005^Left Ventricle" in found[0].GetTerminology()
    assert found[1].GetTerminology() == slicer.vtkSegment().GetTerminology()  # Slicer's default: no verified code
    assert found[2].GetTerminology() == "Custom~SCT^1^a~SCT^2^b~^^~~^^~^^"


def test_engine_terminology_text_is_what_slicer_serialises():
    """The engine writes terminology without Slicer (.seg.nrrd, sidecars); every entry of the table must read back
    in Slicer exactly as Slicer would have written it."""
    entries = [known.terminology for known in load_label_table().values() if known.terminology is not None]
    assert len(entries) >= 10
    for terminology in entries:
        entry = slicer.vtkSlicerTerminologyEntry()
        entry.SetTerminologyContextName(terminology.context)
        for target, code in ((entry.GetCategoryObject(), terminology.category),
                             (entry.GetTypeObject(), terminology.type),
                             (entry.GetTypeModifierObject(), terminology.type_modifier)):
            target.SetCodingSchemeDesignator(code.scheme)
            target.SetCodeValue(code.value)
            target.SetCodeMeaning(code.meaning)
        assert slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry) == terminology.slicer_text()


def test_rerun_replaces_only_that_tasks_segments_in_place(mrml_scene):
    volume, image, values = phantom(mrml_scene)
    node = segments.new_output_segmentation(volume, "phantom3d")
    segmentation = node.GetSegmentation()
    manual = segmentation.AddEmptySegment("", "my annotation", [1, 1, 0])
    first = segments.import_task_segments(node, image, "phantom3d", TASK_LABELS, reference_volume=volume)
    organ = sitk.GetImageFromArray((values == 1).astype(np.uint8))
    organ.CopyInformation(image)
    other = segments.import_task_segments(node, organ, "other task", [label(1, "organ")], reference_volume=volume)
    segmentation.SetSegmentIndex(manual, 3)  # the user moved their segment between the task's segments

    shrunk = sitk.GetImageFromArray(np.where(values == 3, 0, values).astype(np.uint8))
    shrunk.CopyInformation(image)
    second = segments.import_task_segments(node, shrunk, "phantom3d", TASK_LABELS, reference_volume=volume)

    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["body", "organ", "lesion", "my annotation", "organ"]
    assert not set(first) & set(segmentation.GetSegmentIDs())
    assert segments.task_segment_ids(node, "phantom3d") == second
    assert segments.task_segment_ids(node, "other task") == other
    assert segment_voxels(node, second[2], volume).sum() == 0  # lesion is now empty, still listed
    assert segment_voxels(node, other[0], volume).sum() == (values == 1).sum()


def test_output_is_placed_beside_the_volume_in_the_subject_hierarchy_and_under_its_transform(mrml_scene):
    volume, image, _ = phantom(mrml_scene)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "MR")
    hierarchy.CreateItem(study, volume)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())

    node = segments.new_output_segmentation(volume, "phantom3d")
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    assert node.GetTransformNodeID() == transform.GetID()
    other_volume = scalar_volume(mrml_scene, np.zeros((2, 2, 2), dtype=np.int16), name="other")
    assert segments.new_output_segmentation(other_volume, "phantom3d") is not node
    again = segments.new_output_segmentation(volume, "phantom3d")  # "Create new segmentation" again: a new node
    assert again is not node and again.GetName() == "patient 7 phantom3d_1"


def test_imported_segments_keep_their_names_and_colours(mrml_scene):
    """Slicer renames a segment whose NameAutoGenerated is on when its terminology is chosen (5.10); LabelShare's
    names are the task's label names, which Training matches cases by (as the engine's .seg.nrrd writer does)."""
    volume, image, _ = phantom(mrml_scene)
    node = segments.new_output_segmentation(volume, "phantom3d")
    ids = segments.import_task_segments(node, image, "phantom3d", TASK_LABELS, reference_volume=volume)
    for segment_id in ids:
        segment = node.GetSegmentation().GetSegment(segment_id)
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated(), segment.GetName()


def test_an_edited_segment_is_detected_and_its_copy_keeps_the_edit(mrml_scene):
    volume, image, values = phantom(mrml_scene)
    node = segments.new_output_segmentation(volume, "phantom3d")
    ids = segments.import_task_segments(node, image, "phantom3d", TASK_LABELS, reference_volume=volume)
    assert segments.edited_task_segments(node, "phantom3d") == []
    segmentation = node.GetSegmentation()
    segmentation.SeparateSegmentLabelmap(ids[1])  # where Slicer keeps the voxels changes, the voxels do not
    assert segmentation.GetNumberOfLayers() == 2 and segments.edited_task_segments(node, "phantom3d") == []

    erased = segment_voxels(node, ids[2], volume).copy()
    erased[erased.nonzero()[0][0]] = 0  # the user erases a slice of the lesion in the Segment Editor
    slicer.util.updateSegmentBinaryLabelmapFromArray(erased, node, ids[2], volume)
    assert segments.edited_task_segments(node, "phantom3d") == ["lesion"]

    copy = segments.keep_copy_of_task_segments(node, "phantom3d")
    assert copy.GetName().startswith("patient 7 phantom3d (replaced ") and not copy.GetDisplayNode().GetVisibility()
    assert copy.GetAttribute(segments.REPLACED_FROM_ATTRIBUTE) == node.GetID()
    copied = copy.GetSegmentation()
    assert [copied.GetNthSegment(i).GetName() for i in range(copied.GetNumberOfSegments())] == \
        ["body", "organ", "lesion"]
    np.testing.assert_array_equal(segment_voxels(copy, copied.GetNthSegmentID(2), volume), erased)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(copy)) == \
        hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))

    segments.import_task_segments(node, image, "phantom3d", TASK_LABELS, reference_volume=volume)  # replaced
    assert segments.edited_task_segments(node, "phantom3d") == []
    np.testing.assert_array_equal(segment_voxels(node, segments.task_segment_ids(node, "phantom3d")[2], volume),
                                  (values == 3).astype(np.uint8))


def linear_transform(scene, rotation_axis=(0.0, 0.0, 1.0), angle=0.0, translation=(0.0, 0.0, 0.0)):
    """A linear transform node: a rotation about an axis through the origin, then a translation (mm)."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(sitk.VersorTransform(rotation_axis, angle).GetMatrix()).reshape(3, 3)
    matrix[:3, 3] = translation
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def world_points(ijk: np.ndarray, ijk_to_local: vtk.vtkMatrix4x4, parent_transform) -> np.ndarray:
    """World (RAS) positions of voxel indices (I, J, K) of an image whose node is under ``parent_transform``."""
    local = (slicer.util.arrayFromVTKMatrix(ijk_to_local) @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent_transform, None, to_world)
    return np.array([to_world.TransformPoint(point) for point in local])


def volume_label_world_points(volume, values: np.ndarray, label_id: int) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return world_points(np.argwhere(values == label_id)[:, ::-1], matrix, volume.GetParentTransformNode())


def segment_world_points(segmentation_node, segment_id: str) -> np.ndarray:
    """World positions of the voxels of a segment, read from its stored labelmap and the node's transform."""
    image = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    extent = image.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    voxels = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
    label_value = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    ijk = np.argwhere(voxels == label_value)[:, ::-1] + [extent[0], extent[2], extent[4]]
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return world_points(ijk, matrix, segmentation_node.GetParentTransformNode())


TRANSFORMS = {  # (the volume's transform, the existing output segmentation's transform or "beside")
    "volume translated 20 mm": (dict(translation=(20.0, 0.0, 0.0)), "beside"),
    "volume rotated and translated": (dict(rotation_axis=(1.0, 2.0, 3.0), angle=0.5, translation=(5.0, -8.0, 12.0)),
                                      "beside"),
    "volume and chosen segmentation under different transforms": (
        dict(rotation_axis=(0.0, 1.0, 0.0), angle=0.3, translation=(20.0, 0.0, 0.0)),
        dict(rotation_axis=(1.0, 0.0, 0.0), angle=-0.6, translation=(0.0, 15.0, -7.0))),
    "only the chosen segmentation transformed": (None, dict(translation=(0.0, 0.0, -25.0))),
}


@pytest.mark.parametrize("case", list(TRANSFORMS))
def test_segments_cover_the_volume_voxels_in_world_coordinates_under_transforms(mrml_scene, case):
    """Where a segment is drawn is what counts: each segment's voxels, taken to world coordinates through the
    segmentation's transform, are the labelled voxels of the volume taken through the volume's transform."""
    volume_transform, segmentation_transform = TRANSFORMS[case]
    volume, image, values = phantom(mrml_scene)
    if volume_transform is not None:
        volume.SetAndObserveTransformNodeID(linear_transform(mrml_scene, **volume_transform).GetID())
    if segmentation_transform == "beside":
        node = segments.new_output_segmentation(volume, "phantom3d")
    else:
        node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chosen by the user")
        node.SetAndObserveTransformNodeID(linear_transform(mrml_scene, **segmentation_transform).GetID())
    ids = segments.import_task_segments(node, image, "phantom3d", TASK_LABELS, reference_volume=volume)
    for segment_id, label_id in zip(ids, (1, 2, 3), strict=True):
        expected = volume_label_world_points(volume, values, label_id)
        found = segment_world_points(node, segment_id)
        assert len(found) == len(expected), (label_id, len(found), len(expected))
        if len(expected):
            distances = np.linalg.norm(found[:, None] - expected[None], axis=-1).min(axis=1)
            assert distances.max() < 1e-3, f"label {label_id}: segment voxels up to {distances.max():.1f} mm away"


def test_result_of_the_wrong_size_or_with_foreign_labels_is_refused(mrml_scene):
    volume, image, values = phantom(mrml_scene)
    node = segments.new_output_segmentation(volume, "phantom3d")
    with pytest.raises(DataError, match=r"size \(5, 8, 6\).*'patient 7' has \(10, 8, 6\)"):
        segments.import_task_segments(node, sitk.GetImageFromArray(values[:, :, :5].copy()), "phantom3d",
                                      TASK_LABELS, reference_volume=volume)
    foreign = sitk.GetImageFromArray(np.where(values == 3, 7, values).astype(np.uint8))
    foreign.CopyInformation(image)
    with pytest.raises(DataError, match=r"label values \[7\]"):
        segments.import_task_segments(node, foreign, "phantom3d", TASK_LABELS, reference_volume=volume)
    assert node.GetSegmentation().GetNumberOfSegments() == 0


@pytest.mark.parametrize("channels", [3, 4], ids=["RGB", "RGBA"])
def test_colour_volumes_are_segmented_as_their_luminance_and_others_are_refused(mrml_scene, channels):
    """Issue 27: a PNG or JPEG radiograph loads as an RGB vector volume; it is offered and segmented as its
    luminance (Slicer's Vector to Scalar Volume conversion), with a note; other vector volumes still say why not."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(1, 6, 5, channels), dtype=np.uint8)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "xray")
    node.SetSpacing(0.2, 0.3, 1.0)
    slicer.util.updateVolumeFromArray(node, pixels)
    volumes.check_input_volume(node)
    image, notes = volumes.segmentation_input(node)
    assert notes == [volumes.colour_note(node)] and "'xray' is a colour (RGB) volume" in notes[0]
    assert image.GetSize() == (5, 6, 1) and image.GetSpacing() == pytest.approx((0.2, 0.3, 1.0))
    expected = pixels[..., :3].astype(float) @ np.array([0.30, 0.59, 0.11])
    assert np.abs(sitk.GetArrayFromImage(image).astype(float) - expected).max() <= 1.0
    with pytest.raises(DataError, match=f"volume 'xray' has {channels} values per voxel"):
        volumes.volume_to_image(node)  # collecting a case still needs a grey volume

    two = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "displacement")
    slicer.util.updateVolumeFromArray(two, np.zeros((1, 4, 4, 2), dtype=np.float32))
    with pytest.raises(DataError, match="2 values per voxel"):
        volumes.check_input_volume(two)
    grey = scalar_volume(mrml_scene, np.zeros((2, 3, 4), dtype=np.int16))
    assert volumes.segmentation_input(grey)[1] == [] and volumes.colour_note(grey) == ""
