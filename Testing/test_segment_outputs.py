"""Outputs that carry their meaning, each read back: label map + JSON sidecar, .seg.nrrd opened by Slicer (slicer-core),
DICOM SEG read with highdicom/pydicom (references, frames, segments, codes, colours, voxels); and what counts as a
complete output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer
from dicomfactory import ROTATION, write_series

from labelshare.core.errors import DataError
from labelshare.core.fileio import sha256_file
from labelshare.core.inputs import InputImage, collect_inputs
from labelshare.core.outputs import ModelIdentity, OutputDescription, check_output, output_complete, sidecar_path
from labelshare.core.terminology import (GENERIC_TISSUE, MIN_COLOUR_DISTANCE, Terminology, label_styles,
                                         load_label_table)
from labelshare.engine.writers import write_segmentation

pytest_plugins = ["slicer_support"]  # fixtures: mrml_scene, slicer_env
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LabelShareSegmentation"))
from LabelShareLib import segments, volumes  # noqa: E402


def label(label_id, name, **info):
    return SimpleNamespace(id=label_id, name=name, info=info)


# ids need not be consecutive; the names hit the table with a code, with a modifier, and without a code
LABELS = [label(1, "LV cavity"), label(2, "myocardium"), label(5, "kidney-left")]
DESCRIPTION = OutputDescription("cardiac", label_styles(LABELS), ModelIdentity("tiny-v3", "2026-01-01T00:00:00+00:00",
                                                                               "ab" * 32))


def phantom_labels(size=(12, 10, 6), direction=ROTATION) -> sitk.Image:
    """Labels 1, 2 and 5 in blocks on an oblique, anisotropic grid."""
    values = np.zeros(tuple(reversed(size)), dtype=np.uint8)
    values[1:4, 2:6, 2:7] = 1
    values[2:5, 6:9, 3:10] = 2
    values[4, 1:3, 8:11] = 5
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(direction)
    return image


def test_label_styles_take_label_info_then_the_table_then_the_palette():
    styles = label_styles([label(3, "kidney-left", terminology="Custom~SCT^1^a~SCT^2^b~^^~~^^~^^"),
                           label(1, "LV cavity"), label(2, "myocardium", color=[0.1, 0.2, 0.9])])
    assert [(s.label_id, s.name) for s in styles] == [(1, "LV cavity"), (2, "myocardium"), (3, "kidney-left")]
    np.testing.assert_allclose(styles[0].color, np.array([152, 55, 13]) / 255)  # table colour, name matched loosely
    assert styles[0].terminology.type.meaning == "Left Ventricle"
    np.testing.assert_allclose(styles[1].color, [0.1, 0.2, 0.9])  # label_info wins over the table
    assert styles[1].terminology is None  # myocardium has no verified code
    assert styles[2].terminology.slicer_text() == "Custom~SCT^1^a~SCT^2^b~^^~~^^~^^"


def test_many_labels_without_known_colours_still_get_distinct_colours():
    styles = label_styles([label(i, f"structure {i}") for i in range(1, 31)], table={})
    colors = np.array([s.color for s in styles])
    distances = np.linalg.norm(colors[:, None] - colors[None], axis=-1) + np.eye(len(colors))
    assert distances.min() >= MIN_COLOUR_DISTANCE


def test_terminology_table_and_text_round_trip():
    table = load_label_table()
    kidney = table["kidney left"].terminology
    assert (kidney.type.value, kidney.type_modifier.meaning) == ("64033007", "Left")
    assert table["myocardium"].terminology is None and table["myocardium"].color == (241 / 255, 214 / 255, 145 / 255)
    for known in table.values():
        if known.terminology is not None:
            assert Terminology.parse(known.terminology.slicer_text()) == known.terminology
    assert Terminology.parse(GENERIC_TISSUE.slicer_text()) == GENERIC_TISSUE


def test_label_map_has_a_sidecar_naming_every_label_and_the_model(tmp_path):
    labels = phantom_labels()
    output = tmp_path / "case.nii.gz"
    source = InputImage("case", tmp_path / "case_0000.nii.gz")
    write_segmentation(labels, output, DESCRIPTION, source, overwrite=False)
    written = sitk.ReadImage(str(output))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(labels))
    np.testing.assert_allclose(written.GetDirection(), labels.GetDirection(), atol=1e-6)
    sidecar = json.loads(sidecar_path(output).read_text())
    assert sidecar_path(output).name == "case.json"
    assert sidecar["image"] == "case.nii.gz" and sidecar["sha256"] == sha256_file(output)
    assert sidecar["task"] == "cardiac" and sidecar["model"]["name"] == "tiny-v3"
    assert sidecar["model"]["weights_sha256"] == "ab" * 32 and sidecar["input"] == str(source.source.resolve())
    assert {k: v["name"] for k, v in sidecar["labels"].items()} == {"1": "LV cavity", "2": "myocardium",
                                                                     "5": "kidney-left"}
    np.testing.assert_allclose(sidecar["labels"]["1"]["color"], np.array([152, 55, 13]) / 255, atol=1e-4)
    assert "^87878005^Left Ventricle" in sidecar["labels"]["1"]["terminology"]
    assert sidecar["labels"]["2"]["terminology"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.json", "case.nii.gz"]  # no temporary files left


def test_a_label_map_is_complete_only_with_the_sidecar_that_names_it(tmp_path):
    output = tmp_path / "case.nrrd"
    assert not output_complete(output)
    write_segmentation(phantom_labels(), output, DESCRIPTION, InputImage("case", tmp_path / "in.nrrd"), False)
    assert output_complete(output)
    stale = sidecar_path(output).read_text()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 10, 12), np.uint8)), str(output))  # replaced afterwards
    assert not output_complete(output)
    sidecar_path(output).unlink()  # killed between the image and its sidecar
    write_segmentation(phantom_labels(), output, DESCRIPTION, InputImage("case", tmp_path / "in.nrrd"), True)
    assert output_complete(output)
    sidecar_path(output).unlink()
    assert not output_complete(output)
    sidecar_path(output).write_text(stale[:40])  # a sidecar that is not JSON
    assert not output_complete(output)


def test_png_holds_one_2d_image_only(tmp_path):
    source = InputImage("x", tmp_path / "x.png")
    with pytest.raises(DataError,
                       match=r"out.png: a PNG file holds one 2D slice, not a volume of 6 slices \(12x10x6\)"):
        check_output(tmp_path / "out.png", phantom_labels(), source, DESCRIPTION)
    one_slice = phantom_labels(size=(12, 1, 6), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    check_output(tmp_path / "out.png", one_slice, source, DESCRIPTION)
    write_segmentation(one_slice, tmp_path / "out.png", DESCRIPTION, source, overwrite=False)
    written = sitk.ReadImage(str(tmp_path / "out.png"))
    assert written.GetDimension() == 2 and written.GetSize() == (12, 6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(one_slice)[:, 0, :])


def test_seg_nrrd_opens_in_slicer_as_named_coloured_segments_on_the_input_grid(mrml_scene, slicer_env, tmp_path):
    labels = phantom_labels()
    output = tmp_path / "case.seg.nrrd"
    write_segmentation(labels, output, DESCRIPTION, InputImage("case", tmp_path / "case.nii.gz"), overwrite=False)
    assert not sidecar_path(output).exists()  # the meaning is in the file itself

    node = slicer_env.logic("Segmentations").LoadSegmentationFromFile(str(output), False)
    segmentation = node.GetSegmentation()
    found = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in found] == ["LV cavity", "myocardium", "kidney-left"]
    assert [s.GetLabelValue() for s in found] == [1, 2, 5]
    for segment, style in zip(found, DESCRIPTION.styles, strict=True):
        np.testing.assert_allclose(segment.GetColor(), style.color, atol=1e-5)
        assert segments._tag(segment, segments.TASK_TAG) == "cardiac"  # what the module replaces on a re-run
        assert segments._tag(segment, segments.LABEL_ID_TAG) == str(style.label_id)
        assert segments._tag(segment, segments.MODEL_TAG) == "tiny-v3"
    assert found[0].GetTerminology() == DESCRIPTION.styles[0].terminology.slicer_text()
    assert found[2].GetTerminology().split("~")[3] == "SCT^7771000^Left"
    assert found[1].GetTerminology() == slicer.vtkSegment().GetTerminology()  # Slicer's default: no verified code

    reference = volumes.image_to_volume(labels, mrml_scene, "reference")  # the input's grid, oblique
    values = sitk.GetArrayFromImage(labels)
    for index, label_id in enumerate((1, 2, 5)):
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), reference)
        np.testing.assert_array_equal(voxels > 0, values == label_id)


@pytest.fixture
def dicom_series(tmp_path) -> tuple[InputImage, str]:
    volume = sitk.Cast(phantom_labels(), sitk.sitkInt16) * 100
    series_uid, _ = write_series(volume, tmp_path / "series", description="phantom")
    return collect_inputs([tmp_path / "series"]).images[0], series_uid


def test_dicom_seg_references_the_series_and_holds_one_frame_per_slice_and_segment(dicom_series, tmp_path):
    source, series_uid = dicom_series
    labels = phantom_labels()
    output = tmp_path / "seg.dcm"
    check_output(output, labels, source, DESCRIPTION)
    write_segmentation(labels, output, DESCRIPTION, source, overwrite=False)

    seg = hd.seg.segread(output)
    values = sitk.GetArrayFromImage(labels)
    expected_frames = sum(int((values == i).any(axis=(1, 2)).sum()) for i in (1, 2, 5))  # empty frames left out
    assert seg.SegmentationType == "BINARY" and int(seg.NumberOfFrames) == expected_frames
    [referenced] = seg.ReferencedSeriesSequence
    source_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source.dicom_files]
    assert referenced.SeriesInstanceUID == series_uid
    assert [item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence] == source_uids
    assert seg.SeriesInstanceUID != series_uid and seg.SeriesNumber == 1001 and seg.Modality == "SEG"

    described = seg.SegmentSequence
    assert [(d.SegmentNumber, d.SegmentLabel) for d in described] == [(1, "LV cavity"), (2, "myocardium"),
                                                                      (3, "kidney-left")]
    assert described[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "87878005"
    assert described[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"  # no known code: generic
    kidney_type = described[2].SegmentedPropertyTypeCodeSequence[0]
    assert (kidney_type.CodeValue, kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning) == \
        ("64033007", "Left")
    for description, style in zip(described, DESCRIPTION.styles, strict=True):
        expected = hd.color.CIELabColor.from_rgb(*(255 * c for c in style.color)).value
        assert list(description.RecommendedDisplayCIELabValue) == list(expected)
        assert description.SegmentAlgorithmType == "AUTOMATIC"

    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, combine_segments=True)
    segment_numbers = np.array([0, 1, 2, 0, 0, 3], dtype=np.uint8)
    np.testing.assert_array_equal(pixels, segment_numbers[values])


def test_an_empty_result_is_still_a_valid_dicom_seg(dicom_series, tmp_path):
    source, _ = dicom_series
    empty = sitk.Image(phantom_labels())
    empty *= 0
    write_segmentation(empty, tmp_path / "empty.dcm", DESCRIPTION, source, overwrite=False)
    seg = hd.seg.segread(tmp_path / "empty.dcm")
    assert int(seg.NumberOfFrames) == 6 * 3 and not seg.pixel_array.any()


def test_dicom_seg_needs_a_dicom_input(tmp_path):
    with pytest.raises(DataError, match="scan.nii.gz: is not DICOM, and DICOM SEG references the DICOM images"):
        check_output(tmp_path / "seg.dcm", phantom_labels(), InputImage("scan", tmp_path / "scan.nii.gz"),
                     DESCRIPTION)
