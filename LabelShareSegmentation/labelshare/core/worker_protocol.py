"""The protocol of ``labelshare worker`` (:mod:`labelshare.engine.worker`), the Slicer modules' background process:
one JSON object per line on stdin, answered on stdout with the events of :mod:`labelshare.core.progress`, each
carrying the ``request`` id it belongs to::

    {"id": "r1", "command": "segment", "model": "/models/v3", "task": "acdc", "input": "in.nrrd",
     "output": "out.nrrd", "device": "auto", "largest_component": "model", "mirror": false, "overwrite": false}
    {"id": "r2", "command": "rank", "model": "/models/v3", "task": "acdc", "inputs": ["unlabelled/"],
     "output": "ranking.csv", "device": "auto", "score": "entropy", "overwrite": false}
    {"id": "r3", "command": "exit"}

``command`` defaults to ``segment``; ``rank`` scores the images of ``inputs`` (files, folders, globs: the readers of
``labelshare segment``) with :func:`labelshare.engine.ranking.rank_cases` (one ``progress`` event per image) and
writes the ranking table to ``output``, its ``done`` event carrying ``ranked`` and ``failures``. ``model`` null
means the bundled default model (a model's name as ``labelshare models`` prints it works too); ``overwrite`` true
replaces an existing segmentation or ranking table (default false: never, the command line's ``--overwrite`` rule).
The other fields are the options of the command's configuration (:class:`~labelshare.core.config.SegmentConfig`,
:class:`~labelshare.core.config.RankConfig`) under their names, with their defaults: ``device``, ``mirror``
(``labelshare segment --tta``: refused for a lateralised task, :func:`labelshare.core.config.check_mirroring`),
``largest_component``, ``batch_size``, ``slicing_axis``, ``series``; ``score`` for ``rank``. Every field has its
type (and choices) checked and unknown fields are refused (:data:`COMMAND_FIELDS`). Every request ends with exactly
one ``done`` (with ``output`` and timings) or ``error`` event; an error does not end the worker. A request line
longer than :data:`MAX_REQUEST_CHARS` or nested too deeply is answered with an error and skipped. Once torch and the
engine are imported the worker emits one ``log`` event with ``"worker": "ready"`` and ``import_s``.

The Slicer modules build their requests here (:func:`config_request`) in Slicer's own process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import MISSING, dataclass
from typing import IO, Any

from .config import RankConfig, SegmentConfig
from .errors import LabelShareError
from .options import check_value, from_values, json_types, option_fields, values_of
from .progress import Progress

COMMANDS = ("segment", "rank", "exit")
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
