"""The robustness campaign's kills: ``train``, ``add-task``, ``segment``, ``labelspace build``, ``evaluate``, the worker
and the case collection stopped by SIGKILL or SIGTERM at a random moment of a normal run; then the folder is
checked and the interrupted work continued."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelshare.core.fileio import TEMPORARY_NAME
from labelshare.core.labelspace import LabelSpace

from .robustness_fixtures import ENV, digest, Fixtures, image_problem, run_folder_problem
from .robustness_probes import add_task_argv, build_argv, evaluate_argv, segment_argv, train_argv
from .robustness_runner import ONE_LINE, leftovers, Result


# -- kills ------------------------------------------------------------------------------------------------------------
@dataclass
class Kill:
    """A normal run stopped by ``signal_number`` after ``delay`` seconds, then checked and continued.

    ``prepare(fixtures, folder)`` returns the command (``labelshare`` arguments, or a Python program for the case
    collection); ``check(fixtures, folder)`` returns the problem found after the kill, or ''; ``resume`` the
    command that continues the work (returning None: nothing to continue, e.g. the version was published before
    the signal; no ``resume``: opening the folder in the check continues it)."""

    name: str
    kind: str
    prepare: Callable[[Fixtures, Path], list[str]]
    check: Callable[[Fixtures, Path], str]
    resume: Callable[[Fixtures, Path], list[str] | None] | None
    signal_number: int = signal.SIGKILL
    delay: float = 0.0
    python: bool = False  # the command is a Python program (the case collection), not labelshare arguments


def kills(seed: int, durations: dict[str, float]) -> list[Kill]:
    """24 runs stopped at random moments of their normal duration: SIGKILL and SIGTERM alternate."""
    rng = random.Random(seed)

    def moment(kind: str) -> float:  # from 1 s: before then Python is still starting and no handler can exist
        return rng.uniform(1.0, max(1.5, durations[kind]))

    plans = [("train", 8), ("add-task", 4), ("segment", 4), ("labelspace build", 2), ("evaluate", 2),
             ("worker", 2), ("collection", 2)]
    result = []
    for kind, count in plans:
        for index in range(count):
            number = (signal.SIGKILL, signal.SIGTERM)[index % 2]
            make = KILLS[kind]
            result.append(Kill(f"kill: {kind} #{index + 1} ({signal.Signals(number).name})", kind, *make,
                               signal_number=number, delay=moment(kind), python=kind == "collection"))
    return result


def _train_command(f: Fixtures, d: Path) -> list[str]:
    return train_argv(f, d, "--epochs", "2", "--steps-per-epoch", "3", out=d / "m")


def _add_task_command(f: Fixtures, d: Path) -> list[str]:
    return add_task_argv(f, d, "--epochs", "2", "--steps-per-epoch", "3", out=d / "v2")


def _segment_command(f: Fixtures, d: Path) -> list[str]:
    earlier = d / "result.nii.gz"
    if not earlier.exists():  # a valid earlier result that differs from the new one
        label = sitk.GetImageFromArray(np.ones(sitk.GetArrayFromImage(sitk.ReadImage(str(f.image))).shape, np.uint8))
        label.CopyInformation(sitk.ReadImage(str(f.image)))
        sitk.WriteImage(label, str(earlier), useCompression=True)
        (d / "earlier.sha").write_text(json.dumps(digest(earlier)))
    return segment_argv(f, d, output=earlier) + ["--overwrite"]


def _segment_check(f: Fixtures, d: Path) -> str:
    return image_problem(d / "result.nii.gz", json.loads((d / "earlier.sha").read_text()))


def _build_command(f: Fixtures, d: Path) -> list[str]:
    output = d / "ls.json"
    if not output.exists():
        shutil.copy(f.space2, output)  # an earlier label space, replaced with --overwrite
    return build_argv(f, d, "phantom3d", "xray2d", "sides3d", output=output) + ["--overwrite"]


def _build_check(f: Fixtures, d: Path) -> str:
    try:
        LabelSpace.load(d / "ls.json")
    except Exception as error:  # noqa: BLE001
        return f"ls.json is no longer a label space: {error}"
    return ""


def _evaluate_check(f: Fixtures, d: Path) -> str:
    for path in (d / "evaluation").glob("evaluation.*"):
        text = path.read_text()
        if not text.strip() or (path.suffix == ".csv" and not text.startswith("task,case,label")):
            return f"{path.name} is incomplete"
    return ""


WORKER_DRIVER = """
import json, subprocess, sys
request = json.loads(sys.argv[1])
worker = subprocess.Popen([sys.executable, "-m", "labelshare", "worker"], stdin=subprocess.PIPE, text=True)
worker.stdin.write(json.dumps(request) + "\\n" + json.dumps({"command": "exit"}) + "\\n")
worker.stdin.flush()
sys.exit(worker.wait())
"""


def _worker_command(f: Fixtures, d: Path) -> list[str]:
    """A worker driven by a small parent (the kill goes to the parent's process group: worker and parent)."""
    output = d / "out.nii.gz"
    return ["-c", WORKER_DRIVER, json.dumps({"id": 1, "model": str(f.model), "task": "phantom3d",
                                             "input": str(f.image), "output": str(output), "device": "cpu",
                                             "overwrite": True})]


COLLECTOR = """
import sys
import numpy as np, SimpleITK as sitk
from labelshare.core.taskfolders import TaskCollection
collection = TaskCollection.open(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
for index in range(60):
    image = sitk.GetImageFromArray(rng.normal(size=(6, 64, 64)).astype(np.float32))
    label = (rng.random((6, 64, 64)) > 0.7).astype(np.uint8)
    collection.add_case(image, label, name=f"case{index:03d}")
"""


def _collection_command(f: Fixtures, d: Path) -> list[str]:
    from labelshare.core.taskfolders import create_task
    if not (d / "workspace" / "liver").exists():
        create_task(d / "workspace", "liver", ["liver"])
    return ["-c", COLLECTOR, str(d / "workspace" / "liver"), str(d.stat().st_ino % 1000)]


def _collection_check(f: Fixtures, d: Path) -> str:
    """Open (which finishes or undoes an interrupted add): every case then has its image, label and record."""
    from labelshare.core.taskfolders import TaskCollection
    try:
        collection = TaskCollection.open(d / "workspace" / "liver")
        names = collection.case_names()
        if set(names) != set(collection.records):
            return f"cases and records differ: {sorted(set(names) ^ set(collection.records))[:4]}"
        for name in names:
            collection.read_case(name)
    except Exception as error:  # noqa: BLE001
        return f"the collection is damaged: {error}"
    visible = [p.name for p in (d / "workspace" / "liver").rglob("*") if TEMPORARY_NAME.match(p.name)
               and ".trash" not in p.parts]
    return f"temporary files outside the trash: {visible[:3]}" if visible else ""


KILLS: dict[str, tuple[Callable, Callable, Callable | None]] = {
    "train": (_train_command, lambda f, d: run_folder_problem(d / "m"),
              lambda f, d: None if (d / "m").is_dir() else _train_command(f, d) + ["--resume"]),
    "add-task": (_add_task_command, lambda f, d: run_folder_problem(d / "v2"),
                 lambda f, d: None if (d / "v2").is_dir() else _add_task_command(f, d) + ["--resume"]),
    "segment": (_segment_command, _segment_check, _segment_command),
    "labelspace build": (_build_command, _build_check, _build_command),
    "evaluate": (lambda f, d: evaluate_argv(f, d) + ["--overwrite"], _evaluate_check,
                 lambda f, d: evaluate_argv(f, d) + ["--overwrite"]),
    "worker": (_worker_command, lambda f, d: image_problem(d / "out.nii.gz", {}), _worker_command),
    "collection": (_collection_command, _collection_check, None),
}


def run_kill(kill: Kill, fixtures: Fixtures, folder: Path, timeout: float) -> Result:
    folder.mkdir(parents=True)
    argv = kill.prepare(fixtures, folder)
    command = [sys.executable, *argv] if kill.python or kill.kind == "worker" else \
        [sys.executable, "-m", "labelshare", *argv]
    start = time.monotonic()
    with open(folder / "stderr.txt", "w") as errors:
        process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=errors, env=ENV,
                                   start_new_session=True)
        try:
            process.wait(timeout=kill.delay)
            finished_first = True
        except subprocess.TimeoutExpired:
            finished_first = False
            os.killpg(process.pid, kill.signal_number)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return Result(kill.name, "kill", "hang", f"no end {timeout:.0f} s after {kill.signal_number!r}",
                          time.monotonic() - start)
    stderr = (folder / "stderr.txt").read_text()
    (folder / "stderr.txt").unlink()
    when = "finished before the signal" if finished_first else f"signal after {kill.delay:.1f} s"
    if "Traceback (most recent call last)" in stderr:
        return Result(kill.name, "kill", "traceback", f"{when}: {stderr.strip().splitlines()[-1][:160]}",
                      time.monotonic() - start)
    if kill.signal_number == signal.SIGTERM and not finished_first and kill.kind != "worker" and not (
            (status == 75 and ONE_LINE.match(stderr.strip().splitlines()[-1] if stderr.strip() else ""))
            or status == 0 or (kill.python and status in (1, -signal.SIGTERM))):
        return Result(kill.name, "kill", "traceback", f"{when}: status {status} without 'labelshare: stopped:'",
                      time.monotonic() - start)
    problem = kill.check(fixtures, folder)
    if not problem and kill.signal_number == signal.SIGTERM and not kill.python and kill.kind != "worker":
        left = leftovers(folder)  # SIGTERM lets the command clean up: no temporary files, no empty staging folder
        problem = f"left behind after SIGTERM: {left}" if left else ""
    if problem:
        return Result(kill.name, "kill", "damaged", f"{when}: {problem}", time.monotonic() - start)
    again = kill.resume(fixtures, folder) if kill.resume is not None else None
    if again is not None:
        command = [sys.executable, *again] if kill.kind == "worker" else [sys.executable, "-m", "labelshare", *again]
        try:
            continued = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout, env=ENV)
        except subprocess.TimeoutExpired:
            return Result(kill.name, "kill", "hang", f"{when}; continuing did not end", time.monotonic() - start)
        problem = kill.check(fixtures, folder)
        if continued.returncode != 0 or problem:
            last = (continued.stderr.strip().splitlines() or [""])[-1]
            return Result(kill.name, "kill", "damaged", f"{when}; continuing failed: {problem or last[:200]}",
                          time.monotonic() - start)
        if kill.kind in ("train", "add-task") and not (folder / ("m" if kill.kind == "train" else "v2")).is_dir():
            return Result(kill.name, "kill", "damaged", f"{when}; continuing published nothing",
                          time.monotonic() - start)
    return Result(kill.name, "kill", "done", f"{when}; intact and continued", time.monotonic() - start)
