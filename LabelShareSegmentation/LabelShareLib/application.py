"""What LabelShareLib takes from the running Slicer application, when there is one.

Inside Slicer, ``slicer.app`` exists; in ``PythonSlicer``, scripts and tests (slicer-core) it does not. Two things
depend on it: the Python that runs engine child processes (Slicer's ``PythonSlicer`` launcher, which Slicer puts
on PATH: Slicer's own ``sys.executable`` is the application, which would open a second Slicer) and the folder for
temporary files (Slicer's temporary folder, set in its application settings, as ``slicer.util.tempDirectory``
uses; elsewhere the system's).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from labelshare.core.errors import LabelShareError


def slicer_application():
    """``slicer.app`` inside the Slicer application, else None."""
    import slicer
    return getattr(slicer, "app", None)


def python_executable() -> str:
    """The Python that runs engine child processes: Slicer's ``PythonSlicer`` launcher (it sets up Slicer's
    environment) when it is on PATH; outside Slicer, else, the current interpreter. Inside Slicer without the
    launcher: an error naming it."""
    launcher = shutil.which("PythonSlicer")
    if launcher:
        return launcher
    if slicer_application() is not None:
        raise LabelShareError("PythonSlicer was not found on PATH, so LabelShare cannot start its background "
                              "process; start Slicer with its launcher (Slicer, Slicer.exe or Slicer.app), which "
                              "puts PythonSlicer on PATH")
    return sys.executable


def temporary_root() -> str | None:
    """The folder LabelShare's temporary files go into (``dir`` of ``tempfile`` calls): Slicer's temporary folder
    inside Slicer (created if needed), else None (the system's)."""
    application = slicer_application()
    if application is None:
        return None
    Path(application.temporaryPath).mkdir(parents=True, exist_ok=True)
    return application.temporaryPath
