"""The commands of ``labelshare`` (:mod:`labelshare.cli` parses the arguments and calls them): each builds its typed
configuration from the arguments, checks the arguments, inputs, outputs and task with :mod:`labelshare.core` (the
model's ``labelspace.json``, read without torch), and only then imports the part of :mod:`labelshare.engine` that
does the work, so a mistake is reported before torch, MONAI or the model is loaded. Each command returns the exit
status and ends with the final ``done`` or ``error`` event.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from pathlib import Path

from .core.config import AddTaskConfig, MemoryConfig, RankConfig, SegmentConfig, TrainConfig, check_mirroring
from .core.demo_folder import check_demo_folder
from .core.errors import EXIT_INTERRUPTED, DataError, LabelShareError
from .core.fileio import check_output_file
from .core.inputs import collect_inputs
from .core.labelspace import LabelSpace, TaskEntry, parse_group
from .core.modelfolder import check_new_version, list_models, read_memory, resolve_model, verify_folder
from .core.options import from_arguments
from .core.outputs import plan_cases
from .core.paths import default_model_dir
from .core.plans import PlanSettings
from .core.progress import Progress
from .core.scores import EVALUATION_FILES
from .core.tasks import TaskDataset, open_tasks, parse_task_argument, read_split

EXIT_ERROR = 1
EXIT_REGRESSION = 3
EXIT_SOME_FAILED = 4


def plan_settings_from(args: argparse.Namespace) -> PlanSettings:
    return from_arguments(PlanSettings, args)


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return from_arguments(TrainConfig, args)


def task_argument(text: str) -> tuple[str, Path]:
    """A ``--task`` value: ``NAME=DIR``, or a bare ``DIR`` (named after the folder) that must then be a folder."""
    if "=" not in text and not Path(text).is_dir():
        raise LabelShareError(f"--task {text}: no folder '{text}'; give the task as NAME=DIR (its name and its "
                              "nnU-Net raw folder)")
    return parse_task_argument(text)


def task_arguments(args: argparse.Namespace) -> list[tuple[str, Path]]:
    return [task_argument(text) for text in args.tasks]


def cmd_labelspace_build(args, progress: Progress) -> int:
    settings = plan_settings_from(args)
    check_output_file(args.output, args.overwrite)
    tasks = open_tasks(task_arguments(args))
    settings.check_tasks(tasks)  # before any case is read
    groups = [parse_group(g) for g in args.group]
    from .engine.statistics import compute_statistics  # reads every case: only once the arguments are right
    statistics = []
    for i, task in enumerate(tasks.values()):
        progress.progress("statistics", i / len(tasks), f"reading {task.name} ({len(task.cases)} cases)")
        statistics.append(compute_statistics(task, plan_settings=settings))
    space = LabelSpace.build(statistics, groups, settings)
    space.save(args.output, overwrite=args.overwrite)
    if progress.mode != "json":
        print(space.table())
    progress.done(str(args.output), message=f"label space written to {args.output}")
    return 0


def cmd_labelspace_show(args, progress: Progress) -> int:
    path = Path(args.path)
    if not path.exists() and not path.name.lower().endswith(".json"):
        path = resolve_model(args.path)  # a model's name, as labelshare models lists it
    space = verify_folder(path)[1] if path.is_dir() else LabelSpace.load(path)
    if progress.mode == "json":
        progress.done(str(path), message=f"label space of {path}", labelspace=space.to_json())
    else:
        print(space.table())
    return 0


def memory_config_from(args: argparse.Namespace) -> MemoryConfig:
    return from_arguments(MemoryConfig, args)


def cmd_train(args, progress: Progress) -> int:
    config, space, tasks = train_config_from(args), LabelSpace.load(args.labelspace), task_arguments(args)
    memory = memory_config_from(args)
    split = read_split(args.split, [name for name, _ in tasks]) if args.split else None
    check_new_version(args.out)
    from .engine.training_run import train  # torch: only once the arguments are known to be right
    result = train(tasks, space, args.out, config, method=args.method, resume=args.resume, progress=progress,
                   command=sys.argv[1:], split=split, memory_config=memory)
    progress.done(str(result.path), message=f"model written to {result.path}",
                  mean_dice=result.metrics.get("mean_dice"))
    return 0


def segment_config_from(args: argparse.Namespace) -> SegmentConfig:
    """The configuration of ``segment``; ``--overwrite`` and ``--continue`` choose what happens to outputs that
    exist."""
    if args.overwrite or args.continue_run:
        return from_arguments(SegmentConfig, args, existing="overwrite" if args.overwrite else "continue")
    return from_arguments(SegmentConfig, args)


def model_task(model: Path, task: str) -> TaskEntry:
    """The task's entry (:class:`~labelshare.core.labelspace.TaskEntry`) in the label space of the model folder, read
    from the verified folder alone: an unknown task or a damaged model is refused before torch is imported."""
    return verify_folder(model)[1].task(task)


def cmd_segment(args, progress: Progress) -> int:
    """One image: its output file, or status 1 with the reason. Several: every output, a summary, and
    :data:`EXIT_SOME_FAILED` when some failed (their reasons are in the summary and the final ``error`` event)."""
    config = segment_config_from(args)
    entry = model_task(args.model, config.task)
    if config.inference.mirror:
        check_mirroring(config.task, entry.lateralised, "--tta")
    inputs = collect_inputs(args.inputs, config.series)
    cases = plan_cases(inputs, args.output, config)
    progress.progress("preparing", 0.0, f"loading model for {len(cases)} image{'s' if len(cases) != 1 else ''}")
    from .engine.models import load_model  # torch, MONAI and the model: only once every check passed
    from .engine.segment_run import segment_cases
    model = load_model(args.model, device=config.device)
    if not inputs.single:
        progress.min_interval_s = 0.0  # one event per image: none to thin out
    summary = segment_cases(model, cases, config, progress)
    if inputs.single:
        [outcome] = summary.outcomes
        if outcome.error is not None:
            raise outcome.error
        progress.done(str(outcome.case.output), message=f"segmentation written to {outcome.case.output}"
                      if outcome.status == "done" else f"{outcome.case.output} is complete; skipped")
        return 0
    if progress.mode == "human":
        print(f"summary: {summary.text()}", file=sys.stderr)
        for outcome in summary.failed:
            print(f"  failed: {outcome.reason}", file=sys.stderr)
    if args.debug:
        for outcome in summary.failed:
            traceback.print_exception(outcome.error, file=sys.stderr)
    if summary.failed:
        return fail(progress, f"{len(summary.failed)} of {len(cases)} images failed ({summary.text()}; outputs in "
                              f"{args.output})", EXIT_SOME_FAILED, **summary.to_json())
    progress.done(str(args.output), message=f"{summary.text()}; outputs in {args.output}", **summary.to_json())
    return 0


def cmd_rank(args, progress: Progress) -> int:
    """The ranking table of the images; with several images, :data:`EXIT_SOME_FAILED` when some failed (the table
    holds the others); one image that fails is an error."""
    config = from_arguments(RankConfig, args)
    if not args.output.name.lower().endswith(".csv"):
        raise DataError(f"{args.output}: the ranking table is CSV; name it <name>.csv")
    check_output_file(args.output, args.overwrite)  # the one overwrite rule
    config.score_for(model_task(args.model, config.task).lateralised)  # unknown task, or tta of a lateralised one
    inputs = collect_inputs(args.inputs, config.series)
    progress.progress("preparing", 0.0, f"loading model to rank {len(inputs.images)} image"
                      f"{'s' if len(inputs.images) != 1 else ''}")
    from .engine.models import load_model  # torch, MONAI and the model: only once every check passed
    from .engine.ranking import rank_cases
    model = load_model(args.model, device=config.device)
    ranking = rank_cases(model, inputs, config, progress)
    if inputs.single and ranking.failures:
        raise DataError(ranking.failures[0].reason)
    summary = {"ranked": len(ranking.cases), "failed": len(ranking.failures),
               "failures": [{"case": f.name, "input": str(f.source), "reason": f.reason} for f in ranking.failures]}
    if progress.mode == "human":
        for failure in ranking.failures:
            print(f"  failed: {failure.reason}", file=sys.stderr)
    if not ranking.cases:  # a table without a row would read as "nothing to annotate"
        return fail(progress, f"all {len(inputs.images)} images failed; no ranking table written",
                    EXIT_SOME_FAILED, **summary)
    ranking.write(args.output)
    if ranking.failures:
        return fail(progress, f"{len(ranking.failures)} of {len(inputs.images)} images failed; the others are "
                              f"ranked in {args.output}", EXIT_SOME_FAILED, **summary)
    top = f"; most uncertain: {ranking.cases[0].name}" if ranking.cases else ""
    progress.done(str(args.output), message=f"{len(ranking.cases)} images ranked by {ranking.score} in "
                                            f"{args.output}{top}", **summary)
    return 0


def cmd_evaluate(args, progress: Progress) -> int:
    config = from_arguments(SegmentConfig, args)
    if args.output.exists() and not args.output.is_dir():
        raise LabelShareError(f"{args.output}: not a folder; -o names the folder the evaluation is written to")
    for name in EVALUATION_FILES:
        check_output_file(args.output / name, args.overwrite)
    if config.inference.mirror:
        check_mirroring(config.task, model_task(args.model, config.task).lateralised, "--tta")
    else:
        model_task(args.model, config.task)  # an unknown task or a damaged model: refused before torch
    task = TaskDataset.open(args.data, args.task)
    from .engine.evaluation import evaluate_cases  # torch, MONAI and the model: only once every check passed
    from .engine.inference import Segmenter
    from .engine.models import load_model
    model = load_model(args.model, device=config.device)
    cases = None
    if not args.all_cases:
        validation = model.validation_cases(args.task)
        known = {c.name for c in task.cases}
        if validation and set(validation) <= known:
            cases = validation
            progress.log(f"evaluating the {len(cases)} validation cases of the model's split (--all-cases for all)")
    evaluation = evaluate_cases(model, task, cases, task_name=args.task, progress=progress,
                                segmenter=Segmenter(model, config.inference))
    csv_path, markdown_path = evaluation.write(args.output, f"Evaluation of {Path(args.model).name} on {args.task}",
                                               overwrite=args.overwrite)
    if progress.mode != "json":
        print(markdown_path.read_text())
    progress.done(str(markdown_path), message=f"wrote {csv_path} and {markdown_path}",
                  mean_dice=evaluation.mean_dice())
    return 0


def cmd_models(args, progress: Progress) -> int:
    for root in args.root:  # a mistyped --root must not read as 'no models found'
        if not root.is_dir():
            state = "a file, not a folder" if root.exists() else "no such folder"
            raise LabelShareError(f"{root}: {state}; --root names a folder that holds model folders")
    summaries = list_models(args.root or None)
    default = default_model_dir()
    is_default = {s.path: default is not None and s.path.resolve() == default.resolve() for s in summaries}
    if progress.mode == "json":
        progress.done(None, message=f"{len(summaries)} models",
                      models=[{**dataclasses.asdict(s), "path": str(s.path), "default": is_default[s.path]}
                              for s in summaries])
        return 0
    if not summaries:
        print("no models found")
        return 0
    for s in summaries:
        name = s.name + (" (default)" if is_default[s.path] else "")
        if not s.valid:
            print(f"{name}  INVALID: {s.reason}  folder: {s.path}")
            continue
        dice = ", ".join(f"{t} {v:.3f}" for t, v in s.metrics.items() if v == v)
        print(f"{name}  {s.method}  tasks: {', '.join(s.tasks)}  created: {s.created or '?'}"
              f"  parent: {s.parent or '-'}  mean Dice: {dice or '-'}  folder: {s.path}")
    print("--model takes a name (first column) or a folder; without --model, the (default) model is used")
    return 0


def cmd_postprocess(args, progress: Progress) -> int:
    tasks, memory = task_arguments(args), memory_config_from(args)
    check_new_version(args.out)
    from .engine.postprocess_run import postprocess  # torch: only once the arguments are known to be right
    out = postprocess(args.model, tasks, args.out, progress, command=sys.argv[1:], memory_config=memory)
    progress.done(str(out), message=f"model written to {out}")
    return 0


def cmd_memory(args, progress: Progress) -> int:
    """``labelshare memory``: an older model as a new version with a rehearsal memory."""
    tasks, memory = task_arguments(args), memory_config_from(args)
    space = verify_folder(args.model)[1]
    for name, _ in tasks:
        space.task(name)  # an unknown task: refused before torch
    check_new_version(args.out)
    from .engine.postprocess_run import make_memory  # torch: only once the arguments are known to be right
    out = make_memory(args.model, tasks, args.out, memory, args.device, progress, command=sys.argv[1:])
    described = read_memory(out, verify_folder(out)[1])
    progress.done(str(out), message=f"model written to {out} with a rehearsal memory of "
                                    f"{described.bytes / 1e6:.1f} MB", memory_bytes=described.bytes)
    return 0


def cmd_demo(args, progress: Progress) -> int:
    config, settings, tasks = train_config_from(args), plan_settings_from(args), task_arguments(args)
    check_demo_folder(args.out, args.resume)
    from .engine.demo import run_demo
    result = run_demo(args.out, tasks, args.group, config, progress, command=sys.argv[1:], method=args.method,
                      plan_settings=settings, resume=args.resume)
    progress.done(str(result.report), message=f"report written to {result.report}")
    return 0


def add_task_config_from(args: argparse.Namespace) -> AddTaskConfig:
    return from_arguments(AddTaskConfig, args)


def cmd_add_task(args, progress: Progress) -> int:
    """0 when published; :data:`EXIT_REGRESSION` with a final ``error`` event carrying ``"regression": true`` and
    ``"report"`` when the gate refuses."""
    config, task, replay = add_task_config_from(args), task_argument(args.task), [task_argument(t)
                                                                                  for t in args.replay_task]
    verify_folder(args.model)  # a damaged model (a changed memory file...): refused before torch
    check_new_version(args.out)
    from .engine.incremental import RegressionRefused, add_task  # torch: only once the arguments are known to be right
    try:
        result = add_task(args.model, task, args.out, config, replay_tasks=replay, resume=args.resume,
                          progress=progress, command=sys.argv[1:])
    except RegressionRefused as error:
        if progress.mode == "json":
            progress.error(str(error), regression=True, report=str(error.report_path), interrupted=False)
        print(f"labelshare: refused: {error}", file=sys.stderr)
        return EXIT_REGRESSION
    progress.done(str(result.path), message=f"model written to {result.path} ({result.summary})",
                  mean_dice=result.metrics["mean_dice"], forgetting=str(result.path / "forgetting.json"),
                  passed=result.report.passed)
    return 0


def fail(progress: Progress, message: str, status: int, kind: str = "error", **fields) -> int:
    """One line on stderr; in JSON mode also the final ``error`` event for the process that reads stdout."""
    last_event(progress, message, interrupted=status == EXIT_INTERRUPTED, **fields)
    print(f"labelshare: {kind}: {message}", file=sys.stderr)
    return status


def last_event(progress: Progress, message: str, interrupted: bool = False, **fields) -> None:
    """The final ``error`` event in JSON mode: a process reading stdout learns how the command ended, whatever
    ended it (a traceback, shown with --debug or for a bug, follows on stderr)."""
    if progress.mode == "json":
        progress.error(message, interrupted=interrupted, **fields)


def cmd_worker(args, progress: Progress) -> int:
    """``labelshare worker``: the Slicer modules' background process; it always speaks the JSON protocol
    (:mod:`labelshare.core.worker_protocol`)."""
    import_started = time.perf_counter()
    from .engine.worker import serve
    return serve(import_started=import_started)
