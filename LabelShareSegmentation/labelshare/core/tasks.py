"""Task datasets: nnU-Net v2 raw folders, reading and validating their cases, and the patient-wise split. How a case
becomes the network's slices (normalisation, slicing, resampling) is :mod:`labelshare.core.preprocessing`.

A *task* is one labelled dataset with its own label set, stored the nnU-Net v2 way::

    <task>/dataset.json            {"labels": {"background": 0, "lv_cavity": 1, ...}, "file_ending": ".nii.gz", ...}
    <task>/imagesTr/<case>[_0000].<ending>
    <task>/labelsTr/<case>.<ending>

Endings read: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.png``. An optional ``"labelshare"`` block in
``dataset.json`` may set
``patient_regex`` (a regular expression whose first group is the patient id of a case name), ``lateralised``
(true/false: whether left-right flips would swap anatomy) and ``label_info`` (per label name: ``color`` as
[r, g, b] in 0..1 and ``terminology``, a Slicer terminology string), which the Slicer module uses for segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import DataError, LabelShareError
from .fileio import image_suffix, itk_error_reason, read_json
from .imagedata import ImageDataProblem, read_checked_image
from .naming import check_task_name

CHANNEL_SUFFIX = "_0000"
# A case name ends with a per-acquisition part (ACDC "patient002_frame01", Sunnybrook "scd_SC-HF-I-1_im0059");
# removing it gives the patient, so that all images of one patient land on the same side of the split.
DEFAULT_PATIENT_SUFFIX = re.compile(r"(_(frame|im|img|slice|phase|ph|t|time|ed|es)\d*)+$", re.IGNORECASE)
LATERAL_NAME = re.compile(r"(^|[_\s-])(left|right|l|r|lv|rv|la|ra)($|[_\s-])", re.IGNORECASE)
GEOMETRY_TOLERANCE = 1e-3


def parse_task_argument(text: str) -> tuple[str, Path]:
    """Split a ``NAME=DIR`` command-line argument; a bare ``DIR`` takes the folder name as task name."""
    if "=" in text:
        name, _, folder = text.partition("=")
    else:
        folder = text
        name = Path(text.rstrip("/\\")).name
    if not folder:
        raise DataError(f"--task {text}: no folder after '='; give the task as NAME=DIR")
    return check_task_name(name, f" (from '{text}')"), Path(folder)


def patient_of(case_name: str, pattern: str | None = None) -> str:
    """The patient id of a case, used to split by patient (documented in docs/formats.md)."""
    if pattern:
        match = re.search(pattern, case_name)
        if match:
            return match.group(1) if match.groups() else match.group(0)
        return case_name
    return DEFAULT_PATIENT_SUFFIX.sub("", case_name) or case_name


@dataclass(frozen=True)
class Case:
    name: str
    image_path: Path
    label_path: Path
    patient: str


@dataclass
class TaskDataset:
    """An nnU-Net v2 raw folder. Open with :meth:`open`; nothing is read from the images until asked."""

    name: str
    root: Path
    labels: dict[str, int]
    cases: list[Case]
    metadata: dict

    @classmethod
    def open(cls, root: str | Path, name: str | None = None) -> TaskDataset:
        root = Path(root)
        name = name or root.name
        if not root.is_dir():
            raise DataError(f"{root}: task folder of '{name}' " + ("is a file, not a folder" if root.exists()
                                                                   else "does not exist"))
        metadata = read_json(root / "dataset.json", "dataset.json", DataError)
        if not isinstance(metadata, dict):
            raise DataError(f"{root / 'dataset.json'}: expected a JSON object")
        labels = parse_labels(metadata, root / "dataset.json")
        channels = metadata.get("channel_names", metadata.get("modality", {"0": "image"}))
        if not isinstance(channels, dict):
            raise DataError(f"{root / 'dataset.json'}: 'channel_names' must map channel numbers to names")
        if len(channels) > 1 and all(str(k).isdigit() for k in channels):
            raise DataError(f"{root / 'dataset.json'}: {len(channels)} input channels; LabelShare takes one image "
                            "channel per case")
        options = parse_options(metadata, root / "dataset.json")
        cases = discover_cases(root, options.get("patient_regex"))
        return cls(name=name, root=root, labels=labels, cases=cases, metadata=metadata)

    @property
    def options(self) -> dict:
        return parse_options(self.metadata, self.root / "dataset.json")

    @property
    def lateralised(self) -> bool:
        """True when a left-right flip would turn one labelled structure into another (see LATERAL_NAME)."""
        if "lateralised" in self.options:
            return bool(self.options["lateralised"])
        return any(LATERAL_NAME.search(label) for label in self.labels)

    @property
    def license(self) -> str:
        return str(self.metadata.get("license", self.metadata.get("licence", "not stated")))

    @property
    def citation(self) -> str:
        return str(self.metadata.get("citation", self.metadata.get("reference", "")))

    @property
    def intended_input(self) -> str:
        """What the task's images are (for the model card): ``"labelshare": {"intended_input": ...}`` in
        dataset.json, else its modality and the first sentence of its description."""
        if self.options.get("intended_input"):
            return str(self.options["intended_input"])
        channels = self.metadata.get("channel_names") or self.metadata.get("modality") or {}
        modality = ", ".join(str(v) for v in channels.values()) if isinstance(channels, dict) else ""
        description = str(self.metadata.get("description", "")).split(". ")[0].strip().rstrip(".")
        return "; ".join(part for part in (modality, description) if part)[:400]

    @property
    def label_info(self) -> dict:
        return self.options.get("label_info") or {}

    def case(self, name: str) -> Case:
        for case in self.cases:
            if case.name == name:
                return case
        raise DataError(f"{self.root}: task '{self.name}' has no case '{name}'")

    def read_case(self, case: Case) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
        """Read and validate one case: (image, image array as float32, label array); raises :class:`DataError`
        naming the case on any problem."""
        what = f"case '{case.name}' of task '{self.name}'"
        image = read_image(case.image_path, f"{what}: image")
        label = read_image(case.label_path, f"{what}: label", is_label=True)
        check_same_geometry(image, label, f"{case.image_path}: {what}")
        image_array = image_to_array(image, case.image_path)
        label_array = label_to_array(label, case.label_path, set(self.labels.values()), what)
        return image, image_array, label_array

def parse_options(metadata: dict, where: Path) -> dict:
    """The ``"labelshare"`` block of a dataset.json (see the module docstring), its values checked."""
    options = metadata.get("labelshare")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise DataError(f"{where}: 'labelshare' must be a JSON object, not {type(options).__name__}")
    regex = options.get("patient_regex")
    if regex is not None:
        if not isinstance(regex, str):
            raise DataError(f"{where}: labelshare.patient_regex must be a string (a regular expression)")
        try:
            re.compile(regex)
        except re.error as error:
            raise DataError(f"{where}: labelshare.patient_regex is not a valid regular expression ({error})") from None
    if "lateralised" in options and not isinstance(options["lateralised"], bool):
        raise DataError(f"{where}: labelshare.lateralised must be true or false")
    if options.get("label_info") is not None and not isinstance(options["label_info"], dict):
        raise DataError(f"{where}: labelshare.label_info must map label names to colour and terminology")
    return options


def parse_labels(metadata: dict, where: Path) -> dict[str, int]:
    """Foreground labels of a dataset.json as {name: id} in ascending id order."""
    raw = metadata.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{where}: 'labels' must map label names to integer ids")
    labels: dict[str, int] = {}
    for label_name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"{where}: label '{label_name}' has id {value!r}; LabelShare needs one integer id per "
                            "label (region-based labels are not supported)")
        if value < 0 or value > 65535:
            raise DataError(f"{where}: label '{label_name}' id {value} is outside 0..65535")
        labels[str(label_name)] = value
    if sorted(labels.values()) != sorted(set(labels.values())):
        raise DataError(f"{where}: two labels share one id")
    background = [n for n, v in labels.items() if v == 0]
    if not background:
        raise DataError(f"{where}: no label has id 0 (background)")
    foreground = {n: v for n, v in sorted(labels.items(), key=lambda item: item[1]) if v != 0}
    if not foreground:
        raise DataError(f"{where}: no foreground labels, only background")
    return foreground


def case_name_of(image_file: Path) -> tuple[str, str]:
    """(case name, channel suffix or '') of an image file name."""
    suffix = image_suffix(image_file)
    stem = image_file.name[: -len(suffix)]
    match = re.search(r"_(\d{4})$", stem)
    if match:
        return stem[: match.start()], match.group(0)
    return stem, ""


def discover_cases(root: Path, patient_regex: str | None = None) -> list[Case]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: missing (an nnU-Net raw folder has imagesTr/ and labelsTr/)")
    labels_by_case: dict[str, Path] = {}
    for path in sorted(labels_dir.iterdir()):
        if image_suffix(path) and not path.name.startswith("."):
            labels_by_case[path.name[: -len(image_suffix(path))]] = path
    cases = []
    for path in sorted(images_dir.iterdir()):
        if not image_suffix(path) or path.name.startswith("."):
            continue
        name, channel = case_name_of(path)
        if channel and channel != CHANNEL_SUFFIX:
            raise DataError(f"{path}: channel {channel[1:]} found; LabelShare takes one image channel per case")
        label_path = labels_by_case.pop(name, None)
        if label_path is None:
            raise DataError(f"{path}: case '{name}' has no label file in {labels_dir}")
        cases.append(Case(name=name, image_path=path, label_path=label_path, patient=patient_of(name, patient_regex)))
    if labels_by_case:
        orphan = next(iter(labels_by_case.values()))
        raise DataError(f"{orphan}: label without an image in {images_dir}")
    if not cases:
        raise DataError(f"{images_dir}: no images ({', '.join(('.nii.gz', '.nii', '.nrrd', '.mha', '.png'))})")
    names = [case.name for case in cases]
    if len(names) != len(set(names)):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{images_dir}: case '{duplicate}' has several image files")
    return cases


def read_image(path: str | Path, what: str, is_label: bool = False) -> sitk.Image:
    """Read an image with SimpleITK; RGB(A) PNG images become grey (luminance), RGB labels must be grey.

    The file must be readable and hold all the pixel data its header describes
    (:func:`labelshare.core.imagedata.read_checked_image`, which reads a NIfTI file's data once): SimpleITK would fill a
    truncated NIfTI file with zeros."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: {what} is a folder, not an image file")
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        with open(path, "rb"):
            pass
        image = read_checked_image(path)
    except OSError as error:
        raise DataError(f"{path}: {what} cannot be read ({error.strerror or error})") from None
    except ImageDataProblem as problem:
        raise DataError(f"{path}: {what} {problem}") from None
    except RuntimeError as error:
        raise DataError(f"{path}: {what} cannot be read ({itk_error_reason(error)[:200]})") from None
    if image.GetNumberOfComponentsPerPixel() > 1:
        components = image.GetNumberOfComponentsPerPixel()
        if components not in (3, 4) or image.GetDimension() != 2:
            raise DataError(f"{path}: {what} has {components} components per pixel; a scalar image is needed")
        rgb = sitk.GetArrayFromImage(image)[..., :3].astype(np.float32)
        if is_label:
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise DataError(f"{path}: {what} is a colour image; labels must be grey values 0..K")
            grey = rgb[..., 0]
        else:
            grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        scalar = sitk.GetImageFromArray(grey.astype(np.uint8 if is_label else np.float32))
        scalar.CopyInformation(image)
        image = scalar
    if image.GetDimension() not in (2, 3):
        raise DataError(f"{path}: {what} has {image.GetDimension()} dimensions; 2D or 3D images are needed")
    if 0 in image.GetSize():
        raise DataError(f"{path}: {what} is empty (size {image.GetSize()})")
    return image


def check_same_geometry(image: sitk.Image, label: sitk.Image, what: str) -> None:
    if image.GetSize() != label.GetSize():
        raise DataError(f"{what}: image size {image.GetSize()} differs from label size {label.GetSize()}")
    for attribute in ("Spacing", "Origin", "Direction"):
        a = np.asarray(getattr(image, f"Get{attribute}")())
        b = np.asarray(getattr(label, f"Get{attribute}")())
        scale = max(1.0, float(np.abs(a).max(initial=0)))
        if not np.allclose(a, b, atol=GEOMETRY_TOLERANCE * scale):
            raise DataError(f"{what}: image and label {attribute.lower()} differ ({_plain(a)} vs {_plain(b)})")


def _plain(values: np.ndarray) -> tuple[float, ...]:
    """Numbers as Python floats (printed 1.3671875, not np.float64(1.3671875)), float32 noise rounded off."""
    return tuple(round(float(v), 7) for v in values)


def image_to_array(image: sitk.Image, path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "c":
        raise DataError(f"{path}: complex pixel type is not an image LabelShare can read")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: image contains NaN or infinite values")
    return array


def label_to_array(label: sitk.Image, path: Path, allowed_ids: set[int], what: str) -> np.ndarray:
    array = sitk.GetArrayFromImage(label)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: {what}: label image has non-integer values")
    values = np.unique(array)
    unknown = sorted(int(v) for v in values if int(v) != 0 and int(v) not in allowed_ids)
    if unknown or (values.size and values.min() < 0):
        bad = unknown or [int(values.min())]
        raise DataError(f"{path}: {what}: label values {bad[:10]} are not labels of dataset.json "
                        f"(allowed: 0, {', '.join(map(str, sorted(allowed_ids)))})")
    return array.astype(np.uint16 if max(allowed_ids, default=0) > 255 else np.uint8, copy=False)


def split_by_patient(cases: Sequence[Case], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic patient-wise split: (training case names, validation case names).

    Patients are shuffled with ``seed`` and taken for validation until the fraction of cases is reached; at least
    one patient stays on each side when there are two or more.
    """
    patients = sorted({case.patient for case in cases})
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    wanted = validation_fraction * len(cases)
    validation_patients: set[str] = set()
    count = 0
    for patient in order:
        if len(validation_patients) >= len(patients) - 1 or count >= wanted:
            break
        validation_patients.add(patient)
        count += sum(case.patient == patient for case in cases)
    if validation_fraction <= 0:
        validation_patients = set()
    train = [case.name for case in cases if case.patient not in validation_patients]
    validation = [case.name for case in cases if case.patient in validation_patients]
    return train, validation


Split = dict[str, dict[str, list[str]]]  # task -> "train" / "validation" -> case names (a model folder's split.json)


def read_split(split_file: Path, task_names: Sequence[str]) -> Split:
    """A split file (``split.json`` of a model folder or of a run, or one written by hand: ``{"tasks": {task:
    {"train": [...], "validation": [...]}}}``) for the tasks of a run: every task in it, no case on both sides. Its
    case names are checked against the task folders by :func:`check_split_cases`."""
    recorded = read_json(split_file, "split")
    split = recorded.get("tasks") if isinstance(recorded, dict) else None
    if not isinstance(split, dict) or not all(_is_split_of_one_task(sides) for sides in split.values()):
        problem = "not a split (expected tasks -> train/validation -> lists of case names)"
    elif set(split) != set(task_names):
        problem = f"it has tasks {sorted(split)}, not {sorted(task_names)}"
    else:
        problem = next((f"task '{name}' has case '{case}' on both sides" for name, sides in split.items()
                        for case in sorted(set(sides["train"]) & set(sides["validation"]))), None)
    if problem:
        raise LabelShareError(f"{split_file}: {problem}")
    return split


def _is_split_of_one_task(sides) -> bool:
    return isinstance(sides, dict) and set(sides) == {"train", "validation"} and all(
        isinstance(cases, list) and all(isinstance(case, str) for case in cases) for cases in sides.values())


def check_split_cases(split: Split, tasks: dict[str, TaskDataset], hint: str = "") -> None:
    """Every case of the split is a case of its task's folder (``hint`` ends the error: what to do)."""
    for name, sides in split.items():
        known = {case.name for case in tasks[name].cases}
        unknown = [case for cases in sides.values() for case in cases if case not in known]
        if unknown:
            raise LabelShareError(f"{tasks[name].root}: task '{name}' has no case '{unknown[0]}' of the split{hint}")


def open_tasks(task_arguments: Sequence[tuple[str, Path]]) -> dict[str, TaskDataset]:
    """The tasks of ``--task NAME=DIR`` arguments, opened and checked (a name given twice is refused)."""
    tasks = {}
    for name, folder in task_arguments:
        if name in tasks:
            raise LabelShareError(f"task '{name}' is given twice")
        tasks[name] = TaskDataset.open(folder, name)
    return tasks
