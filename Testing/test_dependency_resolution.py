"""The first-run requirement set resolves inside the Slicer versions LabelShare supports.

In Slicer, torch is installed first (PyTorch extension), then pip installs ``Resources/requirements.txt`` with
constraints pinning what is already there: Slicer's numpy and SimpleITK and that torch (``protected_constraints``).
So the requirements must resolve with Slicer's numpy and SimpleITK and with the *lowest* torch LabelShare accepts
(``TORCH_REQUIREMENT``): MONAI 1.4 needs numpy < 2 and MONAI >= 1.5 needs torch >= 2.4.1, so ``torch>=2.2`` with
``monai>=1.4`` could not resolve with Slicer 5.10's numpy 2.0.2 when torch 2.2-2.4.0 was installed.

``pip install --dry-run`` resolves against PyPI for Slicer's Python (3.12) without installing anything. torch is
the one package not taken from PyPI: PyPI has no separate metadata for torch 2.4 wheels, so resolving it would
download a CUDA wheel of almost 1 GB; it stands in as a metadata-only wheel with a local version label, as the
PyTorch extension installs it (``2.4.1+cpu``, ``2.4.1+cu121``). The test asks PyPI, so it is marked ``internet``
and left out of the default run (``make test-internet`` runs it, and CI after ``make test``; a pip older than the
one the Makefile installs may resolve differently); it skips when PyPI cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LabelShareSegmentation"))
from LabelShareLib import dependencies  # noqa: E402
from project_metadata import engine_dependencies  # noqa: E402

PYPI = "https://pypi.org/simple"
# What Slicer bundles (its SuperBuild: External_python-numpy.cmake, External_SimpleITK.cmake or
# External_python-SimpleITK.cmake, and Slicer_REQUIRED_PYTHON_VERSION in CMakeLists.txt)
SLICER_PYTHONS = {
    "5.10": {"python": "3.12", "numpy": "2.0.2", "SimpleITK": "2.5.2"},
    "5.12": {"python": "3.12", "numpy": "2.4.6", "SimpleITK": "2.5.5"},
}


def lowest_version(requirement: Requirement) -> str:
    floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    assert len(floors) == 1, f"{requirement}: one '>=' lower bound expected"
    return floors[0]


def test_slicer_requirements_ask_for_what_the_engine_declares():
    """One minimum per package: the engine's pyproject.toml, Resources/requirements.txt and the torch that the
    PyTorch extension is asked for agree."""
    engine = engine_dependencies()
    assert Requirement(dependencies.TORCH_REQUIREMENT).specifier == engine["torch"].specifier
    for requirement in dependencies.read_requirements():
        if requirement.name.lower() in engine:
            assert requirement.specifier == engine[requirement.name.lower()].specifier, requirement.name


def stand_in_torch_wheel(folder: Path, version: str) -> Path:
    """A wheel that only declares ``torch`` of ``version`` (what the PyTorch extension installed)."""
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: LabelShare test\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(scope="module")
def pypi_reachable() -> None:
    try:
        urllib.request.urlopen(f"{PYPI}/pip/", timeout=15).close()
    except OSError as error:
        pytest.skip(f"PyPI is not reachable ({error}); the resolution cannot be checked here")


@pytest.mark.internet
@pytest.mark.parametrize("slicer_version", list(SLICER_PYTHONS))
def test_requirements_resolve_with_slicers_numpy_simpleitk_and_the_lowest_accepted_torch(
        slicer_version, pypi_reachable, tmp_path, monkeypatch):
    bundled = SLICER_PYTHONS[slicer_version]
    torch = f"{lowest_version(Requirement(dependencies.TORCH_REQUIREMENT))}+cpu"
    stand_in_torch_wheel(tmp_path, torch)
    installed = {"numpy": bundled["numpy"], "SimpleITK": bundled["SimpleITK"], "torch": torch}
    monkeypatch.setattr(dependencies, "installed_version", installed.get)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(dependencies.protected_constraints()) + "\n", encoding="utf-8")
    requirements = [dependencies.TORCH_REQUIREMENT] + [str(r) for r in dependencies.read_requirements()]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(report), "--only-binary=:all:", "--python-version", bundled["python"], "--index-url", PYPI,
         "--find-links", str(tmp_path), "-c", str(constraints), *requirements, "numpy", "SimpleITK"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull})  # this machine's pip settings stay out of it
    assert result.returncode == 0, f"Slicer {slicer_version}: {result.stderr[-3000:]}"
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
              for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
    assert chosen["torch"] == torch and chosen["numpy"] == bundled["numpy"]
    assert chosen["simpleitk"] == bundled["SimpleITK"]
    assert {r.name.lower() for r in dependencies.read_requirements()} <= set(chosen)
