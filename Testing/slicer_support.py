"""Real Slicer MRML for pytest, without the Slicer application (PyPI ``slicer-core``: Slicer's C++ without Qt).

Slicer creates a scene at start-up and registers the module logics on the application logic; code reaches them
through ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``. :func:`slicer_scene` does the same with real
objects (see ``../shared/design/slicer-core-testing.md``), so the MRML adapters of both LabelShare modules and
``slicer.util``'s array helpers run unchanged. Use the fixtures in a test module::

    pytest_plugins = ["slicer_support"]   # registers the fixtures mrml_scene and slicer_env

    def test_something(mrml_scene):
        volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")

or the context manager :func:`slicer_scene` in a script (``benchmarks/apply_to_segments.py``). What it provides:

- a ``vtkMRMLScene`` with a ``vtkSlicerApplicationLogic``;
- the Colors, Volumes, Segmentations, SubjectHierarchy and Terminologies logics, created and registered on the
  application logic in that order (the Volumes logic needs Colors; segmentation converter rules are registered
  when the Segmentations logic gets the scene);
- ``slicer.mrmlScene`` and ``slicer.modules.<lower-case name>.logic()`` pointing at them, removed again (and the
  scene cleared) afterwards.

Not provided, because slicer-core has no Qt: ``slicer.app``, IO helpers such as ``slicer.util.loadVolume``, widgets.
Subject-hierarchy items are not created automatically for new nodes (Slicer's Qt plugins do that); the adapters
create the items they need.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import slicer
import vtk

MODULE_LOGICS = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Terminologies", "vtkSlicerTerminologiesModuleLogic"),
)


@dataclass
class SlicerScene:
    """The scene and the logics :func:`slicer_scene` created (all real Slicer C++ objects)."""

    scene: slicer.vtkMRMLScene
    application_logic: slicer.vtkSlicerApplicationLogic
    logics: dict[str, object]

    def logic(self, module_name: str):
        """The logic of a module by its Slicer name, e.g. ``"Segmentations"``."""
        return self.logics[module_name]


@contextmanager
def slicer_scene() -> Iterator[SlicerScene]:
    """A scene wired like Slicer's at start-up; ``slicer.mrmlScene``/``slicer.modules`` are set while it is open."""
    if hasattr(slicer, "mrmlScene"):
        raise RuntimeError("slicer.mrmlScene is already set: slicer_scene() does not nest")
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    logics = {}
    with _quiet_vtk():
        for name, class_name in MODULE_LOGICS:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(application_logic)
            logic.SetMRMLScene(scene)
            application_logic.SetModuleLogic(name, logic)
            logics[name] = logic
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{
        name.lower(): types.SimpleNamespace(logic=(lambda logic=logic: logic)) for name, logic in logics.items()})
    try:
        yield SlicerScene(scene=scene, application_logic=application_logic, logics=logics)
    finally:
        del slicer.mrmlScene
        del slicer.modules
        with _quiet_vtk():
            scene.Clear(True)
            for logic in logics.values():
                logic.SetMRMLScene(None)


@contextmanager
def _quiet_vtk() -> Iterator[None]:
    """Silence VTK warnings and errors: slicer-core ships no colour files or terminology JSON, so the Colors and
    Terminologies logics log errors about their default files whenever they (re)load them; those files are not
    used here. Only wrapped around set-up and tear-down, never around the code under test."""
    shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(shown)


@pytest.fixture
def slicer_env() -> Iterator[SlicerScene]:
    """:func:`slicer_scene` as a fixture (scene plus logics)."""
    with slicer_scene() as env:
        yield env


@pytest.fixture
def mrml_scene(slicer_env: SlicerScene) -> slicer.vtkMRMLScene:
    """The fixture's ``vtkMRMLScene`` (also reachable as ``slicer.mrmlScene`` during the test)."""
    return slicer_env.scene
