"""What a label means beyond its id: its name, a display colour and a standard terminology entry (SNOMED CT codes).

One source for all outputs that carry meaning: segments in Slicer (``LabelShareLib.segments``), ``.seg.nrrd`` files
and DICOM SEG (:mod:`labelshare.core.outputs`). Light (no torch, no Slicer): the style of a label comes from, in this
order, the label's ``info`` in the model's label space (``dataset.json`` → ``"labelshare": {"label_info":
{"lv_cavity": {"color": [r, g, b], "terminology": "<Slicer terminology string>"}}}``, colours in 0..1), the
extension's table of known label names (``Resources/LabelTerminology.csv``, read by :func:`load_label_table`), and a
fixed palette of distinct colours; colours are kept apart within a task.

A terminology entry is written the way Slicer serialises it (``vtkSlicerTerminologiesModuleLogic``)::

    context~category~type~type modifier~anatomic context~anatomic region~anatomic region modifier

with every code as ``scheme^value^meaning`` (``^^`` when absent), e.g.
``Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^87878005^
Left Ventricle~^^~~^^~^^``.
"""

from __future__ import annotations

import colorsys
import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import DataError
from .naming import normalise_name


def _label_table_path() -> Path:
    """A source checkout or the Slicer extension: ``<module folder>/../Resources/LabelTerminology.csv`` (the
    repository's ``Resources/``); an installed wheel: the same file as package data, ``labelshare/resources``."""
    package = Path(__file__).resolve().parents[1]  # labelshare/
    extension_resources = package.parents[1] / "Resources" / "LabelTerminology.csv"
    return extension_resources if extension_resources.is_file() else package / "resources" / "LabelTerminology.csv"


LABEL_TABLE = _label_table_path()
# The tags of a segment LabelShare made (LabelShareLib.segments in Slicer, the .seg.nrrd writer) and Slicer's tag of
# its terminology entry
TASK_TAG = "LabelShare.Task"
LABEL_ID_TAG = "LabelShare.LabelId"
MODEL_TAG = "LabelShare.Model"
TERMINOLOGY_TAG = "TerminologyEntry"
MIN_COLOUR_DISTANCE = 0.15  # RGB distance (0..1 per channel) under which two colours count as the same
PALETTE = (  # well separated on screen and from each other; used in this order
    (0.89, 0.29, 0.20), (0.20, 0.56, 0.86), (0.30, 0.74, 0.36), (0.98, 0.80, 0.18), (0.60, 0.36, 0.71),
    (0.96, 0.53, 0.15), (0.10, 0.74, 0.74), (0.91, 0.45, 0.71), (0.55, 0.34, 0.16), (0.62, 0.85, 0.38),
    (0.35, 0.35, 0.85), (0.85, 0.85, 0.85),
)
_SLICER_FIELDS = 7  # context, category, type, type modifier, anatomic context, anatomic region, its modifier


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM: coding scheme designator, code value, code meaning); all empty when absent."""

    scheme: str = ""
    value: str = ""
    meaning: str = ""

    def __bool__(self) -> bool:
        return bool(self.value)

    @classmethod
    def parse(cls, text: str) -> Code:
        scheme, value, meaning = (text.split("^", 2) + ["", ""])[:3]
        return cls(scheme, value, meaning)

    def slicer_text(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class Terminology:
    """A standard terminology entry: the category and type of a structure (with modifier, e.g. left/right)."""

    context: str
    category: Code
    type: Code
    type_modifier: Code = Code()
    anatomic_context: str = ""
    anatomic_region: Code = Code()
    anatomic_region_modifier: Code = Code()

    @classmethod
    def parse(cls, text: str) -> Terminology:
        """An entry from Slicer's serialised form (module docstring); missing trailing fields count as empty."""
        parts = (text.split("~") + [""] * _SLICER_FIELDS)[:_SLICER_FIELDS]
        return cls(parts[0], Code.parse(parts[1]), Code.parse(parts[2]), Code.parse(parts[3]), parts[4],
                   Code.parse(parts[5]), Code.parse(parts[6]))

    def slicer_text(self) -> str:
        """Slicer's serialised form, exactly as ``SerializeTerminologyEntry`` writes it."""
        return "~".join((self.context, self.category.slicer_text(), self.type.slicer_text(),
                         self.type_modifier.slicer_text(), self.anatomic_context, self.anatomic_region.slicer_text(),
                         self.anatomic_region_modifier.slicer_text()))


# What Slicer gives a segment that has no terminology (category and type "Tissue"); DICOM SEG requires a category
# and a type for every segment, so labels without a known entry are written with this one.
GENERIC_TISSUE = Terminology("Segmentation category and type - 3D Slicer General Anatomy list",
                             Code("SCT", "85756007", "Tissue"), Code("SCT", "85756007", "Tissue"),
                             anatomic_context="Anatomic codes - DICOM master list")


@dataclass(frozen=True)
class KnownLabel:
    """A row of the label table: colour (0..1) and, where a standard code exists, its terminology."""

    color: tuple[float, float, float]
    terminology: Terminology | None


def load_label_table(path: str | Path = LABEL_TABLE) -> dict[str, KnownLabel]:
    """Known label names (:func:`labelshare.core.naming.normalise_name` form) → colour and terminology, from the CSV
    (its header comment describes the columns)."""
    path = Path(path)
    table = {}
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            for row in csv.DictReader(line for line in stream if not line.startswith("#")):
                color = tuple(int(row[c]) / 255 for c in ("red", "green", "blue"))
                terminology = None
                if row["type_code"]:
                    codes = [Code(row[f"{part}_scheme"], row[f"{part}_code"], row[f"{part}_meaning"])
                             for part in ("category", "type", "modifier")]
                    terminology = Terminology(row["context"], *codes)
                table[normalise_name(row["label"])] = KnownLabel(color, terminology)
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{path}: label terminology table cannot be read ({error})") from None
    return table


class TaskLabel(Protocol):
    """What a label needs to be styled (the engine's ``labelspace.LabelEntry`` has these)."""

    id: int
    name: str
    info: dict


@dataclass(frozen=True)
class LabelStyle:
    """How one label of a task is shown and coded: name, id, colour (0..1) and terminology (None: unknown)."""

    name: str
    label_id: int
    color: tuple[float, float, float]
    terminology: Terminology | None = None


def _info_color(label: TaskLabel) -> tuple[float, float, float] | None:
    color = (label.info or {}).get("color")
    if color is None:
        return None
    try:
        values = tuple(float(c) for c in color)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        logging.warning("label '%s': ignoring label_info color %r (expected [r, g, b] in 0..1)", label.name, color)
        return None
    return values


def _far_from(color: Sequence[float], used: Iterable[Sequence[float]]) -> bool:
    return all(np.linalg.norm(np.subtract(color, other)) >= MIN_COLOUR_DISTANCE for other in used)


def _palette_colors() -> Iterable[tuple[float, float, float]]:
    yield from PALETTE
    hue = 0.0
    while True:  # beyond the palette: evenly spread hues (golden ratio), alternating brightness
        hue = (hue + 0.618033988749895) % 1.0
        yield colorsys.hsv_to_rgb(hue, 0.65, 0.95 if int(hue * 10) % 2 else 0.75)


def label_styles(labels: Sequence[TaskLabel], table: dict[str, KnownLabel] | None = None) -> list[LabelStyle]:
    """Name, colour and terminology of every label, in label-id order; colours differ within the task."""
    table = load_label_table() if table is None else table
    styles: list[LabelStyle] = []
    for label in sorted(labels, key=lambda entry: entry.id):
        known = table.get(normalise_name(label.name))
        info_terminology = (label.info or {}).get("terminology")
        terminology = Terminology.parse(str(info_terminology)) if info_terminology else \
            (known.terminology if known else None)
        color = _info_color(label) or (known.color if known else None)
        used = [style.color for style in styles]
        if color is None or not _far_from(color, used):
            color = next(c for c in _palette_colors() if _far_from(c, used))
        styles.append(LabelStyle(name=label.name, label_id=label.id, color=tuple(color), terminology=terminology))
    return styles
