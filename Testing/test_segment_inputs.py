"""What `labelshare segment` reads: files, folders, globs, DICOM series (sorted by position, oblique geometry from
the headers), folders with several series, single DICOM files; written by the tests from a shared-data volume."""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import real_task_dir
from dicomfactory import ROTATION, mr_volume, write_series, write_single_image

from labelshare.core.errors import DataError
from labelshare.core.inputs import collect_inputs, read_input_image


@pytest.fixture(scope="module")
def hippocampus_volume() -> sitk.Image:
    """A real MR volume (35x51x35) as int16, moved off the axes: oblique, anisotropic, off-origin."""
    source = sitk.ReadImage(str(real_task_dir("msd_hippocampus") / "imagesTr" / "hippocampus_001.nii.gz"))
    volume = mr_volume(source, ROTATION)
    volume.SetSpacing((0.9, 1.1, 1.7))
    volume.SetOrigin((-12.5, 40.0, 7.25))
    return volume


@pytest.fixture
def nifti_images(tmp_path) -> list[Path]:
    folder = tmp_path / "scans"
    folder.mkdir()
    paths = []
    for name in ("case_b_0000.nii.gz", "case_a_0000.nii.gz", "case_c.nrrd"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16)), str(folder / name))
        paths.append(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_files_folders_and_globs_name_the_same_images(nifti_images, tmp_path):
    folder = nifti_images[0].parent
    from_files = collect_inputs(nifti_images)
    from_folder = collect_inputs([folder])
    from_glob = collect_inputs([f"{folder}/case_*"])
    assert [i.name for i in from_files.images] == ["case_b", "case_a", "case_c"]  # argument order, _0000 dropped
    assert [i.name for i in from_folder.images] == [i.name for i in from_glob.images] == ["case_a", "case_b", "case_c"]
    assert not from_files.single and not from_folder.single and not from_glob.single
    one = collect_inputs([nifti_images[0]])
    assert one.single and one.images[0].source == nifti_images[0] and not one.images[0].is_dicom


def test_a_folder_given_alone_is_a_folder_of_inputs_not_a_missing_file(nifti_images):
    inputs = collect_inputs([str(nifti_images[0].parent)])
    assert not inputs.single and len(inputs.images) == 3
    with pytest.raises(DataError, match="absent: input not found"):
        collect_inputs([nifti_images[0].parent / "absent"])


def test_dicom_series_is_sorted_by_position_with_the_geometry_of_its_headers(hippocampus_volume, tmp_path):
    series_uid, files_in_slice_order = write_series(hippocampus_volume, tmp_path / "series")
    assert sorted(files_in_slice_order) != files_in_slice_order  # names do not follow the slices
    inputs = collect_inputs([tmp_path / "series"])
    [image] = inputs.images
    assert inputs.single and image.is_dicom and image.name == "series"
    assert list(image.dicom_files) == files_in_slice_order
    read = read_input_image(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(hippocampus_volume))
    np.testing.assert_allclose(read.GetSpacing(), hippocampus_volume.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(read.GetOrigin(), hippocampus_volume.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), hippocampus_volume.GetDirection(), atol=1e-6)


def test_a_folder_with_several_series_lists_them_and_series_picks_one(hippocampus_volume, tmp_path):
    first, _ = write_series(hippocampus_volume, tmp_path / "study", description="T1 oblique", series_number=3)
    second, second_files = write_series(hippocampus_volume[:, :, :20], tmp_path / "study", description="short",
                                        series_number=4)
    with pytest.raises(DataError) as refused:
        collect_inputs([tmp_path / "study"])
    message = str(refused.value)
    assert "holds 2 DICOM series; choose one with --series UID" in message
    assert f"{first} (T1 oblique, 35 files)" in message and f"{second} (short, 20 files)" in message
    picked = collect_inputs([tmp_path / "study"], series=second)
    assert picked.single and list(picked.images[0].dicom_files) == second_files
    assert read_input_image(picked.images[0]).GetSize() == (35, 51, 20)
    with pytest.raises(DataError, match="has no series 1.2.3; choose one with --series UID"):
        collect_inputs([tmp_path / "study"], series="1.2.3")


def test_one_file_of_a_series_is_refused_with_a_hint_and_a_whole_single_file_image_is_read(hippocampus_volume,
                                                                                           tmp_path):
    series_uid, files = write_series(hippocampus_volume, tmp_path / "series")
    with pytest.raises(DataError, match=f"is one of 35 files of DICOM series {series_uid}; pass the folder "):
        collect_inputs([files[10]])
    radiograph = sitk.GetArrayFromImage(hippocampus_volume)[17]
    single = write_single_image(sitk.GetImageFromArray(radiograph), tmp_path / "xray" / "chest.dcm")
    inputs = collect_inputs([single])
    assert inputs.single and inputs.images[0].name == "chest"
    read = read_input_image(inputs.images[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read).reshape(radiograph.shape), radiograph)


def test_a_folder_of_series_folders_gives_one_image_per_series(hippocampus_volume, tmp_path):
    write_series(hippocampus_volume, tmp_path / "studies" / "patient2")
    write_series(hippocampus_volume[:, :, :12], tmp_path / "studies" / "patient1", series_number=2)
    sitk.WriteImage(hippocampus_volume, str(tmp_path / "studies" / "extra.nii.gz"))
    inputs = collect_inputs([tmp_path / "studies"])
    assert not inputs.single
    assert [(i.name, len(i.dicom_files)) for i in inputs.images] == [("extra", 0), ("patient1", 12), ("patient2", 35)]


def test_a_series_with_a_missing_slice_is_refused(hippocampus_volume, tmp_path):
    _, files = write_series(hippocampus_volume, tmp_path / "gap")
    files[17].unlink()
    with pytest.raises(DataError, match="gap: DICOM series has unevenly spaced or missing slices"):
        read_input_image(collect_inputs([tmp_path / "gap"]).images[0])


def test_dicom_and_other_images_in_one_folder_are_refused(hippocampus_volume, tmp_path):
    write_series(hippocampus_volume[:, :, :4], tmp_path / "mixed")
    sitk.WriteImage(hippocampus_volume, str(tmp_path / "mixed" / "other.nii.gz"))
    with pytest.raises(DataError, match="mixed: holds DICOM files and other images"):
        collect_inputs([tmp_path / "mixed"])


def test_writing_test_dicom_leaves_the_process_locale_alone(tmp_path):
    """GDCM's writer sets the locale to "C"; the factory restores it, or later tests would read text as ASCII."""
    before = locale.setlocale(locale.LC_ALL)
    write_series(mr_volume(sitk.GetImageFromArray(np.zeros((2, 4, 4), np.float32))), tmp_path / "series")
    assert locale.setlocale(locale.LC_ALL) == before
