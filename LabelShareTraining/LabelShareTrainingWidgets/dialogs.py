"""The questions LabelShare Training asks (Qt dialogs), and how it shows an error and goes on."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import qt

import slicer
from slicer.i18n import tr as _


@contextmanager
def showErrorAndContinue(message: str):
    """``slicer.util.tryWithErrorDisplay`` (wait cursor, the error shown with its details) for steps after which
    the module must go on: that function re-raises, and a task folder that cannot be read would abort the
    module's setup. The error ends here; the step's result stays empty."""
    try:
        with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
            yield
    except Exception as error:  # already shown to the user; also in the log, which testing mode keeps
        logging.warning(f"LabelShare: {message} {error}")


def askSegmentChoices(mapping, labels: list[str], previous: dict | None) -> dict | None:
    """For every segment that matches no label: which label it is, or skip it; None when cancelled."""
    dialog = qt.QDialog(slicer.util.mainWindow())
    dialog.setWindowTitle(_("Segments without a matching label"))
    form = qt.QFormLayout(dialog)
    form.addRow(qt.QLabel(_("These segments match no label of the task. Map each to a label or skip it.")))
    combos = {}
    for segment in mapping.unmatched:
        combo = qt.QComboBox()
        combo.addItems([_("(skip this segment)")] + labels)
        form.addRow(segment, combo)
        combos[segment] = combo
    buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
    buttons.connect("accepted()", dialog.accept)
    buttons.connect("rejected()", dialog.reject)
    form.addRow(buttons)
    if not dialog.exec_():
        return None
    chosen = dict(previous or {})
    for segment, combo in combos.items():
        chosen[segment] = labels[combo.currentIndex - 1] if combo.currentIndex > 0 else None
    return chosen


def askDuplicate(error) -> str | None:
    """The same image is already collected: "replace", "keep" (both), or None (cancel)."""
    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(_("Case already collected"))
    box.setText(str(error))
    box.setInformativeText(_("Replace moves the old case to the task's trash folder; nothing is deleted."))
    replace = box.addButton(_("Replace the old case"), qt.QMessageBox.AcceptRole)
    keep = box.addButton(_("Keep both"), qt.QMessageBox.AcceptRole)
    box.addButton(qt.QMessageBox.Cancel)
    box.exec_()
    clicked = box.clickedButton()
    if clicked == replace:
        return "replace"
    return "keep" if clicked == keep else None


def askRefusedDecision(outcome) -> str | None:
    """The regression gate refused the new version: "keep" the old model, "publish" anyway, or None (later)."""
    box = qt.QMessageBox(slicer.util.mainWindow())
    box.setWindowTitle(_("New version not published"))
    box.setText(_("The new version loses too much on tasks the model already knew (see the forgetting report). "
                  "The old model stays in use."))
    box.setDetailedText(outcome.message)
    keep = box.addButton(_("Keep the old model"), qt.QMessageBox.AcceptRole)
    publish = box.addButton(_("Publish anyway"), qt.QMessageBox.DestructiveRole)
    box.addButton(_("Decide later"), qt.QMessageBox.RejectRole)
    box.exec_()
    clicked = box.clickedButton()
    if clicked == keep:
        return "keep"
    return "publish" if clicked == publish else None
