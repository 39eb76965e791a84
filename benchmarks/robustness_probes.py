"""The robustness campaign's bad inputs: a probe per damaged, tampered, truncated, oversized or contradictory input
to every command (:func:`bad_input_probes`, at least 100, with the controls that must work), and the argument
builders and damage combinators they are written with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelshare.core.modelfolder import write_manifest

from .robustness_fixtures import (ENV, TINY, a_file, copy_model, copy_task, cut, earlier_result, edit_json,
                                  evaluation_problem, first, Fixtures, folder_segmentations_problem, huge_header,
                                  in_json, label_space_problem, nan_nifti_case, nan_weights, output_name,
                                  segment_output_problem, segmentation_problem, then, volume, with_nan, write_array)


# the tests' model of the first release's format (format 1), made by that release's code (Testing/format_fixtures.py)
FIRST_RELEASE_MODEL = Path(__file__).resolve().parents[1] / "Testing" / "data" / "format-first-release"


# -- probes -----------------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """One bad input (or a control): ``build(fixtures, folder)`` prepares the input in the probe's own folder and
    returns the ``labelshare`` arguments."""

    name: str
    build: Callable[[Fixtures, Path], list[str]]
    expect: str = "error"                    # "error", or "done" for a control
    protect: tuple[str, ...] = ()            # files/folders (relative to the probe's folder) that must not change
    absent: tuple[str, ...] = ()             # outputs that must not appear when the command fails
    needs: str = ""                          # "tmpfs" (a small file system at <folder>/disk) or "no-cuda"
    verify: Callable[[Fixtures, Path], str] | None = None  # a control's output: '' when right, else the problem
    says: str = ""                           # what the one-line error must say
    alone: bool = False                      # the one line is all of stderr (no warnings before it)


def with_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` with ``--option value`` pairs set (replaced where present, else added)."""
    argv = list(argv)
    for name, value in zip(options[::2], options[1::2], strict=True):
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    return argv


def build_argv(f: Fixtures, d: Path, *names: str, output: Path | None = None) -> list[str]:
    return ["labelspace", "build", *f.task_args(*(names or ("xray2d",))), "-o", str(output or d / "ls.json")]


def train_argv(f: Fixtures, d: Path, *options: str, out: Path | None = None, tasks: dict | None = None) -> list[str]:
    folders = {"phantom3d": f.tasks["phantom3d"], "xray2d": f.tasks["xray2d"], **(tasks or {})}
    argv = ["train", "--labelspace", str(f.space2),
            *[arg for name, folder in folders.items() for arg in ("--task", f"{name}={folder}")],
            "--out", str(out or d / "m"), *TINY]
    return with_options(argv, options)


def segment_argv(f: Fixtures, d: Path, *options: str, model: Path | None = None, image: Path | None = None,
                 output: Path | None = None) -> list[str]:
    return with_options(["segment", "--model", str(model or f.model), "--task", "phantom3d", str(image or f.image),
                         "-o", str(output or d / "o.nii.gz"), "--device", "cpu"], options)


def evaluate_argv(f: Fixtures, d: Path, *options: str, model: Path | None = None, task: str = "xray2d",
                  data: Path | None = None, output: Path | None = None) -> list[str]:
    return with_options(["evaluate", "--model", str(model or f.model), "--task", task, "--data",
                         str(data or f.tasks[task]), "-o", str(output or d / "evaluation"), "--device", "cpu"],
                        options)


def add_task_argv(f: Fixtures, d: Path, *options: str, model: Path | None = None, replay: bool = True,
                  task: str | None = None, out: Path | None = None) -> list[str]:
    replays = ["--replay-task", f"phantom3d={f.tasks['phantom3d']}", "--replay-task", f"xray2d={f.tasks['xray2d']}"]
    return with_options(["add-task", "--model", str(model or f.model), "--task",
                         task or f"sides3d={f.tasks['sides3d']}", "--out", str(out or d / "v2"),
                         *(replays if replay else []), "--max-regression", "100", *TINY], options)


def on_task(name: str, damage: Callable[[Path], object], command: str = "build") -> Callable:
    """A probe builder: a copy of synthetic task ``name`` with ``damage`` applied, read by ``command``."""
    def build(f: Fixtures, d: Path) -> list[str]:
        task = copy_task(f, name, d)
        damage(task)
        if command == "evaluate":
            return evaluate_argv(f, d, task=name, data=task) + ["--all-cases"]
        if command == "train":
            return train_argv(f, d, tasks={name: task})
        return ["labelspace", "build", "--task", f"{name}={task}", "-o", str(d / "ls.json")]
    return build


def postprocess_argv(f: Fixtures, d: Path, model: Path | None = None, out: Path | None = None,
                     tasks: tuple[str, ...] = ("phantom3d", "xray2d")) -> list[str]:
    return ["postprocess", "--model", str(model or f.model), *f.task_args(*tasks), "--out", str(out or d / "pp")]


def on_model(change: Callable[[Path], object], command: str = "segment") -> Callable:
    """A probe builder: a copy of the base model with ``change`` applied, used by ``command``."""
    def build(f: Fixtures, d: Path) -> list[str]:
        model = copy_model(f, d)
        change(model)
        if command == "show":
            return ["labelspace", "show", str(model)]
        if command in ("add-task", "add-task from lineage"):
            return add_task_argv(f, d, model=model, replay=command == "add-task")
        if command == "evaluate":
            return evaluate_argv(f, d, model=model)
        if command == "postprocess":
            return postprocess_argv(f, d, model=model)
        return segment_argv(f, d, model=model)
    return build


def on_first_release_model(change: Callable[[Path], object]) -> Callable:
    """A probe builder: ``segment`` with a copy of a first-release model (format 1: no plans, one fixed
    ``preprocessing.image_size`` in config.json; the tests' fixture of that format) with ``change`` applied, on one of
    its own tasks (the synthetic tasks of the campaign)."""
    def build(f: Fixtures, d: Path) -> list[str]:
        if not FIRST_RELEASE_MODEL.is_dir():
            raise FileNotFoundError(f"{FIRST_RELEASE_MODEL}: the first-release model fixture is not in this checkout")
        model = Path(shutil.copytree(FIRST_RELEASE_MODEL, d / FIRST_RELEASE_MODEL.name))
        task = next(iter(json.loads((model / "labelspace.json").read_text())["tasks"]))
        change(model)
        return with_options(segment_argv(f, d, model=model), ("--task", task))
    return build


def on_input(name: str, make: Callable[[Path], object]) -> Callable:
    """A probe builder: ``segment`` of an input file ``name`` made by ``make``."""
    def build(f: Fixtures, d: Path) -> list[str]:
        make(d / name)
        return segment_argv(f, d, image=d / name)
    return build


def first_image(step: Callable[[Path], object]) -> Callable[[Path], None]:
    return lambda task: step(first(task))


def first_label(step: Callable[[Path], object]) -> Callable[[Path], None]:
    return lambda task: step(first(task, "labelsTr"))


def in_dataset_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda task: edit_json(task / "dataset.json", change)


def label_space_file(change: Callable[[dict], object]) -> Callable:
    def build(f: Fixtures, d: Path) -> list[str]:
        shutil.copy(f.space2, d / "ls.json")
        edit_json(d / "ls.json", change)
        return ["labelspace", "show", str(d / "ls.json")]
    return build


def replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def move_weights_outside(model: Path) -> None:
    shutil.move(model / "model.safetensors", model.parent / "outside.safetensors")
    (model / "model.safetensors").symlink_to(model.parent / "outside.safetensors")


def same_shared_label(data: dict, task: str) -> None:
    """Put a task's second label on the shared label of its first (a constraint of the paper broken)."""
    labels = data["tasks"][task]["labels"]
    labels[1]["shared"] = labels[0]["shared"]


def rename_task(data: dict, old: str, new: str) -> None:
    data["tasks"][new] = data["tasks"].pop(old)


def bad_input_probes() -> list[Probe]:
    """The bad inputs (at least 100) over every command, and the controls (good inputs that must work)."""
    phantom_nan = first_image(nan_nifti_case)
    probes = [
        # labelspace build: task arguments, dataset.json, case files
        Probe("build: task folder missing", lambda f, d: ["labelspace", "build", "--task", f"x={d / 'absent'}", "-o",
                                                          str(d / "ls.json")]),
        Probe("build: task folder is a file", lambda f, d: ["labelspace", "build", "--task", f"x={a_file(d)}", "-o",
                                                            str(d / "ls.json")]),
        Probe("build: bare --task NAME, no =DIR", lambda f, d: ["labelspace", "build", "--task", "acdc", "-o",
                                                                str(d / "ls.json")]),
        Probe("build: empty task name", lambda f, d: ["labelspace", "build", "--task", f"={f.tasks['xray2d']}", "-o",
                                                      str(d / "ls.json")]),
        Probe("build: task name with a path", lambda f, d: ["labelspace", "build", "--task",
                                                            f"../x={f.tasks['xray2d']}", "-o", str(d / "ls.json")]),
        Probe("build: same task twice", lambda f, d: build_argv(f, d, "xray2d", "xray2d")),
        Probe("build: dataset.json missing", on_task("xray2d", lambda t: (t / "dataset.json").unlink())),
        Probe("build: dataset.json not JSON", on_task("xray2d", lambda t: (t / "dataset.json").write_text("{"))),
        Probe("build: dataset.json a list", on_task("xray2d", lambda t: (t / "dataset.json").write_text("[]"))),
        Probe("build: dataset.json nested 100000 deep", on_task(
            "xray2d", lambda t: (t / "dataset.json").write_text("[" * 100000 + "]" * 100000))),
        Probe("build: labels not an object", on_task("xray2d", in_dataset_json(lambda j: j.update(labels=[1])))),
        Probe("build: label id a string", on_task("xray2d", in_dataset_json(lambda j: j["labels"].update(heart="2")))),
        Probe("build: no background label", on_task("xray2d", in_dataset_json(
            lambda j: j["labels"].pop("background")))),
        Probe("build: two labels share an id", on_task("xray2d", in_dataset_json(
            lambda j: j["labels"].update(heart=1)))),
        Probe("build: 'labelshare' block a list", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare=["x"])))),
        Probe("build: 'labelshare' block a string", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare="yes")))),
        Probe("build: patient_regex not a regex", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare={"patient_regex": "(unclosed"})))),
        Probe("build: patient_regex a number", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare={"patient_regex": 5})))),
        Probe("build: lateralised not true/false", on_task("xray2d", in_dataset_json(
            lambda j: j.update(labelshare={"lateralised": "no"})))),
        Probe("build: channel_names a list", on_task("xray2d", in_dataset_json(
            lambda j: j.update(channel_names=[0])))),
        Probe("build: two input channels", on_task("xray2d", in_dataset_json(
            lambda j: j.update(channel_names={"0": "a", "1": "b"})))),
        Probe("build: imagesTr missing", on_task("xray2d", lambda t: shutil.rmtree(t / "imagesTr"))),
        Probe("build: label without image", on_task("xray2d", first_image(Path.unlink))),
        Probe("build: image without label", on_task("xray2d", first_label(Path.unlink))),
        Probe("build: a second channel file", on_task("xray2d", lambda t: shutil.copy(
            first(t), t / "imagesTr" / first(t).name.replace("_0000", "_0001")))),
        Probe("build: image is a folder", on_task("xray2d", first_image(replace_with_folder))),
        Probe("build: .nii.gz image cut in half", on_task("phantom3d", first_image(lambda p: cut(p, 0.5)))),
        Probe("build: .nii.gz image cut to 1000 bytes", on_task("phantom3d", first_image(lambda p: cut(p, 1000)))),
        Probe("build: .nii.gz label cut in half", on_task("phantom3d", first_label(lambda p: cut(p, 0.5)))),
        Probe("build: .nii.gz with a bad checksum", on_task("phantom3d", first_image(
            lambda p: p.write_bytes(p.read_bytes()[:-8] + b"\0\0\0\0" + p.read_bytes()[-4:])))),
        Probe("build: .nrrd image cut in half", on_task("sides3d", first_image(lambda p: cut(p, 0.5)))),
        Probe("build: .png image cut in half", on_task("xray2d", first_image(lambda p: cut(p, 0.5)))),
        Probe("build: empty image file", on_task("xray2d", first_image(lambda p: p.write_bytes(b"")))),
        Probe("build: random bytes under an image name", on_task("xray2d", first_image(
            lambda p: p.write_bytes(os.urandom(4096))))),
        Probe("build: NIfTI header claims 30000x30000x4", on_task("phantom3d", first_image(huge_header))),
        Probe("build: NRRD header claims 30000x30000x4", on_task("sides3d", first_image(huge_header))),
        Probe("build: image and label sizes differ", on_task("phantom3d", first_image(
            lambda p: write_array(p, np.zeros((10, 48, 40), np.float32))))),
        Probe("build: image and label geometry differ", on_task("phantom3d", first_image(
            lambda p: write_array(p, sitk.GetArrayFromImage(sitk.ReadImage(str(p))))))),
        Probe("build: label value not in dataset.json", on_task("xray2d", first_label(
            lambda p: write_array(p, np.full((64, 96), 9, np.uint8))))),
        Probe("build: label with fractional values", on_task("sides3d", first_label(
            lambda p: write_array(p, np.full((40, 40, 8), 0.5, np.float32), like=p)))),
        Probe("build: NaN in a NRRD image", on_task("sides3d", first_image(
            lambda p: write_array(p, np.full((40, 40, 8), np.nan, np.float32), like=p)))),
        Probe("build: NaN in a NIfTI image", on_task("phantom3d", phantom_nan)),
        Probe("build: no foreground in any case", on_task("xray2d", lambda t: [
            write_array(p, np.zeros((64, 96), np.uint8)) for p in (t / "labelsTr").iterdir()])),
        Probe("build: RGB label in colours", on_task("xray2d", first_label(lambda p: write_array(
            p, np.dstack([np.ones((64, 96), np.uint8), np.zeros((64, 96), np.uint8), np.zeros((64, 96), np.uint8)]),
            vector=True)))),
        Probe("build: 4D image", on_task("sides3d", first_image(
            lambda p: sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(p))))),
        # labelspace build: options and the output
        Probe("build: group of an unknown task", lambda f, d: build_argv(f, d) + ["--group", "liver:x=xray2d:heart"]),
        Probe("build: group of an unknown label", lambda f, d: build_argv(f, d, "xray2d", "sides3d") + [
            "--group", "xray2d:lung=sides3d:left_blob"]),
        Probe("build: group without TASK:LABEL", lambda f, d: build_argv(f, d) + ["--group", "heart"]),
        Probe("build: -o is a folder", lambda f, d: build_argv(f, d, output=d)),
        Probe("build: -o under a file", lambda f, d: build_argv(f, d, output=a_file(d) / "ls.json"),
              protect=("a_file",)),
        Probe("build: -o an unrelated existing file", lambda f, d: build_argv(f, d, output=a_file(d)),
              protect=("a_file",)),
        # labelspace show
        Probe("show: path missing", lambda f, d: ["labelspace", "show", str(d / "absent.json")]),
        Probe("show: an image, not JSON", lambda f, d: ["labelspace", "show", str(f.image)]),
        Probe("show: task name with a path", label_space_file(lambda j: rename_task(j, "xray2d", "../../x"))),
        Probe("show: another format", label_space_file(lambda j: j.update(format="other"))),
        Probe("show: n_shared contradicts the labels", label_space_file(lambda j: j.update(n_shared=9))),
        Probe("show: two labels on one shared label", label_space_file(lambda j: same_shared_label(j, "phantom3d"))),
        Probe("show: labels a string", label_space_file(lambda j: j["tasks"]["xray2d"].update(labels="x"))),
        Probe("show: label id not a number", label_space_file(
            lambda j: j["tasks"]["xray2d"]["labels"][0].update(id="one"))),
        Probe("show: nested 100000 deep", lambda f, d: (d / "ls.json").write_text("[" * 100000) and [
            "labelspace", "show", str(d / "ls.json")]),
        Probe("show: model with a modified file", on_model(lambda m: (m / "split.json").write_text("{}"), "show")),
        # train
        Probe("train: label space missing", lambda f, d: with_options(train_argv(f, d), (
            "--labelspace", str(d / "absent.json")))),
        Probe("train: task not in the label space", lambda f, d: train_argv(f, d, tasks={
            "sides3d": f.tasks["sides3d"]})),
        Probe("train: label-space task without data", lambda f, d: ["train", "--labelspace", str(f.space2),
                                                                    *f.task_args("xray2d"), "--out", str(d / "m"),
                                                                    *TINY]),
        Probe("train: labels differ from the label space", lambda f, d: train_argv(f, d, tasks={
            "xray2d": f.tasks["sides3d"]})),
        Probe("train: --device cuda without a GPU", lambda f, d: train_argv(f, d, "--device", "cuda"),
              needs="no-cuda"),
        Probe("train: --out is an existing model", lambda f, d: train_argv(f, d, out=copy_model(f, d)),
              protect=("model",)),
        Probe("train: --out under a file", lambda f, d: train_argv(f, d, out=a_file(d) / "m"), protect=("a_file",)),
        Probe("train: NaN in a NIfTI case", on_task("phantom3d", phantom_nan, "train")),
        Probe("train: truncated case", on_task("phantom3d", first_image(lambda p: cut(p, 0.5)), "train")),
        Probe("train: run of other settings in the staging folder", lambda f, d: stale_checkpoint(f, d),
              protect=(".m.partial",)),
    ]
    for option, value in (("--fixed-size", "65536"), ("--fixed-size", "50"), ("--fixed-size", "0"),
                          ("--fixed-size", "x"), ("--patch-pixels", "10"), ("--patch-pixels", "x"),
                          ("--image-pixels", "0")):  # the plans are the label space's (labelspace build)
        probes.append(Probe(f"build: {option} {value}", lambda f, d, o=(option, value): build_argv(f, d) + list(o)))
    for option, value in (("--learning-rate", "nan"), ("--learning-rate", "-1"),
                          ("--learning-rate", "inf"), ("--epochs", "0"), ("--batch-size", "-5"),
                          ("--steps-per-epoch", "0"), ("--validation-fraction", "1"),
                          ("--validation-fraction", "nan"), ("--device", "tpu"), ("--device", "cuda:x"),
                          ("--weights-dtype", "int8"), ("--method", "magic"), ("--seed", "-1.5")):
        probes.append(Probe(f"train: {option} {value}", lambda f, d, o=(option, value): train_argv(f, d, *o)))
    probes += [
        # segment
        Probe("segment: input missing", lambda f, d: segment_argv(f, d, image=d / "absent.nii.gz")),
        Probe("segment: input .nii.gz cut in half", on_input("in.nii.gz", then(volume, lambda p: cut(p, 0.5))),
              absent=("o.nii.gz",)),
        Probe("segment: input .nii.gz cut to 1000 bytes", on_input("in.nii.gz", then(
            lambda p: volume(p, (40, 128, 128)), lambda p: cut(p, 1000))), absent=("o.nii.gz",)),
        Probe("segment: input .nii cut", on_input("in.nii", then(volume, lambda p: cut(p, 0.9))),
              absent=("o.nii.gz",)),
        Probe("segment: input header claims 30000x30000x4", on_input("in.nii.gz", then(volume, huge_header)),
              absent=("o.nii.gz",)),
        Probe("segment: NaN in a .mha input", on_input("in.mha", with_nan), absent=("o.nii.gz",)),
        Probe("segment: NaN in a NIfTI input", on_input("in.nii.gz", with_nan), absent=("o.nii.gz",)),
        Probe("segment: 4D input", on_input("in.nii.gz", lambda p: sitk.WriteImage(
            sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(p)))),
        Probe("segment: vector input", on_input("in.mha", lambda p: write_array(
            p, np.zeros((3, 8, 8, 2), np.float32), vector=True))),
        Probe("segment: empty input file", on_input("in.nii.gz", lambda p: p.write_bytes(b""))),
        Probe("segment: unknown task", lambda f, d: with_options(segment_argv(f, d), ("--task", "liver"))),
        Probe("segment: model folder missing", lambda f, d: segment_argv(f, d, model=d / "absent")),
        Probe("segment: model folder is a file", lambda f, d: segment_argv(f, d, model=a_file(d))),
        Probe("segment: weights modified", on_model(lambda m: (m / "model.safetensors").write_bytes(
            (m / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0"))),
        Probe("segment: weights truncated, manifest rewritten", on_model(
            then(lambda m: cut(m / "model.safetensors", 0.5), write_manifest))),
        Probe("segment: weights missing", on_model(lambda m: (m / "model.safetensors").unlink())),
        Probe("segment: weights linked from outside the folder", on_model(move_weights_outside)),
        Probe("segment: manifest names ../../../etc/hostname", on_model(in_json(
            "manifest.json", lambda j: j["files"].update({"../../../etc/hostname": "0" * 64}), rehash=False))),
        Probe("segment: manifest names /etc/hostname", on_model(in_json(
            "manifest.json", lambda j: j["files"].update({"/etc/hostname": "0" * 64}), rehash=False))),
        Probe("segment: manifest a list", on_model(lambda m: (m / "manifest.json").write_text("[]"))),
        Probe("segment: config with 65536 filters", on_model(in_json(
            "config.json", lambda c: c["network"].update(filters=[65536] * 5)))),
        Probe("segment: config with 40 levels", on_model(in_json(
            "config.json", lambda c: c["network"].update(filters=[16] * 40)))),
        # the fixed size of a first-release model (config.json preprocessing.image_size) ...
        Probe("segment: first-release config image_size 0", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].update(image_size=0)))),
        Probe("segment: first-release config image_size '64'", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].update(image_size="64")))),
        Probe("segment: first-release config image_size 65536", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].update(image_size=65536)))),
        Probe("segment: first-release config without image_size", on_first_release_model(in_json(
            "config.json", lambda c: c["preprocessing"].pop("image_size")))),
        # ... and the plans of a newer one (labelspace.json: each task's plan, the plan settings)
        Probe("segment: plan patch_size [8, 8]", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(patch_size=[8, 8])))),
        Probe("segment: plan patch_size 65536", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(patch_size=[65536, 65536])))),
        Probe("segment: plan patch_size one side", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(patch_size=[32])))),
        Probe("segment: plan spacing 0", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].update(plan={"patch_size": [32, 32],
                                                                              "spacing": [0.0, 1.0]})))),
        Probe("segment: plan spacing NaN", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].update(plan={"patch_size": [32, 32],
                                                                              "spacing": [float("nan"), 1.0]})))),
        Probe("segment: plan with spacing and size", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"]["plan"].update(spacing=[1.0, 1.0])))),
        Probe("segment: plan a string", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].update(plan="big")))),
        Probe("segment: plan missing", on_model(in_json(
            "labelspace.json", lambda j: j["tasks"]["phantom3d"].pop("plan")))),
        Probe("segment: plan_settings fixed_size 50", on_model(in_json(
            "labelspace.json", lambda j: j.update(plan_settings={"fixed_size": 50})))),
        Probe("segment: plan_settings patch_pixels 'x'", on_model(in_json(
            "labelspace.json", lambda j: j.update(plan_settings={"patch_pixels": "x"})))),
        Probe("segment: config network a list", on_model(in_json("config.json", lambda c: c.update(network=[1])))),
        Probe("segment: config out_channels a string", on_model(in_json(
            "config.json", lambda c: c["network"].update(out_channels="4")))),
        Probe("segment: config out_channels 10**9", on_model(in_json(
            "config.json", lambda c: c["network"].update(out_channels=10**9)))),
        Probe("segment: label-space task named ../../x", on_model(in_json(
            "labelspace.json", lambda j: rename_task(j, "xray2d", "../../x")))),
        Probe("segment: NaN weights", on_model(nan_weights)),
        Probe("segment: output exists", lambda f, d: segment_argv(f, d, output=earlier_result(f, d)),
              protect=("earlier.nii.gz",)),
        Probe("segment: a folder of images to -o o.nii.gz", lambda f, d: segment_argv(
            f, d, image=f.tasks["phantom3d"] / "imagesTr"), absent=("o.nii.gz",)),
        Probe("segment: output format .txt", lambda f, d: segment_argv(f, d, output=d / "o.txt")),
        Probe("segment: output under a file", lambda f, d: segment_argv(f, d, output=a_file(d) / "o.nii.gz"),
              protect=("a_file",)),
        Probe("segment: --device tpu", lambda f, d: segment_argv(f, d, "--device", "tpu")),
        Probe("segment: 3D volume to .png", lambda f, d: segment_argv(f, d, output=d / "o.png"), absent=("o.png",)),
        Probe("segment: --batch-size -5", lambda f, d: segment_argv(f, d, "--batch-size", "-5"),
              absent=("o.nii.gz",)),
        Probe("segment: --batch-size 0", lambda f, d: segment_argv(f, d, "--batch-size", "0"), absent=("o.nii.gz",)),
        # evaluate
        Probe("evaluate: labels differ from the model's", lambda f, d: evaluate_argv(f, d, task="phantom3d",
                                                                                     data=f.tasks["sides3d"])),
        Probe("evaluate: -o is a file", lambda f, d: evaluate_argv(f, d, output=a_file(d)), protect=("a_file",)),
        Probe("evaluate: an evaluation is there", lambda f, d: earlier_evaluation(d) and evaluate_argv(f, d),
              protect=("evaluation",)),
        Probe("evaluate: model split.json a list", on_model(in_json("split.json", replace_with=[1]), "evaluate")),
        Probe("evaluate: data folder missing", lambda f, d: evaluate_argv(f, d, data=d / "absent")),
        Probe("evaluate: truncated case", on_task("phantom3d", first_image(lambda p: cut(p, 0.5)), "evaluate")),
        Probe("evaluate: unknown task", lambda f, d: evaluate_argv(f, d, "--task", "liver")),
        Probe("evaluate: --device tpu", lambda f, d: evaluate_argv(f, d, "--device", "tpu")),
        # postprocess
        Probe("postprocess: --out exists", lambda f, d: (d / "pp").mkdir() or postprocess_argv(f, d),
              protect=("pp",)),
        Probe("postprocess: a task of the model missing", lambda f, d: postprocess_argv(f, d, tasks=("xray2d",)),
              absent=("pp",)),
        Probe("postprocess: model labelspace.json tampered", on_model(
            lambda m: (m / "labelspace.json").write_text("{}"), "postprocess"), absent=("pp",)),
        Probe("postprocess: model split.json a list", on_model(in_json("split.json", replace_with=[1]),
                                                               "postprocess"), absent=("pp",)),
    ]
    for option, value in (("--learning-rate", "nan"), ("--epochs", "0"), ("--device", "tpu"),
                          ("--replay-cases", "x"), ("--distill-weight", "inf"), ("--max-regression", "-1"),
                          ("--map", "left_blob=99"), ("--map", "nolabel=1"), ("--strategy", "magic"),
                          ("--new-label-lr-scale", "0.5")):
        probes.append(Probe(f"add-task: {option} {value}",
                            lambda f, d, o=(option, value): add_task_argv(f, d, *o)))
    probes += [
        Probe("add-task: --replay-task of a task the model lacks", lambda f, d: add_task_argv(f, d) + [
            "--replay-task", f"liver={f.tasks['xray2d']}"]),
        Probe("add-task: --replay-task folder missing", lambda f, d: with_options(add_task_argv(f, d), (
            "--replay-task", f"phantom3d={d / 'absent'}"))),
        Probe("add-task: training.json weight_decay 'x'", on_model(in_json(
            "training.json", lambda t: t.update(weight_decay="x")), "add-task")),
        Probe("add-task: training.json a list", on_model(in_json("training.json", replace_with=[1]), "add-task")),
        Probe("add-task: lineage task_folders a list", on_model(in_json(
            "lineage.json", lambda t: t.update(task_folders=["/a"])), "add-task from lineage")),
        Probe("add-task: old task folders unknown", lambda f, d: add_task_argv(f, d, replay=False)),
        Probe("add-task: --out exists", lambda f, d: add_task_argv(f, d, out=copy_model(f, d)), protect=("model",)),
        Probe("add-task: update with other labels", lambda f, d: add_task_argv(
            f, d, task=f"xray2d={f.tasks['sides3d']}", replay=False) + [
            "--replay-task", f"phantom3d={f.tasks['phantom3d']}"]),
        Probe("add-task: config modified, manifest kept", on_model(in_json(
            "config.json", lambda c: c.update(method="per-task"), rehash=False), "add-task")),
        Probe("add-task: split.json missing", on_model(then(lambda m: (m / "split.json").unlink(), write_manifest),
                                                       "add-task")),
        Probe("add-task: bare --task NAME", lambda f, d: add_task_argv(f, d, task="sides3d")),
        # demo
        Probe("demo: --out not empty", lambda f, d: a_file(d) and ["demo", "--out", str(d), "--fixed-size", "32"],
              protect=("a_file",)),
        Probe("demo: --out is a file", lambda f, d: ["demo", "--out", str(a_file(d)), "--fixed-size", "32"],
              protect=("a_file",)),
        Probe("demo: task folder missing", lambda f, d: ["demo", "--out", str(d / "run"), "--task",
                                                         f"x={d / 'absent'}", "--fixed-size", "32"]),
        Probe("demo: --fixed-size 65536", lambda f, d: ["demo", "--out", str(d / "run"), "--fixed-size", "65536"]),
        Probe("demo: --patch-pixels 10", lambda f, d: ["demo", "--out", str(d / "run"), "--patch-pixels", "10"]),
        Probe("demo: --epochs -1", lambda f, d: ["demo", "--out", str(d / "run"), "--epochs", "-1"]),
        # models
        Probe("models: --root is a file", lambda f, d: ["models", "--root", str(a_file(d))]),
        Probe("models: --root missing", lambda f, d: ["models", "--root", str(d / "absent")]),
        # full and read-only disks: a small tmpfs at <probe folder>/disk
        Probe("full disk: segment .nii.gz over a result", lambda f, d: full_disk_segment(f, d, ".nii.gz"),
              protect=("disk/result.nii.gz",), needs="tmpfs"),
        Probe("full disk: segment .nii over a result", lambda f, d: full_disk_segment(f, d, ".nii"),
              protect=("disk/result.nii",), needs="tmpfs"),
        Probe("full disk: labelspace build", lambda f, d: fill(d / "disk") or build_argv(
            f, d, output=d / "disk" / "ls.json"), needs="tmpfs"),
        Probe("full disk: evaluate", lambda f, d: fill(d / "disk") or evaluate_argv(
            f, d, output=d / "disk" / "evaluation"), needs="tmpfs"),
        Probe("full disk: train", lambda f, d: fill(d / "disk") or train_argv(f, d, out=d / "disk" / "m"),
              needs="tmpfs"),
        Probe("read-only disk: labelspace build", lambda f, d: read_only(d / "disk") or build_argv(
            f, d, output=d / "disk" / "ls.json"), needs="tmpfs"),
        Probe("read-only disk: train", lambda f, d: read_only(d / "disk") or train_argv(f, d, out=d / "disk" / "m"),
              needs="tmpfs"),
        # controls
        Probe("control: labelspace build", lambda f, d: build_argv(f, d, "xray2d", "sides3d"), expect="done",
              verify=label_space_problem),
        Probe("control: labelspace show", lambda f, d: ["labelspace", "show", str(f.model)], expect="done"),
        Probe("control: models --progress json", lambda f, d: ["models", "--root", str(f.model.parent),
                                                               "--progress", "json"], expect="done"),
        Probe("control: segment", lambda f, d: segment_argv(f, d), expect="done", verify=segment_output_problem),
        Probe("control: segment into an existing folder", lambda f, d: segment_argv(f, d, output=d), expect="done",
              verify=lambda f, d: segmentation_problem(d / output_name(f.image), f.image, {0, 1, 2, 3})),
        Probe("control: segment a folder of images", lambda f, d: segment_argv(
            f, d, image=f.tasks["phantom3d"] / "imagesTr", output=d / "out"), expect="done",
              verify=folder_segmentations_problem),
        Probe("control: evaluate", lambda f, d: evaluate_argv(f, d), expect="done", verify=evaluation_problem),
    ]
    return probes


def earlier_evaluation(folder: Path) -> Path:
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "evaluation.md").write_text("an earlier evaluation")
    return folder / "evaluation"


def stale_checkpoint(f: Fixtures, d: Path) -> list[str]:
    """A staging folder whose checkpoint belongs to a run with other settings, and the command that meets it."""
    checkpoint = d / ".m.partial" / ".checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint.json").write_text(json.dumps({"tag": "step00000001", "identity": {"other": 1}}))
    (d / ".m.partial" / "split.json").write_text(json.dumps({"tasks": {}}))
    return train_argv(f, d) + ["--resume"]


def fill(folder: Path, leave: int = 0) -> None:
    stats = os.statvfs(folder)
    with open(folder / "filler", "wb") as stream:
        stream.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def full_disk_segment(f: Fixtures, d: Path, ending: str) -> list[str]:
    """A good earlier result on a disk with 8 KB left, and a segment of a larger volume over it."""
    result = d / "disk" / f"result{ending}"
    subprocess.run([sys.executable, "-m", "labelshare", *segment_argv(f, d, output=result), "--progress", "quiet"],
                   check=True, env=ENV, capture_output=True)
    large = d / f"large{ending}"
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 128, 128)).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(image, str(large))
    fill(d / "disk", 8192)
    return segment_argv(f, d, image=large, output=result) + ["--overwrite"]
