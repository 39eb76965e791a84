"""``labelshare worker``: a long-lived segmentation process that keeps models loaded between requests.

Starting Python, importing torch and MONAI and loading a model take seconds; the network itself takes a fraction
of that on a GPU. The Slicer module therefore starts this worker once and sends it one request per Apply, so that
every run after the first pays only for reading the input, the network and writing the output.

The protocol (requests, their fields and checks, the events) is :mod:`labelshare.core.worker_protocol`. The
worker ends on an ``exit`` request or at the end of stdin (the parent closed the pipe or died). Anything else a library
prints goes to stderr, so stdout carries protocol lines only. Cancel is the parent's: it kills the worker
(LabelShareLib.jobs).

Trust boundary: the worker serves its parent process (the Slicer module) over a private pipe and acts with the
rights of the user who runs it. It reads the input and model and writes the output that a request names, wherever
they are, exactly as that user could; it is not a service for other users or programs and must never read requests
from a socket or any channel others can write to. Within that boundary it checks every request (size, nesting,
field types), verifies the model folder (:func:`labelshare.core.modelfolder.verify_folder`), reads inputs with their
data checked and writes outputs atomically and verified, never over an existing file unless asked.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import OrderedDict
from typing import IO, Any

import torch

from ..core.config import RankConfig
from ..core.errors import LabelShareError, os_error_message
from ..core.fileio import check_output_file
from ..core.inputs import collect_inputs
from ..core.modelfolder import resolve_model
from ..core.progress import Progress
from ..core.worker_protocol import MAX_REQUEST_CHARS, COMMANDS, RequestProgress, request_config, request_lines
from .models import load_model, resolve_device
from .ranking import rank_cases
from .segment_run import segment_file

DEFAULT_MAX_MODELS = 2  # models kept in memory (least recently used dropped first)


class WorkerServer:
    """Serves requests; keeps up to ``max_models`` loaded models keyed by (model folder, device)."""

    def __init__(self, stream: IO[str], max_models: int = DEFAULT_MAX_MODELS):
        self.stream = stream
        self.max_models = max_models
        self.models: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def model(self, folder: str | None, device: str, progress: Progress) -> tuple[Any, float]:
        """The loaded model and the seconds spent loading it now (0 when it was already loaded)."""
        path = resolve_model(folder)
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
        request_id = request.get("id") if isinstance(request.get("id"), (str, int)) else None
        progress = RequestProgress(request_id, self.stream)
        command = request.get("command", "segment")
        if command not in COMMANDS:
            progress.error(f"unknown worker command {command!r} (known: {', '.join(COMMANDS)})")
            return True
        if command == "exit":
            progress.done(None, message="worker stopped")
            return False
        try:
            config = request_config(request, command)
            start = time.perf_counter()
            model, load_seconds = self.model(request.get("model"), config.device, progress)
            timings = {"load_s": round(load_seconds, 3)}
            if command == "rank":
                self.rank(model, request, config, progress, start, timings)
                return True
            output = segment_file(model, config, request["input"], request["output"], progress=progress)
            progress.done(str(output), message=f"segmentation written to {output}", **timings,
                          total_s=round(time.perf_counter() - start, 3))
        except LabelShareError as error:
            progress.error(str(error))
        except OSError as error:
            progress.error(os_error_message(error))
        except Exception as error:  # out of memory, or a bug: report it and keep serving
            progress.error(_failure_message(error))
        return True

    @staticmethod
    def rank(model: Any, request: dict, config: RankConfig, progress: Progress, start: float, timings: dict) -> None:
        """A ``rank`` request: the ranking table written to ``output``; images that failed are listed in the done
        event (the others are ranked), and an error only when none could be ranked."""
        check_output_file(request["output"], request.get("overwrite", False))
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
    """One line for a failure that is neither bad input nor a file-system error: out of memory, or a bug (whose
    traceback goes to stderr, the worker's log; the event carries no raw exception text)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "GPU out of memory; choose the CPU device or close other programs that use the GPU"
    if isinstance(error, MemoryError):
        return "out of memory; close other programs, or segment a smaller (cropped) image"
    traceback.print_exc(file=sys.stderr)
    return (f"internal error in the LabelShare worker ({type(error).__name__}); the details are in its log. Please "
            "report it with the log")


def serve(requests: IO[str] | None = None, stream: IO[str] | None = None, max_models: int = DEFAULT_MAX_MODELS,
          import_started: float | None = None) -> int:
    """Read requests until ``exit`` or end of input; returns the exit status (0). ``import_started``: the
    ``perf_counter`` time before this module (torch, MONAI, the engine) was imported, for the ready event's
    ``import_s``."""
    requests = requests or sys.stdin
    stream = stream or sys.stdout
    if stream is sys.stdout:
        sys.stdout = sys.stderr  # keep stray prints of libraries out of the protocol stream
    import_s = time.perf_counter() - import_started if import_started is not None else 0.0
    worker = WorkerServer(stream, max_models)
    Progress("json", stream=stream).log("worker ready", worker="ready", pid=os.getpid(), import_s=round(import_s, 3))
    for line in request_lines(requests):
        if line is None:
            RequestProgress(None, stream).error(f"request is longer than {MAX_REQUEST_CHARS} characters; skipped")
            continue
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as error:
            request = None
            reason = f"request is not valid JSON ({error})"
        except RecursionError:
            request = None
            reason = "request is nested too deeply; skipped"
        else:
            reason = "request must be a JSON object"
        if not isinstance(request, dict):
            RequestProgress(None, stream).error(reason)
            continue
        if not worker.handle(request):
            break
    return 0
