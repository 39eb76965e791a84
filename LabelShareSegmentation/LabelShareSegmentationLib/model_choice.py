"""Which models the user can pick: the bundled default model, the models folder of the user's settings, and
folders added with "Add model folder…". Every folder is checked with the engine (``labelshare.models``: files
present, checksums match, configuration and label space agree); an invalid one stays in the list with the reason,
so the user sees why it cannot be used.

The engine's model module imports torch, so the functions here import it on first use (after the first-run
dependency install), never when Slicer loads the module.
"""

from __future__ import annotations

from pathlib import Path

from labelshare.errors import ModelError
from labelshare.paths import BUNDLED_MODELS_DIR, default_model_dir, user_models_dir


def models_in(folder: str | Path) -> list:
    """The model folders in ``folder`` (the folder itself, or its sub-folders) as engine ``ModelSummary`` objects
    (``path``, ``valid``, ``reason``, ``tasks``, ``created``…); raises ModelError naming the folder when there is
    none, e.g. when a model folder lacks files."""
    from labelshare.models import REQUIRED_FILES, list_models, summarize_model
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: folder does not exist")
    if any((folder / name).exists() for name in REQUIRED_FILES):
        return [summarize_model(folder)]
    found = list_models([folder])
    if not found:
        raise ModelError(f"{folder}: no LabelShare model here (a model folder holds {', '.join(REQUIRED_FILES)})")
    return found


def available_models(models_folder: str | Path | None = None, added_folders: list[str | Path] = ()) -> list:
    """Bundled default model first, then the models of ``models_folder`` (default: the engine's user models folder,
    ``$LABELSHARE_HOME/models`` or ``~/.labelshare/models``) and of every added folder (each once).

    A models folder that is missing or empty is skipped (the first training run creates it); an added folder
    that has gone or holds no model is listed as invalid with the reason.
    """
    from labelshare.models import ModelSummary
    found: dict[Path, object] = {}

    def add(folder: Path | str, keep_error: bool) -> None:
        try:
            summaries = models_in(folder)
        except ModelError as error:
            summaries = [ModelSummary(path=Path(folder), valid=False, reason=str(error))] if keep_error else []
        for summary in summaries:
            found.setdefault(Path(summary.path).resolve(), summary)

    bundled = default_model_dir()
    if bundled is not None:
        add(bundled, keep_error=True)
    add(models_folder or user_models_dir(), keep_error=False)
    for folder in added_folders:
        add(folder, keep_error=True)
    return list(found.values())


def is_bundled(path: str | Path) -> bool:
    return Path(path).resolve().parent == BUNDLED_MODELS_DIR.resolve()


def model_title(summary) -> str:
    """How a model appears in the model list."""
    name = Path(summary.path).name + (" (bundled)" if is_bundled(summary.path) else "")
    if not summary.valid:
        return f"{name} — cannot be used"
    return f"{name} — {', '.join(summary.tasks)}"


def task_labels(model_path: str | Path, task: str) -> list:
    """The labels (``id``, ``name``, ``info``) of a task of a model, in id order; raises UnknownTaskError."""
    from labelshare.labelspace import LabelSpace
    space = LabelSpace.load(Path(model_path) / "labelspace.json")
    return sorted(space.task(task).labels, key=lambda label: label.id)
