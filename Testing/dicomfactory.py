"""DICOM written by the tests themselves (SimpleITK's GDCM writer): a series per folder, one file per slice, with the
geometry of a given volume (oblique included) and file names that do not follow the slice order."""

from __future__ import annotations

import locale
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom.uid
import SimpleITK as sitk

ROTATION = sitk.VersorTransform((1, 2, 3), 0.4).GetMatrix()  # an oblique direction: no axis is aligned


@contextmanager
def _locale_kept() -> Iterator[None]:
    """SimpleITK's GDCM writer switches the process locale to "C" and leaves it there, after which text files read
    without an explicit encoding decode as ASCII in every later test of the same process; put the locale back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def mr_volume(image: sitk.Image, direction=None) -> sitk.Image:
    """An int16 copy of a volume (DICOM MR stores integers), optionally with another direction."""
    volume = sitk.Cast(sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0, 1000), sitk.sitkInt16)
    if direction is not None:
        volume.SetDirection(direction)
    return volume


def write_series(volume: sitk.Image, folder: Path, description: str = "T1", series_number: int = 1,
                 study_uid: str | None = None, shuffled: bool = True) -> tuple[str, list[Path]]:
    """Write a 3D volume as a DICOM MR series, one file per slice; returns (series UID, files in slice order).

    ``shuffled`` names the files in a scrambled order, so a reader that sorted by name would stack them wrongly.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = pydicom.uid.generate_uid()
    study_uid = study_uid or pydicom.uid.generate_uid()
    frame_of_reference = pydicom.uid.generate_uid()
    direction = volume.GetDirection()
    orientation = (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    common = {
        "0008|0060": "MR", "0008|0008": "DERIVED\\SECONDARY", "0008|0021": "20260101", "0008|0031": "120000",
        "0010|0010": "Test^Patient", "0010|0020": "LS0001", "0020|000d": study_uid, "0020|000e": series_uid,
        "0020|0052": frame_of_reference, "0020|0011": str(series_number), "0008|103e": description,
        "0020|0037": "\\".join(f"{v:.10f}" for v in orientation), "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
    }
    depth = volume.GetDepth()
    order = np.random.default_rng(series_number).permutation(depth) if shuffled else np.arange(depth)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    with _locale_kept():
        for index in range(depth):
            plane = volume[:, :, index]
            for tag, value in common.items():
                plane.SetMetaData(tag, value)
            position = volume.TransformIndexToPhysicalPoint((0, 0, index))
            plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
            plane.SetMetaData("0020|0013", str(index + 1))
            plane.SetMetaData("0008|0018", pydicom.uid.generate_uid())
            path = folder / f"S{series_number}IM{int(order[index]):04d}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(plane)
            files.append(path)
    return series_uid, files


def remove_attribute(files: list[Path], keyword: str) -> list[Path]:
    """Delete an attribute from every file (pydicom), as exports that drop it do; returns the files."""
    for path in files:
        dataset = pydicom.dcmread(path)
        delattr(dataset, keyword)
        dataset.save_as(path)
    return files


def write_single_image(image: sitk.Image, path: Path) -> Path:
    """A 2D image as one DICOM file (a radiograph, say): a whole series by itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    image = sitk.Cast(image, sitk.sitkInt16)
    for tag, value in {"0008|0060": "DX", "0020|000e": pydicom.uid.generate_uid(),
                       "0020|000d": pydicom.uid.generate_uid(), "0008|0018": pydicom.uid.generate_uid()}.items():
        image.SetMetaData(tag, value)
    writer.SetFileName(str(path))
    with _locale_kept():
        writer.Execute(image)
    return path
