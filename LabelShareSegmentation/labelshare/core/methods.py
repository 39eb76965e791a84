"""The methods a model can be trained with, as a registry (public API): the product's methods, and the ones others
register (the benchmarks' baselines, DoD-Net and multi-channel, are not part of the product).

A method is an output layout (:mod:`labelshare.core.layouts`), a task conditioning and the network that does that
conditioning. The engine registers its own methods here; another package registers more with :func:`register_method`
(and their layouts with :func:`labelshare.core.layouts.register_layout`) from a function it names as an entry point of
the group :data:`PLUGIN_GROUP`, so that a model folder of its method loads wherever that package is installed::

    [project.entry-points."labelshare.methods"]
    baselines = "labelshare_benchmarks.baselines:register"

Light (no torch): a network outside the engine is named by its import path and imported when one is built.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

PLUGIN_GROUP = "labelshare.methods"
# conditionings the engine's U-Net (labelshare.engine.networks.SegmentationNet) does: the task is not an input, or it is
# one-hot input planes
ENGINE_CONDITIONINGS = ("none", "task_channels")


@dataclass(frozen=True)
class Method:
    """How a method trains: the output layout, the task conditioning, whether add-task can extend its models, and the
    network class that does its conditioning when the engine's U-Net does not (``"module:Class"``, taking a
    :class:`~labelshare.core.config.NetworkConfig`)."""

    name: str
    layout: str
    conditioning: str
    description: str
    addable: bool = False
    network: str | None = None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry (registering the same method again changes nothing)."""
    if METHODS.get(method.name, method) != method:
        raise ValueError(f"another method is registered as {method.name!r}")
    if method.network is None and method.conditioning not in ENGINE_CONDITIONINGS:
        raise ValueError(f"method {method.name!r}: the engine's U-Net does not do conditioning "
                         f"{method.conditioning!r}; name the network class that does")
    METHODS[method.name] = method
    return method


PRODUCT_METHODS = tuple(register_method(m) for m in (
    Method("label-sharing", "shared", "none", "the paper: labels ranked by size, k-th label of every task on shared "
           "label k; the task is not an input", addable=True),
    Method("label-sharing-task-channels", "shared", "task_channels", "label sharing with the task as one-hot input "
           "planes (robust when tasks look alike; docs/benchmark)", addable=True),
    Method("per-task", "shared", "none", "one network for one task", addable=True),
))
DEFAULT_METHOD = "label-sharing"
_plugins_loaded = False


def load_plugins() -> None:
    """Call every registration function installed under :data:`PLUGIN_GROUP` (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        registration: Callable[[], None] = entry.load()
        registration()


def method_named(name: str) -> Method:
    """The registered method ``name`` (installed plugins are loaded when it is not registered yet); ValueError
    naming the known ones otherwise."""
    if name not in METHODS:
        load_plugins()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)} (research baselines such as dodnet "
                         "and multi-channel come with labelshare-bench)")
    return METHODS[name]


def conditionings() -> set[str]:
    """Every conditioning a network can be built for: the engine's and the registered methods' (the installed
    plugins' too when one asks for another)."""
    return set(ENGINE_CONDITIONINGS) | {method.conditioning for method in METHODS.values()}


def known_conditioning(name: str) -> bool:
    if name not in conditionings():
        load_plugins()
    return name in conditionings()


def network_class(conditioning: str) -> type | None:
    """The network class of a conditioning outside the engine's U-Net (None for the engine's): the one the method
    that registered the conditioning names."""
    if conditioning in ENGINE_CONDITIONINGS:
        return None
    load_plugins()
    named = {method.network for method in METHODS.values() if method.conditioning == conditioning}
    if len(named) != 1:
        raise ValueError(f"conditioning {conditioning!r}: {len(named)} registered methods name its network")
    module, _, attribute = named.pop().partition(":")
    return getattr(importlib.import_module(module), attribute)
