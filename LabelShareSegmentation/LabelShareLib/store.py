"""The model store: which models a user can pick, each folder checked once per session, and a change notification.

The models are the bundled default model, the models of the models folder (where LabelShareTraining publishes new
versions) and folders added with "Add model folder…". Every folder is checked with the engine's light model-folder
module (:mod:`labelshare.core.modelfolder`: files present, checksums match, configuration and label space agree; no
torch or MONAI, so this runs in Slicer's process before the first-run dependency install). An invalid folder stays
in the list with the reason, so that the user sees why it cannot be used.

Checking a folder hashes every file in it (the weights are many megabytes), so each result is cached, keyed by the
folder's resolved path and the size and modification time of its ``manifest.json`` and of its other files (a stat,
no reading): a model version is immutable, so a folder is hashed once per session, and one that is rewritten,
loses a file or gets a missing file back is checked again at the next refresh. Contents changed in place without
a new size or time are still caught when the background worker loads the model, which checks the folder again.

:attr:`ModelStore.changed` (a :class:`~.signals.Signal`) announces new model versions: LabelShareTraining's logic
notifies it when a run publishes one, and LabelShareSegmentation's widget refreshes its model list on it.
:meth:`ModelStore.choose` is LabelShare Training's "Use this model" (also to roll back to an older version):
LabelShare Segmentation takes that model (:meth:`ModelStore.take_chosen`) on the notification or when it opens.

Usage::

    store = default_store()
    for summary in store.available(models_folder, added_folders):   # engine ModelSummary objects
        print(model_title(summary))
    space = store.label_space(summary.path)                         # verified once, then from the cache
    store.changed.subscribe(refresh)                                # refresh(path) after a new version
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from labelshare.core.config import check_mirroring
from labelshare.core.errors import LabelShareError, ModelError
from labelshare.core.modelfolder import (MANIFEST_FILE, REQUIRED_FILES, ModelConfig, ModelSummary, model_folders,
                                         summarize_model, verify_folder)
from labelshare.core.paths import BUNDLED_MODELS_DIR, bundled_model_dirs, user_models_dir

from .signals import Signal

__all__ = ["ModelStore", "available_models", "default_store", "is_bundled", "model_title", "models_in",
           "task_labels", "user_models_dir", "version_of"]

_VERSION = re.compile(r"^(?P<stem>.+?)-v(?P<number>\d+)$")


def version_of(model_name: str) -> tuple[str, int]:
    """(lineage, version) of a model folder name: ``liver-v3`` -> (``liver``, 3); a name without ``-vN`` is version
    1 of its own lineage. LabelShare Training names every version it publishes so (``<lineage>-v<N>``)."""
    match = _VERSION.match(model_name)
    return (match["stem"], int(match["number"])) if match else (model_name, 1)


@dataclass(frozen=True)
class _Check:
    """The cached result of checking one folder: what verified, or why not."""

    key: tuple  # what the folder's files looked like (sizes and times) when it was checked
    summary: ModelSummary
    verified: tuple | None = None  # (ModelConfig, labelshare.core.labelspace.LabelSpace) of a usable folder


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _folder_key(folder: Path) -> tuple | None:
    """(manifest.json's size and time, every file's name, size and time); None without a manifest."""
    manifest = _stat_key(folder / MANIFEST_FILE)
    if manifest is None:
        return None
    return manifest, tuple(sorted((p.relative_to(folder).as_posix(), _stat_key(p)) for p in folder.rglob("*")
                                  if p.is_file()))


class ModelStore:
    """Lists and checks model folders, caching each folder's check (see the module docstring)."""

    def __init__(self) -> None:
        self.changed = Signal("the model store")
        self.chosen: Path | None = None
        self._checks: dict[Path, _Check] = {}

    def choose(self, path: str | Path) -> None:
        """Make ``path`` the model LabelShare Segmentation uses (it takes it with :meth:`take_chosen`)."""
        self.chosen = Path(path)
        self.changed.notify(self.chosen)

    def take_chosen(self) -> Path | None:
        """The model chosen with :meth:`choose` and not taken yet (None), once."""
        chosen, self.chosen = self.chosen, None
        return chosen

    # -- one folder -------------------------------------------------------------------------------------------------
    def _check(self, path: Path) -> _Check:
        resolved = path.resolve()
        key = _folder_key(resolved) if resolved.is_dir() else None
        cached = self._checks.get(resolved)
        if cached is not None and key is not None and cached.key == key:
            return cached
        try:
            verified = verify_folder(path)
        except ModelError as error:
            check = _Check(key, ModelSummary(path=path, valid=False, reason=str(error)))
        else:
            check = _Check(key, summarize_model(path, verified), verified)
        if key is not None:  # nothing to key on without a manifest: such a folder is checked every time (cheap)
            self._checks[resolved] = check
        else:
            self._checks.pop(resolved, None)
        return check

    def verify(self, path: str | Path) -> tuple[ModelConfig, object]:
        """(configuration, label space) of a model folder; raises ModelError with the reason it cannot be used."""
        check = self._check(Path(path))
        if check.verified is None:
            raise ModelError(check.summary.reason)
        return check.verified

    def summary(self, path: str | Path) -> ModelSummary:
        """The folder as the model list shows it (``valid``, ``reason``, ``tasks``, ``created``…); never raises."""
        path = Path(path)
        return dataclasses.replace(self._check(path).summary, path=path)

    def label_space(self, path: str | Path):
        """The verified label space of a model folder (``labelshare.core.labelspace.LabelSpace``)."""
        return self.verify(path)[1]

    def task_labels(self, path: str | Path, task: str) -> list:
        """The labels (``id``, ``name``, ``info``) of a task of a model, in id order; raises UnknownTaskError."""
        return sorted(self.label_space(path).task(task).labels, key=lambda label: label.id)

    def mirroring_refused(self, path: str | Path, task: str) -> str:
        """Why test-time mirroring cannot be asked for a task of a model (``config.check_mirroring``'s rule: the
        task is lateralised), or "" when it can; raises UnknownTaskError."""
        try:
            check_mirroring(task, self.label_space(path).task(task).lateralised, "mirroring")
        except LabelShareError as refused:
            return str(refused)
        return ""

    def forget(self, path: str | Path | None = None) -> None:
        """Drop the cached check of one folder (all folders without ``path``): the next use checks it again."""
        if path is None:
            self._checks.clear()
        else:
            self._checks.pop(Path(path).resolve(), None)

    # -- lists ------------------------------------------------------------------------------------------------------
    def models_in(self, folder: str | Path) -> list[ModelSummary]:
        """The model folders in ``folder`` (the folder itself, or model folders up to two levels down), valid ones
        oldest first, then the invalid ones; raises ModelError naming the folder when there is none."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"{folder}: folder does not exist")
        if any((folder / name).exists() for name in REQUIRED_FILES):
            return [self.summary(folder)]
        found = [self.summary(candidate) for candidate in model_folders(folder)]
        if not found:
            raise ModelError(f"{folder}: no LabelShare model here (a model folder holds {', '.join(REQUIRED_FILES)})")
        return sorted(found, key=lambda s: (not s.valid, s.created, str(s.path)))

    def available(self, models_folder: str | Path | None = None, added_folders: Iterable[str | Path] = (),
                  all_versions: bool = True, keep: Iterable[str | Path] = ()) -> list[ModelSummary]:
        """The models a user can pick: the bundled models, the models of ``models_folder`` (default: the engine's
        user models folder, ``$LABELSHARE_HOME/models`` or ``~/.labelshare/models``) and of every added folder
        (each folder once), grouped by lineage (:func:`version_of`) in the order the lineages first appear (the
        bundled one at the top), newest version first within a lineage.

        Without ``all_versions`` only the newest usable version of each lineage is listed, plus the folders in
        ``keep`` (e.g. the older version a scene remembers) and every folder that cannot be used (with its reason).
        A models folder that is missing or empty is skipped (the first training run creates it); an added folder
        that has gone or holds no model is listed as invalid with the reason.
        """
        found: dict[Path, ModelSummary] = {}

        def add(folder: str | Path, keep_error: bool) -> None:
            try:
                summaries = self.models_in(folder)
            except ModelError as error:
                summaries = [ModelSummary(path=Path(folder), valid=False, reason=str(error))] if keep_error else []
            for summary in summaries:
                found.setdefault(Path(summary.path).resolve(), summary)

        for bundled in bundled_model_dirs():
            add(bundled, keep_error=True)
        add(models_folder or user_models_dir(), keep_error=False)
        for folder in added_folders:
            add(folder, keep_error=True)
        lineages: dict[str, list[ModelSummary]] = {}
        for summary in found.values():
            lineages.setdefault(version_of(Path(summary.path).name)[0], []).append(summary)
        kept = {Path(path).resolve() for path in keep}
        listed = []
        for versions in lineages.values():
            versions.sort(key=lambda s: (version_of(Path(s.path).name)[1], s.created), reverse=True)
            newest = next((s for s in versions if s.valid), None)
            listed += [s for s in versions if all_versions or s is newest or not s.valid
                       or Path(s.path).resolve() in kept]
        return listed


_DEFAULT_STORE = ModelStore()


def default_store() -> ModelStore:
    """The store both modules share in one Slicer session (one cache, one change notification)."""
    return _DEFAULT_STORE


def models_in(folder: str | Path) -> list[ModelSummary]:
    """:meth:`ModelStore.models_in` of the shared store."""
    return default_store().models_in(folder)


def available_models(models_folder: str | Path | None = None, added_folders: Iterable[str | Path] = (),
                     all_versions: bool = True, keep: Iterable[str | Path] = ()) -> list[ModelSummary]:
    """:meth:`ModelStore.available` of the shared store."""
    return default_store().available(models_folder, added_folders, all_versions, keep)


def task_labels(model_path: str | Path, task: str) -> list:
    """:meth:`ModelStore.task_labels` of the shared store."""
    return default_store().task_labels(model_path, task)


def mirroring_refused(model_path: str | Path, task: str) -> str:
    """:meth:`ModelStore.mirroring_refused` of the shared store."""
    return default_store().mirroring_refused(model_path, task)


def is_bundled(path: str | Path) -> bool:
    return Path(path).resolve().parent == BUNDLED_MODELS_DIR.resolve()


def model_title(summary: ModelSummary) -> str:
    """How a model appears in the model list."""
    name = Path(summary.path).name + (" (bundled)" if is_bundled(summary.path) else "")
    if not summary.valid:
        return f"{name} — cannot be used"
    return f"{name} — {', '.join(summary.tasks)}"
