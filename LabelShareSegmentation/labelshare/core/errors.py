"""Errors the engine raises for bad input, and how a command stops on a signal.

Every error a user can cause (a bad file, an unknown task, a tampered model) is a :class:`LabelShareError`
whose message names the file or object and the problem in one line. The command line prints that line
without a traceback; anything else is a bug and keeps its traceback.

A stop requested by SIGINT or SIGTERM is :class:`Interrupted`, which is not an error of the input: like
:class:`KeyboardInterrupt` it derives from :class:`BaseException`, so that code which records an image's failure and
goes on to the next (``except Exception``) lets it through and the whole command stops.
"""

import os
import signal
import sys

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal; the command can be repeated to continue


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


class Interrupted(BaseException):
    """The command was stopped by SIGINT or SIGTERM (the command line exits with status 75)."""


class TrainingInterrupted(Interrupted):
    """Training stopped on SIGINT/SIGTERM after saving a resumable checkpoint."""


def os_error_message(error: OSError) -> str:
    """A file-system error (disk full, read-only, no permission, ...) as one line naming the file."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{error.filename}: {reason}" if error.filename else reason


def stop_at_once(number: int, frame=None) -> None:
    """Signal handler for a second SIGINT/SIGTERM while a command is already stopping: end the process now with
    :data:`EXIT_INTERRUPTED`. Whatever a write had under a temporary name stays hidden (``--continue``,
    ``--overwrite`` and ``--resume`` remove it); nothing half-written is ever under a final name."""
    try:
        print(f"labelshare: stopped: {signal.Signals(number).name} again; ending at once", file=sys.stderr, flush=True)
    finally:
        os._exit(EXIT_INTERRUPTED)


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, or torch's CUDA out-of-memory error when torch is loaded (light commands never load it)."""
    torch = sys.modules.get("torch")
    return isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.cuda.OutOfMemoryError))
