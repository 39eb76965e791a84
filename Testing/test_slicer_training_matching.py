"""Segments -> task labels (LabelShareTrainingLib.matching): matching by name, merging overlapping masks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
for module_folder in ("LabelShareSegmentation", "LabelShareTraining"):  # the package imports LabelShareLib
    sys.path.insert(0, str(REPO_ROOT / module_folder))

from LabelShareTrainingLib.matching import map_segments, merge_label_masks  # noqa: E402

from labelshare.core.errors import DataError  # noqa: E402


def test_segments_map_to_labels_by_name_ignoring_case_and_separators():
    mapping = map_segments(["liver", "TUMOUR", "Ruler", "tumour 2"], ["Liver", "tumour", "vessel"])
    assert mapping.assignments == {"liver": "Liver", "TUMOUR": "tumour"}
    assert mapping.unmatched == ["Ruler", "tumour 2"] and mapping.missing == ["vessel"]
    chosen = map_segments(["liver", "TUMOUR", "Ruler", "tumour 2"], ["Liver", "tumour", "vessel"],
                          {"Ruler": None, "tumour 2": "tumour"})
    assert chosen.assignments == {"liver": "Liver", "TUMOUR": "tumour", "tumour 2": "tumour"}
    assert chosen.unmatched == [] and chosen.skipped == ["Ruler"] and chosen.missing == ["vessel"]
    assert map_segments(["LV-cavity"], ["lv_cavity"]).assignments == {"LV-cavity": "lv_cavity"}
    with pytest.raises(DataError, match="not a label"):
        map_segments(["x"], ["a"], {"x": "b"})


def test_overlapping_segments_smaller_structure_wins():
    shape = (4, 10, 10)
    organ = np.zeros(shape, bool)
    organ[:, 1:9, 1:9] = True
    lesion = np.zeros(shape, bool)
    lesion[1:3, 4:6, 4:6] = True
    lesion_part_two = np.zeros(shape, bool)
    lesion_part_two[0, 0, 0] = True
    label, overlaps = merge_label_masks([(2, lesion), (1, organ), (2, lesion_part_two)], shape)
    assert label.dtype == np.uint8
    assert (label == 2).sum() == lesion.sum() + 1, "same-label segments are united and the lesion wins"
    assert (label == 1).sum() == organ.sum() - lesion.sum()
    assert overlaps == {(2, 1): int(lesion.sum())}
    tie_a, tie_b = np.zeros(shape, bool), np.zeros(shape, bool)
    tie_a[0, :2, :2] = True
    tie_b[0, 1:3, 1:3] = True
    tied, tie_overlaps = merge_label_masks([(3, tie_a), (5, tie_b)])
    assert tied[0, 1, 1] == 5 and tie_overlaps == {(5, 3): 1}, "equal sizes: the higher id wins"
    empty, none = merge_label_masks([], shape)
    assert empty.shape == shape and not empty.any() and none == {}
    wide, _ = merge_label_masks([(300, tie_a)])
    assert wide.dtype == np.uint16 and wide.max() == 300
