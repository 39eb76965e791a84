"""The annotation queue: unlabelled images ranked by the model's uncertainty, worked through one case at a time.

"Rank" scores a folder of unlabelled images in the background worker both modules share (``labelshare rank``:
:mod:`labelshare.engine.ranking`; :mod:`LabelShareLib.shared_worker`, which LabelShare Segmentation's Apply uses too, so
each module sees the other's job and never cancels it); "Next case" loads the most uncertain image that is not done
yet and segments it with the same worker, so the annotator starts from the model's masks in the Segment Editor;
once the corrected case is added to its task ("Add current case"), it is marked done and the next one is the top of
the rest.

The queue lives in a small JSON file in the workspace (:data:`QUEUE_FILE`), written atomically
(:mod:`labelshare.core.fileio`) after every change, so it survives a restart of Slicer and a crash mid-write: the file
is either the old or the new state, never half of one. Ranking a folder again keeps the done marks of the cases that
are still in it.

Usage::

    queue = AnnotationQueueLogic(AnnotationQueue.in_workspace(workspace))    # the shared worker by default
    queue.rank("~/unlabelled", "hippocampus", model="~/.labelshare/models/hippo-v3")     # blocks; start_rank: GUI
    entry, volume, segmentation = queue.open_next()        # blocks; load_next + the job: GUI
    ...                                                    # the annotator corrects, then "Add current case"
    queue.mark_done(entry.case)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labelshare.core.config import RankConfig, SegmentConfig
from labelshare.core.errors import DataError
from labelshare.core.fileio import atomic_write_json, now_iso, read_json
from labelshare.core.paths import model_dir_or_default
from labelshare.core.ranking_table import RankedCase
from labelshare.core.tasks import read_image
from LabelShareLib.jobs import WorkerJob
from LabelShareLib.shared_worker import TRAINING, SharedWorker, default_worker
from LabelShareLib.volumes import image_to_volume

QUEUE_FILE = "annotation-queue.json"
QUEUE_FORMAT = 1


@dataclass
class QueueEntry:
    """A ranked image: its case name, file, score (higher: more uncertain), predicted voxels per label, and whether
    its annotation was added to the task."""

    case: str
    source: str
    score: float
    voxels: dict[str, int] = field(default_factory=dict)
    done: bool = False


@dataclass
class QueueState:
    """What the queue file holds: where the ranking came from and the entries, most uncertain first."""

    task: str = ""
    model: str = ""
    folder: str = ""
    score: str = RankConfig.score
    ranked: str = ""  # when
    current: str = ""  # the case "Next case" loaded last
    entries: list[QueueEntry] = field(default_factory=list)


class AnnotationQueue:
    """The queue's state and its file; every change is written at once (atomically)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state = self._read()

    @classmethod
    def in_workspace(cls, workspace: str | Path) -> AnnotationQueue:
        return cls(Path(workspace).expanduser() / QUEUE_FILE)

    def _read(self) -> QueueState:
        if not self.path.exists():
            return QueueState()
        data = read_json(self.path, "annotation queue", DataError)
        try:
            if data.get("format") != QUEUE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, not {QUEUE_FORMAT}")
            entries = [QueueEntry(**entry) for entry in data["entries"]]
            return QueueState(**{key: data[key] for key in ("task", "model", "folder", "score", "ranked", "current")},
                              entries=entries)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{self.path}: not an annotation queue of LabelShare ({error}); remove it and rank "
                            "again") from None

    def save(self) -> None:
        atomic_write_json(self.path, {"format": QUEUE_FORMAT, **asdict(self.state)})

    @property
    def entries(self) -> list[QueueEntry]:
        return self.state.entries

    def set_ranking(self, cases: list[RankedCase], task: str, model: str | Path, folder: str | Path,
                    score: str = RankConfig.score) -> None:
        """Replace the ranking (``cases`` most uncertain first); cases done before (same task, same file) stay
        done."""
        done = {entry.source for entry in self.entries if entry.done} if task == self.state.task else set()
        entries = [QueueEntry(case.name, str(case.source), case.score, dict(case.voxels), str(case.source) in done)
                   for case in cases]
        self.state = QueueState(task=task, model=str(model), folder=str(folder), score=score, ranked=now_iso(),
                                current=self.state.current if task == self.state.task else "", entries=entries)
        self.save()

    def next_case(self) -> QueueEntry | None:
        """The most uncertain case not done yet (None when all are done or nothing is ranked)."""
        return next((entry for entry in self.entries if not entry.done), None)

    def entry(self, case: str) -> QueueEntry:
        for entry in self.entries:
            if entry.case == case:
                return entry
        raise DataError(f"{self.path}: case '{case}' is not in the annotation queue")

    def set_current(self, case: str) -> None:
        self.entry(case)
        self.state.current = case
        self.save()

    def mark_done(self, case: str) -> QueueEntry | None:
        """Mark a case annotated; returns the next case."""
        self.entry(case).done = True
        if self.state.current == case:
            self.state.current = ""
        self.save()
        return self.next_case()

    def counts(self) -> tuple[int, int]:
        """(cases done, cases ranked)."""
        return sum(entry.done for entry in self.entries), len(self.entries)


def why_cannot_rank(entry, model: str, folder: str, busy_reason: str = "") -> str:
    """Why "Rank" is disabled ('' when it can run): shown as the button's tooltip. ``entry`` is the selected task
    (:class:`.logic.TaskRow`), ``busy_reason`` the shared worker's
    :meth:`~LabelShareLib.shared_worker.SharedWorker.blocked_reason` (LabelShare Segmentation's job)."""
    if busy_reason:
        return busy_reason
    if not model:
        return "Choose a model: ranking needs the model whose uncertainty it measures."
    if entry is None or not entry.in_model:
        return "Choose a task of the model."
    if not folder or not Path(folder).expanduser().is_dir():
        return "Choose the folder of unlabelled images."
    return ""


def why_no_next_case(queue: AnnotationQueue | None, busy_reason: str = "") -> str:
    """Why "Next case" is disabled ('' when it can run); ``queue`` None: not read (yet); ``busy_reason`` as for
    :func:`why_cannot_rank`."""
    if busy_reason:
        return busy_reason
    if queue is None or not queue.entries:
        return "Rank a folder of unlabelled images first."
    if queue.next_case() is None:
        return "Every ranked case is done; rank another folder."
    return ""


class AnnotationQueueLogic:
    """Ranking and case loading for the queue, in the background worker both modules share (its jobs are
    LabelShare Training's: LabelShare Segmentation shows them and does not cancel them)."""

    def __init__(self, queue: AnnotationQueue, shared: SharedWorker | None = None):
        self.queue = queue
        self.shared = shared or default_worker()

    def start_rank(self, folder: str | Path, task: str, model: str | Path | None = None,
                   on_event: Callable[[dict], None] | None = None, **options) -> WorkerJob:
        """Rank the images of ``folder`` in the background; when the job ends the queue holds the ranking
        (``job.result``: its entries). The table itself is written beside the queue file. ``options``: options of
        :class:`labelshare.core.config.RankConfig` by name (``device``, ``score``, ...)."""
        config = RankConfig.from_options(task=task, **options)
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder}: folder of unlabelled images not found")
        model_path = model_dir_or_default(model)
        self.queue.path.parent.mkdir(parents=True, exist_ok=True)

        def import_ranking(cases: list[RankedCase]) -> list[QueueEntry]:
            self.queue.set_ranking(cases, task, model_path, folder, config.score)
            return self.queue.entries

        return self.shared.start_ranking(TRAINING, [folder], self.queue.path.with_suffix(".csv"), config, model_path,
                                         on_event, import_ranking, overwrite=True)  # its own table, re-ranked

    def rank(self, folder: str | Path, task: str, model: str | Path | None = None, timeout: float | None = None,
             **options) -> list[QueueEntry]:
        """Rank and wait (``options`` as for :meth:`start_rank`); returns the queue's entries, most uncertain
        first."""
        return self.start_rank(folder, task, model, **options).result_or_raise(timeout)

    def load_next(self, scene=None) -> tuple[QueueEntry, object]:
        """Load the next case's image as a volume node (named after the case) and make it the current case;
        returns (entry, volume node). :raises DataError: when every case is done or its file cannot be read."""
        import slicer
        entry = self.queue.next_case()
        if entry is None:
            raise DataError("every case of the annotation queue is done; rank another folder")
        image = read_image(entry.source, "queued image")
        volume = image_to_volume(image, scene or slicer.mrmlScene, entry.case)
        self.queue.set_current(entry.case)
        return entry, volume

    def start_next(self, on_event: Callable[[dict], None] | None = None, **options
                   ) -> tuple[QueueEntry, object, WorkerJob]:
        """Load the next case and start segmenting it with the queue's task and model (``job.result``: the
        segmentation node the annotator corrects); ``options``: options of :class:`labelshare.core.config.SegmentConfig`
        by name (``device``, ``mirror``, ...)."""
        config = SegmentConfig.from_options(task=self.queue.state.task, **options)
        self.shared.check_free(TRAINING)  # before a volume is added to the scene
        entry, volume = self.load_next()
        job = self.shared.start_segmentation(TRAINING, volume, config, self.queue.state.model or None,
                                             on_event=on_event)
        return entry, volume, job

    def open_next(self, timeout: float | None = None, **options) -> tuple[QueueEntry, object, object]:
        """Load and segment the next case, and wait; returns (entry, volume node, segmentation node)."""
        entry, volume, job = self.start_next(**options)
        return entry, volume, job.result_or_raise(timeout)

    def case_added(self, volume_node) -> QueueEntry | None:
        """After "Add current case": when the added volume is the queue's current case (the volume "Next case"
        loaded is named after its case, also in a scene saved and opened again), mark it done. Returns the entry
        marked done, or None."""
        current = self.queue.state.current
        if not current or volume_node is None or volume_node.GetName() != current:
            return None
        entry = self.queue.entry(current)
        self.queue.mark_done(current)
        return entry

