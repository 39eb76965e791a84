"""Version artefacts: what a model version carries besides its weights, label space and records so that it can be
used *and extended* anywhere (the rehearsal memory; an input check's statistics), written by every command that
publishes a version.

``train`` and ``add-task`` (:func:`labelshare.engine.training_run.run_training`), ``postprocess`` and ``memory``
(:mod:`labelshare.engine.postprocess_run`) call :func:`write_artefacts` on the new version's staging folder before
its model card and manifest are written, so every artefact's files are hashed in ``manifest.json`` like the weights
and the card describes them. An artefact is an object with a ``name``, the ``title`` of its section of the model
card and a ``write(context, folder)`` method that writes its files into ``folder`` and returns that section's lines
(markdown; none: ``[]``); it is added with :func:`register_artefact`. Artefacts are written in the order they
were registered.

:class:`VersionContext` is what an artefact is made from: the new version as a loaded model, its split, the task
folders the command read (a task whose folder was not given is known from the parent version only: its artefacts can
be carried from there), the parent version and whether the weights are the parent's (``postprocess``, ``memory``:
an artefact computed from the network can then be copied), the settings and the progress.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ..core.config import MemoryConfig
from ..core.progress import Progress, ProgressPart
from ..core.tasks import TaskDataset
from .models import Model


@dataclass
class VersionContext:
    """What a new version's artefacts are made from (see the module docstring). ``slices`` holds the tasks' slices
    at plan resolution where the command has them in memory already (training: task -> (training, validation)
    :class:`labelshare.engine.sampling.TaskSlices`), so that an artefact need not read the cases again."""

    name: str  # the new version's name (its folder's, once published)
    model: Model
    split: Mapping[str, Mapping[str, list[str]]]
    tasks: Mapping[str, TaskDataset]
    parent: Path | None
    same_weights: bool
    memory: MemoryConfig
    progress: Progress
    seed: int  # the run's seed (of its split and sampling): the memory's choice repeats with it
    slices: Mapping[str, tuple] = field(default_factory=dict)


class VersionArtefact(Protocol):
    name: str
    title: str

    def write(self, context: VersionContext, folder: Path) -> list[str]:
        """Write the artefact's files into ``folder`` (the new version's staging folder); return the model card's
        lines about them."""


ARTEFACTS: list[VersionArtefact] = []


def register_artefact(artefact: VersionArtefact) -> VersionArtefact:
    """Add an artefact that every published version carries (registering one of the same name twice is an error)."""
    if any(existing.name == artefact.name for existing in ARTEFACTS):
        raise ValueError(f"a version artefact named {artefact.name!r} is registered already")
    ARTEFACTS.append(artefact)
    return artefact


def write_artefacts(context: VersionContext, folder: Path) -> dict[str, list[str]]:
    """Every registered artefact written into ``folder``, each reporting its progress in its own share of the
    context's (so that the fractions keep rising); returns each one's model-card section (title -> lines)."""
    _register_engine_artefacts()
    return {artefact.title: artefact.write(replace(context, progress=ProgressPart(
        context.progress, index / len(ARTEFACTS), (index + 1) / len(ARTEFACTS))), folder)
        for index, artefact in enumerate(ARTEFACTS)}


def _register_engine_artefacts() -> None:
    """The engine's own artefacts register themselves when their module is imported."""
    from . import input_check, memory  # noqa: F401  (register the input check's statistics, the rehearsal memory)
