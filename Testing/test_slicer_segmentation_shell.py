"""Static checks of LabelShareSegmentation's Qt shell (it needs PythonQt/CTK, which only a real Slicer has), of
the extension's CMake lists and requirements, and the first-run dependency decisions with the Slicer calls
replaced by recorders."""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "LabelShareSegmentation"
MODULE_FILE = MODULE_DIR / "LabelShareSegmentation.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LabelShareSegmentation.ui"
sys.path.insert(0, str(MODULE_DIR))
import LabelShareLib  # noqa: E402
from LabelShareLib import dependencies  # noqa: E402
from LabelShareLib.dependencies import DependencyError, DependencyInstaller  # noqa: E402
from project_metadata import engine_dependencies  # noqa: E402
from qt_shell import load_ui_widgets, parameter_fields, source_tree, ui_names_used  # noqa: E402


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, object]:
    return load_ui_widgets(UI_FILE)


def shell_tree() -> ast.Module:
    return source_tree(MODULE_FILE)


def test_every_ui_widget_the_shell_uses_exists_in_the_ui_file(ui_widgets):
    used = ui_names_used(MODULE_FILE)
    assert {"applyButton", "modelComboBox", "taskComboBox", "progressBar", "logTextEdit", "modelInfoLabel",
            "taskInfoLabel", "inputNoteLabel", "showAllVersionsCheckBox", "workerStatusLabel"} <= used
    assert sorted(used - set(ui_widgets)) == []


def test_no_python_file_of_the_module_is_longer_than_600_lines():
    """Issue 30: the shells stay thin; no module of the Lib packages or the engine-free layers grows past 600."""
    files = [MODULE_FILE, *sorted((MODULE_DIR / "LabelShareLib").glob("*.py")),
             *sorted((MODULE_DIR / "LabelShareSegmentationLib").glob("*.py"))]
    for path in files:
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 600, path.name


def test_colour_volumes_are_offered_in_the_input_selector(ui_widgets):
    """Issue 27: RGB radiographs (vector volumes) are listed and segmented as their luminance; label maps, tensor
    and other child classes of scalar volumes stay out (showChildNodeTypes off: exactly these two classes)."""
    selector = ui_widgets["inputVolumeSelector"]
    assert list(selector.property("nodeTypes")) == ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
    assert selector.property("showChildNodeTypes") is False


def test_every_bound_widget_matches_a_parameter_of_the_right_type(ui_widgets):
    fields = parameter_fields(MODULE_FILE)
    bound = {w.property("SlicerParameterName"): w for w in ui_widgets.values() if w.property("SlicerParameterName")}
    assert set(bound) == {"inputVolume", "outputSegmentation", "largestComponentLabels", "mirror", "showUncertainty"}
    assert set(bound) <= set(fields)
    for name, widget in bound.items():
        node_types = widget.property("nodeTypes")
        if node_types:  # a node selector: its first node class is the parameter's type (a vector volume is a
            assert list(node_types)[0] == fields[name], name  # scalar volume node, so it passes the type too)
        elif widget.metaObject().className() == "QComboBox":  # filled by connectGui from the Choice annotation
            assert fields[name] == "Annotated[str, Choice(list(LARGEST_COMPONENT))]", name
        else:
            assert widget.metaObject().className() == "QCheckBox" and fields[name] == "bool", name
    from labelshare.core.config import LARGEST_COMPONENT
    assert list(LARGEST_COMPONENT) == ["model", "all", "none"]


def test_device_choices_are_the_engine_devices(ui_widgets):
    """One device vocabulary for both modules and the command line (labelshare.core.config.DEVICES)."""
    from labelshare.core.config import DEVICES
    combo = ui_widgets["deviceComboBox"]
    assert [combo.itemText(i) for i in range(combo.count())] == list(DEVICES) == ["auto", "cuda", "cpu"]
    assert LabelShareLib.DEVICES is DEVICES
    # a setting saved by an older version (GPU, CPU) or naming a GPU becomes one of the items
    assert [LabelShareLib.device_choice(text) for text in ("GPU", "CPU", "auto", "cuda:1", "tpu", None, "")] == \
        ["cuda", "cpu", "auto", "cuda", "auto", "auto", "auto"]


def test_widget_listens_to_the_model_store_from_setup_to_cleanup():
    """LabelShare Training announces new versions on the store; the widget subscribes in setup, unsubscribes in
    cleanup (a widget that is gone must not be called)."""
    widget = next(node for node in ast.walk(shell_tree()) if isinstance(node, ast.ClassDef)
                  and node.name == "LabelShareSegmentationWidget")
    methods = {item.name: item for item in widget.body if isinstance(item, ast.FunctionDef)}

    def calls(method: str, name: str) -> list[str]:
        return [ast.unparse(node.args[0]) for node in ast.walk(methods[method]) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr == name]
    assert calls("setup", "subscribe") == ["self.onModelStoreChanged", "self.onWorkerChanged"]
    assert sorted(calls("cleanup", "unsubscribe")) == sorted(calls("setup", "subscribe"))
    assert {"onModelStoreChanged", "onWorkerChanged"} <= set(methods)


def test_shell_does_no_array_or_network_work():
    """Outside its self-test (which trains a tiny model), the shell only wires widgets to the Lib."""
    imported = set()
    shell = [node for node in shell_tree().body if not (isinstance(node, ast.ClassDef) and node.name.endswith("Test"))]
    for node in (inner for top in shell for inner in ast.walk(top)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"numpy", "torch", "monai", "labelshare"}
    compile(MODULE_FILE.read_text(encoding="utf-8"), str(MODULE_FILE), "exec")


def test_self_test_runs_its_tests_in_a_real_slicer():
    classes = {node.name: node for node in ast.walk(shell_tree()) if isinstance(node, ast.ClassDef)}
    test = classes["LabelShareSegmentationTest"]
    assert [ast.unparse(base) for base in test.bases] == ["ScriptedLoadableModuleTest"]
    methods = {item.name: item for item in test.body if isinstance(item, ast.FunctionDef)}
    called = {node.func.attr for node in ast.walk(methods["runTest"]) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute)}
    assert {name for name in methods if name.startswith("test_")} <= called


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    return match.group(1).split() if match else []


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = [entry.replace("${MODULE_NAME}", "LabelShareSegmentation")
              for entry in cmake_list(text, "MODULE_PYTHON_SCRIPTS") + cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    globs = [(kind, pattern.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")) for kind, pattern in re.findall(
        r"file\((GLOB\S*)\s+\S+\s+RELATIVE\s+\S+\s+CONFIGURE_DEPENDS\s+(\S+)\)", text)]
    assert globs == [("GLOB_RECURSE", "labelshare/*.py"), ("GLOB_RECURSE", "Resources/Models/*")]

    def globbed(relative: str) -> bool:  # CMake's GLOB does not descend into sub-folders, GLOB_RECURSE does
        return any(fnmatch.fnmatch(relative, pattern) and (kind == "GLOB_RECURSE"
                                                           or relative.count("/") == pattern.count("/"))
                   for kind, pattern in globs)
    scripts = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    for package in ("LabelShareLib", "LabelShareSegmentationLib"):  # each file named, none left to a glob
        files = {f"{package}/{path.name}" for path in (MODULE_DIR / package).glob("*.py")}
        assert f"{package}/__init__.py" in files
        assert files <= {entry.replace("${MODULE_NAME}", "LabelShareSegmentation") for entry in scripts}, package
    for entry in listed:
        if not entry.startswith("${"):
            assert (MODULE_DIR / entry).is_file(), entry
    shipped = {e for e in listed if not e.startswith("${")}
    for path in MODULE_DIR.rglob("*"):
        relative = path.relative_to(MODULE_DIR).as_posix()
        if not path.is_file() or "__pycache__" in relative or ".egg-info" in relative or relative == "CMakeLists.txt":
            continue
        assert relative in shipped or globbed(relative), f"{relative} is not shipped"


def test_extension_cmake_has_the_metadata_and_both_modules():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({variable}\s+\S", text), variable
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text and 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert "add_subdirectory(LabelShareSegmentation)" in text and "add_subdirectory(LabelShareTraining)" in text
    for resource in cmake_list(text, "LabelShare_EXTENSION_RESOURCES"):
        assert (REPO / resource).is_file(), resource
    assert (REPO / "Resources" / "Icons" / "LabelShare.png").is_file()


def test_requirements_cover_the_engine_dependencies_except_what_slicer_or_pytorch_provide():
    engine_names = set(engine_dependencies())
    assert {"torch", "monai", "safetensors"} <= engine_names
    required = {requirement.name.lower() for requirement in dependencies.read_requirements()}
    protected = {name.lower() for name in dependencies.PROTECTED_PACKAGES}
    # DICOM SEG and .seg.nrrd files of `labelshare segment`; the module makes segments in the scene (Slicer saves them)
    command_line_only = {"highdicom", "slicerio"}
    assert engine_names - protected - command_line_only <= required
    assert not required & protected  # pip is never asked for numpy, SimpleITK, requests or torch


class Recorder:
    """Stands in for Slicer's installers: records the calls and 'installs' into a fake package table."""

    def __init__(self, installed: dict[str, str], accept: bool = True):
        self.installed, self.accept, self.calls = installed, accept, []

    def confirm(self, message, details):
        self.calls.append(("confirm", message, details))
        return self.accept

    def install_torch(self, requirement):
        self.calls.append(("torch", requirement))
        self.installed["torch"] = "2.13.0"

    def pip_ensure(self, packages, constraints, requester, prompt_install):
        self.calls.append(("pip_ensure", list(packages), Path(constraints).read_text(), requester, prompt_install))
        self.installed.update({p.split(">=")[0]: "99.0" for p in packages})

    def pip_install(self, arguments):
        constraints = Path(arguments[arguments.index("-c") + 1])
        self.calls.append(("pip_install", list(arguments), constraints.read_text()))
        self.installed.update({a.split(">=")[0]: "99.0" for a in arguments if ">=" in a})


@pytest.fixture
def packages(monkeypatch, tmp_path) -> tuple[dict[str, str], Path]:
    installed = {"numpy": "2.1.3", "SimpleITK": "2.4.0", "requests": "2.32.0", "monai": "1.2.0"}
    monkeypatch.setattr(dependencies, "installed_version", lambda name: installed.get(name))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nmonai>=1.4  # engine\nsafetensors>=0.4\n")
    return installed, requirements


def test_first_run_asks_once_then_installs_torch_and_the_rest_with_protected_versions_pinned(packages):
    """One question for everything (torch included); neither PyTorchUtils nor pip_ensure asks again. Each step is
    announced before it runs (issue 27: minutes behind a wait cursor alone)."""
    installed, requirements = packages
    recorder = Recorder(installed)
    installer = DependencyInstaller(recorder.confirm, recorder.install_torch, pip_ensure=recorder.pip_ensure)
    steps = []
    assert installer.ensure(requirements, on_step=lambda step: (steps.append(str(step)), recorder.calls.append(
        ("step", step.number)))) == [dependencies.TORCH_REQUIREMENT, "monai>=1.4", "safetensors>=0.4"]
    assert steps == [f"Step 1 of 3: installing PyTorch ({dependencies.TORCH_REQUIREMENT}) through the PyTorch "
                     "extension: it downloads about 2-3 GB, which takes minutes",
                     "Step 2 of 3: installing monai>=1.4, safetensors>=0.4 with pip",
                     "Step 3 of 3: checking the installed packages"]
    assert [call[0] for call in recorder.calls] == ["confirm", "step", "torch", "step", "pip_ensure", "step"]
    recorder.calls = [call for call in recorder.calls if call[0] != "step"]
    confirm, torch_call, pip_call = recorder.calls
    assert confirm[2] == f"{dependencies.TORCH_REQUIREMENT}\nmonai>=1.4\nsafetensors>=0.4"
    assert "PyTorch" in confirm[1] and "GB" in confirm[1]
    assert torch_call == ("torch", dependencies.TORCH_REQUIREMENT)
    assert pip_call[1] == ["monai>=1.4", "safetensors>=0.4"] and pip_call[3:] == ("LabelShare", False)
    assert pip_call[2].split() == ["numpy==2.1.3", "SimpleITK==2.4.0", "requests==2.32.0", "torch==2.13.0"]
    assert installer.ensure(requirements) == [] and len(recorder.calls) == 3  # nothing more to do


def test_a_torch_older_than_required_is_replaced_through_pytorch(packages):
    installed, requirements = packages
    installed.update(torch="2.3.0", monai="1.5.0", safetensors="0.4.5")
    recorder = Recorder(installed)
    steps = []
    DependencyInstaller(recorder.confirm, recorder.install_torch, pip_ensure=recorder.pip_ensure).ensure(
        requirements, on_step=lambda step: steps.append((step.number, step.total, step.action.split()[1])))
    assert [call[0] for call in recorder.calls] == ["confirm", "torch"]
    assert steps == [(1, 2, "PyTorch"), (2, 2, "the")]  # torch, then the check


def test_older_slicer_gets_pip_arguments_as_a_list(packages):
    """``slicer.util.pip_install`` splits a string like a shell: a list keeps a constraints path with spaces (or
    Windows backslashes) one argument."""
    installed, requirements = packages
    installed["torch"] = "2.5.0"
    recorder = Recorder(installed)
    DependencyInstaller(recorder.confirm, recorder.install_torch, pip_install=recorder.pip_install).ensure(requirements)
    (confirm, _, details), (pip_install, arguments, constraints) = recorder.calls
    assert details == "monai>=1.4\nsafetensors>=0.4"
    assert arguments[:3] == ["monai>=1.4", "safetensors>=0.4", "-c"] and arguments[3].endswith("constraints.txt")
    assert "torch==2.5.0" in constraints.split()


def test_declined_refused_or_failed_installs_say_so(packages):
    installed, requirements = packages
    declining = Recorder(installed, accept=False)
    with pytest.raises(DependencyError, match="declined"):
        DependencyInstaller(declining.confirm, declining.install_torch,
                            pip_install=declining.pip_install).ensure(requirements)
    assert [call[0] for call in declining.calls] == ["confirm"]

    testing = Recorder(installed)
    with pytest.raises(DependencyError, match="testing mode.*installs no packages.*torch"):
        DependencyInstaller(testing.confirm, testing.install_torch, pip_ensure=testing.pip_ensure,
                            testing=True).ensure(requirements)
    assert testing.calls == []

    installed["torch"] = "2.5.0"
    with pytest.raises(DependencyError, match="still missing after installation: monai>=1.4, safetensors>=0.4"):
        DependencyInstaller(lambda *details: True, lambda requirement: None,
                            pip_ensure=lambda *args, **kwargs: None).ensure(requirements)


def test_reload_covers_every_module_of_the_lib_packages_the_module_ships():
    """Developer reload (Reload and Test) reloads each Lib module, LabelShareLib first (the other imports it)."""
    assignment = next(node for node in shell_tree().body if isinstance(node, ast.Assign)
                      and ast.unparse(node.targets[0]) == "LIB_MODULES")
    reloaded = ast.literal_eval(assignment.value)
    assert list(reloaded) == ["LabelShareLib", "LabelShareSegmentationLib"]  # (Training's widgets: its own list)
    for package, modules in reloaded.items():
        assert sorted(modules) == sorted(path.stem for path in (MODULE_DIR / package).glob("*.py")
                                         if path.stem != "__init__"), package
        for position, module in enumerate(modules):  # what a module imports from its package is reloaded before it
            for node in ast.walk(source_tree(MODULE_DIR / package / f"{module}.py")):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    assert modules.index(node.module) < position, f"{package}.{module} imports .{node.module}"
