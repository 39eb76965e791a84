"""The ``labelshare`` command line: it alone parses arguments (the options of the typed configurations of
:mod:`labelshare.core.config`), runs the command (:mod:`labelshare.commands`) and turns how it ended into one line
and the exit status.

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
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk

from .commands import (EXIT_ERROR, cmd_add_task, cmd_demo, cmd_evaluate, cmd_labelspace_build, cmd_labelspace_show,
                       cmd_memory, cmd_models, cmd_postprocess, cmd_rank, cmd_segment, cmd_train, cmd_worker, fail,
                       last_event)
from .core import __version__
from .core.config import (DEMO_BUDGET, MEMORY_OPTIONS, MEMORY_SIZES, TRAIN_OPTIONS, AddTaskConfig, MemoryConfig,
                          RankConfig, SegmentConfig, TrainConfig)
from .core.errors import (EXIT_INTERRUPTED, Interrupted, LabelShareError, TrainingInterrupted, is_out_of_memory,
                          os_error_message, stop_at_once)
from .core.methods import DEFAULT_METHOD, PRODUCT_METHODS
from .core.modelfolder import resolve_model
from .core.options import add_arguments
from .core.plans import PlanSettings
from .core.progress import Progress

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
        if "%(default)" not in text and action.option_strings and not action.required and action.nargs != 0 \
                and action.default not in (None, False, [], {}, argparse.SUPPRESS):
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
    group = parser.add_argument_group("plans: the resolution, patch size and slices per input of every task "
                                      "(labelshare/core/plans.py)")
    add_arguments(group, PlanSettings,
                  ("image_pixels", "patch_pixels", "fixed_size", "min_image_side", "slice_context"))


def _add_training_arguments(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    add_arguments(parser.add_argument_group("training budget, device and recipe"), TrainConfig, TRAIN_OPTIONS,
                  defaults)


def _add_memory_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] = MEMORY_OPTIONS) -> None:
    add_arguments(parser.add_argument_group("rehearsal memory of the new version (labelshare/core/memory.py)"),
                  MemoryConfig, names)


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
    train.add_argument("--split", type=Path, default=None, metavar="FILE",
                       help="the training and validation cases of every task, as in a model folder's split.json "
                            "(tasks -> train/validation -> case names) (default: split by patient with --seed and "
                            "--validation-fraction)")
    _add_training_arguments(train)
    _add_memory_arguments(train)
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
                                           "mirror", "slicing_axis", "uncertainty", "input_check"))
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
                    "failed (the others are ranked). See labelshare/engine/ranking.py.", formatter_class=HelpFormatter)
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
    _add_memory_arguments(postprocess)
    _add_common(postprocess)
    postprocess.set_defaults(func=cmd_postprocess)

    memory = commands.add_parser(
        "memory", formatter_class=HelpFormatter,
        help="give a model a rehearsal memory and input check statistics from its tasks' folders, as a new model "
             "version",
        description="A model made before versions carried a rehearsal memory (e.g. the bundled v3) gets one: per task "
                    "a few training slices for add-task to replay and a few validation slices for its forgetting "
                    "gate, chosen from the folders given, so that add-task and an update work where those folders "
                    "are not; and the input check's statistics of the training images of every task given, so that "
                    "segment can warn about an input unlike them. Writes a new version (same weights, records and "
                    "scores); the model given is never changed. See labelshare/engine/memory.py and "
                    "labelshare/engine/input_check.py.")
    memory.add_argument("--model", required=True, type=Path,
                        help="the model: a folder, or its name as labelshare models lists it (only read)")
    memory.add_argument("--task", dest="tasks", action="append", default=[], required=True, metavar="NAME=DIR",
                        help="a task of the model and its nnU-Net raw folder (every task the model holds no memory of)")
    memory.add_argument("--out", required=True, type=Path,
                        help="new model folder (never overwritten, never inside a model folder)")
    _add_memory_arguments(memory, MEMORY_SIZES)
    add_arguments(memory, SegmentConfig, ("device",))
    _add_common(memory)
    memory.set_defaults(func=cmd_memory)

    models = commands.add_parser("models", help="list model versions with their tasks and metrics",
                                 formatter_class=HelpFormatter)
    models.add_argument("--root", action="append", default=[], type=Path,
                        help="folder holding model folders (default: user store and bundled models)")
    _add_common(models)
    models.set_defaults(func=cmd_models)

    worker = commands.add_parser("worker", help="segment JSON requests read from stdin with models kept loaded "
                                                "(the Slicer module's background process; see "
                                                "labelshare/core/worker_protocol.py)")
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
                                               "labelshare/engine/incremental/.", formatter_class=HelpFormatter)
    add_task.add_argument("--model", required=True, type=Path,
                          help="the trained model: a folder, or its name as labelshare models lists it (only read)")
    add_task.add_argument("--task", required=True, metavar="NAME=DIR",
                          help="the task to add; a task the model already has is updated with the folder's cases")
    add_task.add_argument("--out", required=True, type=Path,
                          help="new model folder (never overwritten, never inside a model folder)")
    add_arguments(add_task, AddTaskConfig, ("strategy", "label_map"))
    add_task.add_argument("--replay-task", action="append", default=[], metavar="NAME=DIR",
                          help="folder of an old task (default: the folder recorded in the model's lineage.json)")
    add_arguments(add_task, AddTaskConfig, ("replay_cases", "distill_weight", "distill_new_task", "max_regression",
                                            "min_new_dice",
                                            "accept_regression", "new_task_share", "new_label_init",
                                            "new_label_lr_scale"))
    add_task.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    add_arguments(add_task.add_argument_group("training budget and device"), AddTaskConfig,
                  ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed", "device"))
    _add_memory_arguments(add_task)
    _add_common(add_task)
    add_task.set_defaults(func=cmd_add_task)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # under torchrun only rank 0 reports (the other ranks train silently beside it)
    mode = args.progress if int(os.environ.get("RANK", "0")) == 0 else "quiet"
    progress = Progress(mode, min_interval_s=0.5 if mode == "human" else 0.0)
    sitk.ProcessObject_SetGlobalWarningDisplay(args.debug)  # ITK's and GDCM's warnings: only with --debug
    try:
        with stop_on_signals():
            if "model" in args:  # the one resolver of every command that takes a model
                args.model = resolve_model(args.model)
            return args.func(args, progress)
    except Interrupted as error:
        hint = "" if isinstance(error, TrainingInterrupted) else CONTINUE_HINTS.get(args.command, "")
        return fail(progress, f"{error}{'; ' + hint if hint else ''}", EXIT_INTERRUPTED, "stopped")
    except (LabelShareError, OSError) as error:  # OSError: the file system refused (disk full, read-only, no
        # permission): not a bug
        message = str(error) if isinstance(error, LabelShareError) else os_error_message(error)
        if args.debug:
            last_event(progress, message)
            raise
        return fail(progress, message, EXIT_ERROR)
    except Exception as error:
        if is_out_of_memory(error) and not args.debug:
            return fail(progress, f"out of memory ({type(error).__name__}); use a smaller --batch-size or "
                                  "--patch-pixels, or --device cpu", EXIT_ERROR)
        last_event(progress, f"internal error ({type(error).__name__}: {str(error)[:200]}); please report it with "
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
    """SIGINT and SIGTERM raise :class:`~labelshare.core.errors.Interrupted` (exit status 75) wherever the command is,
    so that it ends with one line and its ``finally`` blocks run (temporary files removed, nothing half-written
    renamed into place); a second signal while it ends ends the process at once
    (:func:`~labelshare.core.errors.stop_at_once`, also 75). The training loop replaces these handlers with its own,
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


if __name__ == "__main__":
    run()
