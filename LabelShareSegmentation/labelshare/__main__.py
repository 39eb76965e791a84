"""``python -m labelshare`` (used by the Slicer modules as ``PythonSlicer -m labelshare``)."""

import sys

from .cli import main

sys.exit(main())
