"""LabelShare's preferences: what holds across scenes and sessions, shared by both modules (keys ``LabelShare/...``).

What a scene remembers (input volume, model, task) is in each module's parameter node; what a user sets once (the
models folder, added model folders, device, the training workspace…) is here, in Slicer's application settings
(``qt.QSettings``). Both modules read the same values through :class:`Settings`, so that, e.g., a model folder added
in LabelShare Segmentation is offered in LabelShare Training too (one model list, :meth:`Settings.models`).

The settings store is passed in (anything with QSettings' ``value(key, default)`` and ``setValue(key, value)``);
by default it is Slicer's ``qt.QSettings()``, made on first use, so this module imports without Qt (tests on
slicer-core give a dictionary-backed store).

Usage::

    settings = Settings()                       # in Slicer: qt.QSettings
    settings.add_model_folder("/data/shared-models")
    for summary in settings.models():           # bundled, models folder, added folders; newest versions first
        ...
"""

from __future__ import annotations

import json
from pathlib import Path

from labelshare.core.config import DEFAULT_DEVICE
from labelshare.core.paths import user_models_dir

from .store import available_models

MODELS_FOLDER = "LabelShare/ModelsFolder"
ADDED_MODEL_FOLDERS = "LabelShare/AddedModelFolders"
SHOW_ALL_VERSIONS = "LabelShare/ShowAllModelVersions"
DEVICE = "LabelShare/Device"
TRAINING_WORKSPACE = "LabelShare/TrainingWorkspace"
TRAIN_AUTOMATICALLY_AFTER = "LabelShare/TrainAutomaticallyAfterCases"  # 0: off (the default)
ANNOTATION_QUEUE_FOLDER = "LabelShare/AnnotationQueueFolder"


class DictSettings:
    """A settings store in a dictionary, with QSettings' two methods (scripts and tests)."""

    def __init__(self, values: dict | None = None):
        self.values = dict(values or {})

    def value(self, key: str, default=None):
        return self.values.get(key, default)

    def setValue(self, key: str, value) -> None:  # noqa: N802 (QSettings' name)
        self.values[key] = value


class Settings:
    """The preferences of both LabelShare modules (see the module docstring)."""

    def __init__(self, store=None):
        self._store = store

    @property
    def store(self):
        if self._store is None:
            import qt  # only inside Slicer
            self._store = qt.QSettings()
        return self._store

    def _text(self, key: str, default: str = "") -> str:
        return str(self.store.value(key, default) or default)

    # -- models ---------------------------------------------------------------------------------------------------
    @property
    def models_folder(self) -> str:
        """The folder whose models are listed and where LabelShare Training publishes new versions ('' in the
        settings: the engine's user models folder)."""
        return self._text(MODELS_FOLDER) or str(user_models_dir())

    @models_folder.setter
    def models_folder(self, path: str) -> None:
        self.store.setValue(MODELS_FOLDER, str(path))

    @property
    def added_model_folders(self) -> list[str]:
        """Folders added with "Add model folder…" (kept as JSON: QSettings turns a one-item list into a string)."""
        try:
            folders = json.loads(self._text(ADDED_MODEL_FOLDERS, "[]"))
        except ValueError:  # edited by hand into something else: start again rather than fail the module
            return []
        return [str(folder) for folder in folders] if isinstance(folders, list) else []

    def add_model_folder(self, folder: str | Path) -> None:
        if str(folder) not in self.added_model_folders:
            self.store.setValue(ADDED_MODEL_FOLDERS, json.dumps(self.added_model_folders + [str(folder)]))

    @property
    def show_all_versions(self) -> bool:
        return self._text(SHOW_ALL_VERSIONS, "false").lower() in ("true", "1")

    @show_all_versions.setter
    def show_all_versions(self, show: bool) -> None:
        self.store.setValue(SHOW_ALL_VERSIONS, "true" if show else "false")

    def models(self, all_versions: bool | None = None, keep=()) -> list:
        """The model list both modules show (engine ``ModelSummary`` objects; :func:`.store.available_models`):
        bundled models, the models folder, added folders; of every lineage only its newest version (and the
        folders in ``keep``) unless ``all_versions`` (default: the "Show all versions" setting)."""
        show_all = self.show_all_versions if all_versions is None else all_versions
        return available_models(self.models_folder, self.added_model_folders, show_all, [k for k in keep if k])

    # -- devices and training -------------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._text(DEVICE, DEFAULT_DEVICE)

    @device.setter
    def device(self, device: str) -> None:
        self.store.setValue(DEVICE, device)

    @property
    def training_workspace(self) -> str:
        """The folder of the collected task folders ('': LabelShare Training's default)."""
        return self._text(TRAINING_WORKSPACE)

    @training_workspace.setter
    def training_workspace(self, path: str) -> None:
        self.store.setValue(TRAINING_WORKSPACE, str(path))

    @property
    def train_automatically_after(self) -> int:
        """Train by itself after this many new cases; 0: never (the default)."""
        try:
            return max(int(self.store.value(TRAIN_AUTOMATICALLY_AFTER, 0) or 0), 0)
        except (TypeError, ValueError):
            return 0

    @train_automatically_after.setter
    def train_automatically_after(self, cases: int) -> None:
        self.store.setValue(TRAIN_AUTOMATICALLY_AFTER, int(cases))

    @property
    def annotation_queue_folder(self) -> str:
        return self._text(ANNOTATION_QUEUE_FOLDER)

    @annotation_queue_folder.setter
    def annotation_queue_folder(self, path: str) -> None:
        self.store.setValue(ANNOTATION_QUEUE_FOLDER, str(path))
