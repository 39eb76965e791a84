"""Handlers of both modules' Qt shells, run on their real .ui widgets (PySide6, with PythonQt's conventions) and
Slicer's own ``slicer.util`` (see shell_harness.py): what Qt's signals do to the parameter node, how errors are
shown, what the self-tests do without the engine's packages."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from shell_harness import (SEGMENTATION, SHELL_FOLDERS, TRAINING, TRAINING_UI, SlicerApp, pythonqt_ui,
                           segmentation_widget, settings_in, shell_module, training_widget)

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(folder) for folder in SHELL_FOLDERS]  # the Lib packages, which fixtures import directly


@pytest.fixture
def segmentation_shell(monkeypatch, tmp_path):
    with shell_module(SEGMENTATION) as shell:
        yield shell


def test_segmentation_keeps_the_chosen_task_when_the_model_list_is_refreshed(segmentation_shell, tmp_path):
    """Refilling the task list makes Qt select its first item; that must not overwrite the task the scene
    remembers (the model list is refreshed on opening the module and whenever a new model version appears)."""
    widget = segmentation_widget(segmentation_shell, tmp_path, task="acdc")
    widget.refreshModels()
    tasks = [widget.ui.taskComboBox.itemText(i) for i in range(widget.ui.taskComboBox.count)]
    assert tasks[0] != "acdc" and "acdc" in tasks
    assert widget._parameterNode.task == "acdc"
    assert widget.ui.taskComboBox.currentText == "acdc"
    assert widget.ui.taskLabelsLabel.text.startswith("Labels: ") and "myocardium" in widget.ui.taskLabelsLabel.text
    widget.onModelStoreChanged()  # e.g. LabelShare Training published a version
    assert widget._parameterNode.task == "acdc"

    widget.ui.taskComboBox.currentText = tasks[0]  # the user picks another task: that one is remembered
    assert widget._parameterNode.task == tasks[0]




@pytest.fixture
def shown_errors(monkeypatch) -> list[str]:
    """What ``slicer.util.errorDisplay`` would have shown (Slicer's own ``tryWithErrorDisplay`` calls it)."""
    import slicer.util
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *args, **kwargs: shown.append(text))
    return shown


def test_training_shows_an_unreadable_task_folder_and_stays_usable(monkeypatch, tmp_path, shown_errors):
    """One task folder with an unreadable label file must not stop the module from opening: the error is shown,
    the other tasks are listed and can be worked with."""
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    with shell_module(TRAINING) as shell:
        from LabelShareTrainingLib import TrainingLock, TrainingLogic
        training = TrainingLogic(workspace=tmp_path / "tasks", models_dir=tmp_path / "models",
                                 lock=TrainingLock(tmp_path / "training.lock"))
        training.create_task("liver", ["liver", "tumour"])
        broken = training.create_task("broken", ["liver"]).root
        for folder, name in (("imagesTr", "case1_0000.nii.gz"), ("labelsTr", "case1.nii.gz")):
            (broken / folder).mkdir(exist_ok=True)
            (broken / folder / name).write_bytes(b"not an image")
        widget = training_widget(shell, training, settings_in(tmp_path), model="", task="broken")

        widget.refreshAll()  # what setup() and enter() do

        assert len(shown_errors) == 1 and "case1.nii.gz" in shown_errors[0], shown_errors
        assert widget.ui.taskComboBox.currentText.startswith("broken")
        assert widget.ui.casesTableWidget.rowCount == 0
        widget.ui.taskComboBox.setCurrentIndex(widget.ui.taskComboBox.findData("liver"))
        assert widget._parameterNode.task == "liver" and widget.ui.casesSummaryLabel.text.startswith("0 cases")
        assert len(shown_errors) == 1


class SlicerInstallers:
    """Records what the module asks of Slicer's installers and 'installs' into a fake package table, and what its
    progress dialog shows."""

    def __init__(self, installed: dict[str, str]):
        self.installed, self.calls = installed, []

    def createProgressDialog(self, **options):
        recorder = self

        class Dialog(SimpleNamespace):
            def __setattr__(self, name, value):
                super().__setattr__(name, value)
                if name == "labelText":
                    recorder.calls.append(("shows", value))

            def close(self):
                recorder.calls.append(("dialog closed",))

        self.calls.append(("dialog", options["windowTitle"]))
        return Dialog()

    def confirmOkCancelDisplay(self, text, windowTitle=None, **kwargs):
        self.calls.append(("confirm", text))
        return True

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        self.calls.append(("PyTorchUtils.installTorch", askConfirmation, torchVersionRequirement))
        self.installed["torch"] = "2.13.0+cpu"

    def pip_install(self, requirements):
        self.calls.append(("pip_install", requirements))
        self.installed.update({argument.split(">=")[0]: "99.0" for argument in requirements if ">=" in argument})


@pytest.fixture
def installers(monkeypatch) -> SlicerInstallers:
    import slicer.util
    from LabelShareLib import dependencies
    recorder = SlicerInstallers({"numpy": "2.0.2", "SimpleITK": "2.5.2"})
    monkeypatch.setattr(dependencies, "installed_version", recorder.installed.get)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", recorder.confirmOkCancelDisplay)
    monkeypatch.setattr(slicer.util, "pip_install", recorder.pip_install)
    monkeypatch.setattr(slicer.util, "createProgressDialog", recorder.createProgressDialog)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", SimpleNamespace(
        PyTorchUtilsLogic=lambda: SimpleNamespace(installTorch=recorder.installTorch)))
    return recorder


def test_first_run_install_asks_one_question_in_slicer_and_shows_each_step(installers):
    """Slicer 5.10 (no slicer.packaging): one dialog, then PyTorchUtils without its own dialog, then pip_install
    with a list of arguments; a progress dialog says what is installed and which step it is on (issue 27: minutes
    behind a wait cursor)."""
    with shell_module(SEGMENTATION) as shell:
        shell.LabelShareSegmentationLogic().ensureDependencies()
    shown = [call[1] for call in installers.calls if call[0] == "shows"]
    assert [text.split(":")[0] for text in shown] == ["Step 1 of 3", "Step 2 of 3", "Step 3 of 3"]
    assert "PyTorch (torch>=2.4.1)" in shown[0] and "monai>=1.5" in shown[1] and "with pip" in shown[1]
    kinds = [call[0] for call in installers.calls]
    assert kinds == ["confirm", "dialog", "shows", "PyTorchUtils.installTorch", "shows", "pip_install", "shows",
                     "dialog closed"], installers.calls
    installers.calls = [call for call in installers.calls if call[0] in ("confirm", "PyTorchUtils.installTorch",
                                                                         "pip_install")]
    assert installers.calls[1][1:] == (False, ">=2.4.1")
    arguments = installers.calls[2][1]
    assert isinstance(arguments, list) and arguments[-2] == "-c" and "monai>=1.5" in arguments


def test_nothing_is_installed_in_testing_mode(installers):
    """Slicer's test machines: confirmations would accept by themselves and download gigabytes."""
    with shell_module(SEGMENTATION, SlicerApp(testing=True)) as shell:
        from LabelShareLib import DependencyError
        with pytest.raises(DependencyError, match="testing mode"):
            shell.LabelShareSegmentationLogic().ensureDependencies()
    assert installers.calls == []


SELF_TESTS = {  # module file → (test class, the tests that need the engine's packages, the tests that do not)
    SEGMENTATION: ("LabelShareSegmentationTest", ["test_console_api_segments_a_synthetic_volume"],
                   ["test_widget_explains_why_apply_is_disabled"]),
    TRAINING: ("LabelShareTrainingTest", ["test_train_a_first_model_in_the_background"],
               ["test_widget_explains_why_buttons_are_disabled", "test_collect_cases_from_volume_and_segmentation"]),
}


@pytest.mark.parametrize("module_file", list(SELF_TESTS), ids=lambda path: path.stem)
@pytest.mark.parametrize("missing", [["torch>=2.4.1", "monai>=1.5"], []], ids=["packages missing", "installed"])
def test_self_test_skips_with_a_message_what_needs_missing_packages_and_runs_the_rest(module_file, missing,
                                                                                     monkeypatch):
    """Slicer's test machines run self-tests in testing mode, where nothing may be installed; a self-test that
    installed first failed there (5.12: pip_ensure skips installs) or downloaded gigabytes (5.10)."""
    from packaging.requirements import Requirement
    class_name, needs_packages, light = SELF_TESTS[module_file]
    with shell_module(module_file) as shell:
        monkeypatch.setattr(shell.DependencyInstaller, "missing",
                            staticmethod(lambda: [Requirement(text) for text in missing]))
        test = getattr(shell, class_name)()
        ran = []
        for name in needs_packages + light:
            monkeypatch.setattr(test, name, lambda name=name: ran.append(name))
        monkeypatch.setattr(test, "setUp", lambda: None)
        test.runTest()
    if missing:
        assert sorted(ran) == sorted(light)
        skipped = [message for message in test.displayed if message.startswith("Skipped")]
        assert len(skipped) == len(needs_packages) and all(name in " ".join(skipped) for name in needs_packages)
        assert "torch>=2.4.1" in skipped[0] and "monai>=1.5" in skipped[0]
    else:
        assert sorted(ran) == sorted(needs_packages + light)


@pytest.mark.parametrize("module_file", list(SELF_TESTS), ids=lambda path: path.stem)
def test_self_tests_never_install_packages(module_file):
    from qt_shell import source_tree
    test_class = next(node for node in source_tree(module_file).body
                      if isinstance(node, ast.ClassDef) and node.name == SELF_TESTS[module_file][0])
    calls = {node.func.attr for node in ast.walk(test_class) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute)}
    assert not calls & {"ensureDependencies", "ensure", "pip_install", "pip_ensure", "installTorch"}


def test_training_self_test_collects_cases_on_real_mrml_nodes(monkeypatch, tmp_path):
    """The part of the self-test that runs without the engine's heavy packages, run here on slicer-core."""
    import slicer.util
    from slicer_support import slicer_scene
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(slicer.util, "tempDirectory", lambda key: str(tmp_path / key))
    with slicer_scene(), shell_module(TRAINING) as shell:
        test = shell.LabelShareTrainingTest()
        test.setUp()
        test.test_collect_cases_from_volume_and_segmentation()
    assert test.displayed[-1] == "Collect test passed"


def test_closing_slicer_during_training_shows_the_wait_and_bounds_it(monkeypatch):
    """Module cleanup (Slicer exits) while a run is active: the engine gets a short time to save a checkpoint, and
    a progress dialog says so (Slicer used to wait up to 60 s without a sign)."""
    import slicer.util
    dialogs = []

    def createProgressDialog(**options):
        dialog = SimpleNamespace(value=0, visible=True)
        dialog.close = lambda: setattr(dialog, "visible", False)
        dialogs.append((options, dialog))
        return dialog

    monkeypatch.setattr(slicer.util, "createProgressDialog", createProgressDialog)
    stops = []

    def stop(waitS=None, onWait=None):
        stops.append(waitS)
        for secondsLeft in (waitS - 1, waitS - 2.5):
            onWait(secondsLeft)

    with shell_module(TRAINING) as shell:
        from LabelShareLib.settings import DictSettings, Settings
        from LabelShareTrainingWidgets import training_run
        widget = shell.LabelShareTrainingWidget()
        widget.runs = training_run.TrainingRunWidget(pythonqt_ui(TRAINING_UI), SimpleNamespace(running=True, stop=stop),
                                                     Settings(DictSettings()), None, None, None, None)
        widget.cleanup()
    assert stops == [training_run.STOP_ON_EXIT_S] and training_run.STOP_ON_EXIT_S <= 15
    (options, dialog), = dialogs
    assert "checkpoint" in options["labelText"] and options["maximum"] == training_run.STOP_ON_EXIT_S
    assert dialog.value == 2 and not dialog.visible
