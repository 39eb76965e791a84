"""The one background worker both LabelShare modules share, and who is using it.

LabelShare Segmentation (Apply) and LabelShare Training (the annotation queue's Rank and Next case) run their
network work in one persistent ``labelshare worker`` child (:class:`.jobs.WorkerProcess`: Python, torch and the
model are loaded once). :class:`SharedWorker` is its one owner: it knows which module's job is running and what it
does, so that

- either module can show the other's job (:meth:`SharedWorker.describe`, :attr:`SharedWorker.changed`);
- a module can only cancel its own job (:meth:`SharedWorker.cancel`), and freeing the worker's memory
  (:meth:`SharedWorker.release`: another model chosen, the scene closed, the module cleaned up) never stops the
  other module's job;
- a request while the other module's job runs is refused with what is running and where
  (:class:`WorkerBusyError`).

It also turns a volume node into a segment request (the volume written to a transfer file, the result imported as
segments on Slicer's main thread) and a folder into a rank request, for both modules.

Usage::

    shared = default_worker()                                       # the one of this Slicer session
    job = shared.start_segmentation(SEGMENTATION, volumeNode, SegmentConfig.from_options(task="acdc", device="cpu"))
    shared.changed.subscribe(widget.onWorkerChanged)               # a job started or ended (either module's)
    shared.describe()                    # "LabelShare Training is ranking the images of 'scans' for task acdc …"
    shared.release(SEGMENTATION)         # e.g. another model chosen: stop the process unless Training uses it
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from labelshare.core.config import RankConfig, SegmentConfig
from labelshare.core.errors import LabelShareError
from labelshare.core.input_check import MODALITY_TAG
from labelshare.core.paths import model_dir_or_default
from labelshare.core.ranking_table import read_ranking
from labelshare.core.worker_protocol import config_request

from .application import temporary_root
from .jobs import WorkerJob, WorkerProcess
from .model_info import dicom_modality
from .segments import (UNCERTAINTY_REFERENCE, import_task_segments, new_output_segmentation, set_input_warning)
from .signals import Signal
from .store import ModelStore, default_store
from .volumes import segmentation_input, show_uncertainty

SEGMENTATION = "LabelShare Segmentation"
TRAINING = "LabelShare Training"
TRANSFER_SUFFIX = ".mha"  # uncompressed single file: the fastest format SimpleITK writes and reads here


class WorkerBusyError(LabelShareError):
    """The worker is running another job; the message says which module's, what it does and where to cancel it."""


@dataclass
class WorkerUse:
    """A job in the shared worker: the module that started it and what it does (``action``, for the other module's
    eyes: "segmenting 'CT 1' with task acdc")."""

    module: str
    action: str
    job: WorkerJob

    def describe(self) -> str:
        """One line: who, what, how far."""
        return f"{self.module} is {self.action} ({self.job.status_text.lower()})"


class SharedWorker:
    """Owner of the background worker both modules use (see the module docstring).

    :param worker_factory: makes the :class:`.jobs.WorkerProcess` for a device (tests give a recorder).
    :param store: the model store that checks model folders (default: the one both modules share), so a folder the
        model list has checked is not hashed again here.
    """

    def __init__(self, worker_factory: Callable[[str], WorkerProcess] = WorkerProcess,
                 store: ModelStore | None = None):
        self.worker_factory = worker_factory
        self._store = store
        self.worker: WorkerProcess | None = None
        self.use: WorkerUse | None = None
        self.changed = Signal("the shared worker")  # notified with the WorkerUse when a job starts and when it ends
        self._worker_model: Path | None = None

    @property
    def store(self) -> ModelStore:
        return self._store if self._store is not None else default_store()

    # -- who uses it ------------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.use is not None and not self.use.job.state.finished

    def running_for(self, module: str) -> WorkerUse | None:
        """The running job of ``module`` (None when it has none)."""
        return self.use if self.busy and self.use.module == module else None

    def describe(self) -> str:
        """What the worker does now ('' when idle)."""
        return self.use.describe() if self.busy else ""

    def check_free(self, module: str) -> None:
        """Raise :class:`WorkerBusyError` while a job runs (the other module's, or this module's own)."""
        if not self.busy:
            return
        if self.use.module == module:
            raise WorkerBusyError(f"{module} is still {self.use.action}; cancel it first")
        raise WorkerBusyError(self.blocked_reason(module))

    def blocked_reason(self, module: str) -> str:
        """Why ``module`` cannot start a job now: the other module's running job ('' when it can)."""
        if not self.busy or self.use.module == module:
            return ""
        return (f"The background worker is busy: {self.use.describe()}. Wait for it, or cancel it in "
                f"{self.use.module}.")

    # -- jobs -------------------------------------------------------------------------------------------------------
    def submit(self, module: str, action: str, device: str, model_path: Path, request: dict,
               **job_options) -> WorkerJob:
        """Send a request to the worker (started or restarted for ``device`` and ``model_path``); returns its job.

        :raises WorkerBusyError: while a job runs (:meth:`check_free`).
        """
        self.check_free(module)
        worker = self._worker_for(device, model_path)
        job = worker.submit(request, **job_options)
        self.use = WorkerUse(module, action, job)
        job.ended.subscribe(self._job_ended)
        self.changed.notify(self.use)
        if job.state.finished:  # the worker was gone before the request reached it
            self._job_ended(job)
        return job

    def _job_ended(self, job: WorkerJob) -> None:
        job.ended.unsubscribe(self._job_ended)
        if self.use is not None and self.use.job is job:
            self.changed.notify(self.use)

    def _worker_for(self, device: str, model_path: Path) -> WorkerProcess:
        if self.worker is not None and (self.worker.device != device or self._worker_model != model_path.resolve()):
            self._stop_process()  # frees the old model's (GPU) memory
        if self.worker is None:
            self.worker = self.worker_factory(device)
        self._worker_model = model_path.resolve()
        return self.worker

    def cancel(self, module: str) -> None:
        """Cancel ``module``'s running job (the worker process is stopped: the only way to interrupt torch); another
        module's job is never touched."""
        if self.running_for(module) is not None:
            self.use.job.cancel()
            self._stop_process()

    def release(self, module: str) -> None:
        """``module`` no longer needs the worker (another model, scene closed, module cleanup): cancel its job and
        stop the process to free its memory, unless another module's job is running in it."""
        self.cancel(module)
        if not self.busy:
            self._stop_process()

    def _stop_process(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.worker = None
        self._worker_model = None

    # -- the requests both modules send -----------------------------------------------------------------------------
    def start_segmentation(self, module: str, volume_node, config: SegmentConfig, model: str | Path | None = None,
                           output_node=None, on_event: Callable[[dict], None] | None = None,
                           before_import: Callable[[Any], None] | None = None,
                           uncertainty_map: bool = False) -> WorkerJob:
        """Segment a volume node with the configuration's task and options (device, mirror, largest component,
        ...); returns the job at once. Nothing in the scene changes until the job imports (on the polling thread):
        then ``job.result`` is ``output_node`` with the task's segments replaced (``before_import(output_node)`` is
        called first), or a new ``<volume> <task>`` node beside the volume. A colour (RGB) volume is segmented as
        its luminance; ``job.notes`` says so.

        The engine checks the input against the task's training data (the volume's DICOM Modality goes with it):
        its warning is in ``job.notes`` and kept on the segmentation node
        (:func:`~LabelShareLib.segments.input_warning`). With ``uncertainty_map`` the map is imported too, as a
        volume shown over the image (:func:`~LabelShareLib.volumes.show_uncertainty`) that the segmentation node
        references (:data:`~LabelShareLib.segments.UNCERTAINTY_REFERENCE`; a node segmented again updates it).

        :raises LabelShareError: (before anything runs) for an unusable volume, model, task or option, or a busy
            worker (:class:`WorkerBusyError`).
        """
        image, notes = segmentation_input(volume_node)
        modality = dicom_modality(volume_node)
        if modality:  # the engine's input check compares it with the task's intended modality
            image.SetMetaData(MODALITY_TAG, modality)
        config.check()
        task = config.task
        model_path = model_dir_or_default(model)
        labels = self.store.task_labels(model_path, task)  # checks the folder (once per session: cached)
        self.check_free(module)  # before writing the transfer file
        transfer_dir = Path(tempfile.mkdtemp(prefix="LabelShare-", dir=temporary_root()))
        input_path, output_path = transfer_dir / f"input{TRANSFER_SUFFIX}", transfer_dir / f"result{TRANSFER_SUFFIX}"
        uncertainty_path = transfer_dir / f"uncertainty{TRANSFER_SUFFIX}"
        if uncertainty_map:
            config = replace(config, uncertainty=str(uncertainty_path))
        try:
            sitk.WriteImage(image, str(input_path), useCompression=False)
        except BaseException:
            shutil.rmtree(transfer_dir, ignore_errors=True)
            raise

        def import_result(done_event: dict):
            from labelshare.core.tasks import read_image
            for node in (volume_node, output_node):
                if node is not None and node.GetScene() is None:
                    raise LabelShareError(f"'{node.GetName()}' was removed from the scene during the run")
            label_image = read_image(done_event.get("output") or output_path, "segmentation result", is_label=True)
            if output_node is not None and before_import is not None:
                before_import(output_node)
            node = output_node or new_output_segmentation(volume_node, task)
            import_task_segments(node, label_image, task, labels, reference_volume=volume_node,
                                 model_name=model_path.name)
            set_input_warning(node, f"'{volume_node.GetName()}' is {job.warnings[-1].get('detail', '')}"
                              if job.warnings else "")
            if uncertainty_map:
                shown = show_uncertainty(read_image(uncertainty_path, "uncertainty map"), volume_node,
                                         f"{node.GetName()} uncertainty", node.GetNodeReference(UNCERTAINTY_REFERENCE))
                node.SetNodeReferenceID(UNCERTAINTY_REFERENCE, shown.GetID())
            return node

        job = self.submit(module, f"segmenting '{volume_node.GetName()}' with task {task}", config.device, model_path,
                          {**config_request("segment", config), "model": str(model_path), "input": str(input_path),
                           "output": str(output_path)},
                          import_result=import_result, on_event=on_event)
        job.notes.extend(notes)
        for note in notes:
            job.add_log(note)
        job.ended.subscribe(lambda ended: shutil.rmtree(transfer_dir, ignore_errors=True))
        if job.state.finished:
            shutil.rmtree(transfer_dir, ignore_errors=True)
        return job

    def start_ranking(self, module: str, inputs: list[str | Path], output: str | Path, config: RankConfig,
                      model: str | Path | None = None, on_event: Callable[[dict], None] | None = None,
                      import_ranking: Callable[[list], Any] | None = None, overwrite: bool = False) -> WorkerJob:
        """Rank images (files, folders, globs: the inputs of ``labelshare segment``) by the model's uncertainty
        for the configuration's task and score (``labelshare rank``'s work, one event per image); the table is
        written to ``output`` and ``job.result`` is its cases, most uncertain first
        (:class:`labelshare.core.ranking_table.RankedCase`), or what ``import_ranking`` makes of them (called on the
        polling thread). An existing ``output`` is replaced only with ``overwrite``.

        :raises LabelShareError: (before anything runs) for an unusable model, task, score or device, or a busy
            worker (:class:`WorkerBusyError`).
        """
        config.check()
        task = config.task
        model_path = model_dir_or_default(model)
        self.store.task_labels(model_path, task)  # checks the folder and the task (cached)
        where = ", ".join(f"'{Path(path).name}'" for path in inputs)
        return self.submit(module, f"ranking the images of {where} for task {task}", config.device, model_path,
                           {**config_request("rank", config), "model": str(model_path),
                            "inputs": [str(path) for path in inputs], "output": str(output), "overwrite": overwrite},
                           import_result=lambda done_event: (import_ranking or list)(
                               read_ranking(done_event.get("output") or output)),
                           on_event=on_event)


_SHARED_WORKER = SharedWorker()


def default_worker() -> SharedWorker:
    """The worker both modules share in one Slicer session."""
    return _SHARED_WORKER
