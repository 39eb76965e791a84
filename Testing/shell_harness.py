"""Run methods of a module's Qt shell (``LabelShareSegmentation.py``, ``LabelShareTraining.py``) outside Slicer.

The shells import what only Slicer has: PythonQt's ``qt``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``slicer.i18n`` and ``slicer.app``. :func:`shell_module` imports a shell with
minimal stand-ins for those, so that a test can call its widget's handlers and its self-test's ``runTest``. What
decides behaviour is real:

- the widgets are the module's own .ui loaded by Qt (PySide6), wrapped by :class:`PythonQtWidget` in PythonQt's
  calling conventions (``combo.currentText = "x"``, ``combo.connect("currentIndexChanged(int)", f)``), so that
  signals fire exactly when Qt fires them (``clear()`` and the first ``addItem`` change the current index);
- ``slicer.util`` is Slicer's own (slicer-core ships it), e.g. ``tryWithErrorDisplay``, which re-raises;
- the Lib packages and the engine are the real ones.

Use::

    with shell_module(MODULE_FILE) as shell:
        widget = shell.LabelShareSegmentationWidget()
        widget.ui = pythonqt_ui(UI_FILE)
"""

from __future__ import annotations

import importlib
import sys
import types
import unittest
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import slicer

from qt_shell import load_ui_widgets

REPO = Path(__file__).resolve().parents[1]
SHELL_FOLDERS = (REPO / "LabelShareSegmentation", REPO / "LabelShareTraining")
SEGMENTATION = REPO / "LabelShareSegmentation" / "LabelShareSegmentation.py"
SEGMENTATION_UI = REPO / "LabelShareSegmentation" / "Resources" / "UI" / "LabelShareSegmentation.ui"
TRAINING = REPO / "LabelShareTraining" / "LabelShareTraining.py"
TRAINING_UI = REPO / "LabelShareTraining" / "Resources" / "UI" / "LabelShareTraining.ui"
SHELL_MODULES = ("LabelShareSegmentation", "LabelShareTraining", "LabelShareTrainingWidgets")  # Qt: imported fresh


class PythonQtWidget:
    """A real Qt widget used the way PythonQt exposes it: Qt properties as attributes, signals by signature."""

    def __init__(self, widget):
        object.__setattr__(self, "widget", widget)

    def _is_property(self, name: str) -> bool:
        return self.widget.metaObject().indexOfProperty(name) >= 0

    def __getattr__(self, name: str):
        if self._is_property(name):
            return self.widget.property(name)
        return getattr(self.widget, name)

    def __setattr__(self, name: str, value) -> None:
        if self._is_property(name):
            self.widget.setProperty(name, value)
        else:  # a property of a CTK/qMRML class, which PySide6 loads as a plain QWidget: kept as an attribute
            object.__setattr__(self, name, value)

    def connect(self, signature: str, slot) -> None:
        signal = getattr(self.widget, signature.split("(")[0], None)
        if signal is None:  # a CTK/qMRML widget, loaded as a plain QWidget: a test calls the slot itself
            object.__setattr__(self, "slots", {**self.__dict__.get("slots", {}), signature: slot})
            return
        signal.connect(slot)


def pythonqt_ui(ui_file: Path) -> SimpleNamespace:
    """``self.ui`` of a shell: every named widget of the .ui as a :class:`PythonQtWidget`."""
    return SimpleNamespace(**{name: PythonQtWidget(widget) for name, widget in load_ui_widgets(ui_file).items()})


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Stand-in for Slicer's test base class: ``delayDisplay`` only records what a tester would see."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.displayed: list[str] = []

    def delayDisplay(self, message, *args, **kwargs):
        self.displayed.append(message)


def _stand_ins() -> dict[str, types.ModuleType]:
    from PySide6 import QtCore, QtGui, QtWidgets

    qt = types.ModuleType("qt")  # PythonQt's one flat namespace
    for source in (QtCore, QtGui, QtWidgets):  # (dir, not vars: PySide6 creates its classes on first access)
        qt.__dict__.update({name: getattr(source, name) for name in dir(source) if name.startswith("Q")})

    class QTimer(QtCore.QTimer):
        """Qt's timer, connected the PythonQt way (``timer.connect("timeout()", slot)``)."""

        def connect(self, signature, slot):
            getattr(self, signature.split("(")[0]).connect(slot)

    qt.QTimer = QTimer

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: None

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    return {"qt": qt, "slicer.i18n": i18n, "slicer.parameterNodeWrapper": wrapper,
            "slicer.ScriptedLoadableModule": scripted}


class SlicerApp:
    """Stand-in for ``slicer.app``: what ``slicer.util`` and the shells ask of it."""

    def __init__(self, temporary_path: str = "", testing: bool = False):
        self.temporaryPath = temporary_path
        self.testing = testing

    def testingEnabled(self) -> bool:
        return self.testing

    def setOverrideCursor(self, cursor) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass

    def connect(self, signal, slot) -> None:
        pass

    def processEvents(self) -> None:
        pass


@contextmanager
def shell_module(module_file: Path, app: SlicerApp | None = None) -> Iterator[types.ModuleType]:
    """The shell module imported with the stand-ins; everything is removed again afterwards."""
    stand_ins = _stand_ins()
    shell_names = [name for name in sys.modules if name.split(".")[0] in SHELL_MODULES]
    saved = {name: sys.modules.get(name) for name in (*stand_ins, *SHELL_MODULES, *shell_names)}
    added_paths = [str(folder) for folder in SHELL_FOLDERS if str(folder) not in sys.path]
    sys.path[:0] = added_paths
    sys.modules.update(stand_ins)
    for name in saved:
        if name.split(".")[0] in SHELL_MODULES:
            sys.modules.pop(name, None)
    slicer.app = app or SlicerApp()
    try:
        yield importlib.import_module(module_file.stem)
    finally:
        del slicer.app
        for name in [name for name in sys.modules if name.split(".")[0] in SHELL_MODULES]:
            sys.modules.pop(name)  # imported with this call's stand-ins
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for path in added_paths:
            sys.path.remove(path)


# -- the modules' widgets, wired as their setup() wires them ---------------------------------------------------------
def settings_in(tmp_path: Path, **values):
    """LabelShareLib's settings in a dictionary (not the user's): a models folder under ``tmp_path``."""
    from LabelShareLib.settings import MODELS_FOLDER, DictSettings, Settings
    return Settings(DictSettings({MODELS_FOLDER: str(tmp_path / "models"), **values}))


class ParameterNode(SimpleNamespace):
    """A parameter node stand-in: the fields a widget reads and writes, and the GUI calls it makes; hashable, as
    the node a widget observes."""

    __hash__ = object.__hash__

    def disconnectGui(self, tag) -> None:  # noqa: N802 (parameterNodeWrapper's name)
        pass


def parameter_node(**values) -> ParameterNode:
    return ParameterNode(**values)


def segmentation_widget(shell, tmp_path: Path, task: str, model: str | None = None, settings=None, logic=None):
    """LabelShare Segmentation's widget with its model and task lists wired as ``setup`` wires them, on its real
    .ui, and a parameter node remembering ``model`` (default: the bundled model) and ``task``."""
    from labelshare.core.paths import default_model_dir
    widget = shell.LabelShareSegmentationWidget()
    widget.ui = pythonqt_ui(SEGMENTATION_UI)
    widget._mirrorToolTip = widget.ui.mirrorCheckBox.toolTip
    widget.settings = settings or settings_in(tmp_path)
    widget.logic = logic or SimpleNamespace(stop=lambda: None)
    widget.timer = shell.qt.QTimer()
    widget.timer.connect("timeout()", widget.onPoll)
    widget._modelStore = shell.default_store()
    widget._parameterNode = parameter_node(model=str(model or default_model_dir()), task=task, inputVolume=None,
                                           outputSegmentation=None, largestComponentLabels="model", mirror=False)
    widget.ui.modelComboBox.connect("currentIndexChanged(int)", widget.onModelSelected)
    widget.ui.taskComboBox.connect("currentIndexChanged(int)", widget.onTaskSelected)
    widget.ui.showAllVersionsCheckBox.connect("toggled(bool)", widget.onShowAllVersions)
    return widget


def training_widget(shell, training, settings, model: str | None = None, task: str = ""):
    """LabelShare Training's widget wired as its ``setup`` wires it (sections, model and task lists) on its real
    .ui, with ``training`` as its Lib logic and a parameter node remembering ``model`` (None: nothing chosen)."""
    widget = shell.LabelShareTrainingWidget()
    widget.ui = pythonqt_ui(TRAINING_UI)
    widget.settings = settings
    widget.logic = SimpleNamespace(training=training, running=False)
    widget._parameterNode = parameter_node(model=model or "", task=task, inputVolume=None, inputSegmentation=None,
                                           budget="quick", device="auto")
    widget.createSections()
    widget.ui.modelComboBox.connect("currentIndexChanged(int)", widget.onModelSelected)
    widget.ui.taskComboBox.connect("currentIndexChanged(int)", widget.onTaskSelected)
    return widget
