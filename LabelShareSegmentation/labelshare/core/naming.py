"""Names that come from users and files: one rule for names that become path components, one for comparing labels.

Task names, case names and model version names end up as folder and file names; a name read from a file
(``labelspace.json``, a pending-operation marker, ``manifest.json``) must never lead outside the folder it belongs
to. :func:`check_name` is that rule, :func:`check_relative_file` applies it to every part of a relative path.
Segment and label names are compared by :func:`normalise_name` (case, spaces, ``_`` and ``-`` ignored).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from .errors import DataError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAME_SEPARATORS = re.compile(r"[\s_\-]+")
MAX_NAME_LENGTH = 200


def check_name(name: str, what: str = "name", context: str = "") -> str:
    """``name`` without surrounding blanks; DataError unless it is letters, digits, '_', '.' and '-' (not first),
    so that it is one harmless path component ('..', '/', '\\\\', a leading '.' and control characters are out)."""
    text = str(name).strip()
    if not _NAME.fullmatch(text) or len(text) > MAX_NAME_LENGTH:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise DataError(f"{what} '{shown}'{context}: use letters, digits, '_', '.' and '-' (not first), at most "
                        f"{MAX_NAME_LENGTH} characters")
    return text


def check_task_name(name: str, context: str = "") -> str:
    return check_name(name, "task name", context)


def check_relative_file(path: str, what: str = "file name") -> str:
    """A relative POSIX path whose every part passes :func:`check_name` (no absolute paths, no '..')."""
    parts = PurePosixPath(str(path)).parts
    if not parts or str(path).startswith(("/", "\\")) or "\\" in str(path):
        raise DataError(f"{what} '{path}': not a relative path inside its folder")
    for part in parts:
        check_name(part, what, f" (in '{path}')")
    return str(path)


def normalise_name(name: str) -> str:
    """The form in which segment and label names are compared: case-folded, spaces/'_'/'-' as one space."""
    return _NAME_SEPARATORS.sub(" ", name.strip()).casefold()
