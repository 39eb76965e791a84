"""Task folders: every reader, case discovery, validation, the patient split, and the first slicing and
normalisation schemes (labelshare.core.preprocessing)."""

import numpy as np
import pytest
import SimpleITK as sitk
from taskfactory import blobs, write_task_folder

from labelshare.core.errors import DataError
from labelshare.core.preprocessing import (DEFAULT_PREPROCESSING, PercentileZScore, case_slices,
                                           choose_slicing_axis, to_slices)
from labelshare.core.tasks import TaskDataset, parse_task_argument, patient_of, split_by_patient

LABELS = {"a": 1, "b": 2}


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".png"])
@pytest.mark.parametrize("channel_suffix", [True, False])
def test_every_format_reads_with_or_without_channel_suffix(tmp_path, ending, channel_suffix):
    shape = (12, 10) if ending == ".png" else (3, 12, 10)
    label = blobs(shape, {1: np.s_[..., 1:4, 1:4], 2: np.s_[..., 6:9, 5:9]})
    task = TaskDataset.open(write_task_folder(tmp_path / "t", LABELS, [label, label], ending=ending,
                                              channel_suffix=channel_suffix), "t")
    assert [c.name for c in task.cases] == ["case_000", "case_001"]
    case = case_slices(task, task.cases[0], DEFAULT_PREPROCESSING)
    expected_slices = 1 if ending == ".png" else 3
    assert case.image.shape == (expected_slices, 12, 10) and case.label.shape == (expected_slices, 12, 10)
    assert np.array_equal(case.label.reshape(label.shape), label)
    assert case.image.dtype == np.float32


def test_rgb_png_image_becomes_grey_and_rgb_label_with_colours_is_refused(tmp_path):
    root = write_task_folder(tmp_path / "t", LABELS, [blobs((6, 6), {1: np.s_[0:2, 0:2]})], ending=".png")
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(root / "imagesTr" / "case_000_0000.png"))
    task = TaskDataset.open(root)
    image, array, _ = task.read_case(task.cases[0])
    assert image.GetNumberOfComponentsPerPixel() == 1
    assert np.allclose(array, 200 * 0.299, atol=1e-3)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(root / "labelsTr" / "case_000.png"))
    with pytest.raises(DataError, match="colour image"):
        task.read_case(task.cases[0])


def test_slicing_axis_largest_spacing_ties_last_and_projection():
    volume = sitk.Image(8, 9, 10, sitk.sitkFloat32)
    volume.SetSpacing((1.0, 1.0, 1.0))
    assert choose_slicing_axis(volume) == 0                  # ties -> last image axis (z) = numpy axis 0
    volume.SetSpacing((3.0, 1.0, 1.0))
    assert choose_slicing_axis(volume) == 2                  # largest spacing along x -> numpy axis 2
    assert choose_slicing_axis(volume, override=1) == 1      # y
    single = sitk.Image(8, 1, 10, sitk.sitkFloat32)
    assert choose_slicing_axis(single) == 1                  # a single-slice volume is a projection along y
    assert choose_slicing_axis(sitk.Image(8, 9, sitk.sitkFloat32)) is None
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for axis in (0, 1, 2, None):
        data = array if axis is not None else array[0]
        slices = to_slices(data, axis)
        assert slices.shape[0] == (1 if axis is None else data.shape[axis])
        assert np.array_equal(slices[0], data if axis is None else np.take(data, 0, axis=axis))


def test_normalisation_puts_different_intensity_scales_on_one_scale():
    rng = np.random.default_rng(0)
    base = rng.random((4, 32, 32)).astype(np.float32)
    small = PercentileZScore.of(base * 255).apply(base * 255)
    huge = PercentileZScore.of(base * 1.7e6).apply(base * 1.7e6)
    assert np.allclose(small, huge, atol=1e-4)
    assert abs(float(small.mean())) < 0.05 and abs(float(small.std()) - 1) < 0.05


def test_patient_ids_and_split_keep_patients_together():
    assert patient_of("patient002_frame01") == "patient002"
    assert patient_of("scd_SC-HF-I-1_im0059") == "scd_SC-HF-I-1"
    assert patient_of("hippocampus_001") == "hippocampus_001"
    assert patient_of("x_p7_s3", pattern=r"_(p\d+)_") == "p7"

    class C:
        def __init__(self, name):
            self.name, self.patient = name, patient_of(name)

    cases = [C(f"patient{p:03d}_frame0{f}") for p in range(10) for f in (1, 2)]
    train, validation = split_by_patient(cases, 0.2, seed=3)
    assert len(validation) == 4 and len(train) == 16
    assert {patient_of(n) for n in train}.isdisjoint({patient_of(n) for n in validation})
    assert split_by_patient(cases, 0.2, seed=3) == (train, validation)


def test_task_argument_parsing():
    assert parse_task_argument("acdc=data/acdc_cardiac")[0] == "acdc"
    assert parse_task_argument("data/acdc_cardiac/")[0] == "acdc_cardiac"
    with pytest.raises(DataError, match="task name"):
        parse_task_argument("bad name=dir")


@pytest.mark.parametrize("damage, message", [
    ("label_values", r"label values \[7\] are not labels of dataset.json"),
    ("nan", "NaN or infinite"),
    ("size", "image size .* differs from label size"),
    ("spacing", "image and label spacing differ"),
    ("direction", "image and label direction differ"),
    ("unreadable", "cannot be read"),
])
def test_invalid_cases_are_reported_with_the_case_name(tmp_path, damage, message):
    # MetaImage keeps NaN (SimpleITK's NIfTI writer turns it into 0)
    root = write_task_folder(tmp_path / "t", LABELS, [blobs((2, 8, 8), {1: np.s_[:, 0:2, 0:2]})], ending=".mha")
    image_path, label_path = root / "imagesTr" / "case_000_0000.mha", root / "labelsTr" / "case_000.mha"
    image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
    if damage == "label_values":
        array = sitk.GetArrayFromImage(label)
        array[0, 5, 5] = 7
        changed = sitk.GetImageFromArray(array)
        changed.CopyInformation(label)
        sitk.WriteImage(changed, str(label_path))
    elif damage == "nan":
        array = sitk.GetArrayFromImage(image)
        array[0, 0, 0] = np.nan
        changed = sitk.GetImageFromArray(array)
        changed.CopyInformation(image)
        sitk.WriteImage(changed, str(image_path))
    elif damage == "size":
        sitk.WriteImage(sitk.Image(8, 8, 3, sitk.sitkFloat32), str(image_path))
    elif damage == "spacing":
        image.SetSpacing((1.0, 1.0, 2.5))
        sitk.WriteImage(image, str(image_path))
    elif damage == "direction":
        image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
        sitk.WriteImage(image, str(image_path))
    elif damage == "unreadable":
        image_path.write_bytes(b"not an image")
    task = TaskDataset.open(root)
    with pytest.raises(DataError, match=message) as error:
        task.read_case(task.case("case_000"))
    assert "case_000" in str(error.value)


@pytest.mark.parametrize("damage, message", [
    ("no_dataset_json", "dataset.json: dataset.json not found"),
    ("no_labels_dir", "labelsTr: missing"),
    ("orphan_image", "has no label file"),
    ("orphan_label", "label without an image"),
    ("second_channel", "channel 0001 found"),
    ("region_labels", "one integer id per label"),
    ("background_only", "no foreground labels"),
])
def test_invalid_task_folders_are_refused_with_the_path(tmp_path, damage, message):
    root = write_task_folder(tmp_path / "t", LABELS, [blobs((2, 8, 8), {1: np.s_[:, 0:2, 0:2]})])
    if damage == "no_dataset_json":
        (root / "dataset.json").unlink()
    elif damage == "no_labels_dir":
        for p in (root / "labelsTr").iterdir():
            p.unlink()
        (root / "labelsTr").rmdir()
    elif damage == "orphan_image":
        (root / "labelsTr" / "case_000.nii.gz").unlink()
    elif damage == "orphan_label":
        (root / "imagesTr" / "case_000_0000.nii.gz").unlink()
        (root / "imagesTr" / "other_0000.nii.gz").write_bytes(b"")
        (root / "labelsTr" / "other.nii.gz").write_bytes(b"")
        (root / "labelsTr" / "case_000.nii.gz").rename(root / "labelsTr" / "zzz.nii.gz")
    elif damage == "second_channel":
        (root / "imagesTr" / "case_000_0001.nii.gz").write_bytes(b"")
    elif damage == "region_labels":
        (root / "dataset.json").write_text('{"labels": {"background": 0, "a": [1, 2]}}')
    elif damage == "background_only":
        (root / "dataset.json").write_text('{"labels": {"background": 0}}')
    with pytest.raises(DataError, match=message):
        TaskDataset.open(root)
