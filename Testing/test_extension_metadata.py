"""The extension's metadata as Slicer's build and the Extensions Index read it: the top-level CMakeLists.txt run
through CMake itself (``cmake -P``), its fields checked against Slicer's conventions.

Slicer's ``SlicerExtensionCPack.cmake`` hands the metadata to ``slicerFunctionGenerateExtensionDescription``
*unquoted* (``EXTENSION_DESCRIPTION ${EXTENSION_DESCRIPTION}``), and that function reads its arguments with
``cmake_parse_arguments`` (description, homepage, category, icon: one value each; contributors, depends,
screenshots: lists). :data:`PROBE` makes exactly those two steps with our metadata block, so what CMake does to the
values (a ``;`` splits a string into list items) is what this test sees.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CMAKE_FILE = REPO / "CMakeLists.txt"
SINGLE_VALUES = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                 "EXTENSION_STATUS", "EXTENSION_BUILD_SUBDIRECTORY")
LIST_VALUES = ("EXTENSION_CONTRIBUTORS", "EXTENSION_DEPENDS", "EXTENSION_SCREENSHOTURLS")

PROBE = """
include("${METADATA}")
function(write_value label value)  # one line each: newlines in a value are written as \\n
  string(REPLACE "\\n" "\\\\n" value "${value}")
  file(APPEND "${OUT}" "${label}=${value}\\n")
endfunction()
function(generate_description)  # the argument handling of slicerFunctionGenerateExtensionDescription
  cmake_parse_arguments(MY "" "${SINGLE_VALUES}" "${LIST_VALUES}" ${ARGN})
  foreach(name IN LISTS SINGLE_VALUES LIST_VALUES)
    write_value("parsed ${name}" "${MY_${name}}")
  endforeach()
  write_value("unparsed" "${MY_UNPARSED_ARGUMENTS}")
endfunction()
foreach(name IN LISTS SINGLE_VALUES)
  write_value("set ${name}" "${${name}}")
endforeach()
# unquoted, as SlicerExtensionCPack.cmake passes them
generate_description(
  EXTENSION_HOMEPAGE ${EXTENSION_HOMEPAGE}
  EXTENSION_CATEGORY ${EXTENSION_CATEGORY}
  EXTENSION_DESCRIPTION ${EXTENSION_DESCRIPTION}
  EXTENSION_ICONURL ${EXTENSION_ICONURL}
  EXTENSION_STATUS ${EXTENSION_STATUS}
  EXTENSION_BUILD_SUBDIRECTORY ${EXTENSION_BUILD_SUBDIRECTORY}
  EXTENSION_CONTRIBUTORS ${EXTENSION_CONTRIBUTORS}
  EXTENSION_DEPENDS ${EXTENSION_DEPENDS}
  EXTENSION_SCREENSHOTURLS ${EXTENSION_SCREENSHOTURLS}
  )
"""


def metadata_block() -> str:
    """The ``set(...)`` commands of the "Extension meta-information" section of the top-level CMakeLists.txt."""
    text = CMAKE_FILE.read_text(encoding="utf-8")
    section = re.search(r"# Extension meta-information[^\n]*\n(.*?)\n#-+\n# Extension dependencies", text, re.S)
    assert section, "no 'Extension meta-information' section before 'Extension dependencies' in CMakeLists.txt"
    return section.group(1)


@pytest.fixture(scope="module")
def cmake_metadata(tmp_path_factory) -> dict[str, str]:
    """``set NAME`` (the value as set) and ``parsed NAME`` (as the description generator receives it) → value."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    folder = tmp_path_factory.mktemp("cmake")
    (folder / "metadata.cmake").write_text(metadata_block(), encoding="utf-8")
    (folder / "probe.cmake").write_text(PROBE, encoding="utf-8")
    out = folder / "out.txt"
    result = subprocess.run([cmake, f"-DMETADATA={folder / 'metadata.cmake'}", f"-DOUT={out}",
                             f"-DSINGLE_VALUES={';'.join(SINGLE_VALUES)}", f"-DLIST_VALUES={';'.join(LIST_VALUES)}",
                             "-P", str(folder / "probe.cmake")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    return {label: value.replace("\\n", "\n") for label, value in (line.split("=", 1) for line in lines)}


def test_every_single_value_field_reaches_the_description_generator_whole(cmake_metadata):
    """A ``;`` in a field would make CMake split it: the description stopped at its first semicolon."""
    assert cmake_metadata["unparsed"] == ""
    for name in SINGLE_VALUES:
        assert cmake_metadata[f"parsed {name}"] == cmake_metadata[f"set {name}"], name
    assert cmake_metadata["parsed EXTENSION_DESCRIPTION"].endswith(
        "Requires Slicer 5.10 or later and the PyTorch extension.")
    assert cmake_metadata["parsed EXTENSION_DEPENDS"] == "PyTorch"


# -- Slicer's conventions and the Extensions Index ------------------------------------------------------------------
INDEX_FILE = REPO / "LabelShare.json"  # the description the Extensions Index holds for this extension
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
# The fields that schema knows (it allows no others) and the ones it requires.
SCHEMA_FIELDS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                 "build_subdirectory", "enabled", "tier"}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
# "Firstname Lastname ([SubOrg, ]Org)", comma-separated (Slicer's SlicerExtensionDescriptionSpec.cmake)
CONTRIBUTOR = re.compile(r"[^(),]+ \((?:[^(),]+, )?[^(),]+\)")


def cmake_text() -> str:
    return CMAKE_FILE.read_text(encoding="utf-8")


def quoted_url_field(name: str) -> str:
    """The value of ``set(NAME "...")`` written out literally, as the Extensions Index's check reads
    CMakeLists.txt: as text, one double-quoted string followed by the closing parenthesis, no CMake variables."""
    match = re.search(rf'set\s*\({name}\s*"([^"]+)"\s*\)', cmake_text())
    assert match, f"{name} is not one double-quoted string in CMakeLists.txt"
    assert "${" not in match.group(1), f"{name} uses CMake variables, which the index's check cannot resolve"
    return match.group(1)


def index_description() -> dict:
    return json.loads(INDEX_FILE.read_text(encoding="utf-8"))


def repository_file(url: str) -> Path:
    """The file of this repository that a raw.githubusercontent.com URL of the indexed revision names."""
    description = index_description()
    owner_repo = description["scm_url"].removeprefix("https://github.com/").removesuffix(".git")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/{description['scm_revision']}/"
    assert url.startswith(prefix), f"{url} is not a file of {description['scm_url']} at {description['scm_revision']}"
    return REPO / url.removeprefix(prefix)


def test_cmake_minimum_required_is_that_of_slicer_510s_extension_template():
    """LabelShare supports Slicer 5.10 and later; its extension template starts with this line (5.12's asks for
    CMake 3.28, which 5.10's build does not need)."""
    commands = [line for line in cmake_text().splitlines() if line.startswith("cmake_minimum_required")]
    assert commands == ["cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"]


def test_contributors_are_named_with_their_organisation(cmake_metadata):
    contributors = cmake_metadata["parsed EXTENSION_CONTRIBUTORS"].split(";")
    for listed in contributors:
        assert all(CONTRIBUTOR.fullmatch(name.strip()) for name in listed.split(",")), listed
    for module in ("LabelShareSegmentation", "LabelShareTraining"):
        source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
        assert f"self.parent.contributors = {contributors!r}".replace("'", '"') in source, module


def test_extensions_index_description_follows_its_schema_and_agrees_with_cmake(cmake_metadata):
    description = index_description()
    assert description["$schema"] == SCHEMA_URL
    assert SCHEMA_REQUIRED <= set(description) <= SCHEMA_FIELDS
    assert re.search(r"project\((\w+)\)", cmake_text()).group(1) == INDEX_FILE.stem  # the index checks this
    assert description["category"] == cmake_metadata["set EXTENSION_CATEGORY"]
    assert description["build_dependencies"] == cmake_metadata["parsed EXTENSION_DEPENDS"].split(";") == ["PyTorch"]
    assert description["build_subdirectory"] == cmake_metadata["set EXTENSION_BUILD_SUBDIRECTORY"]
    assert cmake_metadata["set EXTENSION_HOMEPAGE"].startswith(description["scm_url"])
    assert Path(description["scm_url"]).name.startswith("Slicer")  # the index asks repository names to
    assert b"\r" not in INDEX_FILE.read_bytes()  # the index accepts LF line endings only


def test_icon_url_is_written_out_and_names_the_icon_in_the_repository():
    icon = repository_file(quoted_url_field("EXTENSION_ICONURL"))
    assert icon.is_file() and icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", icon


# -- catalog pictures ----------------------------------------------------------------------------------------------
SCREENSHOTS = REPO / "Resources" / "Screenshots"
MAX_PICTURE_BYTES = 300 * 1024


def test_screenshot_urls_name_small_pictures_in_the_repository_labelled_as_rendered_views(cmake_metadata):
    urls = quoted_url_field("EXTENSION_SCREENSHOTURLS").split()  # how the Extensions Index reads them
    # how Slicer's description generator reads them: newlines removed, items stripped, spaces collapsed
    generated = re.sub(" +", " ", cmake_metadata["parsed EXTENSION_SCREENSHOTURLS"].replace("\n", "")).strip()
    assert generated.split(" ") == urls and len(urls) == 3
    readme = (SCREENSHOTS / "README.md").read_text(encoding="utf-8")
    assert "rendered Slicer slice\nviews" in readme and "not screenshots of the LabelShare modules" in readme
    for url in urls:
        picture = repository_file(url)
        assert picture.parent == SCREENSHOTS and picture.is_file(), url
        data = picture.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < MAX_PICTURE_BYTES, (picture.name, len(data))
        assert f"`{picture.name}`" in readme, picture.name


@pytest.mark.realdata
def test_render_script_draws_the_segments_over_a_real_image(tmp_path):
    """The script behind the pictures still works: the mammogram's slice view, rendered offscreen, shows the
    image and the three tissue segments in their colours."""
    import SimpleITK as sitk
    from conftest import real_task_dir
    real_task_dir("ddsm_mammo_tissue")
    result = subprocess.run([sys.executable, str(SCREENSHOTS / "render_slice_views.py"), "--only", "mammogram.png",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not EGL" not in result.stderr
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mammogram.png")))[..., :3].astype(int)
    assert pixels.shape[:2] == (640, 360)
    grey = (pixels.max(axis=-1) - pixels.min(axis=-1)) < 8
    yellowish = (pixels[..., 0] > pixels[..., 2] + 40) & (pixels[..., 1] > pixels[..., 2] + 40)
    assert grey.mean() > 0.05 and yellowish.mean() > 0.2, (grey.mean(), yellowish.mean())
