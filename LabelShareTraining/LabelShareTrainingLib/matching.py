"""Segments → task labels: which segment becomes which label (by name), and one label array from overlapping
segment masks (the smaller structure wins). Used when LabelShareTraining adds a case; no Slicer or Qt here.

Names match when they are equal ignoring case and treating spaces, ``_`` and ``-`` alike
(:func:`labelshare.core.naming.normalise_name`, the same rule the segment colours and terminology use).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from labelshare.core.errors import DataError
from labelshare.core.naming import normalise_name


@dataclass
class SegmentMapping:
    """Which segment becomes which task label.

    ``assignments``: segment name -> label name; ``unmatched``: segments with no label (ask the user: map or
    skip); ``skipped``: segments the user chose to leave out; ``missing``: labels that no segment provides.
    """

    assignments: dict[str, str]
    unmatched: list[str]
    skipped: list[str]
    missing: list[str]


def map_segments(segment_names: Sequence[str], label_names: Iterable[str],
                 choices: Mapping[str, str | None] | None = None) -> SegmentMapping:
    """Map segments to labels by name; ``choices`` (segment -> label name, or None to skip) overrides the match.

    Several segments may map to one label (their union is used).
    """
    labels = list(label_names)
    by_normal = {normalise_name(label): label for label in labels}
    choices = dict(choices or {})
    assignments, unmatched, skipped = {}, [], []
    for segment in segment_names:
        if segment in choices:
            chosen = choices[segment]
            if chosen is None:
                skipped.append(segment)
                continue
            if chosen not in labels:
                raise DataError(f"segment '{segment}' is mapped to '{chosen}', which is not a label of the task "
                                f"(labels: {', '.join(labels)})")
            assignments[segment] = chosen
        elif normalise_name(segment) in by_normal:
            assignments[segment] = by_normal[normalise_name(segment)]
        else:
            unmatched.append(segment)
    provided = set(assignments.values())
    return SegmentMapping(assignments=assignments, unmatched=unmatched, skipped=skipped,
                          missing=[label for label in labels if label not in provided])


def merge_label_masks(masks: Sequence[tuple[int, np.ndarray]], shape: Sequence[int] | None = None,
                      ) -> tuple[np.ndarray, dict[tuple[int, int], int]]:
    """One label array from binary masks; returns (label array, {(winner id, loser id): overlapping voxels}).

    Masks of the same label id are united. Where masks of different labels overlap, the label with fewer voxels
    wins (ties: the higher id): a small structure drawn over a large one is what the annotator meant.
    """
    if not masks and shape is None:
        raise DataError("no segments to export and no image shape given")
    united: dict[int, np.ndarray] = {}
    for label_id, mask in masks:
        mask = np.asarray(mask) != 0
        if shape is not None and mask.shape != tuple(shape):
            raise DataError(f"mask of label {label_id} has shape {mask.shape}, the image has {tuple(shape)}")
        united[label_id] = united[label_id] | mask if label_id in united else mask
    target_shape = tuple(shape) if shape is not None else next(iter(united.values())).shape
    dtype = np.uint16 if max(united, default=0) > 255 else np.uint8
    result = np.zeros(target_shape, dtype=dtype)
    # paint large to small, so that the smallest structure is painted last and wins
    order = sorted(united, key=lambda label_id: (-int(united[label_id].sum()), label_id))
    for label_id in order:
        result[united[label_id]] = label_id
    overlaps = {}
    for i, first in enumerate(order):
        for second in order[i + 1:]:
            count = int(np.count_nonzero(united[first] & united[second]))
            if count:
                overlaps[(second, first)] = count  # ``second`` comes later in the painting order: it won
    return result, overlaps
