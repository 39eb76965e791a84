"""The light/heavy line is the folder line: ``labelshare.core`` (torch-free contracts, configurations and file formats)
imports nothing of ``labelshare.engine`` (the torch engine) and none of the heavy packages, at module level or inside
a function; nothing imports upwards (the engine never imports the command line); the command line is light at import
and reaches the engine only inside a command, once its checks passed; the Slicer modules import only the core.

The rules are read from the folders: a module added to a folder is covered without editing this test. Two checks:
the import graph of every module's source (every ``import``, wherever it stands), and a fresh interpreter that
imports every core module and the command line with the heavy packages made unimportable (this interpreter has torch
loaded already), which also catches an import the source hides (``importlib``, a dependency's own imports).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labelshare.core.paths import bundled_model_dirs

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "LabelShareSegmentation" / "labelshare"
HEAVY = ("torch", "monai", "safetensors", "scipy", "matplotlib", "highdicom", "slicerio")
# the command line: the edge a user touches, above both layers
FRONT = ("labelshare", "labelshare.__main__", "labelshare.cli", "labelshare.commands")
# the Slicer modules' code, which runs in Slicer's own process
SLICER_FOLDERS = [REPO / "LabelShareSegmentation" / name for name in
                  ("LabelShareLib", "LabelShareSegmentationLib", "LabelShareSegmentation.py")] + \
                 [REPO / "LabelShareTraining" / name for name in
                  ("LabelShareTrainingLib", "LabelShareTrainingWidgets", "LabelShareTraining.py")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(folder: str) -> list[str]:
    """Every module of ``labelshare.<folder>``, found by file."""
    return sorted(module_name(path) for path in (PACKAGE / folder).rglob("*.py"))


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(absolute module, at module level) of every import statement in a file; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path) if path.is_relative_to(PACKAGE) else ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # "from . import x": x may be a module of that package
            found += [(f"{target}.{alias.name}" if not node.module else target, id(node) in top_level)
                      for alias in node.names]
    return found


def layer_of(module: str) -> str:
    for layer in ("core", "engine"):
        if module == f"labelshare.{layer}" or module.startswith(f"labelshare.{layer}."):
            return layer
    return "front" if module.split(".")[0] == "labelshare" else "outside"


def test_every_module_is_in_a_layer():
    modules = [module_name(path) for path in PACKAGE.rglob("*.py")]
    assert {"labelshare.core.config", "labelshare.core.worker_protocol", "labelshare.engine.inference",
            "labelshare.engine.incremental.run"} <= set(modules)
    assert sorted(m for m in modules if layer_of(m) == "front") == sorted(FRONT)


def test_core_imports_only_core_and_light_packages():
    wrong = [f"{module_name(path)} imports {target}" for path in (PACKAGE / "core").rglob("*.py")
             for target, _ in imports_of(path)
             if layer_of(target) in ("engine", "front") and target != "labelshare.core"
             or target.split(".")[0] in HEAVY]
    assert wrong == []


def test_nothing_imports_upwards():
    """The engine imports the core and itself, never the command line; the command line imports the core at module
    level and the engine only inside a command (after the command's checks)."""
    wrong = []
    for path in (PACKAGE / "engine").rglob("*.py"):
        wrong += [f"{module_name(path)} imports {t}" for t, _ in imports_of(path) if layer_of(t) == "front"]
    for path in PACKAGE.glob("*.py"):  # the front
        wrong += [f"{module_name(path)} imports {t} at module level" for t, top in imports_of(path)
                  if top and (layer_of(t) == "engine" or t.split(".")[0] in HEAVY)]
    assert wrong == []


def test_slicer_modules_import_only_the_core():
    files = [f for folder in SLICER_FOLDERS for f in ([folder] if folder.suffix else sorted(folder.glob("*.py")))]
    assert len(files) > 20
    wrong = [f"{path.relative_to(REPO)} imports {target}" for path in files for target, _ in imports_of(path)
             if target.split(".")[0] == "labelshare" and layer_of(target) != "core" and target != "labelshare"]
    assert wrong == []


def run_without_heavy_packages(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of :data:`HEAVY` fails."""
    blocker = textwrap.dedent(f"""
        import sys
        for name in {HEAVY!r}:
            sys.modules[name] = None  # "import torch" now raises ImportError
    """)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_core_and_command_line_import_without_heavy_packages():
    modules = package_modules("core") + [m for m in FRONT if m != "labelshare.__main__"]
    result = run_without_heavy_packages(f"""
        import importlib, json
        for name in {modules!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(m for m in sys.modules if (m.split(".")[0] in {HEAVY!r} and sys.modules[m])
                                or m.startswith("labelshare.engine"))))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("argv", [["models"], ["labelspace", "show", "BUNDLED"], ["--version"]])
def test_commands_that_read_model_folders_run_without_torch(argv):
    result = run_without_heavy_packages(f"""
        from labelshare.cli import main
        from labelshare.core.paths import default_model_dir
        argv = [str(default_model_dir()) if a == "BUNDLED" else a for a in {argv!r}]
        sys.exit(main(argv))
    """)
    assert result.returncode == 0, result.stderr
    if argv[0] == "models":
        assert all(folder.name in result.stdout for folder in bundled_model_dirs())
        assert "INVALID" not in result.stdout
    elif argv[0] == "labelspace":
        assert "| shared |" in result.stdout


def test_engine_modules_say_what_is_missing_instead_of_failing_silently():
    """The checks above are meaningful: the engine really does need torch."""
    result = run_without_heavy_packages("import labelshare.engine.models")
    assert result.returncode != 0 and "torch" in result.stderr


def test_no_module_is_longer_than_600_lines():
    """Issue 30: a module that grows past 600 lines is split by what its parts do (tests and benchmarks too)."""
    files = subprocess.run(["git", "ls-files", "*.py"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    long = {name: count for name in files.split() if (REPO / name).is_file()
            and (count := len((REPO / name).read_text(encoding="utf-8").splitlines())) > 600}
    assert len(files.split()) > 100 and long == {}
