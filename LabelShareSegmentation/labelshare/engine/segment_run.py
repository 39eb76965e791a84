"""``labelshare segment`` end to end: inputs → one loaded model → outputs that carry their meaning, with a summary.

Usage::

    config = SegmentConfig(task="hippocampus", existing="continue")
    cases = plan_cases(collect_inputs(["scans/"]), Path("labels/"), config)   # labelshare.core.outputs
    summary = segment_cases(load_model(None, config.device), cases, config, Progress("human"))
    summary.failed                                                            # the cases that failed, with reasons

Many images share one process and one model load (the start-up of torch and MONAI and loading the model cost
seconds, segmenting a small volume a fraction of one). While the network segments one image, a reader thread reads
the next, so the network rarely waits for the disk or the decompression. A case that fails (unreadable, NaN
voxels, an output that cannot hold it) is recorded with its reason and the others go on.

Outputs that exist are refused before anything runs, unless the configuration says ``overwrite`` or ``continue``
(skip the complete ones: :func:`labelshare.core.outputs.output_complete`; write the rest); both also remove the hidden
temporary files that a killed run left beside the outputs. SIGINT/SIGTERM (:class:`~labelshare.core.errors.Interrupted`)
stops the whole run: the image being segmented is discarded (nothing of it is under its final name) and the images
done stay done, so that ``continue`` goes on from there.

Where every image's output goes, and the refusal of what cannot work, is planned before anything heavy is
imported (:func:`labelshare.core.outputs.plan_cases`).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.config import SegmentConfig, check_mirroring
from ..core.errors import DataError, Interrupted, LabelShareError, is_out_of_memory
from ..core.fileio import sha256_file, write_image_atomic
from ..core.input_check import InputCheckResult, image_modality
from ..core.inputs import InputImage, collect_inputs, read_input_image
from ..core.outputs import OutputDescription, PlannedCase, check_output, plan_cases, remove_leftovers
from ..core.progress import Progress
from .inference import Segmenter
from .input_check import check_case
from .models import Model, load_model
from .uncertainty import UNCERTAINTY_MEASURE
from .writers import write_segmentation

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
MIRROR_REQUEST = "test-time mirroring (--tta, the worker's \"mirror\")"


@dataclass
class CaseOutcome:
    case: PlannedCase
    status: str
    reason: str = ""
    seconds: float = 0.0
    error: BaseException | None = None  # what made the case fail (re-raised when a single image was asked for)
    check_result: InputCheckResult | None = None  # None: not checked (skipped, failed, or --no-input-check)

    @property
    def warned(self) -> bool:
        return self.check_result is not None and self.check_result.warned

    def to_json(self) -> dict:
        return {"case": self.case.image.name, "input": str(self.case.image.source), "output": str(self.case.output),
                "status": self.status, "reason": self.reason, "warned": self.warned}


@dataclass
class SegmentSummary:
    outcomes: list[CaseOutcome]

    def with_status(self, status: str) -> list[CaseOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == status]

    @property
    def failed(self) -> list[CaseOutcome]:
        return self.with_status(FAILED)

    def counts(self) -> dict[str, int]:
        return {status: len(self.with_status(status)) for status in (DONE, SKIPPED, FAILED)}

    @property
    def warned(self) -> list[CaseOutcome]:
        """The images the input check warned about (segmented all the same)."""
        return [outcome for outcome in self.outcomes if outcome.warned]

    def text(self) -> str:
        warned = f" ({len(self.warned)} with an input warning)" if self.warned else ""
        return ", ".join(f"{count} {status}" + (warned if status == DONE else "")
                         for status, count in self.counts().items())

    def to_json(self) -> dict:
        return {**self.counts(), "warned": len(self.warned),
                "failures": [outcome.to_json() for outcome in self.failed]}


def segment_cases(model: Model, cases: list[PlannedCase], config: SegmentConfig,
                  progress: Progress | None = None) -> SegmentSummary:
    """Segment the planned cases with one model; one ``progress`` event per case (status, reason, ETA).

    A single case to segment also reports its slices (``segmenting`` events with the fraction of the image).
    """
    config.check()
    progress = progress or Progress("quiet")
    description = OutputDescription.of(model.labelspace, config.task, model.path)  # UnknownTaskError up front
    if config.inference.mirror:
        check_mirroring(config.task, model.labelspace.task(config.task).lateralised, MIRROR_REQUEST)
    segmenter = Segmenter(model, config.inference)
    if config.existing != "refuse":
        remove_leftovers(cases)
    skipped = [case for case in cases if case.complete]
    to_segment = [case for case in cases if not case.complete]
    outcomes: list[CaseOutcome] = []

    def report(outcome: CaseOutcome, eta_s: float | None) -> None:
        outcomes.append(outcome)
        what = f"{outcome.status} in {outcome.seconds:.1f} s" if outcome.status == DONE else outcome.status
        message = f"{len(outcomes)}/{len(cases)} {outcome.case.image.name}: {what}"
        progress.progress("segmenting", len(outcomes) / len(cases),
                          message + (f": {outcome.reason}" if outcome.reason else ""), index=len(outcomes),
                          cases=len(cases), seconds=round(outcome.seconds, 3), eta_s=eta_s, **outcome.to_json())

    for case in skipped:
        report(CaseOutcome(case, SKIPPED, "a complete output exists"), None)
    started = time.perf_counter()
    slice_progress = progress if len(to_segment) == 1 else None
    readings = read_ahead([case.image for case in to_segment])
    try:
        for index, (case, reading) in enumerate(zip(to_segment, readings, strict=True)):
            case_started = time.perf_counter()
            outcome = _segment_case(segmenter, case, reading, config, description, slice_progress)
            outcome.seconds = time.perf_counter() - case_started
            if outcome.warned:  # a warning, never a refusal: the output is written
                detail = outcome.check_result.message(config.task)
                progress.warning(f"{case.image.source}: {detail}", detail=detail, case=case.image.name,
                                 input=str(case.image.source), output=str(case.output),
                                 input_check=outcome.check_result.to_json())
            report(outcome, eta_seconds(started, index + 1, len(to_segment)))
    except Interrupted as stop:
        if len(cases) == 1:
            raise
        counts = SegmentSummary(outcomes).counts()
        raise Interrupted(f"{stop} after {len(outcomes)} of {len(cases)} images ({counts[DONE]} done, "
                          f"{counts[SKIPPED]} skipped, {counts[FAILED]} failed); the image in progress was "
                          "discarded") from None
    finally:
        readings.close()
    return SegmentSummary(outcomes)


def read_ahead(images: Sequence[InputImage]) -> Iterator[Future]:
    """The reading (a future of the image) of every image in order; while the caller works on one image, a reader
    thread reads the next, so the network rarely waits for the disk or the decompression. Closing the generator
    (the caller stopped) cancels what is not being read yet."""
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelshare-reader")
    try:
        upcoming = reader.submit(read_input_image, images[0]) if images else None
        for index in range(len(images)):
            reading = upcoming
            upcoming = reader.submit(read_input_image, images[index + 1]) if index + 1 < len(images) else None
            yield reading
    finally:
        reader.shutdown(wait=False, cancel_futures=True)


def eta_seconds(started: float, finished: int, total: int) -> float:
    """Seconds left for ``total - finished`` items at the pace since ``started`` (a ``perf_counter`` time)."""
    return round((time.perf_counter() - started) / finished * (total - finished), 1)


def _segment_case(segmenter: Segmenter, case: PlannedCase, reading: Future, config: SegmentConfig,
                  description: OutputDescription, slice_progress: Progress | None) -> CaseOutcome:
    try:
        image = reading.result()
        check_output(case.output, image, case.image, description)
        try:
            result = segmenter.segment_case(image, config.task, progress=slice_progress,
                                            uncertainty_map=case.uncertainty_map is not None,
                                            measure_input=config.input_check,
                                            case_score=True, modality=image_modality(image))
        except DataError as error:
            raise DataError(f"{case.image.source}: {error}") from None
        checked = check_case(segmenter.model, config.task, result.measurement) if config.input_check else None
        overwrite = config.existing != "refuse"
        record = {"case_score": result.case_score}
        if checked is not None:
            record["input_check"] = checked.to_json()
        if case.uncertainty_map is not None:  # before the output: a complete output has its map
            write_image_atomic(result.uncertainty_map, case.uncertainty_map, overwrite=overwrite)
            record["uncertainty"] = {"file": str(case.uncertainty_map.resolve()),
                                     "sha256": sha256_file(case.uncertainty_map), "measure": UNCERTAINTY_MEASURE}
        write_segmentation(result.labels, case.output, description, case.image, overwrite=overwrite, record=record)
    except Exception as error:  # the case fails, the others go on; a single image re-raises it
        return CaseOutcome(case, FAILED, failure_reason(error), error=error)
    return CaseOutcome(case, DONE, check_result=checked)


def failure_reason(error: BaseException) -> str:
    if isinstance(error, LabelShareError):
        return str(error)
    if is_out_of_memory(error):
        return f"out of memory ({type(error).__name__}); use a smaller --batch-size, or --device cpu"
    return f"{type(error).__name__}: {error}"  # a bug: the command line shows the traceback with --debug


def segment_file(model: Model | str | Path | None, config: SegmentConfig, input_path: str | Path,
                 output_path: str | Path, progress: Progress | None = None) -> Path:
    """Segment one image (a file or a DICOM folder) into one output (its ending names the kind); returns the path.

    The Slicer worker's request and the simplest use from Python; raises the case's error when it fails::

        segment_file("models/v3", SegmentConfig.from_options(task="acdc", mirror=True), "ct.nii.gz", "ct-seg.nii.gz")
    """
    inputs = collect_inputs([input_path], config.series)
    if not inputs.single:
        raise DataError(f"{input_path}: holds several images; segment_file takes one (use segment_cases)")
    cases = plan_cases(inputs, output_path, config)
    if not isinstance(model, Model):
        if progress is not None:
            progress.progress("preparing", 0.0, "loading model")
        model = load_model(model, device=config.device)
    [outcome] = segment_cases(model, cases, config, progress).outcomes
    if outcome.error is not None:
        raise outcome.error
    return outcome.case.output
