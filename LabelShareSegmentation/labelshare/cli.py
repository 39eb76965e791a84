"""The ``labelshare`` command line: it alone parses arguments, builds the typed configurations of
:mod:`labelshare.config`, calls the library and emits the final ``done`` or ``error`` event.

Errors a user or the environment can cause (bad input, a full or read-only disk, no memory) print one line,
``labelshare: error: <file or object>: <problem>``, and exit with status 1 (``--debug`` shows the traceback). Any
command stopped by SIGINT/SIGTERM prints ``labelshare: stopped: ...`` and exits with status 75 (EX_TEMPFAIL; a
training run saves a checkpoint first, and ``train``/``add-task``/``demo`` continue with ``--resume``; ``segment``
stops after the image in progress is discarded, and continues with ``--continue``); a second signal while it stops
ends the process at once, also with 75. add-task refused by its regression gate exits with status 3; ``segment`` and
``rank`` with several images exit with status 4 when some of them failed (the others are written; the summary lists
each failure with its reason). An output file is replaced only with ``--overwrite``; a model version never. With
``--progress json`` the last event is always ``done`` or ``error``.

Every check of the arguments, inputs, outputs and task (against the model's ``labelspace.json``) runs before torch,
MONAI or the model is loaded, so a mistake costs no start-up time. ``--progress`` and ``--debug`` go before or after
the command; ITK's and GDCM's warnings are shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .config import (DEMO_BUDGET, TRAIN_OPTIONS, AddTaskConfig, RankConfig, SegmentConfig, TrainConfig,
                     check_mirroring)
from .errors import (EXIT_INTERRUPTED, Interrupted, LabelShareError, TrainingInterrupted, is_out_of_memory,
                     os_error_message, stop_at_once)
from .methods import DEFAULT_METHOD, PRODUCT_METHODS
from .options import add_arguments, from_arguments
from .plans import PlanSettings
from .progress import Progress

EXIT_ERROR = 1
EXIT_REGRESSION = 3
EXIT_SOME_FAILED = 4
MODEL_HELP = "model folder, or a model's name as labelshare models lists it (default: the bundled model)"
PROGRESS_MODES = ("human", "json", "quiet")
# what continues a command that a signal stopped (its "labelshare: stopped:" line says so)
CONTINUE_HINTS = {"train": "repeat the command with --resume to continue",
                  "add-task": "repeat the command with --resume to continue",
                  "demo": "repeat the command with --resume to continue",
                  "segment": "repeat the command with --continue (instead of --overwrite) to keep the complete "
                             "outputs and write the others",
                  "rank": "nothing was written; repeat the command"}


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help where it has one (not for flags, lists and required options)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.option_strings and not action.required \
                and action.default not in (None, False, [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _add_common(parser: argparse.ArgumentParser) -> None:
    """The global options, on the main parser (before the command) and on every command's (after it). No default
    here: the main parser's (:func:`build_parser`) applies, so that a value given before the command is not replaced
    by the command parser's default."""
    parser.add_argument("--progress", choices=PROGRESS_MODES, default=argparse.SUPPRESS,
                        help="progress as human-readable lines on stderr, JSON lines on stdout, or none; before or "
                             "after the command (default: human)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks on errors, and ITK's warnings; before or after the command")


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _add_task_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--task", dest="tasks", action="append", default=[], required=required, metavar="NAME=DIR",
                        help="a task: its name and nnU-Net raw folder (repeat for several tasks)")


def _add_method_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=[m.name for m in PRODUCT_METHODS],
                        help="; ".join(f"{m.name}: {m.description}" for m in PRODUCT_METHODS))


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("plans: the resolution and patch size of every task (labelshare/plans.py)")
    add_arguments(group, PlanSettings, ("image_pixels", "patch_pixels", "fixed_size"))


def plan_settings_from(args: argparse.Namespace) -> PlanSettings:
    return from_arguments(PlanSettings, args)


def _add_training_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    add_arguments(parser.add_argument_group("training budget and device"), TrainConfig, TRAIN_OPTIONS, defaults)


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    return from_arguments(TrainConfig, args)


def task_argument(text: str) -> tuple[str, Path]:
    """A ``--task`` value: ``NAME=DIR``, or a bare ``DIR`` (named after the folder) that must then be a folder."""
    from .tasks import parse_task_argument
    if "=" not in text and not Path(text).is_dir():
        raise LabelShareError(f"--task {text}: no folder '{text}'; give the task as NAME=DIR (its name and its "
                              "nnU-Net raw folder)")
    return parse_task_argument(text)


def task_arguments(args: argparse.Namespace) -> list[tuple[str, Path]]:
    return [task_argument(text) for text in args.tasks]


# -- commands ---------------------------------------------------------------------------------------------------------
def cmd_labelspace_build(args, progress: Progress) -> int:
    from .fileio import check_output_file
    from .labelspace import LabelSpace, compute_statistics, parse_group
    from .training_run import open_tasks
    settings = plan_settings_from(args)
    check_output_file(args.output, args.overwrite)
    tasks = open_tasks(task_arguments(args))
    statistics = []
    for i, task in enumerate(tasks.values()):
        progress.progress("statistics", i / len(tasks), f"reading {task.name} ({len(task.cases)} cases)")
        statistics.append(compute_statistics(task, plan_settings=settings))
    space = LabelSpace.build(statistics, [parse_group(g) for g in args.group], settings)
    space.save(args.output, overwrite=args.overwrite)
    if progress.mode != "json":
        print(space.table())
    progress.done(str(args.output), message=f"label space written to {args.output}")
    return 0


def cmd_labelspace_show(args, progress: Progress) -> int:
    from .labelspace import LabelSpace
    from .modelfolder import resolve_model, verify_folder
    path = Path(args.path)
    if not path.exists() and not path.name.lower().endswith(".json"):
        path = resolve_model(args.path)  # a model's name, as labelshare models lists it
    space = verify_folder(path)[1] if path.is_dir() else LabelSpace.load(path)
    if progress.mode == "json":
        progress.done(str(path), message=f"label space of {path}", labelspace=space.to_json())
    else:
        print(space.table())
    return 0


def cmd_train(args, progress: Progress) -> int:
    from .labelspace import LabelSpace
    from .modelfolder import check_new_version
    config, space, tasks = train_config_from(args), LabelSpace.load(args.labelspace), task_arguments(args)
    check_new_version(args.out)
    from .training_run import train  # torch: only once the arguments are known to be right
    result = train(tasks, space, args.out, config, method=args.method, resume=args.resume, progress=progress,
                   command=sys.argv[1:])
    progress.done(str(result.path), message=f"model written to {result.path}",
                  mean_dice=result.metrics.get("mean_dice"))
    return 0


def segment_config_from(args: argparse.Namespace) -> SegmentConfig:
    """The configuration of ``segment``; ``--overwrite`` and ``--continue`` choose what happens to outputs that
    exist."""
    if args.overwrite or args.continue_run:
        return from_arguments(SegmentConfig, args, existing="overwrite" if args.overwrite else "continue")
    return from_arguments(SegmentConfig, args)


def model_task(model: Path, task: str):
    """The task's entry (:class:`~labelshare.labelspace.TaskEntry`) in the label space of the model folder, read
    from the verified folder alone: an unknown task or a damaged model is refused before torch is imported."""
    from .modelfolder import verify_folder
    return verify_folder(model)[1].task(task)


def cmd_segment(args, progress: Progress) -> int:
    """One image: its output file, or status 1 with the reason. Several: every output, a summary, and
    :data:`EXIT_SOME_FAILED` when some failed (their reasons are in the summary and the final ``error`` event)."""
    from .inputs import collect_inputs
    from .segment_run import plan_cases, segment_cases
    config = segment_config_from(args)
    entry = model_task(args.model, config.task)
    if config.inference.mirror:
        check_mirroring(config.task, entry.lateralised, "--tta")
    inputs = collect_inputs(args.inputs, config.series)
    cases = plan_cases(inputs, args.output, config)
    progress.progress("preparing", 0.0, f"loading model for {len(cases)} image{'s' if len(cases) != 1 else ''}")
    from .models import load_model  # torch, MONAI and the model: only once every check passed
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
        return _fail(progress, f"{len(summary.failed)} of {len(cases)} images failed ({summary.text()}; outputs in "
                               f"{args.output})", EXIT_SOME_FAILED, **summary.to_json())
    progress.done(str(args.output), message=f"{summary.text()}; outputs in {args.output}", **summary.to_json())
    return 0


def cmd_rank(args, progress: Progress) -> int:
    """The ranking table of the images; with several images, :data:`EXIT_SOME_FAILED` when some failed (the table
    holds the others); one image that fails is an error."""
    from .errors import DataError
    from .fileio import check_output_file
    from .inputs import collect_inputs
    from .ranking import rank_cases
    config = from_arguments(RankConfig, args)
    if not args.output.name.lower().endswith(".csv"):
        raise DataError(f"{args.output}: the ranking table is CSV; name it <name>.csv")
    check_output_file(args.output, args.overwrite)  # the one overwrite rule
    config.score_for(model_task(args.model, config.task).lateralised)  # unknown task, or tta of a lateralised one
    inputs = collect_inputs(args.inputs, config.series)
    progress.progress("preparing", 0.0, f"loading model to rank {len(inputs.images)} image"
                      f"{'s' if len(inputs.images) != 1 else ''}")
    from .models import load_model  # torch, MONAI and the model: only once every check passed
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
        return _fail(progress, f"all {len(inputs.images)} images failed; no ranking table written",
                     EXIT_SOME_FAILED, **summary)
    ranking.write(args.output)
    if ranking.failures:
        return _fail(progress, f"{len(ranking.failures)} of {len(inputs.images)} images failed; the others are "
                               f"ranked in {args.output}", EXIT_SOME_FAILED, **summary)
    top = f"; most uncertain: {ranking.cases[0].name}" if ranking.cases else ""
    progress.done(str(args.output), message=f"{len(ranking.cases)} images ranked by {ranking.score} in "
                                            f"{args.output}{top}", **summary)
    return 0


def cmd_evaluate(args, progress: Progress) -> int:
    from .fileio import check_output_file
    from .scores import EVALUATION_FILES
    from .tasks import TaskDataset
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
    from .evaluation import evaluate_cases  # torch, MONAI and the model: only once every check passed
    from .models import load_model
    model = load_model(args.model, device=config.device)
    cases = None
    if not args.all_cases:
        validation = model.validation_cases(args.task)
        known = {c.name for c in task.cases}
        if validation and set(validation) <= known:
            cases = validation
            progress.log(f"evaluating the {len(cases)} validation cases of the model's split (--all-cases for all)")
    from .inference import Segmenter
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
    from .modelfolder import list_models
    from .paths import default_model_dir
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
    from .modelfolder import check_new_version
    tasks = task_arguments(args)
    check_new_version(args.out)
    from .postprocess_run import postprocess  # torch: only once the arguments are known to be right
    out = postprocess(args.model, tasks, args.out, progress, command=sys.argv[1:])
    progress.done(str(out), message=f"model written to {out}")
    return 0


def cmd_demo(args, progress: Progress) -> int:
    config, settings, tasks = train_config_from(args), plan_settings_from(args), task_arguments(args)
    from .demo import run_demo  # light at import: it checks --out before torch loads
    result = run_demo(args.out, tasks, args.group, config, progress, command=sys.argv[1:], method=args.method,
                      plan_settings=settings, resume=args.resume)
    progress.done(str(result.report), message=f"report written to {result.report}")
    return 0


def add_task_config_from(args: argparse.Namespace) -> AddTaskConfig:
    return from_arguments(AddTaskConfig, args)


def cmd_add_task(args, progress: Progress) -> int:
    """0 when published; :data:`EXIT_REGRESSION` with a final ``error`` event carrying ``"regression": true`` and
    ``"report"`` when the gate refuses."""
    from .modelfolder import check_new_version
    config, task, replay = add_task_config_from(args), task_argument(args.task), [task_argument(t)
                                                                                  for t in args.replay_task]
    check_new_version(args.out)
    from .incremental import RegressionRefused, add_task  # torch: only once the arguments are known to be right
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


# -- parser -----------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelshare", description="Label-sharing multi-task segmentation engine.",
                                     epilog="Exit status: 0 done, 1 error (one line naming the file and the problem), "
                                            "3 add-task refused by its regression gate, 4 some images of segment or "
                                            "rank failed, 75 stopped by a signal.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser)
    parser.set_defaults(progress="human", debug=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    labelspace = commands.add_parser("labelspace", help="build or show a shared label space",
                                     formatter_class=HelpFormatter)
    _add_common(labelspace)
    labelspace_commands = labelspace.add_subparsers(dest="labelspace_command", required=True, metavar="ACTION")
    build = labelspace_commands.add_parser("build", help="map every task's labels to shared labels by size",
                                           formatter_class=HelpFormatter)
    _add_task_arguments(build)
    build.add_argument("--group", action="append", default=[], metavar="TASK:LABEL=TASK:LABEL",
                       help="put these labels of different tasks on one shared label; the rest are placed by size")
    build.add_argument("-o", "--output", required=True, type=Path, help="labelspace.json to write")
    _add_plan_arguments(build)
    _add_overwrite(build)
    _add_common(build)
    build.set_defaults(func=cmd_labelspace_build)
    show = labelspace_commands.add_parser("show", help="print a label space (file or model folder) as a table",
                                          formatter_class=HelpFormatter)
    show.add_argument("path", help="labelspace.json, a model folder, or a model's name as labelshare models lists it")
    _add_common(show)
    show.set_defaults(func=cmd_labelspace_show)

    train = commands.add_parser("train", help="train one network on several tasks", formatter_class=HelpFormatter)
    train.add_argument("--labelspace", required=True, type=Path,
                       help="the label space of the tasks (labelshare labelspace build)")
    _add_task_arguments(train)
    train.add_argument("--out", required=True, type=Path,
                       help="new model folder (never overwritten, never inside a model folder)")
    _add_method_argument(train)
    train.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    _add_training_arguments(train)
    _add_common(train)
    train.set_defaults(func=cmd_train)

    segment = commands.add_parser(
        "segment", help="segment images (files, folders, globs, DICOM series) for one task of a model",
        description="One image in, one output file out; several images (or a folder of them) in, one output per "
                    "image in the folder -o. Exit status 4: some images failed (the others are written).",
        formatter_class=HelpFormatter)
    segment.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    add_arguments(segment, SegmentConfig, ("task",))
    segment.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image file (.nii.gz, .nii, .nrrd, .mha, .png, DICOM), folder of images, DICOM series "
                              "folder, or a quoted glob such as 'scans/*.nii.gz'")
    segment.add_argument("-o", "--output", required=True, type=Path,
                         help="output file for one image (.nii.gz, .nii, .nrrd, .mha, .png: label map with a .json "
                              "sidecar; .seg.nrrd: Slicer segmentation; .dcm: DICOM SEG); otherwise a folder")
    add_arguments(segment, SegmentConfig, ("output_format", "series", "device", "batch_size", "largest_component",
                                           "mirror", "slicing_axis"))
    existing = segment.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    existing.add_argument("--continue", dest="continue_run", action="store_true",
                          help="keep the complete outputs of an interrupted run and write the others")
    _add_common(segment)
    segment.set_defaults(func=cmd_segment)

    rank = commands.add_parser(
        "rank", help="rank unlabelled images by the model's uncertainty: which to annotate next",
        description="Scores every image (the same inputs as segment) and writes a CSV table, most uncertain first: "
                    "rank, case, score, predicted voxels per label, seconds, input. Exit status 4: some images "
                    "failed (the others are ranked). See labelshare/ranking.py.", formatter_class=HelpFormatter)
    rank.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    add_arguments(rank, RankConfig, ("task",))
    rank.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="image file, folder of images, DICOM series folder, or a quoted glob (as for segment)")
    rank.add_argument("-o", "--output", required=True, type=Path, help="the ranking table to write (.csv)")
    add_arguments(rank, RankConfig, ("score", "series", "device", "batch_size", "slicing_axis"))
    _add_overwrite(rank)
    _add_common(rank)
    rank.set_defaults(func=cmd_rank)

    evaluate = commands.add_parser("evaluate", help="Dice and HD95 of a model on a task's cases",
                                   formatter_class=HelpFormatter)
    evaluate.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    evaluate.add_argument("--task", required=True, help="the task of the model to evaluate")
    evaluate.add_argument("--data", required=True, type=Path, help="the task's nnU-Net raw folder")
    evaluate.add_argument("--all-cases", action="store_true",
                          help="score every case, not only the validation cases of the model's split")
    evaluate.add_argument("-o", "--output", type=Path, default=Path("evaluation"),
                          help="folder for evaluation.csv and evaluation.md")
    _add_overwrite(evaluate)
    add_arguments(evaluate, SegmentConfig, ("device", "mirror"))
    _add_common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    postprocess = commands.add_parser(
        "postprocess", formatter_class=HelpFormatter,
        help="choose a model's post-processing on its validation cases (as models trained now do at the end of "
             "training), as a new model version",
        description="Per task and label, keep only the largest connected component where that raises the mean Dice "
                    "of the validation cases of the model's split.json; writes a new version (same weights) with "
                    "that choice, its scores and the model given as its parent.")
    postprocess.add_argument("--model", required=True, type=Path,
                             help="the model: a folder, or its name as labelshare models lists it")
    postprocess.add_argument("--task", dest="tasks", action="append", default=[], required=True, metavar="NAME=DIR",
                             help="every task of the model: its name and nnU-Net raw folder")
    postprocess.add_argument("--out", required=True, type=Path,
                             help="new model folder (never overwritten, never inside a model folder)")
    _add_common(postprocess)
    postprocess.set_defaults(func=cmd_postprocess)

    models = commands.add_parser("models", help="list model versions with their tasks and metrics",
                                 formatter_class=HelpFormatter)
    models.add_argument("--root", action="append", default=[], type=Path,
                        help="folder holding model folders (default: user store and bundled models)")
    _add_common(models)
    models.set_defaults(func=cmd_models)

    from .worker import cmd_worker  # light import: torch loads only when the worker runs
    worker = commands.add_parser("worker", help="segment JSON requests read from stdin with models kept loaded "
                                                "(the Slicer module's background process; see labelshare/worker.py)")
    worker.set_defaults(func=cmd_worker, progress="json", debug=False)  # it always speaks the JSON protocol

    demo = commands.add_parser("demo", help="the whole pipeline on generated (or given) tasks, with a report",
                               formatter_class=HelpFormatter)
    demo.add_argument("--out", required=True, type=Path, help="new (or empty) folder for the data, model and report")
    demo.add_argument("--resume", action="store_true",
                      help="continue a stopped demo in --out: its training from the last checkpoint (or its finished "
                           "model), then the segmentations and the report")
    _add_task_arguments(demo, required=False)
    demo.add_argument("--group", action="append", default=[], metavar="TASK:LABEL=TASK:LABEL",
                      help="put these labels of different tasks on one shared label (labelspace build --group)")
    _add_method_argument(demo)
    _add_training_arguments(demo, DEMO_BUDGET)
    _add_plan_arguments(demo)
    _add_common(demo)
    demo.set_defaults(func=cmd_demo)

    add_task = commands.add_parser("add-task", help="add a task to a trained model, or update one of its tasks, "
                                                    "without forgetting the others",
                                   description="Exit status: 0 published, 1 error, 3 refused by the regression gate "
                                               "(report beside --out), 75 interrupted (repeat with --resume). See "
                                               "labelshare/incremental/.", formatter_class=HelpFormatter)
    add_task.add_argument("--model", required=True, type=Path,
                          help="the trained model: a folder, or its name as labelshare models lists it (only read)")
    add_task.add_argument("--task", required=True, metavar="NAME=DIR",
                          help="the task to add; a task the model already has is updated with the folder's cases")
    add_task.add_argument("--out", required=True, type=Path,
                          help="new model folder (never overwritten, never inside a model folder)")
    add_arguments(add_task, AddTaskConfig, ("strategy", "label_map"))
    add_task.add_argument("--replay-task", action="append", default=[], metavar="NAME=DIR",
                          help="folder of an old task (default: the folder recorded in the model's lineage.json)")
    add_arguments(add_task, AddTaskConfig, ("replay_cases", "distill_weight", "max_regression", "min_new_dice",
                                            "accept_regression", "new_task_share", "new_label_init",
                                            "new_label_lr_scale"))
    add_task.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    add_arguments(add_task.add_argument_group("training budget and device"), AddTaskConfig,
                  ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed", "device"))
    _add_common(add_task)
    add_task.set_defaults(func=cmd_add_task)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import SimpleITK as sitk  # after the arguments: --version and --help need none of it
    # under torchrun only rank 0 reports (the other ranks train silently beside it)
    mode = args.progress if int(os.environ.get("RANK", "0")) == 0 else "quiet"
    progress = Progress(mode, min_interval_s=0.5 if mode == "human" else 0.0)
    sitk.ProcessObject_SetGlobalWarningDisplay(args.debug)  # ITK's and GDCM's warnings: only with --debug
    try:
        with stop_on_signals():
            if "model" in args:  # the one resolver of every command that takes a model
                from .modelfolder import resolve_model
                args.model = resolve_model(args.model)
            return args.func(args, progress)
    except Interrupted as error:
        hint = "" if isinstance(error, TrainingInterrupted) else CONTINUE_HINTS.get(args.command, "")
        return _fail(progress, f"{error}{'; ' + hint if hint else ''}", EXIT_INTERRUPTED, "stopped")
    except (LabelShareError, OSError) as error:  # OSError: the file system refused (disk full, read-only, no
        # permission): not a bug
        message = str(error) if isinstance(error, LabelShareError) else os_error_message(error)
        if args.debug:
            _last_event(progress, message)
            raise
        return _fail(progress, message, EXIT_ERROR)
    except Exception as error:
        if is_out_of_memory(error) and not args.debug:
            return _fail(progress, f"out of memory ({type(error).__name__}); use a smaller --batch-size or "
                                   "--patch-pixels, or --device cpu", EXIT_ERROR)
        _last_event(progress, f"internal error ({type(error).__name__}: {str(error)[:200]}); please report it with "
                              "the traceback")
        raise


def run() -> None:
    """The program (``labelshare``, ``python -m labelshare``): :func:`main`, then exit with its status. Signals that
    arrive while the interpreter shuts down (which takes a moment once torch is loaded) are ignored: the command has
    finished, there is nothing left to stop, and its status must stay the one it reported. A command that a signal
    stopped ends at once (its files are written or discarded, its one line said): it does not wait for an image a
    reader thread is still reading, nor for torch's teardown."""
    status = main()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    if status == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`~labelshare.errors.Interrupted` (exit status 75) wherever the command is,
    so that it ends with one line and its ``finally`` blocks run (temporary files removed, nothing half-written
    renamed into place); a second signal while it ends ends the process at once
    (:func:`~labelshare.errors.stop_at_once`, also 75). The training loop replaces these handlers with its own,
    which stop after the current step and save a checkpoint."""
    def stop(number, frame) -> None:
        for other in previous:
            signal.signal(other, stop_at_once)
        raise Interrupted(f"interrupted by {signal.Signals(number).name}")

    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[number] = signal.signal(number, stop)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _fail(progress: Progress, message: str, status: int, kind: str = "error", **fields) -> int:
    """One line on stderr; in JSON mode also the final ``error`` event for the process that reads stdout."""
    _last_event(progress, message, interrupted=status == EXIT_INTERRUPTED, **fields)
    print(f"labelshare: {kind}: {message}", file=sys.stderr)
    return status


def _last_event(progress: Progress, message: str, interrupted: bool = False, **fields) -> None:
    """The final ``error`` event in JSON mode: a process reading stdout learns how the command ended, whatever
    ended it (a traceback, shown with --debug or for a bug, follows on stderr)."""
    if progress.mode == "json":
        progress.error(message, interrupted=interrupted, **fields)


if __name__ == "__main__":
    run()
