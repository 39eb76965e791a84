"""Segment a volume node with a task of a model: volume → background worker → segments beside the volume.

This is the whole of the module's logic, without Qt, so that it runs in Slicer, in scripts and in tests on
slicer-core. The module's ``LabelShareSegmentationLogic`` delegates to one :class:`SegmentationLogic`.

Usage::

    logic = SegmentationLogic()
    node = logic.segment(volumeNode, "acdc", model="/models/acdc-v2", device="cuda")    # blocks, returns the node
    nodes = logic.segment_many([volume1, volume2, volume3], "acdc")    # one after another in the same worker
    job = logic.start(volumeNode, "acdc")      # GUI: poll job.poll() from a timer; job.result is the node
    job = logic.start_ranking(["unlabelled/"], "acdc", output="ranking.csv")   # job.result: the ranked cases
    logic.stop()                               # cancel a running job and stop the worker

The worker (``labelshare worker``) stays alive between runs with the model loaded, so only the first run pays
for starting Python, importing torch and loading the model. It is stopped by :meth:`SegmentationLogic.stop`
(Cancel, scene close, module cleanup) and restarted when the model or device changes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from labelshare.config import RankConfig, SegmentConfig
from labelshare.errors import LabelShareError
from labelshare.paths import model_dir_or_default
from labelshare.ranking import read_ranking
from labelshare.worker import config_request
from LabelShareLib.application import temporary_root
from LabelShareLib.jobs import JobCancelled, JobFailed, WorkerJob, WorkerProcess
from LabelShareLib.segments import import_task_segments, output_segmentation
from LabelShareLib.store import ModelStore, default_store
from LabelShareLib.volumes import check_scalar_volume, volume_to_image

TRANSFER_SUFFIX = ".mha"  # uncompressed single file: the fastest format SimpleITK writes and reads here


def why_not_ready(volume_node, model_summary, task: str) -> str:
    """Why Apply cannot run yet ('' when it can): the reason is shown as the Apply button's tooltip."""
    if volume_node is None:
        return "Select an input volume."
    try:
        check_scalar_volume(volume_node)
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
    return ""


class SegmentationLogic:
    """Runs segmentations in a persistent background worker and imports the results as segments.

    :param worker_factory: makes the :class:`LabelShareLib.jobs.WorkerProcess` for a device (e.g. one running
        another Python).
    :param store: the model store that checks model folders (default: the one both modules share), so a folder
        the model list has checked is not hashed again here.
    """

    def __init__(self, worker_factory: Callable[[str], WorkerProcess] = WorkerProcess,
                 store: ModelStore | None = None):
        self.worker_factory = worker_factory
        self.store = store or default_store()
        self.worker: WorkerProcess | None = None
        self.job: WorkerJob | None = None
        self._worker_model: Path | None = None
        self._transfer_dir: str | None = None

    def _worker_for(self, device: str, model_path: Path) -> WorkerProcess:
        if self.worker is not None and (self.worker.device != device or self._worker_model != model_path.resolve()):
            self.stop()  # frees the old model's (GPU) memory
        if self.worker is None:
            self.worker = self.worker_factory(device)
        self._worker_model = model_path.resolve()
        return self.worker

    def start(self, volume_node, task: str, model: str | Path | None = None, output_node=None,
              on_event: Callable[[dict], None] | None = None, **options) -> WorkerJob:
        """Start segmenting; returns the job at once. Nothing in the scene changes until the job imports.

        :param output_node: segmentation node to write into (the task's segments in it are replaced); default:
            the node of the previous run for this volume and task, else a new ``<volume> <task>`` node.
        :param options: options of :class:`labelshare.config.SegmentConfig` by name, the others at their defaults:
            ``device`` (``auto``, ``cuda`` or ``cuda:N``, ``cpu``), ``mirror`` (average with the left-right mirrored
            prediction for tasks that are not lateralised, ``labelshare segment --tta``), ``largest_component``
            (``model``, ``all`` or ``none``), ``batch_size``, ``slicing_axis``.
        :raises LabelShareError: (before anything runs) for an unusable volume, model, task or option.
        """
        if self.job is not None and not self.job.state.finished:
            raise LabelShareError("a segmentation is already running; cancel it first")
        check_scalar_volume(volume_node)
        config = SegmentConfig.from_options(task=task, **options)
        config.check()
        model_path = model_dir_or_default(model)
        labels = self.store.task_labels(model_path, task)  # checks the folder (once per session: cached)
        worker = self._worker_for(config.device, model_path)
        self._remove_transfer_files()
        self._transfer_dir = tempfile.mkdtemp(prefix="LabelShare-", dir=temporary_root())
        input_path = Path(self._transfer_dir) / f"input{TRANSFER_SUFFIX}"
        output_path = Path(self._transfer_dir) / f"result{TRANSFER_SUFFIX}"
        sitk.WriteImage(volume_to_image(volume_node), str(input_path), useCompression=False)

        def import_result(done_event: dict):
            from labelshare.tasks import read_image
            for node in (volume_node, output_node):
                if node is not None and node.GetScene() is None:
                    raise LabelShareError(f"'{node.GetName()}' was removed from the scene during the run")
            label_image = read_image(done_event.get("output") or output_path, "segmentation result", is_label=True)
            node = output_node or output_segmentation(volume_node, task)
            import_task_segments(node, label_image, task, labels, reference_volume=volume_node,
                                 model_name=model_path.name)
            self._remove_transfer_files()
            return node

        self.job = worker.submit({**config_request("segment", config), "model": str(model_path),
                                  "input": str(input_path), "output": str(output_path)},
                                 import_result=import_result, on_event=on_event)
        return self.job

    def start_ranking(self, inputs: list[str | Path], task: str, output: str | Path, model: str | Path | None = None,
                      on_event: Callable[[dict], None] | None = None,
                      import_ranking: Callable[[list], Any] | None = None, overwrite: bool = False,
                      **options) -> WorkerJob:
        """Rank images (files, folders, globs: the inputs of ``labelshare segment``) by the model's uncertainty in
        the same warm worker (``labelshare rank``'s work, one event per image); the table is written to ``output``
        and ``job.result`` is its cases, most uncertain first (:class:`labelshare.ranking.RankedCase`), or what
        ``import_ranking`` makes of them (called on the polling thread). An existing ``output`` is replaced only with
        ``overwrite`` (the command line's ``--overwrite`` rule; the annotation queue re-ranks into its own table).
        Cancel stops the worker, as for a segmentation. ``options``: options of :class:`labelshare.config.RankConfig`
        by name (``device``, ``score``, ...), the others at their defaults.

        :raises LabelShareError: (before anything runs) for an unusable model, task, score or device.
        """
        if self.job is not None and not self.job.state.finished:
            raise LabelShareError("a segmentation or ranking is already running; cancel it first")
        config = RankConfig.from_options(task=task, **options)
        config.check()
        model_path = model_dir_or_default(model)
        self.store.task_labels(model_path, task)  # checks the folder and the task (cached)
        worker = self._worker_for(config.device, model_path)
        self.job = worker.submit({**config_request("rank", config), "model": str(model_path),
                                  "inputs": [str(path) for path in inputs], "output": str(output),
                                  "overwrite": overwrite},
                                 import_result=lambda done_event: (import_ranking or list)(
                                     read_ranking(done_event.get("output") or output)),
                                 on_event=on_event)
        return self.job

    def segment(self, volume_node, task: str, model: str | Path | None = None, output_node=None,
                timeout: float | None = None, **options):
        """Segment and wait (``options`` as for :meth:`start`); returns the segmentation node. Raises ``JobFailed``
        with the reason on failure."""
        return self.start(volume_node, task, model, output_node, **options).result_or_raise(timeout)

    def segment_many(self, volume_nodes, task: str, model: str | Path | None = None, timeout: float | None = None,
                     **options) -> list:
        """Segment several volumes one after another in the same worker (one start-up, one model load); returns
        their segmentation nodes in order.

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
        """Cancel the running job (if any) and stop the worker; the scene is left as it was."""
        if self.worker is not None:
            self.worker.stop()
        self.worker = None
        self._worker_model = None
        self._remove_transfer_files()

    def _remove_transfer_files(self) -> None:
        if self._transfer_dir is not None:
            shutil.rmtree(self._transfer_dir, ignore_errors=True)
            self._transfer_dir = None
