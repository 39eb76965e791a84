"""The "Annotation queue" section of LabelShare Training: Rank a folder of unlabelled images, Next case, the table.

The logic is :class:`LabelShareTrainingLib.AnnotationQueueLogic` (no Qt); its jobs run in the background worker both
modules share (:mod:`LabelShareLib.shared_worker`). This class only wires the section's widgets of the module's .ui
to it: it polls its own job, shows LabelShare Segmentation's job when that one occupies the worker, and tells the
module what it needs to know (the volume and segmentation of the case it loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import qt

import slicer
from slicer.i18n import tr as _

from LabelShareLib import TRAINING, JobState, default_worker, ensure_dependencies
from LabelShareTrainingLib import AnnotationQueue, AnnotationQueueLogic, why_cannot_rank, why_no_next_case

from .dialogs import showErrorAndContinue

POLL_INTERVAL_MS = 200


class AnnotationQueueWidget:
    """The queue section (see the module docstring).

    :param ui: the module's widgets (``self.ui`` of the module widget); this class uses the ``queue*``, ``rankButton``,
        ``nextCaseButton`` and ``workerStatusLabel`` ones.
    :param settings: LabelShareLib's :class:`~LabelShareLib.settings.Settings` (the folder of unlabelled images).
    :param workspace: the training workspace (the queue file is in it).
    :param selection: (the selected task row or None, the selected model folder or '') of the module.
    :param parameterNode: the module's parameter node (device; the loaded case becomes its input volume and
        segmentation).
    """

    def __init__(self, ui, settings, workspace: Callable[[], Path], selection: Callable[[], tuple],
                 parameterNode: Callable[[], object]):
        self.ui = ui
        self.settings = settings
        self.workspace = workspace
        self.selection = selection
        self.parameterNode = parameterNode
        self.shared = default_worker()
        self._logic: AnnotationQueueLogic | None = None
        self._job = None  # this module's running ranking or "Next case" segmentation
        self._jobKind = ""  # "rank" or "next"
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self.ui.rankButton.connect("clicked(bool)", self.onRank)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.ui.queueFolderPathLineEdit.currentPath = self.settings.annotation_queue_folder
        self.ui.queueFolderPathLineEdit.connect("currentPathChanged(QString)", self.onQueueFolderChanged)
        self.shared.changed.subscribe(self.onWorkerChanged)

    def cleanup(self) -> None:
        """The module is cleaned up (Slicer exits): stop polling and listening, cancel this module's job and let the
        shared worker go (it stops unless LabelShare Segmentation's job runs in it)."""
        self.timer.stop()
        self.shared.changed.unsubscribe(self.onWorkerChanged)
        self.shared.release(TRAINING)

    @property
    def logic(self) -> AnnotationQueueLogic:
        if self._logic is None:
            self._logic = AnnotationQueueLogic(AnnotationQueue.in_workspace(self.workspace()), self.shared)
        return self._logic

    def workspaceChanged(self) -> None:
        self._logic = None  # the queue file is in the workspace
        self.refresh()

    def onSceneStartClose(self) -> None:
        """A "Next case" segmentation would import into a scene that is going away: cancel it (a ranking only
        writes files, so it goes on)."""
        if self._job is not None and self._jobKind == "next":
            self.shared.cancel(TRAINING)
            self.onPoll()

    # -- the queue table --------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        entries = []
        with showErrorAndContinue(_("The annotation queue could not be read.")):
            entries = self.logic.queue.entries  # a damaged queue file: the error, then an empty queue
        table = self.ui.queueTableWidget
        table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            voxels = ", ".join(f"{name} {count}" for name, count in entry.voxels.items())
            for column, text in enumerate((entry.case, f"{entry.score:.4f}", voxels, _("done") if entry.done else "")):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(entry.source)
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        state = self._logic.queue.state if entries else None
        done, total = self._logic.queue.counts() if entries else (0, 0)
        self.ui.queueSummaryLabel.text = _("{done} of {total} done; task {task}, ranked {when} by {score} with "
                                           "{model}.").format(done=done, total=total, task=state.task,
                                                              when=state.ranked, score=state.score,
                                                              model=Path(state.model).name) if state else ""
        self.updateButtons()

    def caseAdded(self, volumeNode) -> bool:
        """After "Add current case": mark the case done when the volume is the queue's current case."""
        if self._logic is None or self._logic.case_added(volumeNode) is None:
            return False
        self.refresh()
        return True

    def onQueueFolderChanged(self, path: str) -> None:
        self.settings.annotation_queue_folder = path
        self.updateButtons()

    # -- jobs -------------------------------------------------------------------------------------------------------
    def onRank(self) -> None:
        if self._job is not None:
            self.shared.cancel(TRAINING)
            self.onPoll()
            return
        entry, model = self.selection()
        with slicer.util.tryWithErrorDisplay(_("Ranking could not start."), waitCursor=True):
            ensure_dependencies()
            self.startJob("rank", self.logic.start_rank(self.settings.annotation_queue_folder, entry.name, model,
                                                        device=self.parameterNode().device))

    def onNextCase(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The next case could not be loaded."), waitCursor=True):
            ensure_dependencies()
            entry, volume, job = self.logic.start_next(device=self.parameterNode().device)
            self.parameterNode().inputVolume = volume
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
            self.startJob("next", job)

    def startJob(self, kind: str, job) -> None:
        self._job, self._jobKind = job, kind
        self.timer.start()
        self.onPoll()

    def onPoll(self) -> None:
        """Timer tick: take in this module's job (never blocks), or show the other module's job in the worker."""
        job = self._job
        if job is None:
            self.updateButtons()
            if not self.shared.busy:
                self.timer.stop()
            return
        state = job.poll()
        self.ui.queueProgressBar.value = int(100 * job.fraction)
        self.ui.queueProgressBar.setFormat(job.status_text)
        if state.finished:
            self._job = None
            if state == JobState.FAILED:
                slicer.util.errorDisplay(_("The annotation queue's job failed: {reason}").format(reason=job.error))
            elif state == JobState.DONE and self._jobKind == "next":  # the model's masks, to correct
                self.parameterNode().inputSegmentation = job.result
            self.refresh()
        self.updateButtons()

    def onWorkerChanged(self, use=None) -> None:
        """A job of either module started or ended in the shared worker: show it, refresh the buttons (and keep
        the display current while the other module's job runs)."""
        self.updateButtons()
        if self.shared.busy:
            self.timer.start()

    def updateButtons(self) -> None:
        entry, model = self.selection()
        busy = self._job is not None
        blocked = self.shared.blocked_reason(TRAINING)
        self.ui.workerStatusLabel.text = blocked
        self.ui.workerStatusLabel.visible = bool(blocked)
        rankReason = why_cannot_rank(entry, model, self.settings.annotation_queue_folder, blocked)
        self.ui.rankButton.enabled = busy or not rankReason
        self.ui.rankButton.text = _("Cancel") if busy else _("Rank")
        self.ui.rankButton.toolTip = _("Stop the ranking or segmentation (the background worker is stopped).") \
            if busy else rankReason or _("Score every image by the model's uncertainty, most uncertain first.")
        queue = self._logic.queue if self._logic is not None else None  # refresh() reads it
        nextReason = why_no_next_case(queue, blocked or (_("The queue's job is running.") if busy else ""))
        self.ui.nextCaseButton.enabled = not nextReason
        self.ui.nextCaseButton.toolTip = nextReason or _("Load and segment: {case}").format(
            case=queue.next_case().case)
