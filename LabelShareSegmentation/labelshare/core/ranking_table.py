"""The table ``labelshare rank`` writes: the scored images, most uncertain first, as CSV (rank, case, score, predicted
voxels per label, seconds, input), and its reader.

The Slicer modules read ranking tables (:func:`read_ranking`) in Slicer's own process; scoring the images is
:func:`labelshare.engine.ranking.rank_cases`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .fileio import atomic_write_text

VOXELS_PREFIX = "voxels_"


@dataclass(frozen=True)
class RankedCase:
    """One scored image: its name and source, the score (higher: more uncertain), the predicted voxels per label
    name and the seconds it took."""

    name: str
    source: Path
    score: float
    voxels: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class RankFailure:
    name: str
    source: Path
    reason: str


@dataclass
class Ranking:
    """Scored images, most uncertain first (ties by name, so the order is stable), and the images that failed."""

    task: str
    score: str
    labels: list[str]
    cases: list[RankedCase] = field(default_factory=list)
    failures: list[RankFailure] = field(default_factory=list)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["rank", "case", "score", *(VOXELS_PREFIX + label for label in self.labels), "seconds",
                         "input"])
        for rank, case in enumerate(self.cases, start=1):
            writer.writerow([rank, case.name, f"{case.score:.6f}", *(case.voxels[label] for label in self.labels),
                             f"{case.seconds:.3f}", str(case.source)])
        return buffer.getvalue()

    def write(self, path: str | Path) -> Path:
        """The table as CSV, written atomically."""
        atomic_write_text(path, self.to_csv())
        return Path(path)


def read_ranking(path: str | Path) -> list[RankedCase]:
    """The cases of a ranking CSV written by :meth:`Ranking.write`, in its order; a file that is not one raises
    :class:`DataError` naming it."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        return [RankedCase(name=row["case"], source=Path(row["input"]), score=float(row["score"]),
                           voxels={key[len(VOXELS_PREFIX):]: int(value) for key, value in row.items()
                                   if key.startswith(VOXELS_PREFIX)},
                           seconds=float(row["seconds"])) for row in rows]
    except FileNotFoundError:
        raise DataError(f"{path}: ranking table not found") from None
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a ranking table of labelshare rank ({type(error).__name__}: {error})") from None
