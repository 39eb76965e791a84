"""Where models live. Imports nothing heavy (no torch), so the Slicer modules can use it while Slicer starts,
before the first-run dependency install."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ModelError

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
HOME_ENVIRONMENT_VARIABLE = "LABELSHARE_HOME"


def labelshare_home() -> Path:
    """$LABELSHARE_HOME, or ~/.labelshare: the user's model store, training lock and job records live here."""
    home = os.environ.get(HOME_ENVIRONMENT_VARIABLE)
    return Path(home) if home else Path.home() / ".labelshare"


def user_models_dir() -> Path:
    """Where new model versions go by default."""
    return labelshare_home() / "models"


def default_model_dir() -> Path | None:
    """The model shipped with the extension (newest folder under Resources/Models), if any."""
    if not BUNDLED_MODELS_DIR.is_dir():
        return None
    candidates = sorted(p for p in BUNDLED_MODELS_DIR.iterdir() if (p / "config.json").is_file())
    return candidates[-1] if candidates else None


def model_dir_or_default(path: str | Path | None) -> Path:
    """``path``, or the bundled default model when no model is given; ModelError when none is installed."""
    if path:
        return Path(path)
    bundled = default_model_dir()
    if bundled is None:
        raise ModelError("no model given and no default model is installed; give a model folder")
    return bundled


def recorded_task_folders(model: str | Path) -> dict[str, Path]:
    """The task folders that a model's ``lineage.json`` records (every add-task writes them) and that still hold a
    task (a ``dataset.json``): where replay, the forgetting report and an update find the old tasks' cases."""
    lineage = Path(model) / "lineage.json"
    if not lineage.is_file():
        return {}
    try:
        recorded = json.loads(lineage.read_text(encoding="utf-8")).get("task_folders") or {}
    except (ValueError, AttributeError):
        raise ModelError(f"{lineage}: not a valid lineage record") from None
    return {name: Path(folder) for name, folder in recorded.items() if (Path(folder) / "dataset.json").is_file()}

