"""The robustness campaign's fixtures (small synthetic tasks, a trained model, a label space, an image), the damage
its probes do on purpose, and the checks of what a command left behind (outputs, model versions, run folders)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelshare.core import synthetic
from labelshare.core.config import OUTPUT_FORMATS, TrainConfig
from labelshare.core.inputs import image_file_name
from labelshare.core.labelspace import LabelSpace
from labelshare.core.modelfolder import list_models, verify_folder, write_manifest
from labelshare.core.outputs import DEFAULT_FORMAT
from labelshare.core.plans import PlanSettings
from labelshare.core.progress import Progress
from labelshare.core.tasks import TaskDataset, read_image
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training_run import train

FIXED_SIZE = 32  # the fixtures' label spaces have fixed-size plans (labelspace build --fixed-size 32): quick runs
TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# -- fixtures ---------------------------------------------------------------------------------------------------------
@dataclass
class Fixtures:
    """What the probes start from (never changed by a probe: each copies what it damages)."""

    root: Path
    tasks: dict[str, Path]
    space2: Path       # label space of phantom3d + xray2d (the base model's), fixed-size plans (FIXED_SIZE)
    space3: Path       # label space of all three tasks, fixed-size plans
    model: Path        # base model: phantom3d + xray2d
    image: Path        # a phantom3d image to segment

    def task_args(self, *names: str) -> list[str]:
        return [arg for name in names for arg in ("--task", f"{name}={self.tasks[name]}")]


def make_fixtures(root: Path) -> Fixtures:
    tasks = synthetic.write_tasks(root / "data", cases=6)
    spaces = {}
    settings = PlanSettings(fixed_size=FIXED_SIZE)
    statistics = {name: compute_statistics(TaskDataset.open(path, name), plan_settings=settings)
                  for name, path in tasks.items()}
    for key, names in (("space2", ("phantom3d", "xray2d")), ("space3", tuple(tasks))):
        spaces[key] = root / f"{key}.json"
        LabelSpace.build([statistics[n] for n in names], plan_settings=settings).save(spaces[key])
    config = TrainConfig(batch_size=4, epochs=1, steps_per_epoch=3, device="cpu")
    model = train([(n, tasks[n]) for n in ("phantom3d", "xray2d")], LabelSpace.load(spaces["space2"]),
                  root / "models" / "base", config, progress=Progress("quiet"), command=["(campaign fixture)"]).path
    image = sorted((tasks["phantom3d"] / "imagesTr").iterdir())[0]
    return Fixtures(root=root, tasks=tasks, space2=spaces["space2"], space3=spaces["space3"], model=model,
                    image=image)


# -- damage made on purpose -------------------------------------------------------------------------------------------
def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path``), to see whether anything changed."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


def copy_task(fixtures: Fixtures, name: str, folder: Path) -> Path:
    return Path(shutil.copytree(fixtures.tasks[name], folder / name))


def first(folder: Path, sub: str = "imagesTr") -> Path:
    return sorted((folder / sub).iterdir())[0]


def cut(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    """Change a JSON file in place (``change`` mutates the parsed object; what it returns is ignored)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def write_array(path: Path, array: np.ndarray, like: Path | None = None, vector: bool = False) -> None:
    image = sitk.GetImageFromArray(array, isVector=vector)
    if like is not None:
        image.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(image, str(path))


def huge_header(path: Path) -> None:
    """Rewrite a NIfTI or NRRD file's header to claim 30000 x 30000 x 4 voxels over the data it has."""
    if path.name.endswith(".nrrd"):
        text = path.read_bytes()
        path.write_bytes(re.sub(rb"sizes: [0-9 ]+", b"sizes: 30000 30000 4", text, count=1))
        return
    data = bytearray(gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes())
    struct.pack_into("<8h", data, 40, 3, 30000, 30000, 4, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))


def copy_model(fixtures: Fixtures, folder: Path) -> Path:
    return Path(shutil.copytree(fixtures.model, folder / "model"))


def tamper_model(model: Path, name: str, change: Callable[[dict], object] | None = None, rehash: bool = True,
                 replace_with: object = None) -> None:
    """Change (or replace) a JSON file of a model folder; with ``rehash`` the manifest is rewritten to match, so
    that only the content checks can find it."""
    if change is not None:
        edit_json(model / name, change)
    else:
        (model / name).write_text(json.dumps(replace_with))
    if rehash:
        write_manifest(model)


def nan_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              str(model / "model.safetensors"), metadata={"format": "labelshare.model", "dtype": "float32"})
    write_manifest(model)


def a_file(folder: Path) -> Path:
    """A plain file where a folder or a new file is expected."""
    path = folder / "a_file"
    path.write_text("not a folder")
    return path


def nan_nifti_case(path: Path) -> None:
    """One NaN voxel in a NIfTI case (niftilib would read it as 0)."""
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    array.reshape(-1)[7] = np.nan
    write_array(path, array, like=path)


def volume(path: Path, shape=(6, 32, 32)) -> None:
    """A float volume to segment."""
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random(shape).astype(np.float32)), str(path),
                    useCompression=True)


def with_nan(path: Path) -> None:
    array = np.random.default_rng(0).random((6, 32, 32)).astype(np.float32)
    array[2, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def in_json(name: str, change: Callable[[dict], object] | None = None, rehash: bool = True,
            replace_with: object = None) -> Callable[[Path], None]:
    return lambda model: tamper_model(model, name, change, rehash, replace_with)

def then(*steps: Callable[[Path], object]) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        for step in steps:
            step(path)
    return run

def earlier_result(f: Fixtures, d: Path) -> Path:
    shutil.copy(f.image, d / "earlier.nii.gz")
    return d / "earlier.nii.gz"


# -- what a command left behind ---------------------------------------------------------------------------------------


def segmentation_problem(output: Path, image: Path, label_ids: set[int]) -> str:
    """'' when ``output`` is a complete label image on the grid of ``image`` holding only ``label_ids``."""
    try:
        result = read_image(output, "segmentation", is_label=True)
    except Exception as error:  # noqa: BLE001 (any failure here is the finding)
        return f"the output cannot be read: {error}"
    source = sitk.ReadImage(str(image))
    if result.GetSize() != source.GetSize() or not np.allclose(result.GetSpacing(), source.GetSpacing()):
        return f"the output has size {result.GetSize()}, not the input's {source.GetSize()}"
    values = set(np.unique(sitk.GetArrayViewFromImage(result)).tolist())
    return "" if values <= label_ids else f"the output holds labels {sorted(values - label_ids)} the task lacks"


def segment_output_problem(f: Fixtures, d: Path) -> str:
    return segmentation_problem(d / "o.nii.gz", f.image, {0, 1, 2, 3})


def output_name(image: Path) -> str:
    """The file name ``labelshare segment`` gives the output of ``image`` in an output folder."""
    return image_file_name(image) + OUTPUT_FORMATS[DEFAULT_FORMAT]


def folder_segmentations_problem(f: Fixtures, d: Path) -> str:
    """'' when the output folder holds one good segmentation per image of phantom3d's imagesTr."""
    images = sorted((f.tasks["phantom3d"] / "imagesTr").iterdir())
    for image in images:
        problem = segmentation_problem(d / "out" / output_name(image), image, {0, 1, 2, 3})
        if problem:
            return problem
    return "" if len(list((d / "out").glob("*.nii.gz"))) == len(images) else "not one output per image"


def evaluation_problem(f: Fixtures, d: Path) -> str:
    """'' when evaluation.csv scores every label of the xray2d validation cases with a Dice in [0, 1]."""
    rows = (d / "evaluation" / "evaluation.csv").read_text().splitlines()
    if rows[0] != "task,case,label,label_id,dice,hd95" or len(rows) < 3:
        return f"evaluation.csv is incomplete: {rows[:2]}"
    dice = [float(row.split(",")[4]) for row in rows[1:]]
    return "" if all(0.0 <= value <= 1.0 for value in dice) else f"Dice outside [0, 1]: {dice}"


def label_space_problem(f: Fixtures, d: Path) -> str:
    tasks = sorted(LabelSpace.load(d / "ls.json").tasks)
    return "" if tasks == ["sides3d", "xray2d"] else f"the label space has tasks {tasks}"


def model_problem(folder: Path) -> str:
    """'' when ``folder`` is absent or a complete, verified model version with nothing hidden in it."""
    if not folder.exists():
        return ""
    try:
        verify_folder(folder)
    except Exception as error:  # noqa: BLE001 (any failure here is the finding)
        return f"{folder.name} is not a complete model: {error}"
    hidden = [p.name for p in folder.rglob(".*")]
    return f"{folder.name} holds {', '.join(hidden)}" if hidden else ""


def run_folder_problem(out: Path) -> str:
    """After a killed ``train``/``add-task``: the version is absent or complete, nothing lies beside it under a
    final name, and ``models`` lists that version alone (never a work folder). (What the hidden work folders hold is
    judged by continuing: the next run must not be blocked.)"""
    visible = [p.name for p in out.parent.iterdir() if not p.name.startswith(".") and p.name != out.name]
    listed = [s.path.name for s in list_models([out.parent]) if s.path != out]
    return model_problem(out) or (f"unexpected files beside the version: {visible}" if visible else "") or \
        (f"models lists more than the version: {listed}" if listed else "")


def image_problem(path: Path, earlier: dict[str, str]) -> str:
    """A segmentation output after a kill: the earlier file unchanged, or a complete new image."""
    if not path.exists() or digest(path) == earlier:
        return ""
    try:
        read_image(path, "segmentation", is_label=True)
    except Exception as error:  # noqa: BLE001
        return f"{path.name} is neither the earlier result nor a complete new one: {error}"
    return ""
