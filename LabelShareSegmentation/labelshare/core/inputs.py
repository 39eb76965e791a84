"""What ``labelshare segment`` reads: image files, folders of them, globs and DICOM series, each one named image.

An INPUT argument is:

- an image file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.png``): one image, named after the file without its
  ending and without nnU-Net's channel suffix ``_0000``;
- a DICOM file (``.dcm``, or any file with the DICOM preamble): one image when it is a whole series by itself (a
  radiograph, a multi-frame object); a file of a series with several files is refused with a hint to pass its folder,
  because segmenting one slice of a volume is never what was meant;
- a **DICOM folder** (a folder that directly holds DICOM files): one image, its series read with SimpleITK's
  series reader (GDCM: files sorted by position along the slice normal, geometry from the headers), named after the
  folder; a folder with several series is refused with the list of series unless ``--series UID`` picks one;
- any other folder: a **folder of inputs**, its image files and its subfolders that are DICOM folders (one level);
- a pattern with ``*``, ``?`` or ``[`` that names no existing path: a glob (quoted, so the shell leaves it alone);
  every match is an input as above.

Light (SimpleITK, no torch): everything here runs before the model is loaded, so a mistake in the arguments costs
no start-up time.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import DataError
from .fileio import IMAGE_SUFFIXES, image_suffix
from .input_check import MODALITY_TAG
from .tasks import CHANNEL_SUFFIX, read_image

DICOM_SUFFIX = ".dcm"
_DICOM_MAGIC_OFFSET = 128
SERIES_UID_TAG = "0020|000e"
SERIES_DESCRIPTION_TAG = "0008|103e"
IMAGE_POSITION_TAG = "0020|0032"
# Relative spread of the gaps between slice positions beyond which a series has missing or uneven slices; the
# series reader would then give every slice the same (wrong) spacing.
SLICE_GAP_TOLERANCE = 0.01
GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class InputImage:
    """One image to segment.

    :param name: the output's file name without ending.
    :param source: the file or folder it comes from.
    :param dicom_files: a DICOM input's files in the order of the image's slices (empty for other inputs); DICOM
        SEG references them.
    """

    name: str
    source: Path
    dicom_files: tuple[Path, ...] = ()

    @property
    def is_dicom(self) -> bool:
        return bool(self.dicom_files)


@dataclass(frozen=True)
class Inputs:
    """The images of a command line; ``single`` when one argument named one image (its output is a file)."""

    images: list[InputImage]
    single: bool


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM preamble (``DICM`` at byte 128), as exports without endings are."""
    if path.name.lower().endswith(DICOM_SUFFIX):
        return True
    try:
        with open(path, "rb") as stream:
            stream.seek(_DICOM_MAGIC_OFFSET)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _dicom_header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise DataError(f"{path}: DICOM file cannot be read ({str(error).strip().splitlines()[-1][:200]})") from None
    return reader


def _header_value(reader: sitk.ImageFileReader, tag: str) -> str:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _series_files(folder: Path, series_uid: str) -> tuple[Path, ...]:
    return tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))


def dicom_folder_image(folder: Path, series: str | None = None) -> InputImage:
    """The DICOM series of a folder (the one ``series`` names when it holds several). A DICOM file of the folder
    that GDCM cannot read is refused by name: GDCM leaves it out of every series, and the series would then lack a
    slice."""
    uids = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))  # listed in a stable order
    if not uids:
        raise DataError(f"{folder}: holds DICOM files but no readable image series")
    if series is None and len(uids) == 1:
        series = uids[0]
    elif series not in uids:
        listing = "; ".join(_describe_series(folder, uid) for uid in uids)
        what = f"has no series {series}" if series else f"holds {len(uids)} DICOM series"
        raise DataError(f"{folder}: {what}; choose one with --series UID: {listing}")
    files = _series_files(folder, series)
    listed = {f.name for f in files} if len(uids) == 1 else \
        {f.name for uid in uids for f in _series_files(folder, uid)}
    damaged = [f for f in _visible_files(folder) if f.name not in listed and _unreadable_dicom(f)]
    if damaged:
        more = f" (and {len(damaged) - 1} more files)" if len(damaged) > 1 else ""
        raise DataError(f"{damaged[0]}: DICOM file is damaged (GDCM cannot read it){more}, so the series in {folder} "
                        "would lack its slice; replace the file, or remove it to segment the others")
    return InputImage(folder.name, folder, files)


def _unreadable_dicom(path: Path) -> bool:
    """A file that looks like DICOM (its ending or preamble) but whose header GDCM cannot read."""
    if image_suffix(path) or not is_dicom_file(path):
        return False
    try:
        _dicom_header(path)
    except DataError:
        return True
    return False


def _describe_series(folder: Path, uid: str) -> str:
    files = _series_files(folder, uid)
    description = _header_value(_dicom_header(files[0]), SERIES_DESCRIPTION_TAG)
    return f"{uid} ({description + ', ' if description else ''}{len(files)} files)"


def dicom_file_image(path: Path, series: str | None = None) -> InputImage:
    """A single DICOM file as an image, unless it is one file of a series with several (then its folder is); with
    ``series``, it must be of that series."""
    uid = _header_value(_dicom_header(path), SERIES_UID_TAG)
    if series is not None and uid != series:
        raise DataError(f"{path}: is of DICOM series {uid or '(none)'}, not of --series {series}")
    siblings = _series_files(path.parent, uid) if uid else ()
    if len(siblings) > 1:
        raise DataError(f"{path}: is one of {len(siblings)} files of DICOM series {uid}; pass the folder "
                        f"{path.parent} to segment the whole series")
    return InputImage(path.name[: -len(DICOM_SUFFIX)] if path.name.lower().endswith(DICOM_SUFFIX) else path.name,
                      path, (path,))


def image_file_name(path: Path) -> str:
    """The image name of a file: its name without the ending and without nnU-Net's ``_0000`` channel suffix."""
    stem = path.name[: -len(image_suffix(path))]
    return stem[: -len(CHANNEL_SUFFIX)] if stem.endswith(CHANNEL_SUFFIX) else stem


def _holds_dicom(files: Sequence[Path]) -> bool:
    return any(not image_suffix(f) and is_dicom_file(f) for f in files)


def _folder_images(folder: Path, series: str | None) -> tuple[list[InputImage], bool]:
    """(images, whether the folder is one image: a DICOM folder)."""
    files = _visible_files(folder)
    images = [f for f in files if image_suffix(f)]
    if _holds_dicom(files):
        if images:
            raise DataError(f"{folder}: holds DICOM files and other images ({images[0].name}); give them separately")
        return [dicom_folder_image(folder, series)], True
    found = [InputImage(image_file_name(f), f) for f in images]
    for subfolder in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _holds_dicom(_visible_files(subfolder)):
            found.append(dicom_folder_image(subfolder, series))
    if not found:
        raise DataError(f"{folder}: no images in it ({', '.join(IMAGE_SUFFIXES)}, DICOM files, or subfolders "
                        "holding a DICOM series)")
    return found, False


def _path_images(path: Path, series: str | None) -> tuple[list[InputImage], bool]:
    """(images, whether ``path`` names one image)."""
    if path.is_dir():
        return _folder_images(path, series)
    if image_suffix(path):
        return [InputImage(image_file_name(path), path)], True
    if is_dicom_file(path):
        return [dicom_file_image(path, series)], True
    raise DataError(f"{path}: not an image LabelShare reads ({', '.join(IMAGE_SUFFIXES)} or DICOM)")


def collect_inputs(arguments: Sequence[str | os.PathLike], series: str | None = None) -> Inputs:
    """The images the INPUT arguments name (module docstring), in argument order, each folder's sorted by name."""
    images: list[InputImage] = []
    single = False
    for argument in arguments:
        text = str(argument)
        path = Path(text)
        if path.exists():
            found, single = _path_images(path, series)
        elif any(c in text for c in GLOB_CHARACTERS):
            matches = sorted(glob.glob(text))
            if not matches:
                raise DataError(f"{text}: no file or folder matches")
            found, single = [image for match in matches for image in _path_images(Path(match), series)[0]], False
        else:
            raise DataError(f"{path}: input not found (no such file or folder)")
        images.extend(found)
    if series is not None:
        other = next((image for image in images if not image.is_dicom), None)
        if other is not None:
            raise DataError(f"{other.source}: is not DICOM, and --series {series} picks a series of a DICOM folder; "
                            "leave --series out for other images")
    return Inputs(images, single and len(arguments) == 1)


def input_size(image: InputImage) -> tuple[int, ...] | None:
    """The size of an input from its header(s) alone, before anything is read (a DICOM series: its first file's
    rows and columns by its number of files); None when the header cannot tell (reading the image will say why)."""
    files = image.dicom_files or (image.source,)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = tuple(reader.GetSize())
    if len(files) > 1:
        return (*size[:2], len(files))
    return size


def read_input_image(image: InputImage) -> sitk.Image:
    """The voxels and geometry of an input (DICOM: the series sorted by position); DataError naming the source."""
    if not image.is_dicom:
        return read_image(image.source, "input image")
    if len(image.dicom_files) == 1:
        return read_image(image.dicom_files[0], "DICOM image")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in image.dicom_files])
    reader.MetaDataDictionaryArrayUpdateOn()  # every slice's position, to check the slice gaps below
    try:
        volume = reader.Execute()
    except RuntimeError as error:
        raise DataError(f"{image.source}: DICOM series cannot be read "
                        f"({str(error).strip().splitlines()[-1][:200]})") from None
    _check_even_slices(reader, volume, image.source)
    if reader.HasMetaDataKey(0, MODALITY_TAG):  # the series' modality, which the input check compares
        volume.SetMetaData(MODALITY_TAG, reader.GetMetaData(0, MODALITY_TAG))
    if volume.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{image.source}: DICOM series has {volume.GetNumberOfComponentsPerPixel()} components per "
                        "pixel (colour); a scalar (grey) image is needed")
    return volume


def _check_even_slices(reader: sitk.ImageSeriesReader, volume: sitk.Image, source: Path) -> None:
    """Refuse a series with missing or unevenly spaced slices: one spacing would put its slices in wrong places."""
    normal = np.asarray(volume.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    positions = []
    for index in range(volume.GetDepth()):
        if not reader.HasMetaDataKey(index, IMAGE_POSITION_TAG):
            return  # no positions (e.g. secondary capture): nothing to check against
        positions.append([float(v) for v in reader.GetMetaData(index, IMAGE_POSITION_TAG).split("\\")])
    gaps = np.diff(np.asarray(positions) @ normal)
    if gaps.size and (np.abs(gaps - gaps.mean()).max() > SLICE_GAP_TOLERANCE * abs(gaps.mean()) or
                      abs(gaps.mean()) < 1e-6):
        raise DataError(f"{source}: DICOM series has unevenly spaced or missing slices (gaps from {gaps.min():.3g} "
                        f"to {gaps.max():.3g} mm); LabelShare needs a regular volume")
