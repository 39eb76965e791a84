"""Options with one owner: a field of a typed configuration (:mod:`labelshare.core.config`) carries its default and its
help text, and every edge that a user touches builds the configuration from it.

A field made with :func:`option` holds the default and an :class:`Option` (help, command-line flag, choices); a field
made with :func:`nested` holds a whole configuration (``AddTaskConfig.train`` is a ``TrainConfig``), whose option
fields count as the outer configuration's own under their plain names. From these fields:

- the command line adds its arguments (:func:`add_arguments`) and builds the configuration from the parsed
  arguments (:func:`from_arguments`);
- the worker checks a JSON request's fields against the configuration's types and choices (:func:`request_types`,
  :func:`check_value`) and builds the configuration from them (:func:`from_values`);
- the Slicer modules pass keyword arguments through to :func:`from_values`.

So a default, a help text or a choice is written once, in the configuration. Light: standard library only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import LabelShareError

OPTION = "labelshare.option"
NESTED = "labelshare.nested"
_NO_CONST = object()


@dataclass(frozen=True)
class Option:
    """What a user reads about an option: its help, the flag that sets it on the command line (default
    ``--<field-name>``), its choices, the metavar, the parser of a command-line value (default: the field's type),
    the value of the flag given without one (``const``; only for options that take a value) and, for a value the
    standard actions cannot read, its own argparse action."""

    help: str
    flag: str | None = None
    choices: tuple | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    const: Any = _NO_CONST
    action: type[argparse.Action] | None = None


def option(default: Any, help: str, *, flag: str | None = None, choices: Sequence | None = None,
           metavar: str | None = None, parse: Callable[[str], Any] | None = None, const: Any = _NO_CONST,
           action: type[argparse.Action] | None = None) -> Any:
    """A configuration field: its default and :class:`Option`. A list or dict default is copied for every
    instance."""
    metadata = {OPTION: Option(help, flag, tuple(choices) if choices is not None else None, metavar, parse, const,
                               action)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(config_class: type, offered: Sequence[str] | None = None) -> Any:
    """A configuration inside another (defaults: its own); ``offered`` names the fields of it that the outer
    configuration offers as options (None: all of them; the others keep their defaults or are set in code)."""
    return dataclasses.field(default_factory=config_class,
                             metadata={NESTED: tuple(offered) if offered is not None else None})


@dataclass(frozen=True)
class OptionField:
    """One option of a configuration: its plain name, where it sits (``("train", "batch_size")``), its default, its
    type hint and its :class:`Option`."""

    name: str
    path: tuple[str, ...]
    default: Any
    hint: Any
    option: Option

    @property
    def flag(self) -> str:
        return self.option.flag or f"--{self.name.replace('_', '-')}"


def option_fields(config_class: type, offered: Sequence[str] | None = None) -> dict[str, OptionField]:
    """The options of a configuration class by plain name, nested configurations' offered options included."""
    hints = typing.get_type_hints(config_class)
    found: dict[str, OptionField] = {}
    for item in dataclasses.fields(config_class):
        if NESTED in item.metadata:
            for name, inner in option_fields(item.default_factory, item.metadata[NESTED]).items():
                found[name] = dataclasses.replace(inner, path=(item.name, *inner.path))
        elif OPTION in item.metadata and (offered is None or item.name in offered):
            default = item.default_factory() if item.default is dataclasses.MISSING and \
                item.default_factory is not dataclasses.MISSING else item.default
            found[item.name] = OptionField(item.name, (item.name,), default, hints[item.name], item.metadata[OPTION])
    return found


def defaults(config_class: type) -> dict[str, Any]:
    """Every option's default by plain name (:data:`dataclasses.MISSING` for a required one)."""
    return {name: entry.default for name, entry in option_fields(config_class).items()}


def from_values(config_class: type, values: Mapping[str, Any]) -> Any:
    """The configuration with ``values`` (by plain option name) set and every other option at its default;
    LabelShareError for a name the configuration does not have. The configuration is not checked here."""
    fields = option_fields(config_class)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise LabelShareError(f"unknown option(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    return _build(config_class, {fields[name].path: value for name, value in values.items()})


def _build(config_class: type, by_path: dict[tuple[str, ...], Any]) -> Any:
    arguments = {}
    for item in dataclasses.fields(config_class):
        if NESTED in item.metadata:
            inner = {path[1:]: value for path, value in by_path.items() if path[0] == item.name}
            arguments[item.name] = _build(item.default_factory, inner)
        elif (item.name,) in by_path:
            arguments[item.name] = by_path[(item.name,)]
    return config_class(**arguments)


def values_of(config: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The options of a configuration object by plain name (``names``: only these)."""
    result = {}
    for name, entry in option_fields(type(config)).items():
        if names is None or name in names:
            value = config
            for part in entry.path:
                value = getattr(value, part)
            result[name] = value
    return result


# -- the command line -------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_class: type,
                  names: Sequence[str], defaults: Mapping[str, Any] | None = None) -> None:
    """Add the options ``names`` of a configuration class as arguments (in that order); ``defaults`` replaces some
    of their defaults (a command's own preset, e.g. the demo's short budget)."""
    fields = option_fields(config_class)
    for name in names:
        entry = fields[name]
        default = (defaults or {}).get(name, entry.default)
        kwargs: dict[str, Any] = {"dest": name, "help": entry.option.help}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        base = _base_type(entry.hint)
        if entry.option.action is not None:
            kwargs["action"] = entry.option.action
        elif base is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        elif base is list:
            kwargs["action"] = "append"
        elif base is dict:
            kwargs["action"] = key_value_argument(entry.option.parse or typing.get_args(entry.hint)[1])
        else:
            kwargs["type"] = entry.option.parse or base
            if entry.option.const is not _NO_CONST:
                kwargs.update(nargs="?", const=entry.option.const)
        if entry.option.choices is not None:
            kwargs["choices"] = list(entry.option.choices)
        if entry.option.metavar is not None:
            kwargs["metavar"] = entry.option.metavar
        parser.add_argument(entry.flag, **kwargs)


def key_value_argument(parse: Callable[[str], Any]) -> type[argparse.Action]:
    """The action of an option of a dict field, given as ``KEY=VALUE`` (repeat for several keys): the value read with
    ``parse``; a value without a key or that ``parse`` refuses is the parser's error naming the option."""

    class KeyValueArgument(argparse.Action):
        def __call__(self, parser, namespace, text, option_string=None):
            key, _, value = text.partition("=")
            try:
                if not key:
                    raise ValueError("no key")
                converted = parse(value)
            except ValueError:
                raise argparse.ArgumentError(self, f"{text}: expected {self.metavar or 'KEY=VALUE'}") from None
            setattr(namespace, self.dest, {**getattr(namespace, self.dest), key: converted})
    return KeyValueArgument


def from_arguments(config_class: type, args: argparse.Namespace, **values: Any) -> Any:
    """The configuration from the parsed arguments that are its options (plus ``values``), checked."""
    fields = option_fields(config_class)
    given = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    config = from_values(config_class, {**given, **values})
    config.check()
    return config


# -- JSON requests ----------------------------------------------------------------------------------------------------
_TYPE_NAMES = {str: "a string", int: "a number", float: "a number", bool: "true or false", type(None): "null",
               list: "a list of strings"}


def json_types(hint: Any) -> tuple[type, ...]:
    """The JSON value types a field of this type hint accepts (``int | None`` -> (int, NoneType))."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for member in typing.get_args(hint) for t in json_types(member))
    if hint is None or hint is type(None):
        return (type(None),)
    base = _base_type(hint)
    return (int, float) if base is float else (base,)


def request_types(config_class: type, names: Sequence[str] | None = None) -> dict[str, tuple[type, ...]]:
    """The JSON types of the options ``names`` (default: all) of a configuration class."""
    return {name: json_types(entry.hint) for name, entry in option_fields(config_class).items()
            if names is None or name in names}


def check_value(name: str, value: Any, accepted: tuple[type, ...], choices: Sequence | None = None,
                where: str = "") -> None:
    """LabelShareError naming ``name`` unless ``value`` is of an accepted JSON type (a bool is not a number) and,
    when there are ``choices``, one of them."""
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
        raise LabelShareError(f"{where}'{name}' must be {' or '.join(dict.fromkeys(_TYPE_NAMES[t] for t in accepted))}"
                              f", not {json.dumps(value)[:60]}")
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise LabelShareError(f"{where}'{name}' must hold strings only, not {json.dumps(value)[:60]}")
    if choices is not None and value is not None and value not in choices:
        raise LabelShareError(f"{where}'{name}' must be one of {', '.join(map(json.dumps, choices))}, not "
                              f"{json.dumps(value)[:60]}")


def _base_type(hint: Any) -> type:
    """The type of a hint without None (``int | None`` -> int, ``list[str]`` -> list)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        return _base_type(members[0])
    return typing.get_origin(hint) or hint
