"""What ``labelshare segment`` writes: a label image that carries its meaning, in one of three kinds.

- **Label map** (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.png``): the task's label ids on the input's grid, with
  a JSON sidecar beside it (``case.nii.gz`` → ``case.json``) naming every label id (name, colour, terminology), the
  task, the model version and the engine version. The sidecar is written after the image and records the image's
  sha256, so a label map counts as complete only with a sidecar that names exactly it.
- **Slicer segmentation** (``.seg.nrrd``, written by slicerio, imported only then): the same voxels with one
  segment per task label (its label value is the label id) with name, colour and terminology, which Slicer shows as
  named segments. Tagged like the segments the Slicer module makes (task, label id, model), so the module replaces
  them when it segments that task again.
- **DICOM SEG** (``.dcm``, only for a DICOM input): a binary segmentation (highdicom) that references the source
  series, one segment per task label with its label, recommended display colour and codes (labels without a
  known entry: Slicer's generic *Tissue*); empty frames are left out. Its slice spacing is measured from the slice
  positions (a source's SpacingBetweenSlices is not trusted: GDCM writes 1 on a stack of any spacing), and a series
  whose headers lack what a SEG must reference (:data:`SEG_SOURCE_ATTRIBUTES`) is refused before anything is
  segmented (:func:`check_dicom_seg_source`).

Names, colours and terminology come from :func:`labelshare.terminology.label_styles`, the same as the segments of
the Slicer module. Every file is written under a temporary name and renamed into place
(:mod:`labelshare.fileio`), so an output at its final name is whole. Light: highdicom and slicerio are imported only
to write DICOM SEG and .seg.nrrd. Each kind has its writer in :data:`WRITERS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import DataError
from .fileio import (atomic_path, atomic_write_json, check_image_fits_format, image_suffix, read_back_problem,
                     read_json, sha256_file, write_image_atomic)
from .inputs import InputImage
from .labelspace import LabelSpace
from .modelfolder import MANIFEST_FILE, WEIGHTS_FILE, read_model_json
from .terminology import GENERIC_TISSUE, KnownLabel, LabelStyle, Terminology, label_styles

LABEL_MAP, SEG_NRRD, DICOM_SEG = "label map", "Slicer segmentation", "DICOM SEG"
SEG_NRRD_SUFFIX = ".seg.nrrd"
DICOM_SEG_SUFFIX = ".dcm"
DEFAULT_FORMAT = "nifti"  # of the outputs in an output folder (config.OUTPUT_FORMATS)
ENDINGS_TEXT = ".nii.gz, .nii, .nrrd, .mha, .png (label map), .seg.nrrd (Slicer segmentation) or .dcm (DICOM SEG)"
SIDECAR_FORMAT = "labelshare.labels"
# Segment tags; LabelShareLib.segments tags the segments it makes in Slicer with the same ones.
TASK_TAG = "LabelShare.Task"
LABEL_ID_TAG = "LabelShare.LabelId"
MODEL_TAG = "LabelShare.Model"
TERMINOLOGY_TAG = "TerminologyEntry"
DICOM_SERIES_NUMBER_OFFSET = 1000  # the SEG series is numbered after its source series (source + 1000)
# ContentCreatorName (0070,0084), Type 2 in the SEG's Content Identification Macro: a person name (PN) whose one
# component is the family name (the caret says so)
CONTENT_CREATOR = "LabelShare^"
# What a DICOM SEG needs of every file of the series it references (it copies or references them): the identity of
# the study, series and instance and the image size; a series of several slices also needs its place in the patient
# (a frame of reference, and every slice's position, orientation and pixel spacing), as does a single image that
# states its position.
SEG_SOURCE_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")
SEG_VOLUME_ATTRIBUTES = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
# Type 2 attributes of the patient and study that the SEG copies from its source (present, empty when unknown); a
# source without one gets it empty, as the standard asks of an unknown value
SEG_COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "StudyDate", "StudyTime")


@dataclass(frozen=True)
class ModelIdentity:
    """Which model version made an output: folder name, creation time and weights hash (from its manifest)."""

    name: str
    created: str = ""
    weights_sha256: str = ""

    @classmethod
    def of(cls, folder: Path | None) -> ModelIdentity:
        if folder is None:
            return cls("unsaved model")
        lineage = read_model_json(folder, "lineage.json", {}) or {}
        manifest = read_model_json(folder, MANIFEST_FILE, {}) or {}
        return cls(folder.name, str(lineage.get("created", "")),
                   str((manifest.get("files") or {}).get(WEIGHTS_FILE, "")))

    def to_json(self) -> dict:
        return {"name": self.name, "created": self.created, "weights_sha256": self.weights_sha256}


@dataclass(frozen=True)
class OutputDescription:
    """What the label images of one task of one model mean: task, label styles (in id order), model."""

    task: str
    styles: list[LabelStyle]
    model: ModelIdentity

    @classmethod
    def of(cls, labelspace: LabelSpace, task: str, model_folder: Path | None,
           table: dict[str, KnownLabel] | None = None) -> OutputDescription:
        return cls(task, label_styles(labelspace.task(task).labels, table), ModelIdentity.of(model_folder))

    @property
    def max_label_id(self) -> int:
        return max(style.label_id for style in self.styles)


def output_kind(path: str | Path) -> str:
    """:data:`LABEL_MAP`, :data:`SEG_NRRD` or :data:`DICOM_SEG` by the file ending; '' for any other ending."""
    name = Path(path).name.lower()
    if name.endswith(SEG_NRRD_SUFFIX):
        return SEG_NRRD
    if name.endswith(DICOM_SEG_SUFFIX):
        return DICOM_SEG
    return LABEL_MAP if image_suffix(name) else ""


def sidecar_path(label_map: str | Path) -> Path:
    """The JSON sidecar of a label map: the same name with ``.json`` for the image ending."""
    label_map = Path(label_map)
    return label_map.with_name(label_map.name[: -len(image_suffix(label_map))] + ".json")


def output_complete(path: str | Path) -> bool:
    """True when a whole output is at ``path``: every writer renames a finished file into place, and a label map is
    complete only once its sidecar (written last) names it with its sha256."""
    path = Path(path)
    if not path.is_file():
        return False
    if output_kind(path) != LABEL_MAP:
        return True
    try:
        record = read_json(sidecar_path(path), "label sidecar", DataError)
    except DataError:  # none yet (killed between image and sidecar), or not JSON
        return False
    return isinstance(record, dict) and record.get("image") == path.name and record.get("sha256") == sha256_file(path)


def check_dicom_seg_source(source: InputImage) -> None:
    """Refuse, before anything is segmented, an input that a DICOM SEG cannot reference: one that is not DICOM, or a
    series a file of which lacks an attribute the SEG needs (:data:`SEG_SOURCE_ATTRIBUTES`); the one line names the
    file and the attribute and suggests the outputs that need none."""
    if not source.is_dicom:
        raise DataError(f"{source.source}: is not DICOM, and DICOM SEG references the DICOM images it segments; "
                        "write .seg.nrrd or .nii.gz")
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag
    volume = len(source.dicom_files) > 1
    for path in source.dicom_files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, ValueError, pydicom.errors.InvalidDicomError) as error:
            raise DataError(f"{path}: DICOM file cannot be read ({error})") from None
        needed = SEG_SOURCE_ATTRIBUTES + (SEG_VOLUME_ATTRIBUTES if volume or "ImagePositionPatient" in header else ())
        missing = [keyword for keyword in needed if not header.get(keyword)]
        if missing:
            named = ", ".join(f"{keyword} {Tag(tag_for_keyword(keyword))}" for keyword in missing)
            raise DataError(f"{path}: lacks {named}, which a DICOM SEG of {source.source.name} must reference; "
                            "write .nii.gz or .seg.nrrd instead")


def check_output(path: Path, image: sitk.Image, source: InputImage, description: OutputDescription) -> None:
    """Refuse, before anything is segmented, an output that cannot hold this image's labels."""
    kind = output_kind(path)
    if not kind:
        raise DataError(f"{path}: output must end in {ENDINGS_TEXT}")
    if kind == DICOM_SEG:
        check_dicom_seg_source(source)
    check_image_fits_format(image, path)
    if image_suffix(path) == ".png":
        if description.max_label_id > 255:
            raise DataError(f"{path}: PNG holds 8-bit labels only; use .nii.gz")


def write_segmentation(label_image: sitk.Image, path: Path, description: OutputDescription, source: InputImage,
                       overwrite: bool) -> None:
    """Write the label image as the kind ``path`` names (module docstring); call :func:`check_output` first."""
    WRITERS[output_kind(path)](label_image, path, description, source, overwrite)


def write_label_map(label_image: sitk.Image, path: Path, description: OutputDescription, source: InputImage,
                    overwrite: bool) -> None:
    write_image_atomic(label_image, path, overwrite=overwrite)
    atomic_write_json(sidecar_path(path), {
        "format": SIDECAR_FORMAT, "format_version": 1, "image": path.name, "sha256": sha256_file(path),
        "task": description.task, "model": description.model.to_json(), "engine_version": __version__,
        "input": str(source.source.resolve()),
        "labels": {str(style.label_id): {"name": style.name, "color": [round(c, 4) for c in style.color],
                                         "terminology": style.terminology.slicer_text() if style.terminology else ""}
                   for style in description.styles}})


def write_seg_nrrd(label_image: sitk.Image, path: Path, description: OutputDescription, source: InputImage,
                   overwrite: bool) -> None:
    """A Slicer ``.seg.nrrd`` (slicerio): the label ids as one labelmap layer on the image's grid (LPS), one segment
    per task label; written atomically and read back before it counts."""
    import slicerio
    image = sitk.JoinSeries(label_image) if label_image.GetDimension() == 2 else label_image
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    model_name = description.model.name.replace("|", "_")  # '|' separates tags
    segments = []
    for style in description.styles:
        tags = {LABEL_ID_TAG: str(style.label_id), MODEL_TAG: model_name, TASK_TAG: description.task}
        if style.terminology is not None:
            tags[TERMINOLOGY_TAG] = style.terminology.slicer_text()
        segments.append({"id": f"Segment_{style.label_id}", "name": style.name, "color": list(style.color),
                         "colorAutoGenerated": False,
                         "nameAutoGenerated": False,  # else Slicer may rename the segment after its terminology
                         "labelValue": style.label_id, "layer": 0, "tags": dict(sorted(tags.items()))})
    segmentation = {"voxels": sitk.GetArrayFromImage(image).transpose(2, 1, 0),  # (i, j, k): slicerio's order
                    "ijkToLPS": ijk_to_lps, "containedRepresentationNames": ["Binary labelmap"],
                    "segments": segments}
    with atomic_path(path, overwrite, lambda written: read_back_problem(written, image)) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=6)  # zlib's default, as SimpleITK


def write_dicom_seg(label_image: sitk.Image, path: Path, description: OutputDescription, source: InputImage,
                    overwrite: bool) -> None:
    """A DICOM SEG (binary, highdicom) referencing the source series; frames in the order of its files."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.dicom_files]
    for header in sources:
        for keyword in SEG_COPIED_TYPE2:
            if keyword not in header:
                setattr(header, keyword, "")
    _set_measured_spacing(hd, sources, source)
    labels = sitk.GetArrayFromImage(label_image)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    # segment numbers must run 1..n; task label ids need not (liver=1, tumour=5)
    segment_of_label = np.zeros(description.max_label_id + 1, dtype=np.uint16)
    for number, style in enumerate(description.styles, start=1):
        segment_of_label[style.label_id] = number
    algorithm = hd.AlgorithmIdentificationSequence(name="LabelShare", family=codes.cid7162.ArtificialIntelligence,
                                                   version=f"{__version__} ({description.model.name})")
    segments = [_segment_description(hd, number, style, algorithm)
                for number, style in enumerate(description.styles, start=1)]
    first = sources[0]
    series_number = int(getattr(first, "SeriesNumber", 0) or 0) + DICOM_SERIES_NUMBER_OFFSET
    pixel_array = segment_of_label[labels]
    try:
        segmentation = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixel_array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="LabelShare",
            manufacturer_model_name=description.model.name[:64], software_versions=__version__,
            device_serial_number=description.model.weights_sha256[:16] or "unknown",
            content_label="LABELSHARE", content_description=f"LabelShare {description.task}"[:64],
            content_creator_name=CONTENT_CREATOR,
            series_description=f"LabelShare {description.task} ({description.model.name})"[:64],
            omit_empty_frames=bool(pixel_array.any()))  # an empty result still needs frames to be a valid SEG
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # what highdicom raises for a source it
        # cannot reference (check_dicom_seg_source refuses the known cases before anything is segmented)
        raise DataError(f"{path}: DICOM SEG of {source.source} cannot be written ({type(error).__name__}: "
                        f"{str(error)[:200]}); write .nii.gz or .seg.nrrd instead") from None
    with atomic_path(path, overwrite) as tmp:
        segmentation.save_as(tmp)


def _set_measured_spacing(hd, sources: Sequence, source: InputImage) -> None:
    """Give the (in-memory) source headers of a series of several slices the slice spacing measured from their
    positions (highdicom's check of a regular volume), which the SEG copies: a source's own SpacingBetweenSlices is
    not trusted, and highdicom prefers it to what it is given. A slice thickness the source leaves empty becomes the
    spacing (the segmentation's voxels are the source grid's)."""
    if len(sources) < 2:
        return
    import pydicom
    spacing, _ = hd.spatial.get_volume_positions([header.ImagePositionPatient for header in sources],
                                                 sources[0].ImageOrientationPatient)
    if spacing is None:
        raise DataError(f"{source.source}: the slice positions of the DICOM series do not form a regular volume, so "
                        "a DICOM SEG cannot place its frames; write .nii.gz or .seg.nrrd instead")
    measured = pydicom.valuerep.DSfloat(spacing, auto_format=True)
    for header in sources:
        header.SpacingBetweenSlices = measured
        if not header.get("SliceThickness"):
            header.SliceThickness = measured


# the writer of each kind of output (output_kind)
WRITERS = {LABEL_MAP: write_label_map, SEG_NRRD: write_seg_nrrd, DICOM_SEG: write_dicom_seg}


def _coded(hd, code) -> object:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _segment_description(hd, number: int, style: LabelStyle, algorithm) -> object:
    terminology: Terminology = style.terminology or GENERIC_TISSUE
    regions: Sequence = [_coded(hd, terminology.anatomic_region)] if terminology.anatomic_region else []
    segment = hd.seg.SegmentDescription(
        segment_number=number, segment_label=style.name[:64],
        segmented_property_category=_coded(hd, terminology.category),
        segmented_property_type=_coded(hd, terminology.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        anatomic_regions=regions or None,
        display_color=hd.color.CIELabColor.from_rgb(*(255 * c for c in style.color)))
    if terminology.type_modifier:  # left/right kidney: the modifier is what tells them apart
        segment.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(hd, terminology.type_modifier)]
    return segment
