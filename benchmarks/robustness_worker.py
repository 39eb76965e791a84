"""The robustness campaign's worker probes: bad requests to one ``labelshare worker`` process, which must answer each
with one ``error`` event and go on serving."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from labelshare.core.progress import parse_event

from .robustness_fixtures import (ENV, a_file, copy_model, cut, digest, earlier_result, Fixtures, huge_header, in_json,
                                  nan_weights, output_name, segmentation_problem, then, volume, with_nan)
from .robustness_runner import damage, Result


# -- the worker -------------------------------------------------------------------------------------------------------
@dataclass
class WorkerProbe:
    """One request line for a ``labelshare worker``: ``build(fixtures, folder)`` returns a request (a dict, sent
    with an id) or a raw line; ``anonymous`` requests are answered by an error without a request id."""

    name: str
    build: Callable[[Fixtures, Path], dict | str]
    expect: str = "error"
    anonymous: bool = False
    protect: tuple[str, ...] = ()
    absent: tuple[str, ...] = ("out.nii.gz",)
    verify: Callable[[Fixtures, Path], str] | None = None  # a control's output: '' when right, else the problem


def request(**changes) -> Callable[[Fixtures, Path], dict]:
    """A segment request with ``changes`` (values may be functions of the fixtures and folder; None drops a
    field)."""
    def build(f: Fixtures, d: Path) -> dict:
        fields = {"command": "segment", "model": str(f.model), "task": "phantom3d", "input": str(f.image),
                  "output": str(d / "out.nii.gz"), "device": "cpu"}
        for key, value in changes.items():
            value = value(f, d) if callable(value) else value
            if value is None:
                fields.pop(key, None)
            else:
                fields[key] = value
        return fields
    return build


def made(name: str, make: Callable[[Path], object]) -> Callable[[Fixtures, Path], str]:
    def build(f: Fixtures, d: Path) -> str:
        make(d / name)
        return str(d / name)
    return build


def model_copy_with(change: Callable[[Path], object]) -> Callable[[Fixtures, Path], str]:
    def build(f: Fixtures, d: Path) -> str:
        model = copy_model(f, d)
        change(model)
        return str(model)
    return build


def worker_probes() -> list[WorkerProbe]:
    return [
        WorkerProbe("worker: not JSON", lambda f, d: "this is not json", anonymous=True),
        WorkerProbe("worker: a JSON list", lambda f, d: "[1, 2]", anonymous=True),
        WorkerProbe("worker: nested 100000 deep", lambda f, d: "[" * 100000 + "]" * 100000, anonymous=True),
        WorkerProbe("worker: a 3 MB line", lambda f, d: json.dumps({"task": "x" * 3_000_000}), anonymous=True),
        WorkerProbe("worker: id an object", request(id={"a": 1}, input=None), anonymous=True),
        WorkerProbe("worker: unknown command", request(command="train")),
        WorkerProbe("worker: input and output missing", request(input=None, output=None)),
        WorkerProbe("worker: largest_component 'no'", request(largest_component="no")),
        WorkerProbe("worker: overwrite 'yes'", request(overwrite="yes")),
        WorkerProbe("worker: task a list", request(task=["phantom3d"])),
        WorkerProbe("worker: unknown field", request(largest_components=True)),
        WorkerProbe("worker: device tpu", request(device="tpu")),
        WorkerProbe("worker: model missing", request(model=lambda f, d: str(d / "absent"))),
        WorkerProbe("worker: input .nii.gz cut in half", request(input=made("in.nii.gz", then(
            volume, lambda p: cut(p, 0.5)))), absent=("out.nii.gz",)),
        WorkerProbe("worker: NaN in a NIfTI input", request(input=made("in.nii.gz", with_nan))),
        WorkerProbe("worker: input header claims 30000x30000x4", request(input=made("in.nii.gz", then(
            volume, huge_header)))),
        WorkerProbe("worker: output exists", request(output=lambda f, d: str(earlier_result(f, d))),
                    protect=("earlier.nii.gz",)),
        WorkerProbe("worker: output format .txt", request(output=lambda f, d: str(d / "out.txt"))),
        WorkerProbe("worker: 3D volume to .png", request(output=lambda f, d: str(d / "out.png")), absent=("out.png",)),
        WorkerProbe("worker: output under a file", request(output=lambda f, d: str(a_file(d) / "o.nii.gz")),
                    protect=("a_file",)),
        WorkerProbe("worker: manifest names ../../../etc/hostname", request(model=model_copy_with(in_json(
            "manifest.json", lambda j: j["files"].update({"../../../etc/hostname": "0" * 64}), rehash=False)))),
        WorkerProbe("worker: NaN weights", request(model=model_copy_with(nan_weights))),
        WorkerProbe("worker: config with 65536 filters", request(model=model_copy_with(in_json(
            "config.json", lambda c: c["network"].update(filters=[65536] * 5))))),
        WorkerProbe("worker control: a good request", request(), expect="done", absent=(),
                    verify=lambda f, d: segmentation_problem(d / "out.nii.gz", f.image, {0, 1, 2, 3})),
        WorkerProbe("worker control: overwrite true", request(output=lambda f, d: str(earlier_result(f, d)),
                                                              overwrite=True), expect="done", absent=(),
                    verify=lambda f, d: segmentation_problem(d / "earlier.nii.gz", f.image, {0, 1, 2, 3})),
        WorkerProbe("worker control: output is a folder", request(output=lambda f, d: str(d)), expect="done",
                    absent=(), verify=lambda f, d: segmentation_problem(d / output_name(f.image), f.image,
                                                                        {0, 1, 2, 3})),
    ]


def run_worker_probes(probes: list[WorkerProbe], fixtures: Fixtures, folder: Path, timeout: float) -> list[Result]:
    """Every request to one worker process, then ``exit``; each answer classified like a command's outcome."""
    lines, prepared = [], []
    for index, probe in enumerate(probes):
        d = folder / f"{index:03d}"
        d.mkdir(parents=True)
        built = probe.build(fixtures, d)
        if isinstance(built, dict) and not probe.anonymous:
            built = {**built, "id": index}
        lines.append(built if isinstance(built, str) else json.dumps(built))
        prepared.append((probe, d, {name: digest(d / name) for name in probe.protect}))
    lines.append(json.dumps({"id": "end", "command": "exit"}))
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "labelshare", "worker"], cwd=folder, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        stdout, stderr = process.communicate("\n".join(lines) + "\n", timeout=timeout * 2)
        hung = False
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        hung = True
    seconds = (time.monotonic() - start) / len(probes)
    events = [e for e in (parse_event(line) for line in stdout.splitlines()) if e]
    anonymous = iter([e for e in events if e.get("request") is None and e["event"] == "error"])
    results = []
    for index, (probe, d, protected) in enumerate(prepared):
        if probe.anonymous:
            answer = next(anonymous, None)
        else:
            answer = next((e for e in reversed(events) if e.get("request") == index and e["event"] in
                           ("done", "error")), None)
        if answer is None:
            outcome, detail = "hang", ("the worker ended without answering (status "
                                       f"{process.returncode}; {stderr.strip().splitlines()[-1:] or ''})"
                                       if not hung else "no answer in time")
        elif answer["event"] == "error":
            internal = "internal error" in answer["message"]
            outcome = "traceback" if internal else ("clear error" if probe.expect == "error" else "control failed")
            detail = answer["message"][:240]
        else:
            outcome, detail = ("done", "") if probe.expect == "done" else ("wrongly accepted", "answered done")
            wrong = probe.verify(fixtures, d) if outcome == "done" and probe.verify is not None else ""
            outcome, detail = ("wrongly accepted", wrong) if wrong else (outcome, detail)
        harm = damage(d, protected, probe.absent, answer is None or answer["event"] == "error")
        if harm and outcome not in ("traceback", "hang"):
            outcome, detail = "damaged", harm
        results.append(Result(probe.name, "control" if probe.expect == "done" else "worker", outcome, detail,
                              seconds))
    if not hung and process.returncode != 0:
        results.append(Result("worker: exit after the requests", "worker", "traceback",
                              f"status {process.returncode}"))
    return results
