"""Probes of the robustness campaign for issue 31's findings: stops that stop, outputs only when something was done,
and a first contact without waiting. :mod:`.robustness_campaign` runs them with the others (``labelshare-bench
robustness --only 31.``); their names start with the issue's item, e.g. ``31.1``.

- **bad inputs** (:func:`bad_input_probes`): a rank whose every image fails writes no table (31.2); ``--out``
  inside a model folder for ``postprocess``, ``train`` and ``add-task`` (31.3); a folder with a ``.dcm`` that is not
  DICOM gives one line without ITK's warnings (31.4); mirroring a lateralised task with ``segment --tta``, ``rank
  --score tta`` and ``evaluate --tta`` (31.5); ``--series`` with a NIfTI input (31.6); a damaged file in a DICOM series
  named (31.8); a series without a frame of reference to DICOM SEG (31.10); models by name (31.12); ``demo --resume``
  with nothing to resume (31.13); a global option before the command (31.14); and controls: a DICOM SEG whose slice
  spacing is measured and which has ContentCreatorName (31.9, 27.7), a model given by its name;
- **worker requests** (:func:`worker_probes`): ``"mirror": true`` for a lateralised task, a model by its name;
- **stops** (:func:`run_probes`): SIGTERM, SIGINT and SIGKILL after the first image of a batch segmentation, and
  SIGINT twice (31.1): status 75 with one line, the image in progress discarded (no temporary file, 31.7), then
  ``--continue`` finishes the batch and removes what a SIGKILL left; SIGTERM during a batch ``rank``: 75 and no
  table; a single failed image under ``--progress json`` ends with the ``error`` event (31.15); the four trivial
  mistakes of a new user answered in a process where torch cannot be imported, with their time (31.11).

Each probe ends in one of the campaign's outcomes; a one-line error that does not say what the finding asks for (or
comes after warnings) is ``unclear error``.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelshare.core.outputs import output_complete
from labelshare.core.paths import default_model_dir
from labelshare.core.progress import parse_event

from . import robustness_fixtures as fixtures
from . import robustness_probes as probes
from . import robustness_runner as runner
from . import robustness_worker as worker


BATCH_IMAGES = 6
HEAVY = ("torch", "monai", "safetensors", "scipy", "matplotlib", "highdicom")


# -- inputs -----------------------------------------------------------------------------------------------------------
def dicom_factory():
    """The tests' DICOM writer (``Testing/dicomfactory.py``, beside this package in a checkout): the suite and the
    campaign write test DICOM the same way (SimpleITK's GDCM writer, one file per slice)."""
    path = Path(__file__).resolve().parents[1] / "Testing" / "dicomfactory.py"
    spec = importlib.util.spec_from_file_location("dicomfactory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dicom_series(f: fixtures.Fixtures, folder: Path, damage: Callable[[list[Path]], object] | None = None) -> Path:
    """The fixture image as a DICOM MR series of 10 mm slices (GDCM records SpacingBetweenSlices = 1 on it)."""
    factory = dicom_factory()
    image = sitk.ReadImage(str(f.image))
    image.SetSpacing((*image.GetSpacing()[:2], 10.0))
    _, files = factory.write_series(factory.mr_volume(image), folder)
    if damage is not None:
        damage(files)
    return folder


def written(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rank_argv(f: fixtures.Fixtures, d: Path, *options: str, model: Path | None = None,
              inputs: list[Path] | None = None) -> list[str]:
    return probes.with_options(["rank", "--model", str(model or f.model), "--task", "phantom3d",
                                  *map(str, inputs or [f.image]), "-o", str(d / "ranking.csv"), "--device", "cpu"],
                                 options)


def changed_model(f: fixtures.Fixtures, d: Path, change: Callable[[Path], object]) -> Path:
    model = fixtures.copy_model(f, d)
    change(model)
    return model


def lateralised(task: str) -> Callable[[Path], None]:
    """A model whose ``task`` is marked lateralised (the manifest rewritten to match)."""
    return fixtures.in_json("labelspace.json", lambda space: space["tasks"][task].update(lateralised=True))


def larger_volumes(f: fixtures.Fixtures, folder: Path, count: int = BATCH_IMAGES) -> Path:
    """``count`` copies of the fixture image, enlarged so that one image takes a moment and a signal lands mid-batch."""
    folder.mkdir(parents=True, exist_ok=True)
    larger = sitk.Expand(sitk.ReadImage(str(f.image)), (4, 4, 2))
    for index in range(count):
        sitk.WriteImage(larger, str(folder / f"case_{index:02d}.nii.gz"))
    return folder


def seg_problem(path: Path, slices: int) -> str:
    """'' when the DICOM SEG at ``path`` has ContentCreatorName and the measured 10 mm slice spacing, and highdicom
    rebuilds it as a volume of at most ``slices`` slices (not one slice per millimetre)."""
    import highdicom as hd
    import pydicom
    dataset = pydicom.dcmread(path)
    spacing = float(dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices)
    if not dataset.get("ContentCreatorName"):
        return "the DICOM SEG has no ContentCreatorName (0070,0084)"
    if abs(spacing - 10.0) > 1e-3:
        return f"the DICOM SEG says SpacingBetweenSlices {spacing}, not the measured 10 mm"
    depth = hd.seg.segread(path).get_volume(combine_segments=True).spatial_shape[0]
    return "" if depth <= slices else f"highdicom rebuilds {depth} slices of a {slices}-slice series"


def bad_input_probes() -> list[probes.Probe]:
    probe, segment = probes.Probe, probes.segment_argv
    return [
        probe("31.2 rank: every image unreadable", lambda f, d: rank_argv(
            f, d, inputs=[written(d / "a.nii.gz", b"not an image"), written(d / "b.nii.gz", b"nor this")]),
              absent=("ranking.csv",), says="no ranking table written"),
        probe("31.3 postprocess: --out inside the model", lambda f, d: probes.postprocess_argv(
            f, d, model=fixtures.copy_model(f, d), out=d / "model" / "v2"),
              protect=("model",), says="is inside the model folder"),
        probe("31.3 train: --out inside a model", lambda f, d: probes.train_argv(
            f, d, out=fixtures.copy_model(f, d) / "sub" / "m"), protect=("model",), says="is inside the model folder"),
        probe("31.3 add-task: --out inside a model", lambda f, d: probes.add_task_argv(
            f, d, out=fixtures.copy_model(f, d) / "v2"), protect=("model",), says="is inside the model folder"),
        probe("31.4 segment: a folder holding a .dcm that is not DICOM", lambda f, d: segment(
            f, d, image=written(d / "series" / "a.dcm", b"not DICOM").parent),
              says="holds DICOM files but no readable image series", alone=True),
        probe("31.5 segment --tta: a lateralised task", lambda f, d: segment(
            f, d, model=changed_model(f, d, lateralised("phantom3d"))) + ["--tta"], says="is lateralised"),
        probe("31.5 rank --score tta: a lateralised task", lambda f, d: rank_argv(
            f, d, "--score", "tta", model=changed_model(f, d, lateralised("phantom3d"))), says="is lateralised"),
        probe("31.5 evaluate --tta: a lateralised task", lambda f, d: probes.evaluate_argv(
            f, d, model=changed_model(f, d, lateralised("xray2d"))) + ["--tta"], says="is lateralised"),
        probe("31.6 segment --series with a NIfTI input", lambda f, d: segment(f, d, "--series", "1.2.3"),
              says="is not DICOM, and --series 1.2.3 picks a series of a DICOM folder"),
        probe("31.6 rank --series with a NIfTI input", lambda f, d: rank_argv(f, d, "--series", "1.2.3"),
              says="is not DICOM, and --series 1.2.3 picks a series of a DICOM folder"),
        probe("31.8 segment: a damaged file in a DICOM series", lambda f, d: segment(f, d, image=dicom_series(
            f, d / "series", lambda files: fixtures.cut(files[2], 300))),
              says="DICOM file is damaged (GDCM cannot read it)"),
        probe("31.10 segment: a series without FrameOfReferenceUID to DICOM SEG", lambda f, d: segment(
            f, d, image=dicom_series(f, d / "series", lambda files: dicom_factory().remove_attribute(
                files, "FrameOfReferenceUID")), output=d / "seg.dcm"),
              absent=("seg.dcm",), says="lacks FrameOfReferenceUID (0020,0052)"),
        probe("31.12 segment --model: a name no model has", lambda f, d: segment(f, d, model=Path("no-model-v9")),
              says="no-model-v9: model folder does not exist, and no model has this name"),
        probe("31.13 demo --resume: a folder with no demo in it", lambda f, d: [
            "demo", "--out", str(written(d / "out" / "notes.txt", b"mine").parent), "--resume", *fixtures.TINY],
              protect=("out",), says="holds no demo to continue"),
        # controls
        probe("31.9 control: DICOM series of 10 mm slices to DICOM SEG", lambda f, d: segment(
            f, d, image=dicom_series(f, d / "series"), output=d / "seg.dcm"), expect="done",
              verify=lambda f, d: seg_problem(d / "seg.dcm", sitk.ReadImage(str(f.image)).GetDepth())),
        probe("31.12 control: segment --model by its name", lambda f, d: segment(
            f, d, "--task", "hippocampus", model=Path(default_model_dir().name)), expect="done",
              verify=lambda f, d: fixtures.segmentation_problem(d / "o.nii.gz", f.image, {0, 1, 2})),
        probe("31.12 control: labelspace show by a model's name", lambda f, d: [
            "labelspace", "show", default_model_dir().name], expect="done"),
        probe("31.14 control: --progress json before the command", lambda f, d: [
            "--progress", "json", "models", "--root", str(f.model.parent)], expect="done"),
    ]


def worker_probes() -> list[worker.WorkerProbe]:
    probe, request = worker.WorkerProbe, worker.request
    return [
        probe("31.5 worker: mirror true for a lateralised task", request(
            model=worker.model_copy_with(lateralised("phantom3d")), mirror=True)),
        probe("31.12 worker control: a model by its name", request(model=default_model_dir().name,
                                                                     task="hippocampus"),
              expect="done", absent=(),
              verify=lambda f, d: fixtures.segmentation_problem(d / "out.nii.gz", f.image, {0, 1, 2})),
    ]


# -- stops and other runs that the probe runner cannot judge -----------------------------------------------------------
def run_probes(f: fixtures.Fixtures, folder: Path, timeout: float,
               chosen: Callable[[str], bool]) -> list[runner.Result]:
    runs = {f"31.1 kill: segment batch, {name} after the first image": (lambda d, n=number, t=twice: stop_batch(
                f, d, timeout, n, t))
            for name, number, twice in (("SIGTERM", signal.SIGTERM, False), ("SIGINT", signal.SIGINT, False),
                                        ("SIGINT twice", signal.SIGINT, True), ("SIGKILL", signal.SIGKILL, False))}
    runs["31.1 kill: rank batch, SIGTERM after the first image"] = lambda d: stop_rank(f, d, timeout)
    runs["31.15 segment: one failed image under --progress json"] = lambda d: last_event_error(f, d, timeout)
    runs["31.11 first contact: four mistakes before torch"] = lambda d: first_contact(f, d, timeout)
    results = []
    for index, (name, run) in enumerate(runs.items()):
        if not chosen(name):
            continue
        d = folder / f"{index:03d}"
        d.mkdir(parents=True)
        start = time.monotonic()
        try:
            outcome, detail = run(d)
        except subprocess.TimeoutExpired:
            outcome, detail = "hang", f"no end within {timeout:.0f} s"
        except Exception as error:  # noqa: BLE001 (the probe itself failed: report it, run the others)
            outcome, detail = "control failed", f"the probe failed: {type(error).__name__}: {error}"[:200]
        kind = "bad input" if name.startswith(("31.15", "31.11")) else "kill"
        results.append(runner.Result(name, kind, outcome, detail, time.monotonic() - start))
    return results


def _popen(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labelshare", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=fixtures.ENV)


def _signal_after_first_image(process: subprocess.Popen, number: int, twice: bool) -> float:
    """Wait for the first finished image, then send the signal (``twice``: again a second later); returns when it
    was sent (``time.monotonic``)."""
    for line in process.stdout:
        event = parse_event(line)
        if event and event.get("status") in ("done", "failed") and "case" in event:
            break
    sent = time.monotonic()
    process.send_signal(number)
    if twice:
        time.sleep(1.0)
        if process.poll() is None:
            process.send_signal(number)
    return sent


def stop_batch(f: fixtures.Fixtures, d: Path, timeout: float, number: int, twice: bool) -> tuple[str, str]:
    """A batch segmentation stopped after its first image: 75 and one line (SIGKILL: nothing to say), every output
    complete or (an image without its sidecar) to be redone, no temporary file after SIGTERM/SIGINT; then
    ``--continue`` finishes it and leaves no temporary file."""
    scans = larger_volumes(f, d / "scans")
    argv = probes.segment_argv(f, d, image=scans, output=d / "labels") + ["--progress", "json"]
    process = _popen(argv, d)
    sent = _signal_after_first_image(process, number, twice)
    _, stderr = process.communicate(timeout=timeout)
    took = time.monotonic() - sent
    outputs = [d / "labels" / f"case_{index:02d}.nii.gz" for index in range(BATCH_IMAGES)]
    complete = sum(map(output_complete, outputs))
    last = (stderr.strip().splitlines() or [""])[-1]
    if "Traceback (most recent call last)" in stderr:
        return "traceback", last[:200]
    if number != signal.SIGKILL:
        if process.returncode != 75 or not last.startswith("labelshare: stopped: "):
            return "traceback", f"status {process.returncode} after {signal.Signals(number).name}: {last[:160]}"
        if complete == BATCH_IMAGES:
            return "wrongly accepted", f"the batch went on after {signal.Signals(number).name}: all images written"
        left = runner.leftovers(d)
        if left:
            return "damaged", f"left behind after {signal.Signals(number).name}: {left}"
    else:  # what a SIGKILL during a write leaves, planted so that --continue always meets one
        written(d / "labels" / f".{outputs[-1].name}.k1l2l3e4.tmp.nii.gz", b"half written")
    continued = subprocess.run([sys.executable, "-m", "labelshare", *argv, "--continue"], cwd=d, capture_output=True,
                               text=True, timeout=timeout, env=fixtures.ENV)
    if continued.returncode != 0 or not all(map(output_complete, outputs)):
        return "damaged", f"--continue failed: {(continued.stderr.strip().splitlines() or [''])[-1][:200]}"
    left = runner.leftovers(d)
    if left:
        return "damaged", f"--continue left: {left}"
    return "done", f"stopped {took:.1f} s after the signal with {complete} of {BATCH_IMAGES} images written; " \
                   f"{last[:90]}; continued"


def stop_rank(f: fixtures.Fixtures, d: Path, timeout: float) -> tuple[str, str]:
    scans = larger_volumes(f, d / "scans")
    process = _popen(rank_argv(f, d, inputs=[scans]) + ["--progress", "json"], d)
    _signal_after_first_image(process, signal.SIGTERM, False)
    _, stderr = process.communicate(timeout=timeout)
    last = (stderr.strip().splitlines() or [""])[-1]
    if "Traceback (most recent call last)" in stderr:
        return "traceback", last[:200]
    if process.returncode != 75 or not last.startswith("labelshare: stopped: "):
        return "traceback", f"status {process.returncode} after SIGTERM: {last[:160]}"
    if (d / "ranking.csv").exists():
        return "damaged", "a ranking table was written although the ranking was stopped"
    return "done", last[:150]


def last_event_error(f: fixtures.Fixtures, d: Path, timeout: float) -> tuple[str, str]:
    fixtures.with_nan(d / "nan.nii.gz")
    result = runner.labelshare(probes.segment_argv(f, d, image=d / "nan.nii.gz") + ["--progress", "json"], d,
                                 timeout)
    outcome, detail = runner.exit_outcome("error", result.returncode, result.stderr)
    events = [e for e in map(parse_event, result.stdout.splitlines()) if e]
    if outcome == "clear error" and (not events or events[-1]["event"] != "error"):
        return "unclear error", f"the JSON stream ends with {events[-1]['event'] if events else 'nothing'}"
    return outcome, detail


FIRST_CONTACT = """
import contextlib, io, json, sys, time
for name in {heavy!r}:
    sys.modules[name] = None  # importing torch (and the other heavy packages) now fails
from labelshare.cli import main
answers = []
for argv in {argvs!r}:
    stderr, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(stderr):
        status = main(argv)
    answers.append([status, stderr.getvalue(), round(time.perf_counter() - start, 3)])
print(json.dumps(answers))
"""


def first_contact(f: fixtures.Fixtures, d: Path, timeout: float) -> tuple[str, str]:
    """The four trivial mistakes of a new user (wrong task, missing input, existing output, empty folder), with the
    bundled model, each answered in one line by a process in which torch cannot be imported; and the time one of
    them takes in a plain ``labelshare`` process (``--version`` for comparison)."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 16, 16), np.float32)), str(d / "x.nii.gz"))
    (d / "exists.nii.gz").write_bytes((d / "x.nii.gz").read_bytes())
    (d / "empty").mkdir()
    mistakes = [["segment", "--task", "nope", "x.nii.gz", "-o", "y.nii.gz"],
                ["segment", "--task", "hippocampus", "missing.nii.gz", "-o", "y.nii.gz"],
                ["segment", "--task", "hippocampus", "x.nii.gz", "-o", "exists.nii.gz"],
                ["segment", "--task", "hippocampus", "empty", "-o", "out"]]
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(FIRST_CONTACT.format(heavy=HEAVY, argvs=mistakes))],
                         cwd=d, capture_output=True, text=True, timeout=timeout, env=fixtures.ENV)
    if run.returncode != 0:
        return "traceback", (run.stderr.strip().splitlines() or [""])[-1][:200]
    answers = json.loads(run.stdout.strip().splitlines()[-1])
    for argv, (status, stderr, _) in zip(mistakes, answers, strict=True):
        lines = stderr.strip().splitlines()
        if status != 1 or len(lines) != 1 or not lines[0].startswith("labelshare: error: "):
            return "unclear error", f"{' '.join(argv)}: status {status}: {stderr.strip()[:160]}"
    seconds = {}
    for name, argv in (("wrong task", mistakes[0]), ("--version", ["--version"])):
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "labelshare", *argv], cwd=d, capture_output=True, timeout=timeout,
                       env=fixtures.ENV)
        seconds[name] = time.monotonic() - start
    return "clear error", (f"one line each without torch; a wrong task takes {seconds['wrong task']:.2f} s in a "
                           f"process of its own (--version {seconds['--version']:.2f} s)")

