"""Where models live. Imports nothing heavy (no torch), so the Slicer modules can use it while Slicer starts,
before the first-run dependency install."""

from __future__ import annotations

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
