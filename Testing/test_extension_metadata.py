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
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CMAKE_FILE = REPO / "CMakeLists.txt"
SINGLE_VALUES = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                 "EXTENSION_STATUS", "EXTENSION_BUILD_SUBDIRECTORY")
LIST_VALUES = ("EXTENSION_CONTRIBUTORS", "EXTENSION_DEPENDS", "EXTENSION_SCREENSHOTURLS")

PROBE = """
include("${METADATA}")
function(generate_description)  # the argument handling of slicerFunctionGenerateExtensionDescription
  cmake_parse_arguments(MY "" "${SINGLE_VALUES}" "${LIST_VALUES}" ${ARGN})
  foreach(name IN LISTS SINGLE_VALUES LIST_VALUES)
    file(APPEND "${OUT}" "parsed ${name}=${MY_${name}}\\n")
  endforeach()
  file(APPEND "${OUT}" "unparsed=${MY_UNPARSED_ARGUMENTS}\\n")
endfunction()
foreach(name IN LISTS SINGLE_VALUES)
  file(APPEND "${OUT}" "set ${name}=${${name}}\\n")
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
    return dict(line.split("=", 1) for line in out.read_text(encoding="utf-8").splitlines())


def test_every_single_value_field_reaches_the_description_generator_whole(cmake_metadata):
    """A ``;`` in a field would make CMake split it: the description stopped at its first semicolon."""
    assert cmake_metadata["unparsed"] == ""
    for name in SINGLE_VALUES:
        assert cmake_metadata[f"parsed {name}"] == cmake_metadata[f"set {name}"], name
    assert cmake_metadata["parsed EXTENSION_DESCRIPTION"].endswith(
        "Requires Slicer 5.10 or later and the PyTorch extension.")
    assert cmake_metadata["parsed EXTENSION_DEPENDS"] == "PyTorch"


# -- Slicer's conventions and the Extensions Index ---------------------------------------------------------------------
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
