"""The engine's light layer runs without torch, MONAI, SciPy, safetensors, matplotlib, highdicom and slicerio:
Slicer's own process imports it (model lists, task folders, run states, progress events), and a command that only
reads model folders must not pay for torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "monai", "safetensors", "scipy", "matplotlib", "highdicom", "slicerio")
LIGHT_MODULES = ("errors", "progress", "imagedata", "fileio", "naming", "paths", "options", "config",
                 "preprocessing", "plans", "budget", "layouts", "tasks", "taskfolders", "labelspace", "modelfolder",
                 "scores", "forgetting", "synthetic", "worker", "cli", "terminology", "inputs", "outputs",
                 "segment_run", "ranking")


def run_without_heavy_packages(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of :data:`HEAVY` fails."""
    blocker = textwrap.dedent(f"""
        import sys
        for name in {HEAVY!r}:
            sys.modules[name] = None  # "import torch" now raises ImportError
    """)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_light_modules_import_without_heavy_packages():
    result = run_without_heavy_packages(f"""
        import importlib, json
        for name in {LIGHT_MODULES!r}:
            importlib.import_module("labelshare." + name)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} and sys.modules[m])))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("argv", [["models"], ["labelspace", "show", "BUNDLED"], ["--version"]])
def test_commands_that_read_model_folders_run_without_torch(argv):
    result = run_without_heavy_packages(f"""
        from labelshare.cli import main
        from labelshare.paths import default_model_dir
        argv = [str(default_model_dir()) if a == "BUNDLED" else a for a in {argv!r}]
        sys.exit(main(argv))
    """)
    assert result.returncode == 0, result.stderr
    if argv[0] == "models":
        assert all(f"labelshare-4tasks-{version}" in result.stdout for version in ("v1", "v2"))
        assert "INVALID" not in result.stdout
    elif argv[0] == "labelspace":
        assert "| shared |" in result.stdout


def test_heavy_modules_say_what_is_missing_instead_of_failing_silently():
    """The check above is meaningful: the heavy layer really does need torch."""
    result = run_without_heavy_packages("import labelshare.models")
    assert result.returncode != 0 and "torch" in result.stderr
