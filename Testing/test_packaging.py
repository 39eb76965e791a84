"""A built wheel, installed into a clean virtual environment, carries the bundled model and finds it (not the
checkout's copy), and its commands run."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from labelshare.core.paths import bundled_model_dirs, default_model_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO_ROOT)], check=True, capture_output=True, text=True, timeout=300)
    return next(out.glob("labelshare-*.whl"))


def test_wheel_holds_engine_and_bundled_model_but_no_benchmarks_or_slicer_code(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "labelshare/cli.py" in names and "labelshare/engine/incremental/run.py" in names
    assert not any(n.startswith("labelshare_benchmarks/") or "dodnet" in n for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not any("matplotlib" in line or "scikit-image" in line for line in requires)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert b"labelshare-bench" not in entry_points
    for folder in bundled_model_dirs():  # every model of Resources/Models
        bundled = [n for n in names if n.startswith(f"labelshare/bundled_models/{folder.name}/")]
        assert {Path(n).name for n in bundled} >= {"model.safetensors", "manifest.json", "config.json",
                                                   "labelspace.json"}, folder.name
    assert "labelshare/resources/LabelTerminology.csv" in names  # .seg.nrrd and DICOM SEG read it
    assert not any("LabelShareSegmentationLib" in n or "LabelShareLib" in n or n.endswith(".ui") for n in names)


def test_wheel_in_a_clean_environment_lists_and_verifies_its_bundled_model(wheel, tmp_path):
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    # Dependencies (numpy, SimpleITK, ...) come from this test's environment, after the clean one's own packages;
    # a .pth line is not processed for .pth files of that folder, so this checkout's editable install stays out.
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip())
    (own / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    found = subprocess.run([str(python), "-c", "import json, labelshare, labelshare.core.paths as p; print(json.dumps("
                            "[labelshare.__file__, str(p.default_model_dir()), "
                            "len(__import__('labelshare.core.terminology').core.terminology.load_label_table())]))"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    module_file, model_dir, known_labels = json.loads(found.stdout)
    assert Path(module_file).is_relative_to(environment) and Path(model_dir).is_relative_to(environment)
    assert Path(model_dir).name == default_model_dir().name
    assert known_labels >= 10  # the packaged terminology table
    listed = subprocess.run([str(environment / "bin" / "labelshare"), "models"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert all(folder.name in listed.stdout for folder in bundled_model_dirs())
    assert "INVALID" not in listed.stdout
