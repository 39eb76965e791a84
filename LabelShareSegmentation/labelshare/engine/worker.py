"""``labelshare worker``: a long-lived segmentation process that keeps models loaded between requests.

Starting Python, importing torch and MONAI and loading a model take seconds; the network itself takes a fraction
of that on a GPU. The Slicer module therefore starts this worker once and sends it one request per Apply, so that
every run after the first pays only for reading the input, the network and writing the output.

Protocol: one JSON object per line on stdin, answered on stdout with the events of :mod:`labelshare.progress`,
each carrying the ``request`` id it belongs to::

    {"id": "r1", "command": "segment", "model": "/models/v3", "task": "acdc", "input": "in.nrrd",
     "output": "out.nrrd", "device": "auto", "largest_component": "model", "mirror": false, "overwrite": false}
    {"id": "r2", "command": "rank", "model": "/models/v3", "task": "acdc", "inputs": ["unlabelled/"],
     "output": "ranking.csv", "device": "auto", "score": "entropy", "overwrite": false}
    {"id": "r3", "command": "exit"}

``command`` defaults to ``segment``; ``rank`` scores the images of ``inputs`` (files, folders, globs: the readers of
``labelshare segment``) with :func:`labelshare.ranking.rank_cases` (one ``progress`` event per image) and writes the
ranking table to ``output``, its ``done`` event carrying ``ranked`` and ``failures``. ``model`` null means the
bundled default model (a model's name as ``labelshare models`` prints it works too); ``overwrite`` true replaces an
existing segmentation or ranking table (default false: never, the command line's ``--overwrite`` rule). The other
fields are the options of the command's configuration (:class:`~labelshare.config.SegmentConfig`,
:class:`~labelshare.config.RankConfig`) under their names, with their defaults: ``device``, ``mirror`` (``labelshare
segment --tta``: refused for a lateralised task, :func:`labelshare.config.check_mirroring`), ``largest_component``,
``batch_size``, ``slicing_axis``, ``series``; ``score`` for ``rank``. Every field has its type (and choices) checked
and unknown fields are refused (:data:`COMMAND_FIELDS`). Every request ends with exactly one
``done`` (with ``output`` and timings) or ``error`` event; an error does not end the worker. A request line longer
than :data:`MAX_REQUEST_CHARS` or nested too deeply is answered with an error and skipped. Once torch and the engine
are imported the worker emits one ``log`` event with ``"worker": "ready"`` and ``import_s``. It ends on an ``exit``
request or at the end of stdin (the parent closed the pipe or died). Anything else a library prints goes to stderr,
so stdout carries protocol lines only. Cancel is the parent's: it kills the worker (LabelShareLib.jobs).

Trust boundary: the worker serves its parent process (the Slicer module) over a private pipe and acts with the
rights of the user who runs it. It reads the input and model and writes the output that a request names, wherever
they are, exactly as that user could; it is not a service for other users or programs and must never read requests
from a socket or any channel others can write to. Within that boundary it checks every request (size, nesting,
field types), verifies the model folder (:func:`labelshare.modelfolder.verify_folder`), reads inputs with their
data checked and writes outputs atomically and verified, never over an existing file unless asked.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import MISSING, dataclass
from typing import IO, Any

from .config import RankConfig, SegmentConfig
from .errors import LabelShareError, os_error_message
from .options import check_value, from_values, json_types, option_fields, values_of
from .progress import Progress

COMMANDS = ("segment", "rank", "exit")
DEFAULT_MAX_MODELS = 2  # models kept in memory (least recently used dropped first)
MAX_REQUEST_CHARS = 1 << 20  # a request names a few paths; a longer line is not one


@dataclass(frozen=True)
class RequestField:
    types: tuple[type, ...]
    required: bool = False
    choices: tuple | None = None


# The fields of a request besides its configuration's options: the protocol's and each command's files
_PROTOCOL_FIELDS = {"id": RequestField((str, int, type(None))), "command": RequestField((str,)),
                    "model": RequestField((str, type(None)))}
_FILE_FIELDS = {
    "segment": {"input": RequestField((str,), True), "output": RequestField((str,), True),
                "overwrite": RequestField((bool,))},
    "rank": {"inputs": RequestField((list, str), True), "output": RequestField((str,), True),
             "overwrite": RequestField((bool,))},
}
# The configuration each command builds from its request; the options a request expresses otherwise are left out
# (segment's ``existing`` is ``overwrite``; its output's ending names its format)
COMMAND_CONFIGS = {"segment": (SegmentConfig, ("existing", "output_format")), "rank": (RankConfig, ())}


def _option_request_fields(command: str) -> dict[str, RequestField]:
    config_class, expressed_otherwise = COMMAND_CONFIGS[command]
    return {name: RequestField(json_types(entry.hint), entry.default is MISSING, entry.option.choices)
            for name, entry in option_fields(config_class).items() if name not in expressed_otherwise}


# the fields of a request of each command: name -> types, whether required, choices
COMMAND_FIELDS = {command: {**_PROTOCOL_FIELDS, **_FILE_FIELDS[command], **_option_request_fields(command)}
                  for command in COMMAND_CONFIGS}


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
        from .modelfolder import resolve_model
        from .models import load_model, resolve_device
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
            from .segment_run import segment_file
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
        from .fileio import check_output_file
        from .inputs import collect_inputs
        from .ranking import rank_cases
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


def check_request(request: dict, command: str) -> None:
    """LabelShareError unless every field of a ``command`` request is known and of its type (one of its choices),
    and the required ones are there."""
    where = f"worker request {request.get('id')!r}: "
    fields = COMMAND_FIELDS[command]
    unknown = sorted(set(request) - set(fields))
    if unknown:
        raise LabelShareError(f"{where}unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(fields)})")
    for name, value in request.items():
        check_value(name, value, fields[name].types, fields[name].choices, where)
    missing = [name for name, spec in fields.items() if spec.required and not request.get(name)]
    if missing:
        raise LabelShareError(f"worker request {request.get('id')!r} lacks {', '.join(missing)}")


def config_request(command: str, config: SegmentConfig | RankConfig) -> dict:
    """The fields of a ``command`` request that carry ``config`` (what the Slicer modules send)."""
    _, expressed_otherwise = COMMAND_CONFIGS[command]
    return {"command": command, **{name: value for name, value in values_of(config).items()
                                   if name not in expressed_otherwise}}


def request_config(request: dict, command: str) -> SegmentConfig | RankConfig:
    """The configuration of a checked request: its options as given, the others at their defaults."""
    check_request(request, command)
    config_class, _ = COMMAND_CONFIGS[command]
    values = {name: value for name, value in request.items() if name in option_fields(config_class)}
    if command == "segment":
        values["existing"] = "overwrite" if request.get("overwrite") else "refuse"
    config = from_values(config_class, values)
    config.check()
    return config


def _failure_message(error: Exception) -> str:
    """One line for a failure that is neither bad input nor a file-system error: out of memory, or a bug (whose
    traceback goes to stderr, the worker's log; the event carries no raw exception text)."""
    import torch
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "GPU out of memory; choose the CPU device or close other programs that use the GPU"
    if isinstance(error, MemoryError):
        return "out of memory; close other programs, or segment a smaller (cropped) image"
    traceback.print_exc(file=sys.stderr)
    return (f"internal error in the LabelShare worker ({type(error).__name__}); the details are in its log. Please "
            "report it with the log")


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


def request_lines(requests: IO[str]) -> Iterator[str | None]:
    """The lines of ``requests``, each read with bounded memory: None stands for a line longer than
    :data:`MAX_REQUEST_CHARS` (the rest of which is read and dropped)."""
    while True:
        line = requests.readline(MAX_REQUEST_CHARS + 1)
        if not line:
            return
        if len(line) <= MAX_REQUEST_CHARS or line.endswith("\n"):
            yield line
            continue
        while line and not line.endswith("\n"):
            line = requests.readline(MAX_REQUEST_CHARS)
        yield None


def cmd_worker(args, progress: Progress) -> int:
    """``labelshare worker`` (registered in :mod:`labelshare.cli`); it always speaks the JSON protocol."""
    return serve()
