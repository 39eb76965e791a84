"""Segment a volume node with a task of a model: volume → background worker → segments beside the volume.

This is the module's logic, without Qt, so that it runs in Slicer, in scripts and in tests on slicer-core. The
module's ``LabelShareSegmentationLogic`` delegates to one :class:`SegmentationLogic`. The background worker is the
one both LabelShare modules share (:mod:`LabelShareLib.shared_worker`): while LabelShare Training ranks or segments
for its annotation queue, Apply says so instead of starting, and nothing here stops that job.

Usage::

    logic = SegmentationLogic()
    node = logic.segment(volumeNode, "acdc", model="/models/acdc-v2", device="cuda")    # blocks, returns a new node
    logic.segment(volumeNode, "acdc", output_node=node)     # updates node: edited segments are kept in a copy
    nodes = logic.segment_many([volume1, volume2, volume3], "acdc")    # one after another in the same worker
    job = logic.start(volumeNode, "acdc")      # GUI: poll job.poll() from a timer; job.result is the node
    logic.stop()                               # cancel this module's job, free the worker unless Training uses it

Apply never destroys a correction. Without ``output_node`` every run makes a new segmentation node. Into an
existing node, the task's segments are replaced; when the user edited them since they were imported
(:func:`LabelShareLib.segments.edited_task_segments`), ``confirm_replace`` is asked first (the widget shows a
dialog; declining raises :class:`EditsKept` and nothing runs) and the edited segments are kept in a hidden copy
beside the node (:func:`LabelShareLib.segments.keep_copy_of_task_segments`).

The worker stays alive between runs with the model loaded, so only the first run pays for starting Python,
importing torch and loading the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from labelshare.core.config import SegmentConfig
from labelshare.core.errors import LabelShareError, ModelError, UnknownTaskError
from labelshare.core.paths import model_dir_or_default
from LabelShareLib.jobs import JobCancelled, JobFailed, WorkerJob
from LabelShareLib.model_info import TaskInfo, modality_warning, model_info
from LabelShareLib.segments import UNCERTAINTY_REFERENCE, edited_task_segments, keep_copy_of_task_segments
from LabelShareLib.shared_worker import SEGMENTATION, SharedWorker, default_worker
from LabelShareLib.volumes import check_input_volume, colour_note

ConfirmReplace = Callable[[object, str, list[str]], bool]  # (segmentation node, task, edited segment names) -> go on


class EditsKept(LabelShareError):
    """The user chose to keep the edited segments: nothing was started and nothing changed."""


def why_not_ready(volume_node, model_summary, task: str, busy_reason: str = "") -> str:
    """Why Apply cannot run yet ('' when it can): shown as the Apply button's tooltip. ``busy_reason`` is the shared
    worker's :meth:`~LabelShareLib.shared_worker.SharedWorker.blocked_reason` (LabelShare Training's job)."""
    if volume_node is None:
        return "Select an input volume."
    try:
        check_input_volume(volume_node)
    except LabelShareError as error:
        return f"{str(error)[0].upper()}{str(error)[1:]}."
    if model_summary is None:
        return "Select a model, or add a model folder."
    if not model_summary.valid:
        return f"The model cannot be used: {model_summary.reason}"
    if not task:
        return "Select a task."
    if task not in model_summary.tasks:
        return f"Model {Path(model_summary.path).name} has no task '{task}'."
    return busy_reason


def input_notes(volume_node, task: TaskInfo | None) -> list[str]:
    """What the user should know about segmenting this volume with this task (shown beside the input, never a
    refusal): a colour volume is segmented as its luminance; a DICOM volume of another modality than the task's
    intended input may give a meaningless result."""
    if volume_node is None:
        return []
    notes = [colour_note(volume_node)] + ([modality_warning(volume_node, task)] if task is not None else [])
    return [note for note in notes if note]


def task_info(model: str | Path | None, task: str) -> TaskInfo | None:
    """The card's facts of a task of a model (None when the model or the task cannot be read: the Apply check
    says why)."""
    try:
        return model_info(model_dir_or_default(model)).tasks.get(task)
    except (ModelError, UnknownTaskError):
        return None


def uncertainty_node(segmentation_node):
    """The volume node of the uncertainty map imported with a segmentation node's segments (None: none asked)."""
    return segmentation_node.GetNodeReference(UNCERTAINTY_REFERENCE) if segmentation_node is not None else None


class SegmentationLogic:
    """Runs segmentations in the shared background worker and imports the results as segments.

    :param shared: the worker owner (default: the one both modules share in this session).
    """

    def __init__(self, shared: SharedWorker | None = None):
        self.shared = shared or default_worker()
        self.job: WorkerJob | None = None

    def start(self, volume_node, task: str, model: str | Path | None = None, output_node=None,
              on_event: Callable[[dict], None] | None = None, confirm_replace: ConfirmReplace | None = None,
              uncertainty_map: bool = False, **options) -> WorkerJob:
        """Start segmenting; returns the job at once. Nothing in the scene changes until the job imports.

        The engine checks the volume against the task's training data (its DICOM Modality included): a warning,
        never a refusal, in ``job.notes`` and kept on the segmentation node
        (:func:`LabelShareLib.segments.input_warning`).

        :param output_node: segmentation node whose task segments are replaced; None: a new node.
        :param confirm_replace: asked when ``output_node``'s task segments were edited since they were imported;
            False: raise :class:`EditsKept`. Without it they are replaced (and kept in a hidden copy).
        :param uncertainty_map: also import where the model is unsure, as a volume shown in colour over the image
            (:func:`uncertainty_node` finds it from the segmentation node).
        :param options: options of :class:`labelshare.core.config.SegmentConfig` by name, the others at their defaults:
            ``device`` (``auto``, ``cuda`` or ``cuda:N``, ``cpu``), ``mirror`` (average with the left-right mirrored
            prediction for tasks that are not lateralised, ``labelshare segment --tta``), ``largest_component``
            (``model``, ``all`` or ``none``), ``batch_size``, ``slicing_axis``.
        :raises LabelShareError: (before anything runs) for an unusable volume, model, task or option, or while a
            job runs in the worker (``WorkerBusyError`` names it).
        """
        self.shared.check_free(SEGMENTATION)
        check_input_volume(volume_node)
        config = SegmentConfig.from_options(task=task, **options)
        config.check()
        if output_node is not None and confirm_replace is not None:
            edited = edited_task_segments(output_node, task)
            if edited and not confirm_replace(output_node, task, edited):
                raise EditsKept(f"the edited segments of '{output_node.GetName()}' were kept; nothing was changed")
        self.job = self.shared.start_segmentation(SEGMENTATION, volume_node, config, model, output_node, on_event,
                                                  before_import=self._keep_edited_segments(task),
                                                  uncertainty_map=uncertainty_map)
        return self.job

    @staticmethod
    def _keep_edited_segments(task: str) -> Callable[[object], None]:
        """Just before the import replaces the task's segments: keep a copy of those edited since their import
        (also edits made while the job ran)."""
        def keep(output_node) -> None:
            if edited_task_segments(output_node, task):
                keep_copy_of_task_segments(output_node, task)
        return keep

    def segment(self, volume_node, task: str, model: str | Path | None = None, output_node=None,
                timeout: float | None = None, **options):
        """Segment and wait (``options`` as for :meth:`start`); returns the segmentation node. Raises ``JobFailed``
        with the reason on failure."""
        return self.start(volume_node, task, model, output_node, **options).result_or_raise(timeout)

    def segment_many(self, volume_nodes, task: str, model: str | Path | None = None, timeout: float | None = None,
                     **options) -> list:
        """Segment several volumes one after another in the same worker (one start-up, one model load); returns
        their new segmentation nodes in order.

        A volume that fails does not stop the others: once all were tried, :class:`JobFailed` names every volume
        that failed and why (the segmentations of the others are in the scene). Cancelling stops the whole run.
        """
        nodes, failures = [], []
        for volume_node in volume_nodes:
            try:
                nodes.append(self.segment(volume_node, task, model, None, timeout, **options))
            except JobCancelled:
                raise
            except LabelShareError as error:  # JobFailed, or a volume refused before its job started
                name = volume_node.GetName() if volume_node is not None else "(no volume)"
                failures.append(f"'{name}': {error}")
        if failures:
            raise JobFailed(f"{len(failures)} of {len(failures) + len(nodes)} volumes failed: {'; '.join(failures)}")
        return nodes

    def stop(self) -> None:
        """Cancel this module's running job (the scene is left as it was) and stop the worker to free its memory,
        unless LabelShare Training's job is running in it."""
        self.shared.release(SEGMENTATION)
