"""What the project files declare, read with a TOML parser (tomllib, or tomli before Python 3.11)."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def pyproject(folder: Path = REPO) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))


def engine_dependencies() -> dict[str, Requirement]:
    """The engine's dependencies (pyproject.toml), by lower-case name."""
    return {Requirement(text).name.lower(): Requirement(text) for text in pyproject()["project"]["dependencies"]}
