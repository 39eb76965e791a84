"""Atomic, verified writes; reading JSON with named errors; hashing; publishing and holding folders.

Nothing LabelShare writes may be seen half-written, and nothing may claim to be written that is not: a file is
written to a temporary name in the same folder, flushed to disk, checked (the bytes read back, an image's data
length and pixels, a weights file loaded back) and only then renamed over the target (``os.replace`` is atomic on
POSIX and Windows). A failed, short or unverified write raises :class:`~labelshare.core.errors.LabelShareError` naming
the target, removes the temporary file and leaves an existing target as it was. Folders are built under a staging
name and renamed into place once complete, and an existing model version or collected case is never replaced.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import DataError, LabelShareError
from .imagedata import ImageDataProblem, format_bytes, read_checked_image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".png")
MAX_JSON_BYTES = 256 * 1024 * 1024  # far above any dataset.json, label space or record LabelShare writes
# the temporary files of atomic_path: ".<target name>.<8 random characters>.tmp<target ending>"
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp[^/]*$")
_UMASK = os.umask(0)
os.umask(_UMASK)


def image_suffix(path: str | os.PathLike) -> str:
    """The image file ending of a path (``.nii.gz`` counts as one), or '' when it is not an image format we read."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def not_written(target: str | os.PathLike, reason: str) -> LabelShareError:
    return LabelShareError(f"{target}: not written: {reason}")


def check_output_file(path: str | os.PathLike, overwrite: bool) -> Path:
    """The one rule for a command's output file: a folder is never replaced, an existing file only with
    ``--overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise LabelShareError(f"{path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise LabelShareError(f"{path}: already exists (pass --overwrite to replace it)")
    return path


@contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = True,
                verify: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` for a writer to fill; then flush it to disk, check it and rename it
    to ``target``. On any failure the temporary file is removed and ``target`` stays as it was.

    ``verify(path)`` returns what is wrong with the written file (a phrase), or None when it holds what was meant
    to be written. The temporary name keeps the target's ending, so that writers that pick the format from the name
    (SimpleITK) still work. File-system errors (disk full, read-only, no permission) raise LabelShareError naming
    ``target``; so does anything ``verify`` finds.
    """
    target = Path(target)
    if target.is_dir():
        raise not_written(target, "it is a folder")
    if not overwrite and target.exists():
        raise LabelShareError(f"{target}: already exists and is never overwritten")
    suffix = image_suffix(target) or target.suffix
    try:
        new_folders = make_folders(target.parent)
    except LabelShareError as error:
        raise not_written(target, str(error)) from None
    written = False
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
        os.close(fd)
    except OSError as error:
        _remove_empty(new_folders)
        raise not_written(target, error.strerror or str(error)) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        _flush_to_disk(tmp)
        problem = verify(tmp) if verify is not None else None
        if problem:
            raise not_written(target, problem)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp (and some writers) create 0600; give what a plain open() gives
        if not overwrite and target.exists():
            raise LabelShareError(f"{target}: appeared while writing and is never overwritten")
        os.replace(tmp, target)
        written = True
        _flush_folder(target.parent)
    except OSError as error:
        raise not_written(target, error.strerror or str(error)) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder became unwritable; the temporary name stays hidden and is never renamed into place
        if not written:
            _remove_empty(new_folders)


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created (innermost first). LabelShareError
    names the folder and why it cannot be made (a file where a folder should be, a read-only disk, ...)."""
    folder = Path(folder)
    missing = [f for f in [folder, *folder.parents] if not f.exists()]
    blocking = next((f for f in [folder, *folder.parents] if f.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise LabelShareError(f"{blocking}: a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_empty(missing)
        raise LabelShareError(f"{folder}: cannot be created ({error.strerror or error})") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write created for its target (innermost first), so that it leaves nothing."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _flush_to_disk(path: Path) -> None:
    with open(path, "r+b") as stream:
        os.fsync(stream.fileno())


def _flush_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (POSIX; folders cannot be opened this way on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders; the rename itself is still atomic
    finally:
        os.close(fd)


def atomic_write_files(files: Mapping[str | os.PathLike, bytes], overwrite: bool = True) -> None:
    """Write files that belong together (an evaluation's table and report): every one is written and checked
    before the first is renamed into place, so a full disk leaves none of them."""
    with ExitStack() as stack:
        for target, data in files.items():
            tmp = stack.enter_context(atomic_path(target, overwrite, partial(_content_problem, data=data)))
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0))
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked (a full disk, a signal): write the rest
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)


def _content_problem(path: Path, data: bytes) -> str | None:
    held = path.read_bytes()
    if held == data:
        return None
    return (f"the file holds {format_bytes(len(held))} of {format_bytes(len(data))}" if len(held) != len(data)
            else "the file differs from what was written")


def atomic_write_bytes(target: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    atomic_write_files({target: data}, overwrite)


def atomic_write_text(target: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(target, text.encode("utf-8"), overwrite)


def atomic_write_json(target: str | os.PathLike, data: Any, overwrite: bool = True) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n", overwrite)


def itk_error_reason(error: RuntimeError) -> str:
    """The informative part of a SimpleITK exception (without the source locations and object addresses)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [re.sub(r"^(ITK ERROR: )?\w+\(0x[0-9a-fA-F]+\):\s*", "", line) for line in lines
            if not line.startswith("Exception thrown in SimpleITK") and not re.match(r"^\S+\.(h|hxx|cxx):\d+", line)]
    return " ".join(kept)[:300] or "unknown SimpleITK error"


def png_plane_axis(size: Sequence[int]) -> int | None:
    """Where the one 2D slice of an image of ``size`` lies for a PNG file: -1 for a 2D image, the (last) size-1 axis
    of a single-slice 3D image, None when the image has several slices (a volume no PNG file holds)."""
    if len(size) == 2:
        return -1
    single = [axis for axis, n in enumerate(size) if n == 1]
    return single[-1] if single else None


def check_image_fits_format(image: sitk.Image | Sequence[int], target: str | os.PathLike) -> None:
    """The one rule for what an image file can hold (an image or its size): a PNG file holds one 2D slice, so a
    volume of several slices is refused (ITK's PNG writer would write its first slice and report success). A
    single-slice 3D image fits: :func:`write_image_atomic` writes that slice."""
    size = tuple(image.GetSize()) if isinstance(image, sitk.Image) else tuple(image)
    if image_suffix(target) == ".png" and png_plane_axis(size) is None:
        raise DataError(f"{target}: a PNG file holds one 2D slice, not a volume of {size[2]} slices "
                        f"({'x'.join(map(str, size))}); write .nii.gz, .nii, .nrrd or .mha")


def _as_png_slice(image: sitk.Image) -> sitk.Image:
    """A single-slice 3D image as the 2D slice a PNG file holds (any axis of size 1; a 2D image as it is)."""
    if image.GetDimension() == 2:
        return image
    size = list(image.GetSize())
    size[png_plane_axis(size)] = 0  # Extract drops a size-0 axis
    return sitk.Extract(image, size, [0] * len(size))


def write_image_atomic(image: sitk.Image, target: str | os.PathLike, overwrite: bool = True,
                       compress: bool = True) -> None:
    """Write an image atomically; before it replaces anything the file must hold all its pixel data
    (:func:`labelshare.core.imagedata.read_checked_image`) and read back as the same pixels (SimpleITK's NIfTI writer
    reports a full disk only on stderr and leaves a short file)."""
    check_image_fits_format(image, target)
    if image_suffix(target) == ".png":
        image = _as_png_slice(image)
    with atomic_path(target, overwrite, lambda path: read_back_problem(path, image)) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as error:
            raise not_written(target, itk_error_reason(error)) from None


def read_back_problem(path: Path, image: sitk.Image) -> str | None:
    """What is wrong with an image file just written from ``image`` (None: it holds all its pixel data and reads back
    with the same size and pixels)."""
    try:
        written = read_checked_image(path)
    except ImageDataProblem as problem:
        return f"the written file {problem}"
    except RuntimeError as error:
        return f"the written file cannot be read back ({itk_error_reason(error)})"
    if written.GetSize() != image.GetSize():
        return f"the written file reads back with size {written.GetSize()}, not {image.GetSize()}"
    expected = sitk.GetArrayViewFromImage(image)
    if not np.array_equal(sitk.GetArrayViewFromImage(written), expected, equal_nan=expected.dtype.kind in "fc"):
        return "the written file reads back with other pixel values (an incomplete write)"
    return None


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[LabelShareError] = LabelShareError) -> Any:
    """Parsed JSON; a missing, unreadable, oversized or malformed file raises ``error`` naming the file."""
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{path}: {what} is a folder, not a file")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"{path}: {what} is larger than {format_bytes(MAX_JSON_BYTES)}; not a LabelShare file")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as reason:
        raise error(f"{path}: {what} cannot be read ({reason.strerror or reason})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as reason:
        raise error(f"{path}: {what} is not valid JSON ({reason})") from None
    except RecursionError:
        raise error(f"{path}: {what} is nested too deeply to be a LabelShare file") from None


def read_format_json(path: str | os.PathLike, what: str, file_format: str, version: int,
                     error: type[LabelShareError] = LabelShareError) -> dict:
    """A LabelShare JSON file of ``file_format`` (its ``format`` field) at ``version`` (``format_version``), parsed
    as :func:`read_json` does; another file, or another version of the format, raises ``error`` naming the file."""
    path = Path(path)
    data = read_json(path, what, error)
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise error(f"{path}: not LabelShare {what}")
    if data.get("format_version") != version:
        raise error(f"{path}: {what} format version {data.get('format_version')} is not supported (this LabelShare "
                    f"reads version {version})")
    return data


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_temporary_files(folder: str | os.PathLike) -> None:
    """Remove what interrupted atomic writes left in a folder tree (their hidden temporary files)."""
    for path in Path(folder).rglob(".*"):
        if TEMPORARY_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()


def remove_temporary_files_of(targets: Iterable[str | os.PathLike]) -> None:
    """Remove the temporary files that interrupted atomic writes of these targets left beside them (a kill leaves
    ``.<name>.<8 characters>.tmp<ending>``), and nothing else of their folders."""
    for target in map(Path, targets):
        own = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.tmp[^/]*")
        for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp*"):
            if own.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                path.unlink()


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename a completed staging folder to ``target`` (after removing the temporary files of writes a kill
    interrupted in it); never replaces an existing folder."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        raise LabelShareError(f"{target}: already exists; model versions are never overwritten, choose a new --out")
    remove_temporary_files(staging)
    try:
        os.rename(staging, target)
    except OSError as error:
        raise LabelShareError(f"{target}: cannot be created ({error.strerror or error})") from None
    _flush_folder(target.parent)
    return target


@contextmanager
def hold_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder`` for this process while the block runs: another process asking for it meanwhile gets
    LabelShareError at once, so that two runs never work in one staging folder. The hold is an advisory lock
    (flock) on the folder itself, which ends with the process: a run killed with SIGKILL leaves nothing that blocks
    the next one. Platforms without flock (Windows) do not hold folders."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(folder)
    busy = LabelShareError(f"{folder}: another LabelShare run is working in this folder; wait until it ends (or "
                           "stop it), then repeat the command")
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(folder))
        except FileNotFoundError:
            same = False
        if not same:  # the run that held it renamed it (published its model) between our open and our lock
            raise busy
        yield
    finally:
        os.close(fd)


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def empty_folder(folder: str | os.PathLike) -> None:
    """Remove everything in ``folder`` (what an interrupted run left in its staging folder), keeping the folder."""
    for leftover in list(Path(folder).iterdir()):
        if leftover.is_dir() and not leftover.is_symlink():
            remove_tree(leftover)
        else:
            leftover.unlink()


def now_iso() -> str:
    """The current UTC time to the second, ISO 8601 (the time stamps of model folders, runs and cases)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
