"""The main job: label space -> training -> segmentation -> evaluation -> report, on synthetic or real tasks.

``labelshare demo --out DIR`` generates three small synthetic tasks and finishes in a few minutes on two CPU
cores; ``--task NAME=DIR`` (repeatable) runs the same pipeline on nnU-Net raw folders instead. A demo stopped by a
signal continues with ``--resume`` (the same command): the synthetic tasks are written again (the same seed gives
the same files) and the label space computed again, the training continues from its last checkpoint (or its
finished model is kept), and the segmentations, overlays and report are made again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..core import synthetic
from ..core.config import DEMO_BUDGET, TrainConfig
from ..core.demo_folder import check_demo_folder
from ..core.fileio import atomic_write_text, make_folders, read_json, write_image_atomic
from ..core.labelspace import LabelSpace, parse_group
from ..core.methods import DEFAULT_METHOD
from ..core.modelfolder import verify_folder
from ..core.plans import PlanSettings
from ..core.preprocessing import Preprocessing
from ..core.progress import Progress
from ..core.tasks import TaskDataset, open_tasks
from .inference import Segmenter
from .models import load_model
from .statistics import compute_statistics
from .training_run import train

SYNTHETIC_CASES = 12
OVERLAY_COLOURS = ((0.89, 0.29, 0.20), (0.20, 0.56, 0.86), (0.30, 0.74, 0.36), (0.98, 0.80, 0.18),
                   (0.60, 0.36, 0.71), (0.96, 0.53, 0.15), (0.10, 0.74, 0.74), (0.91, 0.45, 0.71))
OVERLAY_MIN_SIDE = 256  # small slices (hippocampus crops) are enlarged for viewing


@dataclass
class DemoResult:
    report: Path
    model: Path
    labelspace: LabelSpace


def run_demo(out: str | Path, task_arguments: Sequence[tuple[str, Path]] = (), groups: Sequence[str] = (),
             config: TrainConfig | None = None, progress: Progress | None = None,
             command: Sequence[str] | None = None, method: str = DEFAULT_METHOD,
             plan_settings: PlanSettings | None = None, resume: bool = False) -> DemoResult:
    """The whole pipeline into ``out``; ``config`` None: the demo's short budget (:data:`DEMO_BUDGET`)."""
    config = config or TrainConfig.from_options(**DEMO_BUDGET)
    progress = progress or Progress("human")
    out = Path(out)
    check_demo_folder(out, resume)
    make_folders(out)
    if not task_arguments:
        progress.progress("preparing", 0.0, "writing synthetic tasks")
        task_arguments = list(synthetic.write_tasks(out / "data", cases=SYNTHETIC_CASES).items())
    tasks = open_tasks(task_arguments)
    progress.progress("preparing", 0.01, "computing label statistics")
    space = LabelSpace.build([compute_statistics(t, plan_settings=plan_settings) for t in tasks.values()],
                             [parse_group(g) for g in groups], plan_settings)
    space.save(out / "labelspace.json")
    progress.log("label space:\n" + space.table())
    model_dir = out / "model"
    if resume and model_dir.is_dir():
        verify_folder(model_dir)  # trained before the stop: kept
        progress.log(f"{model_dir}: trained before the stop; kept")
    else:
        model_dir = train(list(task_arguments), space, model_dir, config, method=method, progress=progress,
                          command=command, resume=resume).path
    model = load_model(model_dir, device=config.device)
    split = read_json(model_dir / "split.json")["tasks"]
    segmenter = Segmenter(model)
    overlays = {}
    for name, task in tasks.items():
        case_name = (split[name]["validation"] or split[name]["train"])[0]
        image, _, reference = task.read_case(task.case(case_name))
        prediction = segmenter.segment(image, name)
        segmentation_path = out / "segmentations" / name / f"{case_name}{task.metadata.get('file_ending', '.nii.gz')}"
        write_image_atomic(prediction, segmentation_path)
        overlays[name] = write_overlay(out / "overlays" / f"{name}.png", image, reference,
                                       sitk.GetArrayFromImage(prediction), task, space.task(name).plan.preprocessing)
    metrics = read_json(model_dir / "metrics.json")
    report = out / "report.md"
    atomic_write_text(report, render_report(space, metrics, overlays, out, model_dir, tasks))
    return DemoResult(report=report, model=model_dir, labelspace=space)


def write_overlay(path: Path, image: sitk.Image, reference: np.ndarray, prediction: np.ndarray,
                  task: TaskDataset, preprocessing: Preprocessing) -> Path:
    """PNG of the slice with the most reference foreground, cut and normalised as the task's plan says: reference
    overlay on the left, prediction on the right (label colours as listed in the report)."""
    slicing = preprocessing.slicing_scheme
    axis = slicing.axis(image, None)
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)
    image_slices = slicing.slices(preprocessing.normalisation_scheme.of(pixels).apply(pixels), axis)
    reference_slices, prediction_slices = slicing.slices(reference, axis), slicing.slices(prediction, axis)
    index = int(np.argmax((reference_slices.reshape(reference_slices.shape[0], -1) > 0).sum(axis=1)))
    grey = image_slices[index]
    grey = (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-6)
    scale = max(1.0, OVERLAY_MIN_SIDE / min(grey.shape))  # enlarged (SciPy's zoom), never shrunk
    grey = ndimage.zoom(grey, scale, order=1)
    palette = np.array([(0.0, 0.0, 0.0)] + [OVERLAY_COLOURS[k % len(OVERLAY_COLOURS)] for k in range(len(task.labels))])
    panels = []
    for labels in (reference_slices[index], prediction_slices[index]):
        positions = np.zeros(labels.shape, dtype=np.int64)  # label ids -> 1..K in the task's label order
        for k, label_id in enumerate(task.labels.values(), start=1):
            positions[labels == label_id] = k
        positions = ndimage.zoom(positions, scale, order=0)
        panel = np.repeat(grey[..., np.newaxis], 3, axis=-1)
        labelled = positions > 0  # each label's colour over the image at 45 % opacity
        panel[labelled] = 0.55 * panel[labelled] + 0.45 * palette[positions[labelled]]
        panels.append(panel)
    gap = np.ones((grey.shape[0], 4, 3))
    rgb = (np.clip(np.concatenate([panels[0], gap, panels[1]], axis=1), 0, 1) * 255).astype(np.uint8)
    write_image_atomic(sitk.GetImageFromArray(rgb, isVector=True), path, compress=False)
    return path


def overlay_legend(task: TaskDataset) -> str:
    """The colour of every label in :func:`write_overlay`, as text for the report."""
    return ", ".join(f"{name}: #{''.join(f'{round(255 * c):02x}' for c in OVERLAY_COLOURS[k % len(OVERLAY_COLOURS)])}"
                     for k, name in enumerate(task.labels))


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
    lines += ["", "## Overlays (validation case, slice with the most reference foreground)", "",
              "Left: reference; right: LabelShare.", ""]
    for task, path in overlays.items():
        lines += [f"**{task}** ({overlay_legend(tasks[task])})", "", f"![{task}]({path.relative_to(out).as_posix()})",
                  ""]
    return "\n".join(lines) + "\n"
