"""Errors the engine raises for bad input.

Every error a user can cause (a bad file, an unknown task, a tampered model) is a :class:`LabelShareError`
whose message names the file or object and the problem in one line. The command line prints that line
without a traceback; anything else is a bug and keeps its traceback.
"""


class LabelShareError(Exception):
    """Base class of all user-facing errors."""


class DataError(LabelShareError):
    """A task dataset, case or image is missing, unreadable or inconsistent."""


class LabelSpaceError(LabelShareError):
    """A label space cannot be built or read (constraint violated, bad group, bad file)."""


class ModelError(LabelShareError):
    """A model folder is missing files, mismatched or tampered with."""


class UnknownTaskError(LabelShareError):
    """A task name is not part of the model or label space."""

    def __init__(self, task: str, known: "list[str] | tuple[str, ...]"):
        self.task = task
        self.known = list(known)
        super().__init__(f"unknown task '{task}'; known tasks: {', '.join(sorted(self.known)) or '(none)'}")


class Interrupted(LabelShareError):
    """The command was stopped by SIGINT or SIGTERM (the command line exits with status 75)."""


class TrainingInterrupted(Interrupted):
    """Training stopped on SIGINT/SIGTERM after saving a resumable checkpoint."""


def os_error_message(error: OSError) -> str:
    """A file-system error (disk full, read-only, no permission, ...) as one line naming the file."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{error.filename}: {reason}" if error.filename else reason
