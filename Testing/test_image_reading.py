"""Reading an image once: a NIfTI file's pixel data is decompressed and checked in one pass and the image made from
those bytes (SimpleITK reads only the header), exactly as SimpleITK would read it; files the one pass does not
cover are checked, then read by SimpleITK. The truncated and damaged files of Testing/test_robustness_files.py are
refused as before."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from labelshare.core.imagedata import ImageDataProblem, read_checked_image

OBLIQUE = (0.96, -0.28, 0.0, 0.28, 0.96, 0.0, 0.0, 0.0, 1.0)


def example(dtype: str, dimension: int) -> sitk.Image:
    shape = (4, 5, 6) if dimension == 3 else (5, 6)
    array = (np.arange(np.prod(shape)).reshape(shape) * 7 % 251).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 2.5)[:dimension])
    image.SetOrigin((-10.0, 4.5, 100.0)[:dimension])
    if dimension == 3:
        image.SetDirection(OBLIQUE)
    return image


def same_image(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetPixelID() == b.GetPixelID() and a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
            and np.allclose(a.GetDirection(), b.GetDirection())
            and np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype, dimension", [("uint8", 3), ("int16", 3), ("uint16", 2), ("float32", 3),
                                              ("float64", 2), ("int32", 3)])
def test_nifti_is_read_once_and_as_simpleitk_reads_it(tmp_path, monkeypatch, ending, dtype, dimension):
    path = tmp_path / f"image{ending}"
    sitk.WriteImage(example(dtype, dimension), str(path))
    expected = sitk.ReadImage(str(path))
    monkeypatch.setattr(sitk, "ReadImage", lambda *args, **kwargs: pytest.fail("the data was read twice"))
    image = read_checked_image(path)
    assert same_image(image, expected)
    assert image.GetMetaData("ITK_FileNotes") == expected.GetMetaData("ITK_FileNotes")


def test_files_the_one_pass_does_not_cover_are_read_by_simpleitk(tmp_path):
    """A NIfTI file whose header scales its values (SimpleITK rescales them) and the other formats."""
    path = tmp_path / "scaled.nii"
    sitk.WriteImage(example("int16", 3), str(path))
    data = bytearray(path.read_bytes())
    data[112:120] = struct.pack("<2f", 2.0, -5.0)  # scl_slope, scl_inter
    path.write_bytes(bytes(data))
    scaled = read_checked_image(path)
    assert same_image(scaled, sitk.ReadImage(str(path)))
    assert scaled.GetPixelID() == sitk.sitkFloat32 and sitk.GetArrayViewFromImage(scaled).min() == -5.0
    for ending in (".nrrd", ".mha", ".png"):
        other = tmp_path / f"other{ending}"
        sitk.WriteImage(example("uint8", 2), str(other))
        assert same_image(read_checked_image(other), sitk.ReadImage(str(other)))


def test_missing_data_a_damaged_stream_and_nan_are_found_in_the_one_pass(tmp_path):
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(example("float32", 3), str(path))
    whole = gzip.decompress(path.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(whole[:-40]))
    with pytest.raises(ImageDataProblem, match="is truncated or damaged"):
        read_checked_image(tmp_path / "cut.nii.gz")
    (tmp_path / "stream.nii.gz").write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ImageDataProblem, match="compressed data ends early"):
        read_checked_image(tmp_path / "stream.nii.gz")
    with_nan = bytearray(whole)
    with_nan[-4:] = struct.pack("<f", float("nan"))
    (tmp_path / "nan.nii.gz").write_bytes(gzip.compress(bytes(with_nan)))
    with pytest.raises(ImageDataProblem, match=r"contains NaN or infinite values \(1 voxels\)"):
        read_checked_image(tmp_path / "nan.nii.gz")
