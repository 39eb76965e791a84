"""Helpers of the robustness tests (issue #11): a small file system that fills up, the one-line error check, and
truncated or tampered files."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from labelshare.cli import main
from labelshare.core.labelspace import LabelSpace
from labelshare.core.plans import PlanSettings
from labelshare.core.tasks import TaskDataset
from labelshare.engine.statistics import compute_statistics

FIXED_SIZE = 32  # the robustness runs resize every slice to 32 x 32 (--fixed-size): the quickest plans there are


def fixed_size_space(tasks: dict[str, Path], names: list[str] | None = None, size: int = FIXED_SIZE) -> LabelSpace:
    """The label space of ``names`` (default: every task) with fixed-size plans (``labelspace build --fixed-size``):
    what the first release's ``--image-size`` was for these tests, a quick run."""
    settings = PlanSettings(fixed_size=size)
    return LabelSpace.build([compute_statistics(TaskDataset.open(tasks[name], name), plan_settings=settings)
                             for name in (names or list(tasks))], plan_settings=settings)


@contextmanager
def small_file_system(folder: Path, size: str = "1m") -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size`` (mounting needs root); skips the test where none can be mounted (the
    tests that patch the writers cover the same checks everywhere)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root and mount")
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    with open(folder / "filler", "wb") as stream:
        stream.write(b"\0" * max(0, free - leave))


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def cut(path: Path, keep: float | int) -> Path:
    """Cut a file to ``keep`` bytes (an int) or to that fraction of its length (a float)."""
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return path


def cli_error(argv: list[str], capsys) -> str:
    """Run the command line; assert exit status 1 with one line ``labelshare: error: ...`` and no traceback, and
    return that line."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out, captured.err
    lines = captured.err.strip().splitlines()
    assert status == 1, (status, captured.err)
    assert lines and lines[-1].startswith("labelshare: error: "), captured.err
    assert sum("error" in line.lower() for line in lines) == 1, captured.err
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its contents (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))
