"""A checkout that converts line endings (``core.autocrlf=true``, Git for Windows' default) still has usable model
folders: every file a model's manifest.json hashes must reach the working tree byte for byte.

The test clones this repository's committed state (HEAD) the way such a user does and verifies every model
folder in the clone with the engine's check (sizes and sha256 of the manifest).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labelshare.core.modelfolder import MANIFEST_FILE, verify_folder
from labelshare.core.paths import default_model_dir

REPO = Path(__file__).resolve().parents[1]


def committed_model_folders() -> list[str]:
    """Folders (relative to the repository) of every committed manifest.json."""
    listed = subprocess.run(["git", "ls-files", f"*{MANIFEST_FILE}"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    return [str(Path(path).parent.as_posix()) for path in listed]


@pytest.fixture(scope="module")
def autocrlf_clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository")
    clone = tmp_path_factory.mktemp("autocrlf") / "clone"
    subprocess.run(["git", "clone", "-q", "-c", "core.autocrlf=true", str(REPO), str(clone)], check=True,
                   capture_output=True, text=True, timeout=300)
    return clone


def test_line_endings_are_converted_in_that_clone(autocrlf_clone):
    """The clone does convert text files (otherwise the next test proves nothing)."""
    assert b"\r\n" in (autocrlf_clone / "README.md").read_bytes()


def test_bundled_and_committed_models_verify_in_a_clone_that_converts_line_endings(autocrlf_clone):
    folders = committed_model_folders()
    assert default_model_dir().relative_to(REPO).as_posix() in folders  # the bundled model
    assert "Testing/data/format-first-release" in folders  # and the fixtures of the older formats
    for folder in folders:
        verify_folder(autocrlf_clone / folder)  # raises ModelError naming the files that differ


def test_extensions_index_description_keeps_lf_line_endings_in_that_clone(autocrlf_clone):
    """The Extensions Index refuses a description file with CR characters."""
    assert b"\r" not in (autocrlf_clone / "LabelShare.json").read_bytes()
