"""Every option has one owner: its default is defined once, in a field of a typed configuration (labelshare.core.config,
labelshare.core.plans), and the edges that build the configuration (the command line, the worker, the Slicer modules)
and the layers below them hold no default of their own."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from labelshare.core import options as option_tools
from labelshare.cli import build_parser
from labelshare.core.config import (DEMO_BUDGET, AddTaskConfig, InferenceConfig, MemoryConfig, RankConfig,
                                    SegmentConfig, TrainConfig)
from labelshare.core.plans import PlanSettings
from labelshare.core.worker_protocol import COMMAND_CONFIGS, COMMAND_FIELDS, request_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (TrainConfig, InferenceConfig, SegmentConfig, RankConfig, AddTaskConfig, PlanSettings, MemoryConfig)
OPTION_NAMES = {name for config in CONFIGS for name in option_tools.option_fields(config)}
# The configurations each command builds from its arguments, and a command's own preset of some defaults
COMMAND_CONFIGS_OF_CLI = {
    ("labelspace", "build"): [(PlanSettings, {})],
    ("train",): [(TrainConfig, {}), (MemoryConfig, {})],
    ("postprocess",): [(MemoryConfig, {})],
    ("memory",): [(MemoryConfig, {}), (SegmentConfig, {})],
    ("demo",): [(TrainConfig, DEMO_BUDGET), (PlanSettings, {})],
    ("segment",): [(SegmentConfig, {})],
    ("rank",): [(RankConfig, {})],
    ("evaluate",): [(SegmentConfig, {})],
    ("add-task",): [(AddTaskConfig, {})],
}
# Arguments that are no configuration's option: the files a command reads and writes, what it does with them, and
# how it reports (none of them is named like an option)
COMMAND_ARGUMENTS = {"help", "version", "progress", "debug", "overwrite", "continue_run", "tasks", "group", "output",
                     "out", "labelspace", "method", "resume", "model", "inputs", "data", "all_cases", "root", "path",
                     "replay_task", "task", "split"}
# Sources that must take options from a configuration rather than define them: the engine below the configurations,
# the Slicer logic and shells, and the benchmark that drives training
OWNERS = {"config.py", "options.py", "plans.py"}
SOURCES = sorted(
    [p for p in (REPO / "LabelShareSegmentation" / "labelshare").rglob("*.py") if p.name not in OWNERS]
    + list((REPO / "LabelShareSegmentation" / "LabelShareLib").glob("*.py"))
    + list((REPO / "LabelShareSegmentation" / "LabelShareSegmentationLib").glob("*.py"))
    + list((REPO / "LabelShareTraining" / "LabelShareTrainingLib").glob("*.py"))
    + list((REPO / "LabelShareTraining" / "LabelShareTrainingWidgets").glob("*.py"))
    + [REPO / "LabelShareSegmentation" / "LabelShareSegmentation.py",
       REPO / "LabelShareTraining" / "LabelShareTraining.py", REPO / "benchmarks" / "methods.py"])
# Names that are options of a configuration but mean something else where they appear here (file, name: why)
SAME_NAME_OTHER_MEANING = {
    ("labelspace.py", "strategy"): "how a label space placed a task's labels (size, overlap), recorded per task",
    ("synthetic.py", "seed"): "the seed of generated test data, not of a training run",
    ("LabelShareSegmentation.py", "task"): "the task the scene remembers (none chosen yet)",
    ("LabelShareTraining.py", "task"): "the task the scene remembers (none chosen yet)",
    ("annotation_queue.py", "task"): "the task of a queue file (empty: nothing ranked yet)",
    ("inputs.py", "series"): "the reader's 'no series picked' (commands pass their configuration's series through)",
    ("modelfolder.py", "weights_dtype"): "the format: a config.json without the field (first release) holds float32",
    ("runs.py", "epochs"): "a request's None takes its budget preset's (BUDGETS); the progress's epochs seen so far",
    ("runs.py", "steps_per_epoch"): "a request's None takes its budget preset's (BUDGETS)",
    ("runs.py", "batch_size"): "a request's None takes its budget preset's (BUDGETS)",
}


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every command of the command line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommands(child, (*path, name))
            return
    yield path, parser


def test_command_line_defaults_are_the_configurations_defaults():
    """An argument named like an option is that option, added from its configuration: same default (or the
    command's declared preset), same flag; every other argument is one of the few that no configuration owns."""
    seen = set()
    for path, parser in subcommands(build_parser()):
        configs = COMMAND_CONFIGS_OF_CLI.get(path, [])
        expected = {}
        for config, preset in configs:
            expected.update({name: preset.get(name, default)
                             for name, default in option_tools.defaults(config).items()})
        for action in parser._actions:
            if action.dest in expected:
                seen.add(path)
                default = expected[action.dest]
                if default is dataclasses.MISSING:
                    assert action.required, (path, action.dest)
                else:
                    assert action.default == default, (path, action.dest, action.default, default)
            else:
                assert action.dest in COMMAND_ARGUMENTS, f"{' '.join(path)}: --{action.dest} is no option of " \
                                                         f"{[c.__name__ for c, _ in configs]}"
                assert action.dest == "task" or action.dest not in OPTION_NAMES, (path, action.dest)
    assert seen == set(COMMAND_CONFIGS_OF_CLI)


def test_the_help_of_an_option_is_its_fields_help():
    parser = dict(subcommands(build_parser()))[("add-task",)]
    actions = {action.dest: action for action in parser._actions}
    for name, entry in option_tools.option_fields(AddTaskConfig).items():
        assert actions[name].help == entry.option.help, name
        assert entry.flag in actions[name].option_strings


def test_the_worker_accepts_exactly_the_configurations_options():
    for command, (config_class, expressed_otherwise) in COMMAND_CONFIGS.items():
        options = {name: entry for name, entry in option_tools.option_fields(config_class).items()
                   if name not in expressed_otherwise}
        fields = COMMAND_FIELDS[command]
        protocol = {"id", "command", "model", "output", "overwrite", "input" if command == "segment" else "inputs"}
        assert set(fields) == set(options) | protocol, command
        for name, entry in options.items():
            assert fields[name].types == option_tools.json_types(entry.hint), (command, name)
            assert fields[name].choices == entry.option.choices, (command, name)
        # a request with only the required fields builds the configuration with every default
        files = {"input": "i"} if command == "segment" else {"inputs": ["i"]}
        config = request_config({"task": "t", "output": "o", **files}, command)
        assert config == config_class(task="t"), command


def test_nested_configurations_are_one_configuration():
    """AddTaskConfig holds a TrainConfig (not copies of its fields); SegmentConfig and RankConfig an
    InferenceConfig: their options have one default, the inner configuration's."""
    add_task = option_tools.option_fields(AddTaskConfig)
    train = option_tools.option_fields(TrainConfig)
    for name in ("steps_per_epoch", "batch_size", "learning_rate", "seed", "device"):
        assert add_task[name].path == ("train", name) and add_task[name].default == train[name].default
    assert "validation_fraction" not in add_task  # add-task takes it from the model's training.json
    assert AddTaskConfig.from_options(batch_size=4).train.batch_size == 4
    segment = option_tools.option_fields(SegmentConfig)
    assert segment["mirror"].path == ("inference", "mirror")
    assert set(option_tools.option_fields(RankConfig)) & set(option_tools.option_fields(InferenceConfig)) == \
        {"batch_size", "slicing_axis"}
    with pytest.raises(Exception, match="unknown option"):
        SegmentConfig.from_options(task="t", mirrored=True)


def literal_defaults(tree: ast.Module):
    """(line, name) of every function parameter and class-body field with a literal default (a constant, also
    None), names as snake_case."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            positional = arguments.posonlyargs + arguments.args
            pairs = list(zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults, strict=True))
            pairs += [(arg, default) for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults,
                                                              strict=True) if default is not None]
            for arg, default in pairs:
                if _literal(default):
                    yield node.lineno, _snake(arg.arg)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None \
                        and _literal(item.value):
                    yield item.lineno, _snake(item.target.id)


def _literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) or (isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_no_layer_below_the_configurations_restates_an_option_default():
    """A parameter or field named like an option takes the configuration, the value, or the configuration's own
    default (``TrainConfig.device``); never a literal of its own (the mirror default was once in 12 places)."""
    assert len(SOURCES) > 40
    found = []
    for source in SOURCES:
        for line, name in literal_defaults(ast.parse(source.read_text(encoding="utf-8"))):
            if name in OPTION_NAMES and (source.name, name) not in SAME_NAME_OTHER_MEANING:
                found.append(f"{source.relative_to(REPO)}:{line}: {name}")
    assert found == []


def test_the_scan_finds_a_restated_default():
    """The scan above is meaningful: it flags what it is meant to flag."""
    code = "def segment(image, mirror=False, *, batchSize=16):\n    pass\nclass Request:\n    device: str = 'auto'\n"
    names = [name for _, name in literal_defaults(ast.parse(code))]
    assert names == ["mirror", "batch_size", "device"]
    assert {"mirror", "batch_size", "device", "largest_component", "learning_rate", "steps_per_epoch"} <= OPTION_NAMES
