"""Static checks of LabelShareTraining's Qt shell (it needs PythonQt/CTK, which only a real Slicer has): the module
file and its Widgets package (the annotation queue's and the Train section's classes, the dialogs). The widgets and
signals they use exist in the .ui, bound widgets match parameters, they call only what their Lib and the shared
LabelShareLib provide (never LabelShareSegmentation's module, widget or Lib: settings, the dependency install, the
model store and the background worker are LabelShareLib's), and the CMake list ships every file."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "LabelShareTraining"
LIB_DIR = MODULE_DIR / "LabelShareTrainingLib"
WIDGETS_DIR = MODULE_DIR / "LabelShareTrainingWidgets"
MODULE_FILE = MODULE_DIR / "LabelShareTraining.py"
SHELL_FILES = [MODULE_FILE, *sorted(WIDGETS_DIR.glob("*.py"))]  # the Qt side of the module
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LabelShareTraining.ui"
SEGMENTATION_FILE = REPO / "LabelShareSegmentation" / "LabelShareSegmentation.py"
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):
    sys.path.insert(0, str(REPO / module_folder))

import LabelShareLib  # noqa: E402
import LabelShareTrainingLib  # noqa: E402
from LabelShareTrainingLib.annotation_queue import AnnotationQueueLogic  # noqa: E402
from LabelShareTrainingLib.logic import TrainingLogic  # noqa: E402
from qt_shell import load_ui_widgets, parameter_fields, source_tree, ui_attribute, ui_names_used  # noqa: E402


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, object]:
    return load_ui_widgets(UI_FILE)


def tree(path: Path = MODULE_FILE) -> ast.Module:
    return source_tree(path)


def classes(module: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in ast.walk(module) if isinstance(node, ast.ClassDef)}


def methods(cls: ast.ClassDef) -> set[str]:
    return {item.name for item in cls.body if isinstance(item, ast.FunctionDef)}


def test_every_ui_widget_the_shell_uses_exists_in_the_ui_file(ui_widgets):
    used = set().union(*(ui_names_used(path) for path in SHELL_FILES))
    assert {"addCaseButton", "trainButton", "trainReasonLabel", "casesTableWidget", "forgettingTableWidget",
            "progressBar", "logTextEdit", "unfinishedRunComboBox", "rankButton", "workerStatusLabel"} <= used
    assert sorted(used - set(ui_widgets)) == []


def test_no_python_file_of_the_module_is_longer_than_600_lines():
    for path in [*SHELL_FILES, *sorted(LIB_DIR.glob("*.py"))]:
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 600, path.name


def test_every_signal_the_shell_connects_exists_and_its_handler_too(ui_widgets):
    from PySide6.QtCore import QMetaObject
    connections = []
    for path in SHELL_FILES:
        for widget_class in classes(tree(path)).values():
            handlers = methods(widget_class)
            connections += [(node, handlers) for node in ast.walk(widget_class) if isinstance(node, ast.Call)
                            and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                            and ui_attribute(node.func.value)]
    assert len(connections) >= 15
    for call, handlers in connections:
        name, signal = ui_attribute(call.func.value), call.args[0].value
        widget = ui_widgets[name]
        class_name = widget.metaObject().className()
        if class_name.startswith(("Q",)) and class_name != "QWidget":  # CTK/qMRML widgets load as plain QWidget
            signature = QMetaObject.normalizedSignature(signal).data().decode()
            assert widget.metaObject().indexOfSignal(signature) >= 0, f"{name} ({class_name}) has no {signal}"
        handler = call.args[1]
        assert isinstance(handler, ast.Attribute) and handler.attr in handlers, ast.unparse(handler)


def test_every_bound_widget_matches_a_parameter_of_the_right_type(ui_widgets):
    fields = parameter_fields(MODULE_FILE)
    bound = {w.property("SlicerParameterName"): w for w in ui_widgets.values() if w.property("SlicerParameterName")}
    assert set(bound) == {"inputVolume", "inputSegmentation", "budget", "device"}
    assert set(bound) <= set(fields)
    choices = {"BUDGETS": LabelShareTrainingLib.BUDGETS, "DEVICES": LabelShareLib.DEVICES}
    for name, widget in bound.items():
        node_types = widget.property("nodeTypes")
        if node_types:  # a node selector: its node class is the parameter's type
            assert list(node_types) == [fields[name]], name
        else:  # a combo box filled by connectGui from the Choice annotation: the Lib's presets
            assert widget.metaObject().className() == "QComboBox", name
            match = re.fullmatch(r"Annotated\[str, Choice\(list\((\w+)\)\)\]", fields[name])
            assert match and list(choices[match[1]]), fields[name]
    assert list(LabelShareTrainingLib.BUDGETS) == ["quick", "standard"]
    assert list(LabelShareLib.DEVICES) == ["auto", "cuda", "cpu"]  # the engine's labelshare.core.config.DEVICES


def test_shell_imports_only_what_the_libs_provide_and_does_no_engine_work():
    exported = next(node for node in tree(WIDGETS_DIR / "__init__.py").body if isinstance(node, ast.Assign)
                    and ast.unparse(node.targets[0]) == "__all__")  # (importing it needs PythonQt)
    widgets_package = SimpleNamespace(**dict.fromkeys(ast.literal_eval(exported.value)))
    imported = set()
    for path in SHELL_FILES:
        shell = [node for node in tree(path).body
                 if not (isinstance(node, ast.ClassDef) and node.name.endswith("Test"))]
        for node in (inner for top in shell for inner in ast.walk(top)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add((node.module or "").split(".")[0])
                package = {"LabelShareTrainingLib": LabelShareTrainingLib, "LabelShareLib": LabelShareLib,
                           "LabelShareTrainingWidgets": widgets_package}.get(node.module)
                for alias in node.names if package else []:
                    assert hasattr(package, alias.name), f"{node.module} has no {alias.name}"
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    assert not imported & {"numpy", "torch", "monai", "labelshare", "SimpleITK", "LabelShareSegmentationLib",
                           "LabelShareSegmentation"}


def test_training_never_uses_the_segmentation_module_its_lib_or_widget():
    """Issue 30: what both modules use is in LabelShareLib (settings, the dependency install, the model store, the
    background worker); new versions reach the segmentation model list through the model store's notification and
    "Use this model" through the store's choice, not through the other module."""
    for path in [*SHELL_FILES, *sorted(LIB_DIR.glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        assert "LabelShareSegmentationLib" not in text and "LabelShareSegmentationWidget" not in text, path.name
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(name.split(".")[0] in ("LabelShareSegmentationLib", "LabelShareSegmentation")
                               for name in names), path.name
    published = [node for node in ast.walk(tree(LIB_DIR / "logic.py")) if isinstance(node, ast.Call)
                 and ast.unparse(node.func) == "self.store.changed.notify"]
    assert len(published) == 1, "the training logic announces a published version on the model store"


def test_shell_calls_only_what_the_training_and_queue_logics_have():
    logic_methods = {name for name in dir(TrainingLogic) if not name.startswith("__")}
    logic_attributes = {"workspace", "models_dir", "lock", "job", "request", "progress", "outcome", "engine", "store"}
    used, queue_used = set(), set()
    for path in SHELL_FILES:
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Attribute) and (
                    (isinstance(node.value, ast.Name) and node.value.id == "training")
                    or (isinstance(node.value, ast.Attribute) and node.value.attr == "training")):
                used.add(node.attr)
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("self.logic", "self._logic") \
                    and path.name == "annotation_queue.py":
                queue_used.add(node.attr)
    assert {"plan", "start", "poll", "stop", "add_case", "task_entries", "unfinished_runs", "readiness"} <= used
    assert sorted(used - logic_methods - logic_attributes) == []
    assert {"start_rank", "start_next", "case_added", "queue"} <= queue_used
    assert sorted(queue_used - set(dir(AnnotationQueueLogic)) - {"queue", "shared"}) == []


def test_the_console_api_is_the_modules_logic_class_not_attributes_on_the_cpp_logic():
    """Issue 30: scripts use the module's logic (``slicer.util.getModuleLogic`` or the class itself, as Slicer's
    template intends), documented in the module docstring; nothing is attached to the generic C++ logic."""
    for path in (MODULE_FILE, SEGMENTATION_FILE):
        module = tree(path)
        text = path.read_text(encoding="utf-8")
        assert "registerConsoleApi" not in text and ".logic()." not in text and "cppLogic" not in text, path.name
        docstring = ast.get_docstring(module)
        assert f'slicer.util.getModuleLogic("{path.stem}")' in docstring, path.name
        assert f"{path.stem}.{path.stem}Logic()" in docstring, path.name
        widget = classes(module)[f"{path.stem}Widget"]
        setup = next(item for item in widget.body if isinstance(item, ast.FunctionDef) and item.name == "setup")
        assert f"self.logic = {path.stem}Logic()" in ast.unparse(setup), path.name


def test_self_test_runs_its_tests_in_a_real_slicer():
    test = classes(tree())["LabelShareTrainingTest"]
    assert [ast.unparse(base) for base in test.bases] == ["ScriptedLoadableModuleTest"]
    run_test = next(item for item in test.body if isinstance(item, ast.FunctionDef) and item.name == "runTest")
    called = {node.func.attr for node in ast.walk(run_test) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute)}
    assert {name for name in methods(test) if name.startswith("test_")} <= called
    assert len({name for name in methods(test) if name.startswith("test_")}) == 3


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set()
    for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        entries = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1).split()
        listed |= {entry.replace("${MODULE_NAME}", "LabelShareTraining") for entry in entries}
    for entry in listed:
        assert (MODULE_DIR / entry).is_file(), entry
    shipped = {path.relative_to(MODULE_DIR).as_posix() for path in MODULE_DIR.rglob("*")
               if path.is_file() and "__pycache__" not in path.parts and path.name != "CMakeLists.txt"}
    assert shipped == listed
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "add_subdirectory(LabelShareTraining)" in (REPO / "CMakeLists.txt").read_text(encoding="utf-8")


def test_reload_covers_every_module_of_the_packages_in_import_order():
    assignment = next(node for node in tree().body if isinstance(node, ast.Assign)
                      and ast.unparse(node.targets[0]) == "LIB_MODULES")
    reloaded = ast.literal_eval(assignment.value)
    assert list(reloaded) == ["LabelShareTrainingLib", "LabelShareTrainingWidgets"]  # the widgets import the Lib
    for package, folder in (("LabelShareTrainingLib", LIB_DIR), ("LabelShareTrainingWidgets", WIDGETS_DIR)):
        modules = list(reloaded[package])
        assert sorted(modules) == sorted(path.stem for path in folder.glob("*.py") if path.stem != "__init__")
        for position, module in enumerate(modules):
            for node in ast.walk(tree(folder / f"{module}.py")):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    assert modules.index(node.module) < position, f"{package}.{module} imports .{node.module}"
