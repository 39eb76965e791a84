"""``python -m labelshare`` (used by the Slicer modules as ``PythonSlicer -m labelshare``)."""

from .cli import run

run()
