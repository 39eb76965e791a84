"""The "Train" section of LabelShare Training: Train/Update/Stop, progress and log, the outcome and its forgetting
report, unfinished runs (resume, publish anyway, discard), automatic training.

The logic is :class:`LabelShareTrainingLib.TrainingLogic` (no Qt): a run is a child process, polled from a timer
here. Why Train cannot start is shown as a reason under the button (``trainReasonLabel``), with the run's budget
when it can; both come from :meth:`~LabelShareTrainingLib.TrainingLogic.readiness`, which reads no case and writes
no file, so refreshing the buttons stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import qt

import slicer
from slicer.i18n import tr as _

from LabelShareTrainingLib import why_cannot_train

from .dialogs import askRefusedDecision, showErrorAndContinue

POLL_INTERVAL_MS = 200
STOP_ON_EXIT_S = 15  # closing Slicer: time the engine gets to save a resumable checkpoint (it needs a few seconds)


class TrainingRunWidget:
    """The Train section (see the module docstring).

    :param ui: the module's widgets; this class uses the Train section's and the unfinished runs' ones.
    :param logic: the module's logic (``training``: the Lib's TrainingLogic; ``running``, ``stop``).
    :param settings: LabelShareLib's :class:`~LabelShareLib.settings.Settings` (automatic training).
    :param selection: (the selected task row or None, the selected model folder or '') of the module.
    :param parameterNode: the module's parameter node (budget, device).
    :param onPublished: called with a new model version (the module selects it in its model list).
    :param onEnded: called when a run has ended (the module refreshes its case list).
    """

    def __init__(self, ui, logic, settings, selection: Callable[[], tuple], parameterNode: Callable[[], object],
                 onPublished: Callable[[Path], None], onEnded: Callable[[], None]):
        self.ui = ui
        self.logic = logic
        self.settings = settings
        self.selection = selection
        self.parameterNode = parameterNode
        self.onPublished = onPublished
        self.onEnded = onEnded
        self._unfinished = []
        self._logLinesShown = 0
        self._readinessKey, self._readiness = None, ("", "")
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.discardRunButton.connect("clicked(bool)", self.onDiscardRun)
        self.ui.unfinishedRunComboBox.connect("currentIndexChanged(int)", self.updateButtons)
        autoTrainAfter = self.settings.train_automatically_after
        self.ui.autoTrainCheckBox.checked = autoTrainAfter > 0
        self.ui.autoTrainCasesSpinBox.value = autoTrainAfter or 5
        self.ui.autoTrainCheckBox.connect("toggled(bool)", self.onAutoTrainChanged)
        self.ui.autoTrainCasesSpinBox.connect("valueChanged(int)", self.onAutoTrainChanged)

    def cleanup(self) -> None:
        """Module closed or Slicer exits: a running job saves a resumable checkpoint and stops (nothing is published
        half-written; the run can be resumed next time)."""
        self.timer.stop()
        if self.logic.running:
            self.stopTrainingOnExit()

    def stopTrainingOnExit(self) -> None:
        """Give the engine up to STOP_ON_EXIT_S to save its checkpoint, with a progress dialog: Slicer is closing,
        and a silent wait would look like a hang."""
        dialog = slicer.util.createProgressDialog(
            windowTitle=_("LabelShare Training"), maximum=STOP_ON_EXIT_S,
            labelText=_("Stopping training: saving a checkpoint to resume it later…"))

        def showWait(secondsLeft: float) -> None:
            dialog.value = int(STOP_ON_EXIT_S - secondsLeft)  # whole seconds waited
            slicer.app.processEvents()

        try:
            self.logic.stop(waitS=STOP_ON_EXIT_S, onWait=showWait)
        finally:
            dialog.close()

    def resumePolling(self) -> None:
        """The module is shown again: follow a run started from the console or before the module was left."""
        if self.logic.training.running:
            self.timer.start()

    # -- buttons ----------------------------------------------------------------------------------------------------
    def updateButtons(self, *args) -> None:
        entry, model = self.selection()
        training = self.logic.training
        running = training.running
        reason = why_cannot_train(entry, running, None if running else training.lock.holder())
        cost = ""
        if not reason and not running:
            reason, cost = self.readiness(entry, model)
        self.ui.trainButton.enabled = not reason
        self.ui.trainReasonLabel.text = reason or (_("Budget: {cost}").format(cost=cost) if cost else "")
        if running:
            self.ui.trainButton.text = _("Stop")
            self.ui.trainButton.toolTip = _("Stop training: the previous model stays as it is; the run can be resumed.")
        else:
            if not model:
                self.ui.trainButton.text = _("Train a first model")
            else:
                self.ui.trainButton.text = _("Update") if entry is not None and entry.in_model else _("Train")
            self.ui.trainButton.toolTip = _("Train in the background; a new model version is written.")
        run = self.selectedUnfinishedRun()
        self.ui.resumeButton.enabled = run is not None and not running
        self.ui.resumeButton.text = _("Publish anyway") if run is not None and run.state() == "refused" \
            else _("Resume")
        self.ui.discardRunButton.enabled = run is not None and not running

    def readiness(self, entry, model: str) -> tuple[str, str]:
        """(why the run Train would start cannot start, its budget and time estimate): asked again only when the
        task, its case count, the model or the budget changed. Light: it reads no case and writes no file."""
        key = (entry.name, entry.cases, model, self.parameterNode().budget)
        if self._readinessKey != key:
            self._readiness = self.logic.training.readiness(entry.name, model or None, key[3])
            self._readinessKey = key
        return self._readiness

    # -- runs -------------------------------------------------------------------------------------------------------
    def onTrainButton(self) -> None:
        training = self.logic.training
        if training.running:
            if slicer.util.confirmYesNoDisplay(_("Stop training? The previous model stays as it is, and the run can "
                                                 "be resumed later.")):
                training.stop()
                self.onPoll()
            return
        (entry, model), parameters = self.selection(), self.parameterNode()
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            self.startRun(training.plan(entry.name, model or None, parameters.budget, parameters.device))

    def onAutoTrainChanged(self, *args) -> None:
        self.settings.train_automatically_after = \
            self.ui.autoTrainCasesSpinBox.value if self.ui.autoTrainCheckBox.checked else 0

    def maybeTrainAutomatically(self) -> None:
        """After a case was added: start a run when automatic training is on and enough new cases exist."""
        after = self.settings.train_automatically_after
        (entry, model), parameters = self.selection(), self.parameterNode()
        training = self.logic.training
        if entry is not None and training.should_train_automatically(entry.name, after) \
                and not why_cannot_train(entry, False, training.lock.holder()) and not self.readiness(entry, model)[0]:
            slicer.util.showStatusMessage(_("{count} new cases: training starts automatically.").format(count=after))
            self.startRun(training.plan(entry.name, model or None, parameters.budget, parameters.device))

    def startRun(self, request, how: str = "start") -> None:
        """Start a run in the background: ``start`` it, ``resume`` a stopped one, or ``publish`` a refused one."""
        training = self.logic.training
        self.ui.logTextEdit.clear()
        self.ui.forgettingTableWidget.setRowCount(0)
        self.ui.resultLabel.text = request.description
        self._logLinesShown = 0
        {"start": training.start, "resume": training.resume, "publish": training.publish_anyway}[how](request)
        self.timer.start()
        self.onPoll()

    def onPoll(self) -> None:
        """Timer tick: take in the run's progress (never blocks) and show it; act on the outcome when it ends."""
        training = self.logic.training
        job = training.job
        if job is None:
            return
        state = training.poll()
        self.ui.progressBar.value = int(100 * job.fraction)
        self.ui.progressBar.setFormat(job.status_text)
        self.ui.trainingStatusLabel.text = training.progress.summary()
        for line in job.log_lines_after(self._logLinesShown):
            self.ui.logTextEdit.appendPlainText(line)
        self._logLinesShown = job.lines_added
        if state.finished:
            self.timer.stop()
            self.showOutcome(training.outcome)
        self.updateButtons()

    def showOutcome(self, outcome) -> None:
        self.showForgettingReport(outcome.report)
        if outcome.state == "published":
            self.ui.resultLabel.text = _("New model version {name} is ready; LabelShare Segmentation lists it.").format(
                name=outcome.model.name)
            self.onPublished(outcome.model)  # the training logic has told the model store
        elif outcome.state == "refused":
            self.ui.resultLabel.text = _("Not published: the new version forgets too much (see the table). "
                                         "The previous model stays in use.")
            self.refreshUnfinishedRuns()
            decision = askRefusedDecision(outcome)
            if decision == "keep":
                self.logic.training.discard(outcome.request)
                self.refreshUnfinishedRuns()
            elif decision == "publish":
                with showErrorAndContinue(_("The version could not be published.")):
                    self.startRun(outcome.request, "publish")
                return
        elif outcome.state == "stopped":
            self.ui.resultLabel.text = _("Stopped. The previous model is unchanged; the run can be resumed.") \
                if outcome.resumable else _("Stopped before anything was trained.")
            self.refreshUnfinishedRuns()
        else:
            self.ui.resultLabel.text = _("Training failed: {reason}").format(reason=outcome.message)
            slicer.util.errorDisplay(_("Training failed: {reason}").format(reason=outcome.message),
                                     detailedText="\n".join(self.logic.training.job.log))
            self.refreshUnfinishedRuns()
        self.onEnded()

    def showForgettingReport(self, report) -> None:
        table = self.ui.forgettingTableWidget
        rows = report.table() if report is not None else []
        table.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for column, text in enumerate(cells):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()
        self.ui.forgettingCollapsibleButton.collapsed = not rows

    # -- unfinished runs --------------------------------------------------------------------------------------------
    def refreshUnfinishedRuns(self) -> None:
        self._unfinished = self.logic.training.unfinished_runs()
        combo = self.ui.unfinishedRunComboBox
        combo.clear()
        for run in self._unfinished:
            state = _("refused by the regression gate") if run.state() == "refused" else _("stopped")
            combo.addItem(f"{run.description} ({state})")
        self.ui.unfinishedRunsCollapsibleButton.collapsed = not self._unfinished
        self.updateButtons()

    def selectedUnfinishedRun(self):
        index = self.ui.unfinishedRunComboBox.currentIndex
        return self._unfinished[index] if 0 <= index < len(self._unfinished) else None

    def onResume(self) -> None:
        run = self.selectedUnfinishedRun()
        with slicer.util.tryWithErrorDisplay(_("The run could not be continued."), waitCursor=True):
            self.startRun(run, "publish" if run.state() == "refused" else "resume")

    def onDiscardRun(self) -> None:
        run = self.selectedUnfinishedRun()
        if not slicer.util.confirmOkCancelDisplay(_("Discard the unfinished run '{run}'? Its partial training is "
                                                    "deleted; published model versions are not touched.")
                                                  .format(run=run.description)):
            return
        with slicer.util.tryWithErrorDisplay(_("The run could not be discarded."), waitCursor=True):
            self.logic.training.discard(run)
            self.refreshUnfinishedRuns()
