"""Static checks of LabelShareTraining's Qt shell (it needs PythonQt/CTK, which only a real Slicer has): the widgets
and signals it uses exist in its .ui, bound widgets match parameters, it calls only what its Lib, the shared
LabelShareLib and LabelShareSegmentation's module provide (never that module's widget or its Lib), and its CMake
list ships every file."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "LabelShareTraining"
LIB_DIR = MODULE_DIR / "LabelShareTrainingLib"
MODULE_FILE = MODULE_DIR / "LabelShareTraining.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LabelShareTraining.ui"
SEGMENTATION_FILE = REPO / "LabelShareSegmentation" / "LabelShareSegmentation.py"
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):
    sys.path.insert(0, str(REPO / module_folder))

import LabelShareLib  # noqa: E402
import LabelShareTrainingLib  # noqa: E402
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
    used = ui_names_used(MODULE_FILE)
    assert {"addCaseButton", "trainButton", "casesTableWidget", "forgettingTableWidget", "progressBar",
            "logTextEdit", "unfinishedRunComboBox"} <= used
    assert sorted(used - set(ui_widgets)) == []


def test_every_signal_the_shell_connects_exists_and_its_handler_too(ui_widgets):
    from PySide6.QtCore import QMetaObject
    widget_class = classes(tree())["LabelShareTrainingWidget"]
    handlers = methods(widget_class)
    connections = [node for node in ast.walk(widget_class) if isinstance(node, ast.Call)
                   and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                   and ui_attribute(node.func.value)]
    assert len(connections) >= 15
    for call in connections:
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
    assert list(LabelShareLib.DEVICES) == ["auto", "cuda", "cpu"]  # the engine's labelshare.config.DEVICES


def test_shell_imports_only_what_the_libs_provide_and_does_no_engine_work():
    imported, shell = set(), [node for node in tree().body
                              if not (isinstance(node, ast.ClassDef) and node.name.endswith("Test"))]
    for node in (inner for top in shell for inner in ast.walk(top)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
            package = {"LabelShareTrainingLib": LabelShareTrainingLib, "LabelShareLib": LabelShareLib}.get(node.module)
            for alias in node.names if package else []:
                assert hasattr(package, alias.name), f"{node.module} has no {alias.name}"
    assert not imported & {"numpy", "torch", "monai", "labelshare", "SimpleITK", "LabelShareSegmentationLib"}
    compile(MODULE_FILE.read_text(encoding="utf-8"), str(MODULE_FILE), "exec")


def test_training_never_uses_the_segmentation_lib_or_widget():
    """What both modules use is in LabelShareLib; new versions reach the segmentation model list through the model
    store's notification, not by calling the other module's widget."""
    for path in [MODULE_FILE, *sorted(LIB_DIR.glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        assert "LabelShareSegmentationLib" not in text and "LabelShareSegmentationWidget" not in text, path.name
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(name.split(".")[0] == "LabelShareSegmentationLib" for name in names), path.name
    published = [node for node in ast.walk(tree(LIB_DIR / "logic.py")) if isinstance(node, ast.Call)
                 and ast.unparse(node.func) == "self.store.changed.notify"]
    assert len(published) == 1, "the training logic announces a published version on the model store"


def test_shell_calls_only_what_the_training_logic_has():
    logic_methods = {name for name in dir(TrainingLogic) if not name.startswith("__")}
    logic_attributes = {"workspace", "models_dir", "lock", "job", "request", "progress", "outcome", "engine", "store"}
    used = set()
    for node in ast.walk(tree()):
        if isinstance(node, ast.Attribute) and (
                (isinstance(node.value, ast.Name) and node.value.id == "training")
                or (isinstance(node.value, ast.Attribute) and node.value.attr == "training")):
            used.add(node.attr)
    assert {"plan", "start", "poll", "stop", "add_case", "task_entries", "unfinished_runs"} <= used
    assert sorted(used - logic_methods - logic_attributes) == []


def test_shell_uses_what_labelshare_segmentation_provides():
    """The two modules share the models folder, the first-run install and the model list."""
    segmentation = tree(SEGMENTATION_FILE)
    names = {node.targets[0].id for node in segmentation.body if isinstance(node, ast.Assign)} | \
        {node.name for node in segmentation.body if isinstance(node, ast.FunctionDef)}
    used = {node.attr for node in ast.walk(tree()) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "LabelShareSegmentation"}
    assert used == {"SETTINGS_MODELS_FOLDER", "moduleLogic"} and used <= names
    segmentation_classes = classes(segmentation)
    assert {"refreshModels"} <= methods(segmentation_classes["LabelShareSegmentationWidget"])
    assert {"ensureDependencies", "getParameterNode"} <= methods(segmentation_classes["LabelShareSegmentationLogic"])
    assert "model" in {item.target.id for item in segmentation_classes["LabelShareSegmentationParameterNode"].body
                       if isinstance(item, ast.AnnAssign)}


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


def test_reload_covers_every_module_of_the_lib_in_import_order():
    assignment = next(node for node in tree().body if isinstance(node, ast.Assign)
                      and ast.unparse(node.targets[0]) == "LIB_MODULES")
    modules = list(ast.literal_eval(assignment.value))
    assert sorted(modules) == sorted(path.stem for path in LIB_DIR.glob("*.py") if path.stem != "__init__")
    for position, module in enumerate(modules):
        for node in ast.walk(tree(LIB_DIR / f"{module}.py")):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert modules.index(node.module) < position, f"{module} imports .{node.module}"
