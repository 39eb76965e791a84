"""Per-case, per-label scores and their summaries, CSV and markdown (light: no torch). The heavy part that
segments cases to score them is :mod:`labelshare.engine.evaluation`."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fileio import atomic_write_files

EVALUATION_FILES = ("evaluation.csv", "evaluation.md")


@dataclass
class CaseScore:
    task: str
    case: str
    label: str
    label_id: int
    dice: float
    hd95: float


@dataclass
class Evaluation:
    """Scores of one or more tasks; summaries skip NaN (label absent from reference and prediction)."""

    scores: list[CaseScore] = field(default_factory=list)

    def extend(self, other: Evaluation) -> None:
        self.scores += other.scores

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(s.task for s in self.scores))

    def labels(self, task: str) -> list[str]:
        return list(dict.fromkeys(s.label for s in self.scores if s.task == task))

    def values(self, task: str, label: str, metric: str = "dice") -> np.ndarray:
        return np.array([getattr(s, metric) for s in self.scores if s.task == task and s.label == label], dtype=float)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{task: {label: {dice_mean, dice_sd, hd95_mean, hd95_sd, n}}}."""
        return {task: {label: _stats(self.values(task, label), self.values(task, label, "hd95"))
                       for label in self.labels(task)} for task in self.tasks()}

    def mean_dice(self) -> dict[str, float]:
        """Mean over labels of each task's mean Dice."""
        return {task: nanmean([s["dice_mean"] for s in labels.values()]) for task, labels in self.summary().items()}

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["task", "case", "label", "label_id", "dice", "hd95"])
        for s in self.scores:
            writer.writerow([s.task, s.case, s.label, s.label_id, format_number(s.dice, 4), format_number(s.hd95, 3)])
        return buffer.getvalue()

    def to_markdown(self, title: str = "Evaluation") -> str:
        lines = [f"# {title}", "", "Dice and HD95 per case and label (mean ± sd over cases; NaN where the label is in "
                 "neither reference nor prediction, HD95 also where it is in only one).", "",
                 "| task | label | n | Dice | HD95 |", "|---|---|---|---|---|"]
        for task, labels in self.summary().items():
            for label, s in labels.items():
                dice = f"{format_number(s['dice_mean'], 3)} ± {format_number(s['dice_sd'], 3)}"
                hd95 = f"{format_number(s['hd95_mean'], 2)} ± {format_number(s['hd95_sd'], 2)}"
                lines.append(f"| {task} | {label} | {s['n']} | {dice} | {hd95} |")
        lines += ["", "| task | mean Dice over labels |", "|---|---|"]
        lines += [f"| {task} | {format_number(value, 3)} |" for task, value in self.mean_dice().items()]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path, title: str = "Evaluation", overwrite: bool = True) -> tuple[Path, Path]:
        """:data:`EVALUATION_FILES` (CSV, markdown) in ``folder``, both or neither."""
        csv_path, markdown_path = (folder / name for name in EVALUATION_FILES)
        atomic_write_files({csv_path: self.to_csv().encode("utf-8"),
                            markdown_path: self.to_markdown(title).encode("utf-8")}, overwrite)
        return csv_path, markdown_path


def nanmean(values) -> float:
    """Mean of the values that are not NaN; NaN when none is."""
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _stats(dice: np.ndarray, hd95: np.ndarray) -> dict[str, float]:
    d, h = dice[np.isfinite(dice)], hd95[np.isfinite(hd95)]
    return {"n": int(d.size), "dice_mean": float(d.mean()) if d.size else math.nan,
            "dice_sd": float(d.std()) if d.size else math.nan,
            "hd95_mean": float(h.mean()) if h.size else math.nan, "hd95_sd": float(h.std()) if h.size else math.nan}


def format_number(value: float, digits: int, missing: str = "nan") -> str:
    return missing if value != value else f"{value:.{digits}f}"
