"""What LabelShareLib does differently inside the Slicer application (``slicer.app`` exists) than in scripts and
tests: background processes run with Slicer's ``PythonSlicer`` launcher, never with ``sys.executable`` (in Slicer
that is the application itself), and temporary files go to Slicer's temporary folder (its application settings),
which Slicer's own code uses too. ``slicer.app`` is a stand-in here (shell_harness.SlicerApp)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import slicer

from shell_harness import SHELL_FOLDERS, SlicerApp

sys.path[:0] = [str(folder) for folder in SHELL_FOLDERS]
from LabelShareLib import application, jobs  # noqa: E402
from LabelShareLib.dependencies import DependencyInstaller  # noqa: E402
from labelshare.core.errors import LabelShareError  # noqa: E402

pytest_plugins = ["slicer_support"]  # fixtures: mrml_scene, slicer_env


@pytest.fixture
def inside_slicer(monkeypatch, tmp_path) -> Path:
    """``slicer.app`` with a temporary folder whose path has a space (as under "C:/Users/First Last")."""
    temporary = tmp_path / "Slicer temp"
    monkeypatch.setattr(slicer, "app", SlicerApp(temporary_path=str(temporary)), raising=False)
    return temporary


def test_outside_slicer_children_run_with_this_python_or_pythonslicer(monkeypatch):
    monkeypatch.delattr(slicer, "app", raising=False)
    monkeypatch.setattr(application.shutil, "which", lambda name: None)
    assert application.python_executable() == sys.executable
    monkeypatch.setattr(application.shutil, "which", lambda name: f"/opt/Slicer/bin/{name}")
    assert application.python_executable() == "/opt/Slicer/bin/PythonSlicer"


def test_inside_slicer_a_missing_pythonslicer_is_an_error_not_a_second_slicer(monkeypatch, inside_slicer):
    monkeypatch.setattr(application.shutil, "which", lambda name: None)
    with pytest.raises(LabelShareError, match="PythonSlicer.*not found"):
        jobs.engine_command("worker")
    monkeypatch.setattr(application.shutil, "which", lambda name: f"/opt/Slicer/bin/{name}")
    assert jobs.engine_command("worker")[0] == "/opt/Slicer/bin/PythonSlicer"


def test_segmentation_transfer_files_are_in_slicers_temporary_folder(mrml_scene, inside_slicer):
    import numpy as np
    from labelshare.core.paths import default_model_dir
    from LabelShareLib.jobs import WorkerJob
    from LabelShareLib.shared_worker import SharedWorker
    from LabelShareSegmentationLib import SegmentationLogic

    class RecordingWorker:
        def __init__(self, device):
            self.device, self.requests = device, []

        def submit(self, request, **job_options):
            self.requests.append(request)
            return WorkerJob(self, "r1", **job_options)

        def stop(self):
            pass

    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
    slicer.util.updateVolumeFromArray(volume, np.zeros((2, 8, 8), dtype=np.int16))
    logic = SegmentationLogic(SharedWorker(worker_factory=RecordingWorker))
    logic.start(volume, "acdc", default_model_dir(), device="cpu")
    request = logic.shared.worker.requests[0]
    assert Path(request["input"]).is_file() and Path(request["input"]).is_relative_to(inside_slicer)
    assert Path(request["output"]).parent == Path(request["input"]).parent
    logic.stop()
    assert not Path(request["input"]).parent.exists()


def test_pip_constraints_are_in_slicers_temporary_folder(monkeypatch, inside_slicer):
    from LabelShareLib import dependencies
    installed = {"numpy": "2.0.2", "torch": "2.5.0+cpu"}
    monkeypatch.setattr(dependencies, "installed_version", installed.get)
    seen = []

    def pip_install(arguments):
        constraints = Path(arguments[arguments.index("-c") + 1])
        seen.append((constraints, constraints.read_text(encoding="utf-8")))
        installed.update({argument.split(">=")[0]: "99.0" for argument in arguments if ">=" in argument})

    DependencyInstaller(lambda *question: True, lambda requirement: None, pip_install=pip_install).ensure()
    (constraints, text), = seen
    assert constraints.is_relative_to(inside_slicer) and "torch==2.5.0+cpu" in text.split()
