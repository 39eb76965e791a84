"""The folder ``labelshare demo`` writes (its generated data, ``labelspace.json``, the model, segmentations, overlays
and ``report.md``): which folder a demo may be written to, or continued in with ``--resume``. Checked before
anything heavy is imported (:func:`labelshare.engine.demo.run_demo` checks it again).
"""

from __future__ import annotations

from pathlib import Path

from .errors import LabelShareError


def check_demo_folder(out: Path, resume: bool) -> None:
    """A new or empty folder; with ``resume``, also one that holds a stopped demo (its label space or data)."""
    if out.exists() and not out.is_dir():
        raise LabelShareError(f"{out}: a file, not a folder; choose a new --out")
    if out.exists() and any(out.iterdir()) and not resume:
        raise LabelShareError(f"{out}: already exists and is not an empty folder; choose a new --out, or add --resume "
                              "to continue a stopped demo there")
    if resume and out.is_dir() and any(out.iterdir()) and not (out / "labelspace.json").is_file() \
            and not (out / "data").is_dir():
        raise LabelShareError(f"{out}: holds no demo to continue (no labelspace.json, no data); choose a new --out")
