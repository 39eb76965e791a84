"""The main job: label space -> training -> segmentation -> evaluation -> report, on synthetic or real tasks.

``labelshare demo --out DIR`` generates three small synthetic tasks and finishes in a few minutes on two CPU
cores; ``--task NAME=DIR`` (repeatable) runs the same pipeline on nnU-Net raw folders instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import numpy as np
import SimpleITK as sitk

from . import synthetic
from .errors import LabelShareError
from .fileio import atomic_path, atomic_write_text, read_json
from .inference import Segmenter
from .labelspace import LabelSpace, compute_statistics, parse_group
from .models import load_model
from .pipeline import open_tasks, train
from .progress import Progress
from .tasks import TaskDataset, choose_slicing_axis, to_slices
from .training import TrainConfig

SYNTHETIC_CASES = 12


@dataclass
class DemoResult:
    report: Path
    model: Path
    labelspace: LabelSpace


def run_demo(out: str | Path, task_arguments: Sequence[tuple[str, Path]] = (), groups: Sequence[str] = (),
             config: TrainConfig | None = None, progress: Progress | None = None,
             command: Sequence[str] | None = None, method: str = "label-sharing") -> DemoResult:
    progress = progress or Progress("human")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LabelShareError(f"{out}: already exists and is not empty; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    if not task_arguments:
        progress.progress("preparing", 0.0, "writing synthetic tasks")
        task_arguments = list(synthetic.write_tasks(out / "data", cases=SYNTHETIC_CASES).items())
    tasks = open_tasks(task_arguments)
    progress.progress("preparing", 0.01, "computing label statistics")
    space = LabelSpace.build([compute_statistics(t) for t in tasks.values()], [parse_group(g) for g in groups])
    space.save(out / "labelspace.json")
    progress.log("label space:\n" + space.table())
    model_dir = train(list(task_arguments), space, out / "model", config, method=method, progress=progress,
                      command=command)
    model = load_model(model_dir, device=(config.device if config else "auto"))
    split = read_json(model_dir / "split.json")["tasks"]
    segmenter = Segmenter(model)
    overlays = {}
    for name, task in tasks.items():
        case_name = (split[name]["validation"] or split[name]["train"])[0]
        image, _, reference = task.read_case(task.case(case_name))
        prediction = segmenter.segment(image, name)
        segmentation_path = out / "segmentations" / name / f"{case_name}{task.metadata.get('file_ending', '.nii.gz')}"
        segmentation_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(segmentation_path) as tmp:
            sitk.WriteImage(prediction, str(tmp), useCompression=True)
        overlays[name] = write_overlay(out / "overlays" / f"{name}.png", image, reference,
                                       sitk.GetArrayFromImage(prediction), task, case_name)
    metrics = read_json(model_dir / "metrics.json")
    report = out / "report.md"
    atomic_write_text(report, render_report(space, metrics, overlays, out, model_dir, tasks))
    progress.done(str(report), message=f"report written to {report}")
    return DemoResult(report=report, model=model_dir, labelspace=space)


def write_overlay(path: Path, image: sitk.Image, reference: np.ndarray, prediction: np.ndarray, task: TaskDataset,
                  case_name: str) -> Path:
    """Side-by-side PNG of the slice with the most reference foreground: reference and prediction overlays."""
    axis = choose_slicing_axis(image)
    image_slices = to_slices(sitk.GetArrayFromImage(image).astype(np.float32), axis)
    reference_slices, prediction_slices = to_slices(reference, axis), to_slices(prediction, axis)
    index = int(np.argmax((reference_slices.reshape(reference_slices.shape[0], -1) > 0).sum(axis=1)))
    colours = matplotlib.colormaps["tab10"]
    figure = Figure(figsize=(8, 4.2))  # no pyplot: no global backend or figure registry
    axes = figure.subplots(1, 2)
    for ax, labels, title in ((axes[0], reference_slices[index], "reference"),
                              (axes[1], prediction_slices[index], "LabelShare")):
        ax.imshow(image_slices[index], cmap="gray")
        overlay = np.zeros((*labels.shape, 4))
        for k, label_id in enumerate(task.labels.values()):
            overlay[labels == label_id] = (*colours(k)[:3], 0.45)
        ax.imshow(overlay)
        ax.set_title(f"{task.name} {case_name}: {title}", fontsize=8)
        ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=colours(k)) for k in range(len(task.labels))]
    figure.legend(handles, list(task.labels), loc="lower center", ncol=len(task.labels), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    return path


def render_report(space: LabelSpace, metrics: dict, overlays: dict[str, Path], out: Path, model_dir: Path,
                  tasks: dict) -> str:
    lines = ["# LabelShare demo report", "",
             f"Model: `{model_dir.relative_to(out)}` (trained on {', '.join(tasks)}).", "",
             "## Label space", "", space.table(), "## Validation Dice and HD95 (native resolution)", "",
             "| task | label | shared label | cases | Dice | HD95 |", "|---|---|---|---|---|---|"]
    for task, labels in metrics["validation"].items():
        for label, s in labels.items():
            shared = space.task(task).label(label).shared
            lines.append(f"| {task} | {label} | {shared} | {s['n']} | {s['dice_mean']:.3f} ± {s['dice_sd']:.3f} | "
                         f"{s['hd95_mean']:.2f} |")
    lines += ["", "| task | mean Dice |", "|---|---|"]
    lines += [f"| {task} | {value:.3f} |" for task, value in metrics["mean_dice"].items()]
    lines += ["", "## Overlays (validation case, slice with the most reference foreground)", ""]
    lines += [f"![{task}]({path.relative_to(out).as_posix()})" for task, path in overlays.items()]
    return "\n".join(lines) + "\n"
