"""Where things live and how their folders are named: the user's LabelShare home, the model store, the bundled
model, and the hidden folders a run builds a model version in. Light (no torch): the Slicer modules use it while
Slicer starts, before the first-run dependency install.

A model version ``<models>/<name>`` is built in ``<models>/.<name>.partial`` (:func:`staging_dir_for`) and renamed
into place when complete; an add-task version that waits for the regression gate is ``.<name>.candidate``
(:func:`candidate_dir_for`) with the refused report beside it (:func:`refused_report_paths`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import ModelError


def _bundled_models_dir() -> Path:
    """A source checkout or the Slicer extension: the module's ``Resources/Models``; an installed wheel: the same
    folders as package data, ``labelshare/bundled_models``."""
    package = Path(__file__).resolve().parents[1]  # labelshare/
    module_resources = package.parent / "Resources" / "Models"
    return module_resources if module_resources.is_dir() else package / "bundled_models"


BUNDLED_MODELS_DIR = _bundled_models_dir()
HOME_ENVIRONMENT_VARIABLE = "LABELSHARE_HOME"


def labelshare_home() -> Path:
    """$LABELSHARE_HOME, or ~/.labelshare: the user's model store, training lock and job records live here."""
    home = os.environ.get(HOME_ENVIRONMENT_VARIABLE)
    return Path(home) if home else Path.home() / ".labelshare"


def user_models_dir() -> Path:
    """Where new model versions go by default."""
    return labelshare_home() / "models"


def version_order(name: str) -> list:
    """Sort key of model folder names that end in their version: numbers compare as numbers, so
    ``labelshare-4tasks-v10`` sorts after ``labelshare-4tasks-v9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def bundled_model_dirs() -> list[Path]:
    """The models shipped with the extension (the folders under Resources/Models), newest version first: their
    names end in the version (``labelshare-4tasks-v3``)."""
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted((p for p in BUNDLED_MODELS_DIR.iterdir() if (p / "config.json").is_file()),
                  key=lambda p: version_order(p.name), reverse=True)


def default_model_dir() -> Path | None:
    """The newest model shipped with the extension, if any."""
    bundled = bundled_model_dirs()
    return bundled[0] if bundled else None


def model_dir_or_default(path: str | Path | None) -> Path:
    """``path``, or the bundled default model when no model is given; ModelError when none is installed."""
    if path:
        return Path(path)
    bundled = default_model_dir()
    if bundled is None:
        raise ModelError("no model given and no default model is installed; give a model folder")
    return bundled


def staging_dir_for(target: str | os.PathLike) -> Path:
    """The fixed staging folder where ``target`` is built; fixed so that an interrupted run can resume there."""
    target = Path(target)
    return target.parent / f".{target.name}.partial"


def candidate_dir_for(out: str | os.PathLike) -> Path:
    """Where a trained add-task version waits for the regression gate; hidden, beside ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.candidate"


def published_name(folder: str | os.PathLike) -> str:
    """The name a version built in ``folder`` is published under: the folder's own name, or for a staging or
    candidate folder the name of the version it becomes."""
    name = Path(folder).name
    match = re.fullmatch(r"\.(.+)\.(?:partial|candidate)", name)
    return match[1] if match else name


def refused_report_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """Where a refused version's forgetting report is written (JSON, markdown): beside ``out``."""
    out = Path(out)
    return out.parent / f"{out.name}.forgetting.json", out.parent / f"{out.name}.forgetting.md"


def recorded_task_folders(model: str | Path) -> dict[str, Path]:
    """The task folders that a model's ``lineage.json`` records (every add-task writes them) and that still hold a
    task (a ``dataset.json``): where replay, the forgetting report and an update find the old tasks' cases."""
    lineage = Path(model) / "lineage.json"
    if not lineage.is_file():
        return {}
    try:
        recorded = json.loads(lineage.read_text(encoding="utf-8")).get("task_folders") or {}
    except (ValueError, AttributeError, OSError, RecursionError):
        raise ModelError(f"{lineage}: not a valid lineage record") from None
    if not isinstance(recorded, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                 for k, v in recorded.items()):
        raise ModelError(f"{lineage}: 'task_folders' must map task names to folders")
    return {name: Path(folder) for name, folder in recorded.items() if (Path(folder) / "dataset.json").is_file()}

