"""What ``labelshare segment`` writes: a label image that carries its meaning, in one of three kinds; where each image's
output goes, and when an output is complete.

- **Label map** (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.png``): the task's label ids on the input's grid, with
  a JSON sidecar beside it (``case.nii.gz`` → ``case.json``, format :data:`SIDECAR_FORMAT`) naming every label id
  (name, colour, terminology), the task, the model version and the engine version. The sidecar is written after the
  image and records the image's sha256, so a label map counts as complete only with a sidecar that names exactly it.
- **Slicer segmentation** (``.seg.nrrd``): the same voxels with one segment per task label (its label value is the
  label id) with name, colour and terminology, which Slicer shows as named segments. Tagged like the segments the
  Slicer module makes (task, label id, model: :data:`labelshare.core.terminology.TASK_TAG` and the others), so the
  module replaces them when it segments that task again.
- **DICOM SEG** (``.dcm``, only for a DICOM input): a binary segmentation that references the source series, one
  segment per task label with its label, recommended display colour and codes (labels without a known entry:
  Slicer's generic *Tissue*); empty frames are left out. Its slice spacing is measured from the slice positions (a
  source's SpacingBetweenSlices is not trusted: GDCM writes 1 on a stack of any spacing), and a series whose headers
  lack what a SEG must reference (:data:`SEG_SOURCE_ATTRIBUTES`) is refused before anything is segmented
  (:func:`check_dicom_seg_source`).

:func:`plan_cases` decides where every image's output goes and refuses what cannot work (an existing output, two
images on one output, a SEG of a source it cannot reference) before anything heavy is imported. Names, colours and
terminology come from :func:`labelshare.core.terminology.label_styles`, the same as the segments of the Slicer
module. The writers, one per kind, are :mod:`labelshare.engine.writers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from .config import OUTPUT_FORMATS, SegmentConfig
from .errors import DataError
from .fileio import check_image_fits_format, image_suffix, read_json, remove_temporary_files_of, sha256_file
from .inputs import InputImage, Inputs, input_size
from .labelspace import LabelSpace
from .modelfolder import MANIFEST_FILE, WEIGHTS_FILE, read_model_json
from .terminology import KnownLabel, LabelStyle, label_styles

LABEL_MAP, SEG_NRRD, DICOM_SEG = "label map", "Slicer segmentation", "DICOM SEG"
SEG_NRRD_SUFFIX = ".seg.nrrd"
DICOM_SEG_SUFFIX = ".dcm"
DEFAULT_FORMAT = "nifti"  # of the outputs in an output folder (config.OUTPUT_FORMATS)
ENDINGS_TEXT = ".nii.gz, .nii, .nrrd, .mha, .png (label map), .seg.nrrd (Slicer segmentation) or .dcm (DICOM SEG)"
SIDECAR_FORMAT = "labelshare.labels"
# What a DICOM SEG needs of every file of the series it references (it copies or references them): the identity of
# the study, series and instance and the image size; a series of several slices also needs its place in the patient
# (a frame of reference, and every slice's position, orientation and pixel spacing), as does a single image that
# states its position.
SEG_SOURCE_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns")
SEG_VOLUME_ATTRIBUTES = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


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


# Uncertainty maps (``--uncertainty``) are float images: the image formats that hold floats, and the one of the maps
# written into a folder
UNCERTAINTY_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
UNCERTAINTY_FOLDER_ENDING = ".nii.gz"


def check_uncertainty_file(path: Path) -> None:
    """Refuse, before anything runs, an uncertainty file whose format cannot hold its float values."""
    name = path.name.lower()
    if name.endswith(SEG_NRRD_SUFFIX) or name.endswith(DICOM_SEG_SUFFIX):
        raise DataError(f"{path}: the uncertainty map is an image of values from 0 to 1, not a segmentation; name it "
                        f"{', '.join(UNCERTAINTY_ENDINGS)}")
    if image_suffix(path) == ".png":
        raise DataError(f"{path}: PNG holds 8- or 16-bit whole numbers, not the uncertainty's values from 0 to 1; "
                        f"name it {', '.join(UNCERTAINTY_ENDINGS)}")
    if image_suffix(path) not in UNCERTAINTY_ENDINGS:
        raise DataError(f"{path}: the uncertainty map must end in {', '.join(UNCERTAINTY_ENDINGS)}")


@dataclass(frozen=True)
class PlannedCase:
    """One image, where its output (and its uncertainty map, when one is asked for) goes, and whether a complete
    output is already there. The map is written before the output, so a complete output has its map."""

    image: InputImage
    output: Path
    complete: bool = False
    uncertainty_map: Path | None = None


def plan_cases(inputs: Inputs, output: str | Path, config: SegmentConfig) -> list[PlannedCase]:
    """Where every image's output goes; refuses (DataError) what cannot work before anything is read or loaded.

    One image named by one argument is written to ``output`` as a file (its ending names the format), or into
    ``output`` when that is an existing folder; anything else is written into the folder ``output``, one
    ``<image name><ending of --format>`` per image.
    """
    config.check()
    output = Path(output)
    paths = _output_paths(inputs, output, "-o", OUTPUT_FORMATS[config.output_format or DEFAULT_FORMAT])
    if inputs.single and not output.is_dir():
        if not output_kind(output):
            raise DataError(f"{output}: output must end in {ENDINGS_TEXT}")
        if config.output_format and not output.name.lower().endswith(OUTPUT_FORMATS[config.output_format]):
            raise DataError(f"{output}: --format {config.output_format} writes "
                            f"{OUTPUT_FORMATS[config.output_format]} files; name the output so, or leave --format out")
    maps: list[Path | None] = [None] * len(paths)
    if config.uncertainty is not None:
        maps = _output_paths(inputs, Path(config.uncertainty), "--uncertainty", UNCERTAINTY_FOLDER_ENDING)
        for path in maps:
            check_uncertainty_file(path)
    by_path: dict[Path, InputImage] = {}
    for image, path, uncertainty in zip(inputs.images, paths, maps, strict=True):
        written = [path] + ([sidecar_path(path)] if output_kind(path) == LABEL_MAP else []) + \
            ([uncertainty] if uncertainty is not None else [])
        for target in written:
            if target in by_path:
                raise DataError(f"{target}: would be written for two images, {by_path[target].source} and "
                                f"{image.source}, or twice for one; give them in separate runs or rename one")
            by_path[target] = image
            if target.resolve() == image.source.resolve():
                raise DataError(f"{target}: is the input image; choose another output")
        if output_kind(path) == DICOM_SEG:
            check_dicom_seg_source(image)  # a series a SEG cannot reference is refused before anything runs
        if inputs.single and image_suffix(path) == ".png" and (size := input_size(image)):
            check_image_fits_format(size, path)  # the label image has its input's size (in a batch: that case fails)
    if config.existing == "refuse":
        existing = [path for path in [*paths, *maps] if path is not None and path.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
            raise DataError(f"{existing[0]}: already exists{more} (pass --overwrite to replace, or --continue to keep "
                            "complete outputs and write the others)")
    return [PlannedCase(image, path, config.existing == "continue" and output_complete(path), uncertainty)
            for image, path, uncertainty in zip(inputs.images, paths, maps, strict=True)]


def _output_paths(inputs: Inputs, target: Path, option: str, folder_ending: str) -> list[Path]:
    """Where every image's file of one kind goes (``-o``'s outputs, ``--uncertainty``'s maps): one image named by one
    argument to the file ``target`` (or into ``target`` when that is an existing folder), anything else into the
    folder ``target`` as ``<image name><folder_ending>``."""
    if inputs.single and not target.is_dir():
        return [target]
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: is a file; with several images (or a folder of them) {option} names a folder")
    if not target.exists() and output_kind(target):  # a folder named like a file would surprise everyone
        raise DataError(f"{target}: with several images (or a folder of them) {option} names a folder, and this "
                        "name ends like an image file; give a folder name")
    return [target / f"{image.name}{folder_ending}" for image in inputs.images]


def remove_leftovers(cases: Sequence[PlannedCase]) -> None:
    """Remove the hidden temporary files that a killed run left beside the outputs (and their sidecars): what
    ``continue`` and ``overwrite`` do before writing."""
    remove_temporary_files_of([case.output for case in cases] +
                              [sidecar_path(case.output) for case in cases if output_kind(case.output) == LABEL_MAP] +
                              [case.uncertainty_map for case in cases if case.uncertainty_map is not None])
