"""Atomic writes and hashing.

Nothing LabelShare writes may be seen half-written: files are written to a temporary name in the same folder
and renamed over the target (``os.replace`` is atomic on POSIX and Windows), folders are built under a staging
name and renamed into place once complete, and an existing model version or collected case is never replaced.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import SimpleITK as sitk

from .errors import LabelShareError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".png")
_UMASK = os.umask(0)
os.umask(_UMASK)


def image_suffix(path: str | os.PathLike) -> str:
    """The image file ending of a path (``.nii.gz`` counts as one), or '' when it is not an image format we read."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


@contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``, on failure remove it.

    The temporary name keeps the target's file ending so that writers that pick the format from the name
    (SimpleITK) still work.
    """
    target = Path(target)
    if not overwrite and target.exists():
        raise LabelShareError(f"{target}: already exists and is never overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(target) or target.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions a plain open() would
    try:
        yield tmp
        if not overwrite and target.exists():
            raise LabelShareError(f"{target}: appeared while writing and is never overwritten")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    with atomic_path(target, overwrite) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())


def atomic_write_text(target: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(target, text.encode("utf-8"), overwrite)


def atomic_write_json(target: str | os.PathLike, data: Any, overwrite: bool = True) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n", overwrite)


def write_image_atomic(image: sitk.Image, target: str | os.PathLike, overwrite: bool = True,
                       compress: bool = True) -> None:
    with atomic_path(target, overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[LabelShareError] = LabelShareError) -> Any:
    """Parsed JSON; a missing or malformed file raises ``error`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as reason:
        raise error(f"{path}: {what} is not valid JSON ({reason})") from None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename a completed staging folder to ``target``; never replaces an existing folder."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        raise LabelShareError(f"{target}: already exists; model versions are never overwritten, choose a new --out")
    os.rename(staging, target)
    return target


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def now_iso() -> str:
    """The current UTC time to the second, ISO 8601 (the time stamps of model folders, runs and cases)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
