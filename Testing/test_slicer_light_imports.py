"""Slicer's own process stays light: every module of LabelShareLib, LabelShareSegmentationLib and
LabelShareTrainingLib imports, and the model store lists and verifies the bundled model, with torch, MONAI,
safetensors and scipy unimportable.

Slicer loads both modules at start-up, before the first-run dependency install, and the model list, the task
list and case collection run in Slicer's process; only the background worker and the training child import the
engine's heavy modules. The check runs in a fresh interpreter (this one has torch loaded already) where an import
finder refuses the blocked packages and records every attempt: installed as they are here, an import of any of
them would otherwise succeed without anyone noticing. A Lib function that genuinely needs torch must import it
inside the function, and such a function is not called here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB_PACKAGES = {"LabelShareLib": REPO / "LabelShareSegmentation", "LabelShareSegmentationLib": REPO /
                "LabelShareSegmentation", "LabelShareTrainingLib": REPO / "LabelShareTraining"}
BLOCKED = ("torch", "monai", "safetensors", "scipy")

PROBE = textwrap.dedent("""
    import importlib, importlib.abc, json, sys, tempfile
    from pathlib import Path

    blocked, module_folders, modules = json.loads(sys.argv[1])
    attempts = []

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in Slicer's process)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    sys.path[:0] = module_folders
    for module in modules:
        importlib.import_module(module)

    from labelshare.core.paths import default_model_dir
    from LabelShareLib import DependencyInstaller, default_store, model_title
    from LabelShareSegmentationLib import SegmentationLogic, why_not_ready
    from LabelShareTrainingLib import TrainingLogic, TrainingLock

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        store = default_store()
        listed = store.available(folder / "models")          # the model list: bundled model first
        bundled = default_model_dir()
        config, space = store.verify(bundled)                  # checksums, configuration, label space
        labels = [label.name for label in store.task_labels(bundled, space.task_names[0])]
        SegmentationLogic()                                    # the module's logic (no worker until Apply)
        reason = why_not_ready(None, listed[0], space.task_names[0])
        training = TrainingLogic(workspace=folder / "tasks", models_dir=folder / "models",
                                 lock=TrainingLock(folder / "training.lock"))
        training.create_task("liver", ["liver", "tumour"])     # the task list and case collection
        rows = [row.name for row in training.task_entries(bundled)]
        DependencyInstaller.missing()                          # the first-run check (package metadata only)

    print(json.dumps({
        "titles": [model_title(summary) for summary in listed], "valid": [s.valid for s in listed],
        "method": config.method, "labels": labels, "reason": reason, "rows": rows,
        "attempts": attempts, "loaded": sorted(name for name in sys.modules if name.split(".")[0] in blocked)}))
""")


def lib_modules() -> list[str]:
    """Every module of the three Lib packages, by file (so a new file is covered without editing this test)."""
    modules = []
    for package, folder in LIB_PACKAGES.items():
        files = sorted((folder / package).glob("*.py"))
        assert files, f"no package {package} in {folder}"
        modules += [package] + [f"{package}.{path.stem}" for path in files if path.stem != "__init__"]
    return modules


def test_lib_packages_import_and_list_models_without_torch_monai_safetensors_or_scipy():
    modules = lib_modules()
    assert {"LabelShareLib.store", "LabelShareLib.jobs", "LabelShareSegmentationLib.logic",
            "LabelShareTrainingLib.logic", "LabelShareTrainingLib.runs"} <= set(modules)
    folders = sorted({str(folder) for folder in LIB_PACKAGES.values()})
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps([BLOCKED, folders, modules])],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["attempts"] == [] and report["loaded"] == [], report
    assert report["valid"][0] and " (bundled) — " in report["titles"][0], report["titles"]
    assert report["labels"] and report["method"] and report["reason"] == "Select an input volume."
    assert "liver" in report["rows"]
