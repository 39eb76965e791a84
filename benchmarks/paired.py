"""Paired comparison of two models on the same validation cases, from their ``evaluation.csv``.

Both benchmarks (methods and incremental) compare models on identical validation cases; the standard error of the
per-case difference tells which differences are larger than the case-to-case noise of a small validation set.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


def dice_values(folder: Path, by: str, files: Sequence[Path] = ()) -> dict[tuple[str, str], list[float]]:
    """(task, row[by]) -> the Dice values of the folder's evaluation.csv rows (and those of ``files``, evaluation.csv
    files of the same model written by ``labelshare evaluate``), grouped by the column ``by`` ("case" or "label");
    labels absent from reference and prediction (NaN) are skipped."""
    values: dict[tuple[str, str], list[float]] = {}
    for path in [folder / "evaluation.csv", *files]:
        with open(path) as stream:
            for row in csv.DictReader(stream):
                dice = float(row["dice"])
                if not math.isnan(dice):
                    values.setdefault((row["task"], row[by]), []).append(dice)
    return values


def mean_dice(folder: Path, by: str, files: Sequence[Path] = ()) -> dict[tuple[str, str], float]:
    """(task, row[by]) -> mean of :func:`dice_values`."""
    return {key: statistics.fmean(v) for key, v in dice_values(folder, by, files).items()}


def case_means(folder: Path, files: Sequence[Path] = ()) -> dict[tuple[str, str], float]:
    """(task, case) -> mean Dice over the labels of the case (``files``: as for :func:`mean_dice`)."""
    return mean_dice(folder, "case", files)


class PairedDifference(NamedTuple):
    """A task's mean Dice (0-1) over the cases two models both evaluated, and the standard error of the mean
    per-case difference (NaN with fewer than two cases)."""

    cases: int
    before: float
    after: float
    standard_error: float


def paired_difference(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float],
                      task: str) -> PairedDifference:
    """The task's paired comparison of two :func:`case_means`."""
    keys = [key for key in before if key[0] == task and key in after]
    if not keys:
        return PairedDifference(0, math.nan, math.nan, math.nan)
    differences = [after[key] - before[key] for key in keys]
    error = statistics.stdev(differences) / math.sqrt(len(keys)) if len(keys) >= 2 else math.nan
    return PairedDifference(len(keys), statistics.fmean(before[key] for key in keys),
                            statistics.fmean(after[key] for key in keys), error)


def paired_standard_error(base: Path, model: Path, task: str) -> float:
    """Standard error (Dice, 0-1) of the mean per-case difference model - base of the task's Dice, over the cases
    both folders evaluated; NaN with fewer than two such cases."""
    return paired_difference(case_means(base), case_means(model), task).standard_error
