"""``labelshare worker``: a long-lived segmentation process that keeps models loaded between requests.

Starting Python, importing torch and MONAI and loading a model take seconds; the network itself takes a fraction
of that on a GPU. The Slicer module therefore starts this worker once and sends it one request per Apply, so that
every run after the first pays only for reading the input, the network and writing the output.

Protocol: one JSON object per line on stdin, answered on stdout with the events of :mod:`labelshare.progress`,
each carrying the ``request`` id it belongs to::

    {"id": "r1", "command": "segment", "model": "/models/v3", "task": "acdc", "input": "in.nrrd",
     "output": "out.nrrd", "device": "auto", "largest_component": false}
    {"id": "r2", "command": "rank", "model": "/models/v3", "task": "acdc", "inputs": ["unlabelled/"],
     "output": "ranking.csv", "device": "auto", "score": "entropy"}
    {"id": "r3", "command": "exit"}

``command`` defaults to ``segment``; ``rank`` scores the images of ``inputs`` (files, folders, globs: the readers of
``labelshare segment``) with :func:`labelshare.ranking.rank_cases` (one ``progress`` event per image) and writes the
ranking table to ``output``, its ``done`` event carrying ``ranked`` and ``failures``. ``model`` null means the
bundled default model; ``device`` is auto, cpu or cuda. Every request ends with exactly one ``done`` (with
``output`` and timings) or ``error`` event; an error does not end the worker. Once torch and the engine are
imported the worker emits one ``log`` event with ``"worker": "ready"`` and ``import_s``. It ends on an ``exit``
request or at the end of stdin (the parent closed the pipe or died). Anything else a library prints goes to stderr,
so stdout carries protocol lines only. Cancel is the parent's: it kills the worker (LabelShareLib.jobs).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import OrderedDict
from typing import IO, Any

from .errors import LabelShareError
from .progress import Progress

COMMANDS = ("segment", "rank", "exit")
DEFAULT_MAX_MODELS = 2  # models kept in memory (least recently used dropped first)


class RequestProgress(Progress):
    """Progress events tagged with the request they belong to."""

    def __init__(self, request_id: Any, stream: IO[str]):
        super().__init__("json", stream=stream)
        self.request_id = request_id

    def emit(self, event: str, **fields: Any) -> None:
        super().emit(event, request=self.request_id, **fields)


class WorkerServer:
    """Serves requests; keeps up to ``max_models`` loaded models keyed by (model folder, device)."""

    def __init__(self, stream: IO[str], max_models: int = DEFAULT_MAX_MODELS):
        self.stream = stream
        self.max_models = max_models
        self.models: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def model(self, folder: str | None, device: str, progress: Progress) -> tuple[Any, float]:
        """The loaded model and the seconds spent loading it now (0 when it was already loaded)."""
        from .models import load_model, resolve_device
        from .paths import model_dir_or_default
        path = model_dir_or_default(folder)
        key = (str(path.resolve()), str(resolve_device(device)))
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key], 0.0
        progress.progress("preparing", 0.0, f"loading model {path.name} on {key[1]}")
        start = time.perf_counter()
        model = load_model(path, device=device)
        while len(self.models) >= self.max_models:
            self.models.popitem(last=False)
        self.models[key] = model
        return model, time.perf_counter() - start

    def handle(self, request: dict) -> bool:
        """Answer one request; False when the worker should end."""
        request_id = request.get("id")
        progress = RequestProgress(request_id, self.stream)
        command = request.get("command", "segment")
        if command not in COMMANDS:
            progress.error(f"unknown worker command {command!r} (known: {', '.join(COMMANDS)})")
            return True
        if command == "exit":
            progress.done(None, message="worker stopped")
            return False
        try:
            needed = ("task", "inputs", "output") if command == "rank" else ("task", "input", "output")
            missing = [key for key in needed if not request.get(key)]
            if missing:
                raise LabelShareError(f"worker request {request_id!r} lacks {', '.join(missing)}")
            start = time.perf_counter()
            model, load_seconds = self.model(request.get("model"), request.get("device", "auto"), progress)
            timings = {"load_s": round(load_seconds, 3)}
            if command == "rank":
                self.rank(model, request, progress, start, timings)
                return True
            from .segment_run import segment_file
            output = segment_file(model, request["task"], request["input"], request["output"],
                                  largest_component=bool(request.get("largest_component", False)),
                                  progress=progress, overwrite=True)
            progress.done(str(output), message=f"segmentation written to {output}", **timings,
                          total_s=round(time.perf_counter() - start, 3))
        except LabelShareError as error:
            progress.error(str(error))
        except Exception as error:  # out of memory, or a bug: report it and keep serving
            progress.error(_failure_message(error))
        return True


    @staticmethod
    def rank(model: Any, request: dict, progress: Progress, start: float, timings: dict) -> None:
        """A ``rank`` request: the ranking table written to ``output``; images that failed are listed in the done
        event (the others are ranked), and an error only when none could be ranked."""
        from .config import DEFAULT_RANK_SCORE, RankConfig
        from .inputs import collect_inputs
        from .ranking import rank_cases
        config = RankConfig(task=request["task"], score=request.get("score", DEFAULT_RANK_SCORE),
                            series=request.get("series"), device=request.get("device", "auto"))
        config.check()
        inputs = request["inputs"]
        ranking = rank_cases(model, collect_inputs(inputs if isinstance(inputs, list) else [inputs], config.series),
                             config, progress)
        if ranking.failures and not ranking.cases:
            raise LabelShareError(ranking.failures[0].reason)
        output = ranking.write(request["output"])
        progress.done(str(output), message=f"{len(ranking.cases)} images ranked in {output}", **timings,
                      total_s=round(time.perf_counter() - start, 3), ranked=len(ranking.cases),
                      failures=[{"case": f.name, "input": str(f.source), "reason": f.reason}
                                for f in ranking.failures])


def _failure_message(error: Exception) -> str:
    import torch
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "GPU out of memory; choose the CPU device or close other programs that use the GPU"
    if isinstance(error, MemoryError):
        return "out of memory; close other programs, or segment a smaller (cropped) image"
    traceback.print_exc(file=sys.stderr)
    return f"{type(error).__name__}: {error}"


def serve(requests: IO[str] | None = None, stream: IO[str] | None = None,
          max_models: int = DEFAULT_MAX_MODELS) -> int:
    """Read requests until ``exit`` or end of input; returns the exit status (0)."""
    requests = requests or sys.stdin
    stream = stream or sys.stdout
    if stream is sys.stdout:
        sys.stdout = sys.stderr  # keep stray prints of libraries out of the protocol stream
    start = time.perf_counter()
    from . import inference  # noqa: F401  (torch, MONAI: imported before "ready", not during the first request)
    worker = WorkerServer(stream, max_models)
    Progress("json", stream=stream).log("worker ready", worker="ready", pid=os.getpid(),
                                        import_s=round(time.perf_counter() - start, 3))
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            request = None
            reason = f"request is not valid JSON ({error})"
        else:
            reason = "request must be a JSON object"
        if not isinstance(request, dict):
            RequestProgress(None, stream).error(reason)
            continue
        if not worker.handle(request):
            break
    return 0


def cmd_worker(args, progress: Progress) -> int:
    """``labelshare worker`` (registered in :mod:`labelshare.cli`); it always speaks the JSON protocol."""
    return serve()
