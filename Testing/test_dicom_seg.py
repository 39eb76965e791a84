"""The DICOM SEG that ``labelshare segment`` writes, read back with pydicom and highdicom: every Type 1 and Type 2
attribute of the Segmentation IOD (highdicom's tables of the standard) and ContentCreatorName (issue 27, item 7);
the slice spacing measured from the slice positions, not copied (issue 31, item 9); a series a SEG cannot reference
refused before anything is segmented, and any writer error as one line (item 10)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicomfactory import ROTATION, mr_volume, remove_attribute, write_series
from highdicom._standard_utils import construct_module_tree, get_iod_module_map, get_sop_class_iod_map
from test_layers import run_without_heavy_packages

from labelshare.core.errors import DataError
from labelshare.core.inputs import collect_inputs, read_input_image
from labelshare.core.outputs import ModelIdentity, OutputDescription
from labelshare.core.terminology import label_styles
from labelshare.engine.writers import CONTENT_CREATOR, write_segmentation

DESCRIPTION = OutputDescription("phantom", label_styles([type("Label", (), {"id": i, "name": n, "info": {}})()
                                                         for i, n in ((1, "body"), (2, "organ"), (5, "lesion"))]),
                                ModelIdentity("tiny-v1", "2026-01-01T00:00:00+00:00", "ab" * 32))
SLICE_SPACING = 10.0  # a thick-slice stack: GDCM's writer still records SpacingBetweenSlices = 1


def write_volume_series(folder: Path, depth: int = 6) -> list[Path]:
    values = np.zeros((depth, 20, 24), np.float32)
    values[1:5, 4:15, 5:20] = 300
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.8, 0.9, SLICE_SPACING))
    image.SetOrigin((-10.0, 5.0, 20.0))
    return write_series(mr_volume(image, ROTATION), folder)[1]


def phantom_labels(source) -> sitk.Image:
    """Labels 1, 2 and 5 on the grid of the series (as the segmenter writes them)."""
    image = read_input_image(source)
    values = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    values[1:4, 3:12, 4:14] = 1
    values[2:5, 8:16, 10:20] = 2
    values[3, 2:5, 2:5] = 5
    labels = sitk.GetImageFromArray(values)
    labels.CopyInformation(image)
    return labels


@pytest.fixture
def seg(tmp_path) -> tuple[Path, list[Path]]:
    files = write_volume_series(tmp_path / "series")
    source = collect_inputs([tmp_path / "series"]).images[0]
    write_segmentation(phantom_labels(source), tmp_path / "seg.dcm", DESCRIPTION, source, overwrite=False)
    return tmp_path / "seg.dcm", files


# The functional group macros of a multi-frame image (highdicom's tables list each macro's sequence under both the
# shared and the per-frame groups) go in the shared item or in every per-frame item; the slide macro applies to slide
# coordinates only (a SEG of a patient series has none).
FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
SLIDE_ONLY = ("PlanePositionSlideSequence",)


def missing_required(dataset: pydicom.Dataset) -> list[str]:
    """Every Type 1 attribute that is absent or empty and every Type 2 attribute that is absent, in every module of
    the dataset's IOD that is mandatory or (a conditional or optional module) present, at every level of nesting of
    the sequences present; highdicom's tables of the standard name the modules and attribute types."""
    problems = []

    def in_functional_groups(keyword: str) -> bool:
        shared = dataset.SharedFunctionalGroupsSequence[0]
        return keyword in shared or all(keyword in frame for frame in dataset.PerFrameFunctionalGroupsSequence)

    def check(item: pydicom.Dataset, tree: dict, path: str, sequence: str = "") -> None:
        for keyword, node in tree["attributes"].items():
            if sequence in FUNCTIONAL_GROUPS and (keyword in SLIDE_ONLY or
                                                  keyword not in item and in_functional_groups(keyword)):
                continue
            present = keyword in item
            value = item.get(keyword) if present else None
            kind = node["type"].value  # highdicom's AttributeTypeValues: "1", "1C", "2", "2C", "3"
            if kind == "1" and (not present or value is None or value == "" or
                                        (isinstance(value, pydicom.Sequence) and not len(value))):
                problems.append(f"{path}{keyword} (Type 1) is {'empty' if present else 'absent'}")
            elif kind == "2" and not present:
                problems.append(f"{path}{keyword} (Type 2) is absent")
            if present and "attributes" in node and isinstance(value, pydicom.Sequence):
                for index, child in enumerate(value):
                    check(child, node, f"{path}{keyword}[{index}].", keyword)

    for module in get_iod_module_map()[get_sop_class_iod_map()[dataset.SOPClassUID]]:
        tree = construct_module_tree(module["key"])
        included = module["usage"] == "M" or any(
            node["type"].value in ("1", "2") and keyword in dataset for keyword, node in tree["attributes"].items())
        if included:
            check(dataset, tree, f"{module['key']}: ")
    return problems


def test_every_type_1_and_type_2_attribute_of_the_segmentation_iod_is_there(seg):
    path, files = seg
    dataset = pydicom.dcmread(path)
    assert dataset.SOPClassUID == pydicom.uid.SegmentationStorage
    assert missing_required(dataset) == []
    assert dataset.ContentCreatorName == CONTENT_CREATOR  # Type 2 for DICOM validators (dciodvfy)
    assert dataset.ContentCreatorName.family_name == "LabelShare"
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert dataset[keyword].value == source[keyword].value
    read = hd.seg.segread(path)  # highdicom reads it as a segmentation of the three segments
    assert [s.SegmentLabel for s in read.SegmentSequence] == ["body", "organ", "lesion"]


def test_the_check_finds_what_is_missing(seg):
    """The attribute check above can fail: it reports a Type 2 attribute removed and a Type 1 attribute emptied."""
    dataset = pydicom.dcmread(seg[0])
    del dataset.ContentDescription
    dataset.SeriesInstanceUID = ""
    problems = missing_required(dataset)
    assert "segmentation-image: ContentDescription (Type 2) is absent" in problems
    assert "general-series: SeriesInstanceUID (Type 1) is empty" in problems


def test_the_slice_spacing_is_measured_from_the_positions_not_copied(seg):
    path, files = seg
    assert float(pydicom.dcmread(files[0], stop_before_pixels=True).SpacingBetweenSlices) == 1.0  # GDCM's value
    dataset = pydicom.dcmread(path)
    measures = dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(SLICE_SPACING, rel=1e-4)
    assert float(measures.SliceThickness) == pytest.approx(SLICE_SPACING, rel=1e-4)
    volume = hd.seg.segread(path).get_volume(combine_segments=True)  # highdicom rebuilds the frames as a volume
    assert volume.spacing_between_slices == pytest.approx(SLICE_SPACING, rel=1e-4)
    assert volume.spatial_shape[0] <= len(files)  # not 91 slices at 1 mm
    assert volume.spatial_shape[1:] == (20, 24)


def test_a_source_without_type_2_patient_attributes_gets_them_empty(tmp_path):
    files = remove_attribute(write_volume_series(tmp_path / "series"), "PatientBirthDate")
    remove_attribute(files, "StudyID")
    source = collect_inputs([tmp_path / "series"]).images[0]
    write_segmentation(phantom_labels(source), tmp_path / "seg.dcm", DESCRIPTION, source, overwrite=False)
    dataset = pydicom.dcmread(tmp_path / "seg.dcm")
    assert dataset.PatientBirthDate == "" and dataset.StudyID == ""
    assert missing_required(dataset) == []


def test_a_series_without_a_frame_of_reference_is_refused_before_anything_loads(tmp_path):
    """Before torch is imported (it is made unimportable here): one line that names the missing attribute and the
    outputs that need none."""
    files = remove_attribute(write_volume_series(tmp_path / "series"), "FrameOfReferenceUID")
    result = run_without_heavy_packages(f"""
        from labelshare.cli import main
        sys.exit(main(["segment", "--task", "hippocampus", {str(tmp_path / 'series')!r}, "-o",
                       {str(tmp_path / 'seg.dcm')!r}]))
    """)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line == (f"labelshare: error: {files[0]}: lacks FrameOfReferenceUID (0020,0052), which a DICOM SEG of "
                    "series must reference; write .nii.gz or .seg.nrrd instead")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_any_writer_error_is_one_error_naming_the_output(tmp_path, monkeypatch):
    write_volume_series(tmp_path / "series")
    source = collect_inputs([tmp_path / "series"]).images[0]

    def refuse(*args, **kwargs):
        raise ValueError("Source images must all be part of the same series")
    monkeypatch.setattr(hd.seg, "Segmentation", refuse)
    with pytest.raises(DataError, match=r"seg.dcm: DICOM SEG of .*series cannot be written \(ValueError: Source "
                                        r"images must all be part of the same series\); write .nii.gz or .seg.nrrd"):
        write_segmentation(phantom_labels(source), tmp_path / "seg.dcm", DESCRIPTION, source, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no output, no temporary file
