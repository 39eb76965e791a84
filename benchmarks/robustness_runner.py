"""Running one probe of the robustness campaign in a ``labelshare`` process of its own and classifying how it ended
(:data:`OUTCOMES`): its status and last line, what it left behind, whether it changed what it must not."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path


from labelshare.core.fileio import TEMPORARY_NAME
from labelshare.core.progress import parse_event

from .robustness_fixtures import ENV, digest, Fixtures
from .robustness_probes import Probe


OUTCOMES = ("clear error", "done", "traceback", "unclear error", "wrongly accepted", "hang", "damaged")
BAD_OUTCOMES = ("traceback", "unclear error", "wrongly accepted", "hang", "damaged")
ONE_LINE = re.compile(r"^labelshare[\w -]*: (error|stopped|refused): \S")


# -- running a probe --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    kind: str               # "bad input", "control", "worker", "kill"
    outcome: str
    detail: str = ""
    seconds: float = 0.0


def labelshare(argv: list[str], cwd: Path, timeout: float, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelshare", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV, **options)


def exit_outcome(expect: str, status: int, stderr: str) -> tuple[str, str]:
    """The outcome of a finished command from its status and stderr (damage is checked apart)."""
    lines = stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    if "Traceback (most recent call last)" in stderr:
        return "traceback", last[:200]
    if expect == "done":
        return ("done", "") if status == 0 else ("control failed", f"status {status}: {last[:200]}")
    if status == 0:
        return "wrongly accepted", "exit status 0"
    if status in (1, 2, 3, 4, 75) and ONE_LINE.match(last):
        return "clear error", last[:240]
    return "traceback", f"status {status} without a one-line message: {last[:160]}"


def leftovers(folder: Path) -> list[str]:
    """What a finished command must not leave: temporary files of atomic writes, and staging folders that hold
    nothing to resume (they would block the next run)."""
    found = [str(p.relative_to(folder)) for p in folder.rglob(".*") if TEMPORARY_NAME.match(p.name)]
    for staging in [*folder.rglob(".*.partial"), *folder.rglob(".*.candidate")]:
        resumable = (staging / ".checkpoint" / "checkpoint.json").is_file() or (staging / "manifest.json").is_file()
        if staging.is_dir() and not resumable:
            found.append(f"{staging.relative_to(folder)} (a staging folder with nothing to resume)")
    return found


def damage(folder: Path, protected: dict[str, dict], absent: tuple[str, ...], failed: bool) -> str:
    changed = [name for name, before in protected.items() if digest(folder / name) != before]
    if changed:
        return f"changed: {', '.join(changed)}"
    appeared = [name for name in absent if failed and (folder / name).exists()]
    if appeared:
        return f"written although the command failed: {', '.join(appeared)}"
    left = leftovers(folder)
    return f"left behind: {', '.join(left)}" if left else ""


@contextmanager
def small_disk(folder: Path, size: str = "2m"):
    """A tmpfs at ``folder`` for the full- and read-only-disk probes (needs root); yields False where none can be
    mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    can = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None
    mounted = can and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                     capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def run_probe(probe: Probe, fixtures: Fixtures, folder: Path, timeout: float) -> Result | None:
    """Prepare, run and classify one probe; None when it cannot run here (no tmpfs, or a GPU present)."""
    folder.mkdir(parents=True)
    kind = "control" if probe.expect == "done" else "bad input"
    if probe.needs == "no-cuda":
        import torch
        if torch.cuda.is_available():
            return None
    with small_disk(folder / "disk") if probe.needs == "tmpfs" else nullcontext(True) as ready:
        if not ready:
            return None
        argv = probe.build(fixtures, folder)
        protected = {name: digest(folder / name) for name in probe.protect}
        start = time.monotonic()
        try:
            result = labelshare(argv, folder, timeout)
        except subprocess.TimeoutExpired:
            return Result(probe.name, kind, "hang", f"no end within {timeout:.0f} s", timeout)
        outcome, detail = exit_outcome(probe.expect, result.returncode, result.stderr)
        if outcome == "done" and "--progress" in argv and argv[argv.index("--progress") + 1] == "json":
            if not all(parse_event(line) for line in result.stdout.splitlines() if line.strip()):
                outcome, detail = "control failed", "stdout holds lines that are not JSON events"
        if outcome == "done" and probe.verify is not None:
            wrong = probe.verify(fixtures, folder)
            outcome, detail = ("wrongly accepted", wrong) if wrong else (outcome, detail)
        lines = result.stderr.strip().splitlines()
        if outcome == "clear error" and (probe.says not in lines[-1] or probe.alone and len(lines) > 1):
            outcome = "unclear error"
            detail = detail if probe.says not in lines[-1] else f"{len(lines)} lines on stderr: {lines[0][:120]}"
        harm = damage(folder, protected, probe.absent, result.returncode != 0)
        if harm and outcome not in ("traceback", "hang"):
            outcome, detail = "damaged", harm
        return Result(probe.name, kind, outcome, detail, time.monotonic() - start)
