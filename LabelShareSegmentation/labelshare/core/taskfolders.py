"""Writing task folders: collecting corrected cases into nnU-Net raw folders (the writer behind LabelShareTraining;
the reader is :mod:`labelshare.core.tasks`). Light (no torch).

A *collection* is an ordinary nnU-Net v2 raw task folder (see :mod:`labelshare.core.tasks`) that this module creates
and appends to. Everything it writes reads back through :class:`labelshare.core.tasks.TaskDataset` unchanged, so a
collected task trains like any other task. Its promises:

- **Atomic cases.** A case is written as image, then label (each under a hidden temporary name, then renamed), and
  ``dataset.json`` is updated last. An intent file (``.labelshare-pending.json``) is written before the first file
  and removed after ``dataset.json``; if the process dies in between, the next :meth:`TaskCollection.open` finds
  the intent and moves the half-added case to the trash, so the folder never holds an image without its label.
- **Nothing is overwritten silently.** Case files are written with ``overwrite=False``; the same image added twice
  (same content hash: pixels, size, pixel type and geometry to 1/1000 mm) raises :class:`DuplicateCaseError`,
  and the caller decides: keep both, or replace the old case (which moves it to the trash first).
- **Removing is moving.** A removed case goes to ``<task>/.trash/<time>-<case>/`` with its record, never deleted.
- **Never in place.** A task folder found elsewhere (a downloaded dataset, the folder a model was trained on) is
  extended by copying it into the workspace first (:func:`copy_task`, hard links where possible).
- **Records.** ``dataset.json`` keeps, under ``"labelshare": {"collection": {"cases": ...}}``, one record per case
  added here: content hashes, voxels per label, the labels that are missing (no voxels), where it came from and
  when. Cases that were in the folder before (a downloaded dataset) are listed too, with counts read from disk.

Which segment becomes which label, and how overlapping segments merge, is decided by the caller
(``LabelShareTrainingLib.matching``); this module stores the label array it is given.

>>> collection = create_task("workspace", "liver", ["liver", "tumour"])          # doctest: +SKIP
>>> collection.add_case(sitk_image, label_array, name="patient007", source="Slicer volume 'CT'")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import DataError, LabelShareError
from .fileio import (TEMPORARY_NAME, atomic_write_json, image_suffix, now_iso, publish_dir, read_json, remove_tree,
                     write_image_atomic)
from .naming import check_name, check_task_name, normalise_name
from .paths import staging_dir_for
from .tasks import (CHANNEL_SUFFIX, TaskDataset, check_same_geometry, discover_cases, label_to_array, parse_labels,
                    parse_options, read_image)

COLLECTION_FORMAT_VERSION = 1
TRASH_DIR = ".trash"
PENDING_FILE = ".labelshare-pending.json"
DEFAULT_FILE_ENDING = ".nii.gz"
# PNG holds only 2D 8/16-bit images; collected cases are Slicer volumes, so they are written in a volume format.
WRITABLE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
DUPLICATE_POLICIES = ("refuse", "keep", "replace")
GEOMETRY_DECIMALS = 3  # hashes ignore geometry differences below 1/1000 mm (NIfTI stores geometry as float32)


class DuplicateCaseError(DataError):
    """The image of a new case is already collected; ``existing`` names that case, ``same_label`` says whether its
    label is identical too."""

    def __init__(self, task: str, existing: str, same_label: bool):
        self.task = task
        self.existing = existing
        self.same_label = same_label
        labels = "the same label" if same_label else "a different label"
        super().__init__(f"task '{task}': this image is already collected as case '{existing}' (with {labels}); "
                         "keep both or replace the old case")


@dataclass
class CaseSummary:
    """One case of a collection as listed in the case table."""

    name: str
    patient: str
    label_voxels: dict[str, int]
    missing_labels: list[str]
    added: str = ""
    source: str = ""
    recorded: bool = True  # False: the case was in the folder before LabelShare collected into it


@dataclass
class TaskFolderSummary:
    """A task folder of the workspace; ``reason`` says why it cannot be used when ``valid`` is False."""

    name: str
    path: Path
    labels: dict[str, int] = field(default_factory=dict)
    cases: int = 0
    valid: bool = True
    reason: str = ""


# -- content hashes -------------------------------------------------------------------------------------------------
def image_fingerprint(image: sitk.Image) -> str:
    """sha256 of an image's pixels, size, pixel type and geometry (rounded to 1/1000 mm)."""
    def rounded(values: Sequence[float]) -> list[float]:
        return [round(float(v), GEOMETRY_DECIMALS) + 0.0 for v in values]  # + 0.0 turns -0.0 into 0.0

    header = {"size": list(image.GetSize()), "pixel": image.GetPixelIDTypeAsString(),
              "components": image.GetNumberOfComponentsPerPixel(), "spacing": rounded(image.GetSpacing()),
              "origin": rounded(image.GetOrigin()), "direction": rounded(image.GetDirection())}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return digest.hexdigest()


def label_fingerprint(label: np.ndarray, image: sitk.Image) -> str:
    """sha256 of a label array on an image's geometry (independent of the stored integer type)."""
    as_image = sitk.GetImageFromArray(np.ascontiguousarray(label, dtype=np.uint16))
    as_image.CopyInformation(image)
    return image_fingerprint(as_image)


# -- task folders ---------------------------------------------------------------------------------------------------
def check_label_definitions(labels: Sequence[str] | Mapping[str, int]) -> dict[str, int]:
    """Foreground labels as {name: id}: names from a list get ids 1, 2, ...; names must differ ignoring case."""
    if not isinstance(labels, Mapping):
        labels = {name: index for index, name in enumerate(labels, start=1)}
    checked: dict[str, int] = {}
    seen: dict[str, str] = {}
    for raw_name, label_id in labels.items():
        name = str(raw_name).strip()
        if not name:
            raise DataError("a label name is empty")
        if normalise_name(name) == "background":
            raise DataError("'background' is label 0 of every task; name the foreground labels only")
        if normalise_name(name) in seen:
            raise DataError(f"labels '{seen[normalise_name(name)]}' and '{name}' differ only in case or separators; "
                            "segments are matched to labels ignoring both")
        if isinstance(label_id, bool) or not isinstance(label_id, int) or not 1 <= label_id <= 65535:
            raise DataError(f"label '{name}': id {label_id!r} must be an integer in 1..65535")
        if label_id in checked.values():
            raise DataError(f"label '{name}': id {label_id} is already used by another label")
        seen[normalise_name(name)] = name
        checked[name] = label_id
    if not checked:
        raise DataError("a task needs at least one label")
    return dict(sorted(checked.items(), key=lambda item: item[1]))


def create_task(workspace: str | Path, name: str, labels: Sequence[str] | Mapping[str, int], description: str = "",
                file_ending: str = DEFAULT_FILE_ENDING, modality: str = "image") -> TaskCollection:
    """Create ``workspace/name`` with ``imagesTr/``, ``labelsTr/`` and ``dataset.json``; never replaces a folder.

    :param labels: label names (ids 1, 2, ... in this order) or {name: id}.
    """
    name = check_task_name(name)
    root = Path(workspace) / name
    definitions = check_label_definitions(labels)
    if file_ending not in WRITABLE_ENDINGS:
        raise DataError(f"file ending '{file_ending}': collected cases are written as {', '.join(WRITABLE_ENDINGS)}")
    if root.exists():
        raise DataError(f"{root}: already exists; choose another task name")
    staging = staging_dir_for(root)
    remove_tree(staging)  # left over from a creation that died half-way; it never held cases
    (staging / "imagesTr").mkdir(parents=True)
    (staging / "labelsTr").mkdir()
    atomic_write_json(staging / "dataset.json", {
        "name": name, "description": description or f"Cases collected with LabelShare for task '{name}'",
        "channel_names": {"0": modality}, "labels": {"background": 0, **definitions}, "numTraining": 0,
        "file_ending": file_ending, "license": "not stated (collected locally)",
        "labelshare": {"collection": {"format_version": COLLECTION_FORMAT_VERSION, "created": now_iso(), "cases": {}}}})
    publish_dir(staging, root)
    return TaskCollection.open(root, name)


# Cases that were in a folder before collecting started have no record in dataset.json, so their label counts and
# image hashes come from their files. Collected files are never changed in place (only added, or moved to the
# trash), so a file's path, size and modification time identify its content: each file is read once per session,
# not on every table refresh or duplicate check.
def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def label_voxels(label: np.ndarray, labels: Mapping[str, int]) -> dict[str, int]:
    """Voxels of every label (by name) in a label array."""
    counts = np.bincount(np.asarray(label).reshape(-1).astype(np.int64), minlength=max(labels.values()) + 1)
    return {name: int(counts[label_id]) for name, label_id in labels.items()}


@functools.lru_cache(maxsize=4096)
def _unrecorded_label_voxels(path: str, size: int, mtime_ns: int, labels: tuple[tuple[str, int], ...],
                             what: str) -> tuple[tuple[str, int], ...]:
    label = label_to_array(read_image(Path(path), what, True), Path(path), {i for _, i in labels}, what)
    return tuple(label_voxels(label, dict(labels)).items())


@functools.lru_cache(maxsize=4096)
def _unrecorded_image_fingerprint(path: str, size: int, mtime_ns: int, what: str) -> str:
    return image_fingerprint(read_image(Path(path), what))


def copy_task(source: str | Path, workspace: str | Path, name: str) -> TaskCollection:
    """Start ``workspace/name`` as a copy of the task folder ``source`` (its ``dataset.json`` and cases), so that
    new cases are collected beside the task's existing ones without ever writing into ``source``.

    Case files are hard-linked where the file system allows (no extra space; collecting never changes a file in
    place, it only adds files and moves them to the trash), and copied otherwise.
    """
    name = check_task_name(name)
    dataset = TaskDataset.open(source, name)
    root = Path(workspace) / name
    if root.exists():
        raise DataError(f"{root}: already exists; choose another task name")
    staging = staging_dir_for(root)
    remove_tree(staging)  # left over from a copy that died half-way; it never held collected cases
    for case in dataset.cases:
        for path in (case.image_path, case.label_path):
            target = staging / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(path, target)
    metadata = dict(dataset.metadata)
    metadata["numTraining"] = len(dataset.cases)
    metadata["labelshare"] = {**(metadata.get("labelshare") or {}), "copied_from": str(Path(source).resolve())}
    atomic_write_json(staging / "dataset.json", metadata)
    publish_dir(staging, root)
    return TaskCollection.open(root, name)


def list_task_folders(workspace: str | Path) -> list[TaskFolderSummary]:
    """Every task folder (a folder with ``dataset.json``) directly under ``workspace``, by name."""
    workspace = Path(workspace)
    if not workspace.is_dir():
        return []
    found = []
    for path in sorted(workspace.iterdir()):
        if not path.is_dir() or path.name.startswith(".") or not (path / "dataset.json").is_file():
            continue
        try:
            collection = TaskCollection.open(path)
            found.append(TaskFolderSummary(name=collection.name, path=path, labels=collection.labels,
                                           cases=len(collection.case_names())))
        except LabelShareError as error:
            found.append(TaskFolderSummary(name=path.name, path=path, valid=False, reason=str(error)))
    return found


@dataclass
class TaskCollection:
    """A task folder that cases are collected into. Open with :meth:`open` (which also finishes or undoes an
    operation that a crash interrupted)."""

    root: Path
    name: str
    metadata: dict

    @classmethod
    def open(cls, root: str | Path, name: str | None = None) -> TaskCollection:
        root = Path(root)
        if not (root / "dataset.json").is_file():
            raise DataError(f"{root}: not a task folder (no dataset.json)")
        collection = cls(root=root, name=name or root.name, metadata={})
        collection._reload()
        collection._recover()
        return collection

    # -- reading ----------------------------------------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, int]:
        return parse_labels(self.metadata, self.root / "dataset.json")

    @property
    def file_ending(self) -> str:
        return str(self.metadata.get("file_ending", DEFAULT_FILE_ENDING))

    @property
    def records(self) -> dict[str, dict]:
        return self._collection_block().get("cases", {})

    def case_names(self) -> list[str]:
        images = self.root / "imagesTr"
        if images.is_dir() and not any(image_suffix(p) and not p.name.startswith(".") for p in images.iterdir()):
            return []  # a new task: discover_cases refuses an empty folder, which is right for training only
        return [case.name for case in discover_cases(self.root, self._options().get("patient_regex"))]

    def cases(self) -> list[CaseSummary]:
        """Every case with its voxels per label (read from the label file for cases not added here)."""
        if not self.case_names():
            return []
        summaries = []
        for case in discover_cases(self.root, self._options().get("patient_regex")):
            record = self.records.get(case.name)
            if record is None:
                voxels = dict(_unrecorded_label_voxels(*_file_key(case.label_path), tuple(self.labels.items()),
                                                       f"label of case '{case.name}'"))
                summaries.append(CaseSummary(name=case.name, patient=case.patient, label_voxels=voxels,
                                             missing_labels=[n for n, v in voxels.items() if not v], recorded=False))
            else:
                summaries.append(CaseSummary(name=case.name, patient=case.patient,
                                             label_voxels=dict(record.get("label_voxels", {})),
                                             missing_labels=list(record.get("missing_labels", [])),
                                             added=record.get("added", ""), source=record.get("source", "")))
        return summaries

    def read_case(self, name: str) -> tuple[sitk.Image, sitk.Image]:
        """(image, label image) of a case, geometry checked, for opening it back in a viewer."""
        image_path, label_path = self._case_files(name)
        if not label_path.is_file():
            raise DataError(f"{self.root}: task '{self.name}' has no case '{name}'")
        image = read_image(image_path, f"image of case '{name}'")
        label = read_image(label_path, f"label of case '{name}'", is_label=True)
        check_same_geometry(image, label, f"case '{name}' of task '{self.name}'")
        return image, label

    def find_duplicate(self, image: sitk.Image) -> tuple[str, str] | None:
        """(case name, its label hash) of a case with the same image content, or None."""
        fingerprint = image_fingerprint(image)
        for case_name, record in self.records.items():
            if record.get("image_sha256") == fingerprint:
                return case_name, record.get("label_sha256", "")
        for case_name in self.case_names():  # cases that were in the folder before collecting started
            if case_name in self.records:
                continue
            image_path, label_path = self._case_files(case_name)
            if _unrecorded_image_fingerprint(*_file_key(image_path), f"image of case '{case_name}'") == fingerprint:
                existing = read_image(image_path, f"image of case '{case_name}'")
                label = sitk.GetArrayFromImage(read_image(label_path, f"label of case '{case_name}'", True))
                return case_name, label_fingerprint(label, existing)
        return None

    def free_case_name(self, base: str) -> str:
        """A case name from ``base`` (file-name safe) that no case and no file of this task uses yet."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._-") or "case"
        taken = set(self.case_names()) | set(self.records)
        candidate, number = stem, 1
        while candidate in taken or any(p.exists() for p in self._case_files(candidate)):
            number += 1
            candidate = f"{stem}_{number}"
        return candidate

    # -- writing ----------------------------------------------------------------------------------------------------
    def add_case(self, image: sitk.Image, label: np.ndarray, name: str | None = None, source: str = "",
                 duplicate: str = "refuse", details: Mapping | None = None) -> str:
        """Add one case; returns its name.

        :param image: the scalar image with its geometry (spacing, origin, direction).
        :param label: label ids of this task, shape of the image's array (K, J, I), on the image's geometry.
        :param name: wanted case name (made unique and file-name safe); default from ``source`` or "case".
        :param duplicate: when the image is already collected: ``refuse`` (raise :class:`DuplicateCaseError`),
            ``keep`` (add it as another case) or ``replace`` (move the old case to the trash, then add).
        :param details: extra facts to record (e.g. segments left out, overlapping voxels).
        """
        if duplicate not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicate must be one of {DUPLICATE_POLICIES}, not {duplicate!r}")
        self._reload()
        self._check_writable()
        label = self._checked_label(image, label)
        image_hash, label_hash = image_fingerprint(image), label_fingerprint(label, image)
        found = self.find_duplicate(image)
        if found is not None:
            existing, existing_label_hash = found
            if duplicate == "refuse":
                raise DuplicateCaseError(self.name, existing, existing_label_hash == label_hash)
            if duplicate == "replace":
                self.remove_case(existing, reason=f"replaced by a new version of the case on {now_iso()}")
                name = name or existing
        case_name = self.free_case_name(name or source or "case")
        voxels = label_voxels(label, self.labels)
        record = {"image_sha256": image_hash, "label_sha256": label_hash, "label_voxels": voxels,
                  "missing_labels": [n for n, v in voxels.items() if not v], "added": now_iso(), "source": source,
                  **dict(details or {})}
        image_path, label_path = self._case_files(case_name)
        self._write_pending({"operation": "add", "case": case_name})
        written: list[Path] = []
        try:
            write_image_atomic(image, image_path, overwrite=False)
            written.append(image_path)
            label_image = sitk.GetImageFromArray(label)
            label_image.CopyInformation(image)
            write_image_atomic(label_image, label_path, overwrite=False)
            written.append(label_path)
            self._save_records({**self.records, case_name: record})
        except BaseException:
            self._move_to_trash(case_name, "add interrupted by an error", written)
            (self.root / PENDING_FILE).unlink(missing_ok=True)
            raise
        (self.root / PENDING_FILE).unlink()
        return case_name

    def remove_case(self, name: str, reason: str = "removed by the user") -> Path:
        """Move a case's files and record to ``.trash/``; returns the trash folder."""
        self._reload()
        if name not in self.case_names():
            raise DataError(f"{self.root}: task '{self.name}' has no case '{name}'")
        self._write_pending({"operation": "remove", "case": name})
        trash = self._move_to_trash(name, reason)
        records = {k: v for k, v in self.records.items() if k != name}
        self._save_records(records)
        (self.root / PENDING_FILE).unlink()
        return trash

    # -- internals --------------------------------------------------------------------------------------------------
    def _reload(self) -> None:
        metadata = read_json(self.root / "dataset.json", "dataset.json", DataError)
        if not isinstance(metadata, dict):
            raise DataError(f"{self.root / 'dataset.json'}: expected a JSON object")
        self.metadata = metadata
        parse_labels(metadata, self.root / "dataset.json")
        parse_options(metadata, self.root / "dataset.json")

    def _options(self) -> dict:
        return parse_options(self.metadata, self.root / "dataset.json")

    def _collection_block(self) -> dict:
        return self._options().get("collection", {}) or {}

    def _case_files(self, name: str) -> tuple[Path, Path]:
        check_name(name, "case name", f" of task '{self.name}'")  # names from files and callers stay in the task
        ending = self.file_ending
        return (self.root / "imagesTr" / f"{name}{CHANNEL_SUFFIX}{ending}", self.root / "labelsTr" / f"{name}{ending}")

    def _check_writable(self) -> None:
        if self.file_ending not in WRITABLE_ENDINGS:
            raise DataError(f"{self.root / 'dataset.json'}: task '{self.name}' stores '{self.file_ending}' files; "
                            f"collected volumes are written as {', '.join(WRITABLE_ENDINGS)}: create a new task")
        for folder in ("imagesTr", "labelsTr"):
            (self.root / folder).mkdir(exist_ok=True)

    def _checked_label(self, image: sitk.Image, label: np.ndarray) -> np.ndarray:
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"task '{self.name}': the image has {image.GetNumberOfComponentsPerPixel()} components "
                            "per pixel; a scalar volume is needed")
        if image.GetDimension() not in (2, 3) or 0 in image.GetSize():
            raise DataError(f"task '{self.name}': the image has size {image.GetSize()}; a non-empty 2D or 3D image "
                            "is needed")
        pixels = sitk.GetArrayViewFromImage(image)
        if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
            raise DataError(f"task '{self.name}': the image contains NaN or infinite values")
        label = np.asarray(label)
        if label.shape != pixels.shape:
            raise DataError(f"task '{self.name}': label shape {label.shape} differs from the image's {pixels.shape}")
        allowed = set(self.labels.values()) | {0}
        unknown = sorted(int(v) for v in np.unique(label) if int(v) not in allowed)
        if unknown:
            raise DataError(f"task '{self.name}': label values {unknown[:10]} are not labels of "
                            f"{self.root / 'dataset.json'}")
        return label.astype(np.uint16 if max(allowed) > 255 else np.uint8)

    def _save_records(self, records: dict[str, dict]) -> None:
        """Write dataset.json with the new case records; the last step of every change."""
        metadata = json.loads(json.dumps(self.metadata))
        options = metadata.setdefault("labelshare", {}) or {}
        metadata["labelshare"] = options
        block = options.setdefault("collection", {"format_version": COLLECTION_FORMAT_VERSION, "created": now_iso()})
        block["cases"] = records
        metadata["numTraining"] = len(self.case_names())
        atomic_write_json(self.root / "dataset.json", metadata)
        self.metadata = metadata

    def _write_pending(self, intent: dict) -> None:
        atomic_write_json(self.root / PENDING_FILE, {**intent, "started": now_iso(), "pid": os.getpid()})

    def _move_to_trash(self, name: str, reason: str, only: Sequence[Path] | None = None) -> Path:
        """Move the case's files (only those in ``only`` when given) and leftovers of unfinished writes to a new
        trash folder with the case's record."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        trash = self.root / TRASH_DIR / f"{stamp}-{name}"
        moved = []
        for path in self._case_files(name):
            leftovers = sorted(path.parent.glob(f".{path.name}.*"))  # temporary files of fileio.atomic_path
            owned = path.exists() and (only is None or path in only)
            for source in ([path] if owned else []) + leftovers:
                destination = trash / path.parent.name / source.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, destination)
                moved.append(f"{path.parent.name}/{source.name}")
        trash.mkdir(parents=True, exist_ok=True)
        atomic_write_json(trash / "case.json", {"task": self.name, "case": name, "reason": reason, "moved": moved,
                                                 "removed": now_iso(), "record": self.records.get(name)})
        return trash

    def _recover(self) -> None:
        """Finish or undo the operation that a crash interrupted (see the module docstring). A task folder has one
        writer at a time, so temporary files of ``dataset.json`` or of the intent file found here were left by a
        crash: they are removed (those of case files go to the trash with their case)."""
        for leftover in self.root.glob(".*"):
            if TEMPORARY_NAME.match(leftover.name) and leftover.is_file():
                leftover.unlink()
        pending_file = self.root / PENDING_FILE
        if not pending_file.is_file():
            return
        try:
            intent = read_json(pending_file, "pending-operation file")
            name, operation = str(intent["case"]), intent["operation"]
        except (LabelShareError, KeyError, TypeError):
            pending_file.unlink()  # written atomically, so unreadable means it was never completed: nothing began
            return
        try:
            check_name(name, "case name")
        except DataError as error:  # never written by LabelShare: act on nothing it names
            raise DataError(f"{pending_file}: {error}; remove this file after checking the task folder") from None
        if operation == "add" and name in self.records:
            pending_file.unlink()  # dataset.json was written: the add completed
            return
        reason = "add interrupted (found on open)" if operation == "add" else "removal finished after an interruption"
        self._move_to_trash(name, reason)
        self._save_records({k: v for k, v in self.records.items() if k != name})
        pending_file.unlink()
