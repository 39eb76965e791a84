"""One training job at a time, across Slicer instances and across a Slicer crash.

The lock is a small JSON file (``training.lock`` in the LabelShare home folder, beside the user's model store)
naming the host, the owning process (the Slicer that started the job), the training process and a heartbeat time
that the owner refreshes while it watches the job. It is created atomically (written under a temporary name, then
hard-linked into place, which fails if a lock is already there), so no reader ever sees a half-written lock.

A lock is *live* while its job can still be running:

- on the same host: while the training process is alive (its pid **and** start time match, so a recycled pid does
  not count), or while the owner is alive and its heartbeat is fresh (between taking the lock and starting the
  process);
- on another host (a shared home folder): while the heartbeat is fresher than :data:`STALE_AFTER_S`.

Anything else is *stale* (Slicer crashed and the job ended with it, the machine rebooted, the file is damaged)
and :meth:`TrainingLock.acquire` clears it. A training process that outlives a crashed Slicer keeps the lock live
until it ends, so a second job never starts beside it.

psutil is imported on first use: Slicer loads the module before the first-run dependency install.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import atomic_write_json
from labelshare.core.paths import labelshare_home

LOCK_FORMAT = "labelshare.engine.training-lock"
STALE_AFTER_S = 120.0
HEARTBEAT_INTERVAL_S = 10.0
_START_TIME_TOLERANCE_S = 1.0


class JobLockedError(LabelShareError):
    """Another training job holds the lock; ``info`` describes it."""

    def __init__(self, info: LockInfo, path: Path):
        self.info = info
        where = "this computer" if info.host == socket.gethostname() else f"computer '{info.host}'"
        job = f" ({info.description})" if info.description else ""
        super().__init__(f"{path}: a training job{job} started {info.started} on {where} is still running; "
                         "wait for it or stop it first")


@dataclass
class LockInfo:
    host: str
    owner_pid: int
    owner_started: float
    started: str
    heartbeat: float
    description: str = ""
    child_pid: int | None = None
    child_started: float | None = None

    @classmethod
    def from_json(cls, data: dict) -> LockInfo:
        if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT:
            raise ValueError("not a LabelShare training lock")
        return cls(host=str(data["host"]), owner_pid=int(data["owner_pid"]),
                   owner_started=float(data["owner_started"]), started=str(data["started"]),
                   heartbeat=float(data["heartbeat"]), description=str(data.get("description", "")),
                   child_pid=None if data.get("child_pid") is None else int(data["child_pid"]),
                   child_started=None if data.get("child_started") is None else float(data["child_started"]))

    def to_json(self) -> dict:
        return {"format": LOCK_FORMAT, **asdict(self)}


def default_lock_path() -> Path:
    """``training.lock`` beside the user's model store (``$LABELSHARE_HOME`` or ``~/.labelshare``)."""
    return labelshare_home() / "training.lock"


def process_start_time(pid: int) -> float | None:
    """Start time of a running process, or None when no such process runs."""
    import psutil
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_same_process_alive(pid: int | None, started: float | None) -> bool:
    if pid is None or started is None:
        return False
    actual = process_start_time(pid)
    return actual is not None and abs(actual - started) <= _START_TIME_TOLERANCE_S


class TrainingLock:
    """The lock file and the operations on it; ``now`` (a clock) is injectable for tests of staleness.

    Usage::

        lock = TrainingLock()
        lock.acquire("add task 'liver' to model-v3")    # raises JobLockedError while another job runs
        lock.set_child(process.pid)                       # then lock.heartbeat() while watching, lock.release()
    """

    def __init__(self, path: str | Path | None = None, stale_after_s: float = STALE_AFTER_S, now=time.time):
        self._path = Path(path) if path is not None else None
        self.stale_after_s = stale_after_s
        self.now = now

    @property
    def path(self) -> Path:
        """The lock file; the default is found on first use (``$LABELSHARE_HOME`` is read then, not at import)."""
        if self._path is None:
            self._path = default_lock_path()
        return self._path

    def read(self) -> LockInfo | None:
        """The current lock, or None when there is none. Raises ValueError for a damaged lock file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return LockInfo.from_json(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{self.path}: unreadable training lock ({error})") from None

    def stale_reason(self, info: LockInfo) -> str:
        """Why a lock is stale, or '' when it is live."""
        age = self.now() - info.heartbeat
        if info.host != socket.gethostname():
            return "" if age < self.stale_after_s else f"no heartbeat from '{info.host}' for {age:.0f} s"
        if is_same_process_alive(info.child_pid, info.child_started):
            return ""
        if is_same_process_alive(info.owner_pid, info.owner_started) and age < self.stale_after_s:
            return ""
        if info.child_pid is not None:
            return f"training process {info.child_pid} is no longer running"
        return f"process {info.owner_pid} that took the lock is gone or silent for {age:.0f} s"

    def holder(self) -> LockInfo | None:
        """The live lock, or None; a stale or damaged lock counts as none (:meth:`acquire` clears it)."""
        try:
            info = self.read()
        except ValueError:
            return None
        return info if info is not None and not self.stale_reason(info) else None

    def owned_by_this_process(self) -> bool:
        try:
            info = self.read()
        except ValueError:
            return False
        return info is not None and info.host == socket.gethostname() and info.owner_pid == os.getpid()

    def acquire(self, description: str = "") -> LockInfo:
        """Take the lock for this process; clears a stale lock; raises :class:`JobLockedError` on a live one."""
        import psutil
        me = psutil.Process()
        info = LockInfo(host=socket.gethostname(), owner_pid=me.pid, owner_started=me.create_time(),
                        started=time.strftime("%Y-%m-%d %H:%M:%S"), heartbeat=self.now(), description=description)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create_exclusive(info):
                return info
            try:
                current = self.read()
            except ValueError:
                current = None  # written atomically, so unreadable means damaged: stale
            if current is not None and not self.stale_reason(current):
                raise JobLockedError(current, self.path)
            self._remove_if_unchanged(current)
        raise LabelShareError(f"{self.path}: could not take the training lock (other processes keep taking it)")

    def set_child(self, pid: int) -> None:
        """Record the training process, so that the lock stays live while it runs, even after this process dies."""
        info = self._own_info()
        info.child_pid, info.child_started = pid, process_start_time(pid)
        info.heartbeat = self.now()
        atomic_write_json(self.path, info.to_json())

    def heartbeat(self) -> None:
        info = self._own_info()
        info.heartbeat = self.now()
        atomic_write_json(self.path, info.to_json())

    def release(self) -> None:
        """Remove the lock if this process holds it (a lock taken over by another process is left alone)."""
        if self.owned_by_this_process():
            self.path.unlink(missing_ok=True)

    # -- internals --------------------------------------------------------------------------------------------------
    def _own_info(self) -> LockInfo:
        info = self.read()
        if info is None or info.host != socket.gethostname() or info.owner_pid != os.getpid():
            raise LabelShareError(f"{self.path}: this process does not hold the training lock")
        return info

    def _create_exclusive(self, info: LockInfo) -> bool:
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                json.dump(info.to_json(), stream)
            try:
                os.link(temporary, self.path)  # atomic and exclusive: fails when a lock exists
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(temporary)

    def _remove_if_unchanged(self, judged: LockInfo | None) -> None:
        """Remove the lock judged stale, unless another process replaced it in the meantime."""
        try:
            current = self.read()
        except ValueError:
            current = None
        if current == judged:
            self.path.unlink(missing_ok=True)
