"""The extension's metadata as Slicer's build and the Extensions Index read it: the top-level CMakeLists.txt run
through CMake itself (``cmake -P``), its fields checked against Slicer's conventions.

Slicer's ``SlicerExtensionCPack.cmake`` hands the metadata to ``slicerFunctionGenerateExtensionDescription``
*unquoted* (``EXTENSION_DESCRIPTION ${EXTENSION_DESCRIPTION}``), and that function reads its arguments with
``cmake_parse_arguments`` (description, homepage, category, icon: one value each; contributors, depends,
screenshots: lists). :data:`PROBE` makes exactly those two steps with our metadata block, so what CMake does to the
values (a ``;`` splits a string into list items) is what this test sees.
"""

from __future__ import annotations

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
    section = re.search(r"# Extension meta-information\n(.*?)\n#-+\n# Extension dependencies", text, re.S)
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
