"""The progress-event protocol shared by the command line, background jobs and the Slicer runners.

With ``--progress json`` every event is one JSON object on one line of stdout::

    {"event": "progress", "stage": "training", "fraction": 0.42, "message": "epoch 3/10", "epoch": 3, ...}

``event`` is one of ``progress`` (work advanced; ``fraction`` in [0, 1] of the whole command), ``log`` (a
message worth showing), ``warning`` (something the user should know about a result that was still made, e.g. an
input unlike the task's training data; ``message`` is one line), ``metrics`` (validation numbers), ``done`` (the
last event of a successful command; it carries ``output``) and ``error`` (the last event of a failed command;
``message`` is the one-line reason).
Consumers ignore keys they do not know and lines that are not JSON objects, so the protocol can grow.
Human mode writes the same events as short lines to stderr.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any
from collections.abc import Callable

EVENT_KINDS = ("progress", "log", "warning", "metrics", "done", "error")


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_event(event: str, **fields: Any) -> str:
    """One protocol line (without newline)."""
    if event not in EVENT_KINDS:
        raise ValueError(f"unknown progress event kind {event!r}")
    return json.dumps(_json_safe({"event": event, **fields}), separators=(",", ":"))


def parse_event(line: str) -> dict | None:
    """The event dict of a protocol line, or None for any other line (log text, warnings)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("event") not in EVENT_KINDS:
        return None
    return event


class Progress:
    """Emits progress events as JSON lines, as human-readable lines, or to a callback.

    :param mode: ``"json"`` (stdout, one object per line), ``"human"`` (stderr), or ``"quiet"``.
    :param callback: optional function called with every event dict, whatever the mode (used in-process by the
        Slicer worker and by tests).
    :param min_interval_s: progress events closer together than this are dropped (done/error/metrics never are).
    """

    def __init__(self, mode: str = "human", callback: Callable[[dict], None] | None = None,
                 stream: IO[str] | None = None, min_interval_s: float = 0.0):
        if mode not in ("json", "human", "quiet"):
            raise ValueError(f"progress mode must be json, human or quiet, not {mode!r}")
        self.mode = mode
        self.callback = callback
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._last_progress_time = -math.inf

    def emit(self, event: str, **fields: Any) -> None:
        if event == "progress":
            now = time.monotonic()
            if now - self._last_progress_time < self.min_interval_s and fields.get("fraction", 0) < 1:
                return
            self._last_progress_time = now
        record = _json_safe({"event": event, **fields})
        if self.callback is not None:
            self.callback(record)
        if self.mode == "json":
            stream = self.stream or sys.stdout
            stream.write(format_event(event, **fields) + "\n")
            stream.flush()
        elif self.mode == "human":
            stream = self.stream or sys.stderr
            stream.write(self._human_line(record) + "\n")
            stream.flush()

    def progress(self, stage: str, fraction: float, message: str = "", **fields: Any) -> None:
        self.emit("progress", stage=stage, fraction=round(min(max(fraction, 0.0), 1.0), 4), message=message,
                  **fields)

    def log(self, message: str, **fields: Any) -> None:
        self.emit("log", message=message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        """A warning about a result that was made anyway (human mode: one line on stderr)."""
        self.emit("warning", message=message, **fields)

    def metrics(self, stage: str, **fields: Any) -> None:
        self.emit("metrics", stage=stage, **fields)

    def done(self, output: str | None = None, message: str = "done", **fields: Any) -> None:
        self.emit("done", stage="done", fraction=1.0, output=output, message=message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.emit("error", stage="error", message=message, **fields)

    @staticmethod
    def _human_line(record: dict) -> str:
        kind = record["event"]
        if kind == "progress":
            line = f"[{record.get('stage', '')} {100 * record.get('fraction', 0):5.1f}%] {record.get('message', '')}"
            eta = record.get("eta_s")
            if eta is not None:
                line += f" (ETA {format_duration(eta)})"
            return line
        if kind == "metrics":
            return f"[{record.get('stage', '')}] " + (record.get("message") or " ".join(
                f"{k}={v}" for k, v in record.items() if k not in ("event", "stage")))
        if kind == "done":
            return f"done: {record.get('output') or record.get('message', '')}"
        if kind == "error":
            return f"error: {record.get('message', '')}"
        if kind == "warning":
            return f"labelshare: warning: {record.get('message', '')}"
        return record.get("message", "")


class ProgressPart(Progress):
    """One part of a command as seen by the command's progress: its fractions mapped into [start, end] of the
    outer progress."""

    def __init__(self, outer: Progress, start: float, end: float):
        super().__init__("quiet")
        self.outer, self.start, self.end = outer, start, end

    def emit(self, event: str, **fields) -> None:
        if event == "progress":
            fields["fraction"] = self.start + (self.end - self.start) * fields.get("fraction", 0.0)
        self.outer.emit(event, **fields)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
