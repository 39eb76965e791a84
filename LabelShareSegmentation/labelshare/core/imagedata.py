"""Whether an image file holds all the pixel data its header describes, and reading it so. Light (no torch).

SimpleITK reads a NIfTI file (``.nii``, ``.nii.gz``) whose data stops early without complaint: the missing voxels
become 0 (and so do NaN and infinite values: niftilib replaces them silently). It also allocates the size a header
claims before finding out that the data is not there, so a damaged header claiming 30000 x 30000 voxels costs
gigabytes before it fails. :func:`read_checked_image` reads an image with these checks, and a NIfTI file's pixel data
only once: SimpleITK reads its header (geometry, pixel type), the check reads (and decompresses) the data, and the
image is made from those bytes (files the check does not cover, such as scaled or multi-component NIfTI, are
checked and then read by SimpleITK). :func:`image_data_problem` checks a file without reading it into an image:

- NIfTI: the header's data offset plus voxel count times voxel size against the file's length, for ``.nii.gz`` its
  decompressed length (the whole gzip stream is read, so a damaged stream or checksum is found too), and
  floating-point data for NaN and infinite values;
- NRRD, MetaImage, PNG (whose readers do notice missing data): the size the header claims against the most the file
  could hold (its length for raw data, :data:`MAX_DEFLATE_RATIO` times that for deflate-compressed data), so that an
  impossible claim is refused before anything is allocated.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MAX_DEFLATE_RATIO = 1032  # deflate (gzip, zlib, PNG) never expands data by more than this factor
_CHUNK = 1 << 20
_HEADER_LIMIT = 1 << 16  # NRRD and MetaImage text headers are read up to this length
# bytes per voxel of the NIfTI datatype codes (nifti1.h)
_NIFTI_VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                      1536: 16, 1792: 16, 2048: 32, 2304: 4}
# the floating-point numbers in the data of a NIfTI datatype: float32, float64, complex64 and complex128 (as pairs)
_NIFTI_FLOATS = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}


class ImageDataProblem(Exception):
    """An image file does not hold the pixel data its header describes; the message is a phrase to follow its name."""


def read_checked_image(path: str | os.PathLike) -> sitk.Image:
    """The image of a file that holds all the pixel data its header describes, read once where the check covers its
    format. :raises ImageDataProblem: naming what is wrong; SimpleITK's RuntimeError and OSError pass through."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        image = _read_nifti(path, compressed=name.endswith(".gz"))
        if image is not None:
            return image
    problem = image_data_problem(path)
    if problem:
        raise ImageDataProblem(problem)
    return sitk.ReadImage(str(path))


def image_data_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the pixel data of an image file (a phrase to follow its name), or None when it holds
    the data its header describes (or when its format is not one checked here; its reader then decides)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        return _nifti_problem(path, compressed=name.endswith(".gz"))
    if name.endswith((".nrrd", ".mha", ".png")):
        return _claimed_size_problem(path)
    return None


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


def _incomplete(needed: int, held: int) -> str:
    return (f"is truncated or damaged: its header describes {format_bytes(needed)} of header and pixel data, the file "
            f"holds {format_bytes(held)}")


def _impossible(claimed: int, voxels: int, limit: int) -> str:
    return (f"is damaged: its header claims {voxels} voxels ({format_bytes(claimed)} of pixel data), more than a file "
            f"of this length can hold ({format_bytes(limit)})")


# numpy types of the scalar NIfTI datatypes an image can be made of directly (the others are read by SimpleITK)
_NIFTI_SCALARS = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                  1280: "u8"}


@dataclass(frozen=True)
class _NiftiLayout:
    offset: int          # where the pixel data starts
    data_bytes: int
    voxels: int
    floats: str | None   # numpy dtype of the floating-point values in the data (None: integer data)
    scalar: str | None   # numpy dtype (with byte order) of scalar data an image is made of directly, else None


def _nifti_layout(header: bytes) -> _NiftiLayout | str | None:
    """The data layout from the start of a NIfTI-1 or NIfTI-2 file; a problem phrase when the header itself is
    cut; None when it is not a NIfTI header this check understands (the reader decides)."""
    for order in "<>":
        if len(header) < 4:
            return "is truncated: it is shorter than a NIfTI header"
        header_size = struct.unpack(order + "i", header[:4])[0]
        if header_size not in (348, 540):
            continue
        if len(header) < header_size:
            return "is truncated: it is shorter than its NIfTI header"
        if header_size == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype = struct.unpack(order + "h", header[70:72])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            slope, intercept = struct.unpack(order + "2f", header[112:120])
        else:
            datatype = struct.unpack(order + "h", header[12:14])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            slope, intercept = struct.unpack(order + "2d", header[176:192])
        voxel_bytes = _NIFTI_VOXEL_BYTES.get(datatype)
        if voxel_bytes is None or not 1 <= dims[0] <= 7 or not math.isfinite(offset) \
                or any(d <= 0 for d in dims[1: dims[0] + 1]):
            return None
        voxels = math.prod(dims[1: dims[0] + 1])
        floats = _NIFTI_FLOATS.get(datatype)
        unscaled = slope == 0 or (slope == 1 and intercept == 0)  # else SimpleITK rescales the values
        scalar = order + _NIFTI_SCALARS[datatype] if datatype in _NIFTI_SCALARS and unscaled else None
        return _NiftiLayout(max(int(offset), header_size), voxels * voxel_bytes, voxels,
                            order + floats if floats else None, scalar)
    return None


def _nifti_problem(path: Path, compressed: bool) -> str | None:
    """Missing data (the reader would fill it with zeros) and NaN or infinite floats (niftilib replaces them by 0
    without a word, which would hide what LabelShare refuses in every other format)."""
    file_bytes = path.stat().st_size
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            layout = _nifti_layout(stream.read(540))
            if not isinstance(layout, _NiftiLayout):
                return layout
            needed = layout.offset + layout.data_bytes
            if compressed and needed > MAX_DEFLATE_RATIO * file_bytes:
                return _impossible(layout.data_bytes, layout.voxels, MAX_DEFLATE_RATIO * file_bytes)
            if not compressed and file_bytes < needed:
                return _incomplete(needed, file_bytes)
            if not compressed and layout.floats is None:
                return None  # complete, and nothing the reader would change
            stream.seek(layout.offset)
            held, non_finite = layout.offset, 0
            for chunk in iter(lambda: stream.read(_CHUNK), b""):  # chunks stay aligned: _CHUNK is a multiple of 16
                data = chunk[: max(0, needed - held)]
                held += len(chunk)
                if layout.floats and data:
                    whole = len(data) - len(data) % np.dtype(layout.floats).itemsize  # a cut file ends mid-value
                    values = np.frombuffer(data[:whole], layout.floats)
                    non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
    except EOFError:
        return "is truncated: its compressed data ends early"
    except (gzip.BadGzipFile, zlib.error) as error:
        return f"is damaged: its compressed data cannot be decompressed ({error})"
    if held < needed:
        return _incomplete(needed, held)
    return f"contains NaN or infinite values ({non_finite} voxels)" if non_finite else None


def _read_nifti(path: Path, compressed: bool) -> sitk.Image | None:
    """A scalar, unscaled NIfTI image read once: its geometry and pixel type from SimpleITK's header reader, its
    pixel data decompressed and checked here (missing data, a damaged stream, NaN or infinite floats raise
    :class:`ImageDataProblem`); None for a file this does not cover (the caller checks it and SimpleITK reads it)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only
    except RuntimeError:
        return None
    file_bytes = path.stat().st_size
    size = reader.GetSize()
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            layout = _nifti_layout(stream.read(540))
            if not isinstance(layout, _NiftiLayout) or layout.scalar is None or reader.GetDimension() not in (2, 3) \
                    or reader.GetNumberOfComponents() != 1 or math.prod(size) != layout.voxels:
                return None
            needed = layout.offset + layout.data_bytes
            if compressed and needed > MAX_DEFLATE_RATIO * file_bytes:
                raise ImageDataProblem(_impossible(layout.data_bytes, layout.voxels, MAX_DEFLATE_RATIO * file_bytes))
            if not compressed and file_bytes < needed:
                raise ImageDataProblem(_incomplete(needed, file_bytes))
            stream.seek(layout.offset)
            data = np.empty(layout.data_bytes, dtype=np.uint8)
            held = stream.readinto(memoryview(data))
            while held < layout.data_bytes:
                count = stream.readinto(memoryview(data)[held:])
                if not count:
                    raise ImageDataProblem(_incomplete(needed, layout.offset + held))
                held += count
            while compressed and stream.read(_CHUNK):  # to the end: the stream's length and checksum are checked
                pass
    except EOFError:
        raise ImageDataProblem("is truncated: its compressed data ends early") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise ImageDataProblem(f"is damaged: its compressed data cannot be decompressed ({error})") from None
    values = data.view(layout.scalar).reshape(tuple(reversed(size)))
    if layout.floats is not None:
        non_finite = int(values.size - np.count_nonzero(np.isfinite(values)))
        if non_finite:
            raise ImageDataProblem(f"contains NaN or infinite values ({non_finite} voxels)")
    image = sitk.GetImageFromArray(values.astype(values.dtype.newbyteorder("="), copy=False))
    if image.GetPixelID() != reader.GetPixelID():
        return None
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    for key in reader.GetMetaDataKeys():
        image.SetMetaData(key, reader.GetMetaData(key))
    return image


def _component_bytes(pixel_id: int) -> int:
    """Bytes of one pixel component, from SimpleITK's description of the pixel type ('vector of 16-bit ...')."""
    description = sitk.GetPixelIDValueAsString(pixel_id)
    bits = re.search(r"(\d+)-bit", description)
    if bits is None:
        return 1
    return int(bits.group(1)) // 8 * (2 if description.startswith("complex") else 1)


def _text_start(path: Path) -> str:
    """The first bytes of a file as text (the header of a NRRD or MetaImage file and possibly some data)."""
    with open(path, "rb") as stream:
        return stream.read(_HEADER_LIMIT).decode("latin-1")


def _data_limit(path: Path) -> int | None:
    """The most pixel bytes the file could hold, or None when its data is in another file or in an encoding that
    is not checked here."""
    size = path.stat().st_size
    name = path.name.lower()
    if name.endswith(".png"):
        return MAX_DEFLATE_RATIO * size
    if name.endswith(".nrrd"):
        header = _text_start(path).split("\n\n", 1)[0]
        fields = {key.strip().lower(): value.strip().lower()
                  for key, value in re.findall(r"^([^:#\n]+):=?(.*)$", header, re.MULTILINE)}
        if "data file" in fields or "datafile" in fields:
            return None
        encoding = fields.get("encoding", "raw")
        if encoding == "raw":
            return size
        return MAX_DEFLATE_RATIO * size if encoding in ("gzip", "gz") else None
    start = _text_start(path)  # MetaImage: "Key = Value" lines, the last one "ElementDataFile = LOCAL"
    element_file = re.search(r"^\s*ElementDataFile\s*=\s*(\S+)", start, re.MULTILINE)
    if element_file is None or element_file.group(1).upper() != "LOCAL":
        return None
    compressed = re.search(r"^\s*CompressedData\s*=\s*(\w+)", start[: element_file.start()], re.MULTILINE)
    return MAX_DEFLATE_RATIO * size if compressed and compressed.group(1).lower() == "true" else size


def _claimed_size_problem(path: Path) -> str | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # the reader reports what it cannot understand when the image is read
    voxels = math.prod(reader.GetSize())
    claimed = voxels * reader.GetNumberOfComponents() * _component_bytes(reader.GetPixelID())
    limit = _data_limit(path)
    return _impossible(claimed, voxels, limit) if limit is not None and claimed > limit else None
