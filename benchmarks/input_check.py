"""``labelshare-bench input-check``: how well the input check (issue 28) separates a task's validation images from
images it should not take, how well the uncertainty map points at wrong voxels, and what both cost.

For every task of ``--model`` (which must carry input check statistics: ``labelshare memory`` gives an older model
them, as a new version):

* its validation cases (the model's ``split.json``) are segmented and checked: the **fraction warned**;
* the inputs it should not take are checked: the other tasks' validation images, the CT and the MR of the
  TotalSegmentator example (``--abdomen``), and the task's own validation images flipped upside down (the array's
  row axis reversed), contrast-inverted (max + min - value), resampled to 4x the spacing (linear) and pure noise
  (Gaussian, the image's mean and standard deviation) -- per kind the **AUROC** of the combined score against the
  validation cases' and the fraction warned;
* the **uncertainty map**'s voxel-wise AUROC for predicting a wrong voxel (prediction != reference), over the
  voxels within ``--band`` voxels (in the slice's plane) of the predicted or the reference foreground, pooled over
  the task's validation cases;
* the **cost** on a warm segmenter (model loaded, the case segmented once before): the median over ``--repeats`` of
  the segmentation alone, with the input check (measurement and scoring) and with the uncertainty map (no
  mirroring), on ``--timing-cases`` validation cases per task, with ``--timing-threads`` torch threads.

Writes ``results.json`` (every case's score and parts), ``README.md``'s tables as ``tables.md`` and ``cases.png`` (per
task one validation case: image, error, uncertainty) into ``--out``. Prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage, stats

from labelshare.core.tasks import TaskDataset, read_image
from labelshare.engine import inference as inference_module
from labelshare.engine import input_check as input_check_module
from labelshare.engine.inference import Segmenter
from labelshare.engine.input_check import check_case
from labelshare.engine.models import load_model

from .common import machine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# the bundled model's tasks and their folders of the shared data
DEFAULT_TASKS = {"hippocampus": "msd_hippocampus", "acdc": "acdc_cardiac", "sunnybrook": "sunnybrook_lv",
                 "mammo": "ddsm_mammo_tissue"}
ABDOMEN = "totalseg_example_abdomen"


def flipped(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    return _like(np.ascontiguousarray(np.flip(sitk.GetArrayFromImage(image), axis=-2)), image)


def inverted(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return _like(array.max() + array.min() - array, image)


def coarse(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    """4x the spacing along every axis of more than one voxel, linearly resampled over the same field of view."""
    sizes = image.GetSize()
    spacing = [s * 4 if n > 1 else s for s, n in zip(image.GetSpacing(), sizes, strict=True)]
    size = [max(1, round(n / 4)) if n > 1 else 1 for n in sizes]
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), spacing, image.GetDirection())


def noise(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    return _like(rng.normal(array.mean(), array.std() + 1e-6, size=array.shape).astype(np.float32), image)


def _timed(function, total: list[float]):
    """``function``, adding the seconds of every call to ``total[0]``."""
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started
    return timed


def _like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


TRANSFORMS: dict[str, Callable[[sitk.Image, np.random.Generator], sitk.Image]] = {
    "flipped upside down": flipped, "contrast-inverted": inverted, "4x spacing": coarse, "noise": noise}


def auroc(positives, negatives) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U / (n_pos n_neg))."""
    positives, negatives = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if not len(positives) or not len(negatives):
        return float("nan")
    ranks = stats.rankdata(np.concatenate([positives, negatives]))
    u = ranks[:len(positives)].sum() - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def band_errors(predicted: np.ndarray, reference: np.ndarray, uncertainty: np.ndarray, band: int, axis: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The uncertainty and whether the prediction is wrong, of the voxels within ``band`` voxels (in the slices'
    plane, the slicing ``axis`` excluded) of the predicted or the reference foreground."""
    foreground = (predicted > 0) | (reference > 0)
    structure = ndimage.generate_binary_structure(foreground.ndim, 1)
    if foreground.ndim == 3 and axis is not None:  # no growth across slices: the network sees each slice alone
        index: list = [slice(None)] * 3
        index[axis] = [0, 2]
        structure[tuple(index)] = False
    inside = ndimage.binary_dilation(foreground, structure, iterations=band)
    return uncertainty[inside], (predicted != reference)[inside]


class Benchmark:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.model = load_model(args.model, "cpu")
        if self.model.input_statistics is None:
            raise SystemExit(f"{self.model.path}: has no input check statistics; give it them with labelshare "
                             "memory (a new version) and measure that")
        self.segmenter = Segmenter(self.model)
        self.split = self.model.read_json("split.json")["tasks"]
        self.tasks = {name: TaskDataset.open(folder, name) for name, folder in args.tasks.items()}
        self.rng = np.random.default_rng(0)
        self.results: dict = {"model": self.model.path.name, "machine": machine("cpu"), "tasks": {}}

    def check(self, image: sitk.Image, task: str) -> dict:
        segmentation = self.segmenter.segment_case(image, task, measure_input=True)
        result = check_case(self.model, task, segmentation.measurement)
        return {"score": result.score, "warned": result.warned, "parts": result.parts}

    def validation(self, task: str) -> list[str]:
        return self.split[task]["validation"][:self.args.cases or None]

    def run_task(self, task: str) -> dict:
        dataset = self.tasks[task]
        reference = self.model.input_statistics.tasks[task]
        entry = {"threshold": reference.threshold, "validation": {}, "kinds": {}, "band": {}}
        uncertainties, errors = [], []
        started = time.perf_counter()
        for name in self.validation(task):
            case = dataset.case(name)
            image = read_image(case.image_path, "image")
            segmentation = self.segmenter.segment_case(image, task, measure_input=True, uncertainty_map=True)
            result = check_case(self.model, task, segmentation.measurement)
            entry["validation"][name] = {"score": result.score, "warned": result.warned, "parts": result.parts}
            predicted = sitk.GetArrayFromImage(segmentation.labels)
            truth = sitk.GetArrayFromImage(read_image(case.label_path, "label", is_label=True))
            axis = self.segmenter.slice_batches(image, task).axis
            values, wrong = band_errors(predicted, truth, sitk.GetArrayFromImage(segmentation.uncertainty_map),
                                        self.args.band, axis)
            uncertainties.append(values)
            errors.append(wrong)
        uncertainty, wrong = np.concatenate(uncertainties), np.concatenate(errors)
        entry["band"] = {"voxels": int(wrong.size), "wrong": int(wrong.sum()),
                         "auroc": auroc(uncertainty[wrong], uncertainty[~wrong])}
        print(f"{task}: {len(entry['validation'])} validation cases ({time.perf_counter() - started:.0f} s)",
              flush=True)
        shifted = self.validation(task)[:self.args.ood_cases]
        for kind, transform in TRANSFORMS.items():
            entry["kinds"][kind] = {name: self.check(transform(read_image(dataset.case(name).image_path, "image"),
                                                               self.rng), task) for name in shifted}
        for other, other_dataset in self.tasks.items():
            if other != task:
                entry["kinds"][f"{other} images"] = {
                    name: self.check(read_image(other_dataset.case(name).image_path, "image"), task)
                    for name in self.validation(other)[:self.args.ood_cases]}
        abdomen = TaskDataset.open(self.args.abdomen, "abdomen")
        entry["kinds"]["TotalSegmentator CT and MR"] = {
            case.name: self.check(read_image(case.image_path, "image"), task) for case in abdomen.cases}
        print(f"{task}: done ({time.perf_counter() - started:.0f} s)", flush=True)
        return entry

    def timing(self, task: str) -> dict:
        """Seconds of a warm segmentation alone, with the input check and with the uncertainty map (per case the
        fastest of the repeats: the machine's load only ever adds time; summed over the cases), and the seconds
        spent in the check's and the map's own code during those runs (timed directly: a difference of two
        segmentations on a loaded machine is mostly noise)."""
        torch.set_num_threads(self.args.timing_threads)
        variants = {"segmentation": lambda image: self.segmenter.segment_case(image, task),
                    "with input check": lambda image: input_check_module.check_case(  # the timed one, below
                        self.model, task, self.segmenter.segment_case(image, task, measure_input=True).measurement),
                    "with uncertainty map": lambda image: self.segmenter.segment_case(image, task,
                                                                                      uncertainty_map=True)}
        seconds = {variant: 0.0 for variant in variants}
        own = {"input check": [0.0], "uncertainty map": [0.0]}
        timed = [(inference_module.InputMeasurer, "add_slices", "input check"),
                 (inference_module.InputMeasurer, "measurement", "input check"),
                 (input_check_module, "window_vectors", "input check"),
                 (input_check_module, "check_case", "input check"),
                 (inference_module, "normalised_entropy", "uncertainty map")]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in timed]
        for owner, name, part in timed:
            setattr(owner, name, _timed(getattr(owner, name), own[part]))
        try:
            for name in self.validation(task)[:self.args.timing_cases]:
                image = read_image(self.tasks[task].case(name).image_path, "image")
                for run in variants.values():  # warm
                    run(image)
                own["input check"][0] = own["uncertainty map"][0] = 0.0
                times = {variant: [] for variant in variants}
                for _ in range(self.args.repeats):
                    for variant, run in variants.items():  # interleaved: a change of the load hits all alike
                        started = time.perf_counter()
                        run(image)
                        times[variant].append(time.perf_counter() - started)
                for variant in variants:
                    seconds[variant] += min(times[variant])
                seconds.setdefault("input check's own code", 0.0)
                seconds.setdefault("uncertainty map's own code", 0.0)
                seconds["input check's own code"] += own["input check"][0] / self.args.repeats
                seconds["uncertainty map's own code"] += own["uncertainty map"][0] / self.args.repeats
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
            torch.set_num_threads(1)
        return seconds

    def figure(self, out: Path, tasks: list[str]) -> None:
        """Per task its first validation case: the slice with the most predicted or reference
        foreground, as image, wrong voxels and uncertainty."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        figure, axes = plt.subplots(len(tasks), 3, figsize=(7.5, 2.5 * len(tasks)), squeeze=False)
        for row, task in zip(axes, tasks, strict=True):
            name = self.validation(task)[0]
            case = self.tasks[task].case(name)
            image = read_image(case.image_path, "image")
            segmentation = self.segmenter.segment_case(image, task, uncertainty_map=True)
            axis = self.segmenter.slice_batches(image, task).axis
            arrays = [sitk.GetArrayFromImage(image).astype(np.float32), sitk.GetArrayFromImage(segmentation.labels),
                      sitk.GetArrayFromImage(read_image(case.label_path, "label", is_label=True)),
                      sitk.GetArrayFromImage(segmentation.uncertainty_map)]
            if arrays[0].ndim == 3:
                slicing = axis if axis is not None else 0
                arrays = [np.moveaxis(array, slicing, 0) for array in arrays]
                index = int(np.argmax(((arrays[1] > 0) | (arrays[2] > 0)).sum(axis=(1, 2))))
                arrays = [array[index] for array in arrays]
            picture, predicted, truth, uncertainty = arrays
            wrong = predicted != truth
            row[0].imshow(picture, cmap="gray")
            row[0].set_title(f"{task}: {name}", fontsize=8)
            row[1].imshow(picture, cmap="gray")
            row[1].imshow(np.ma.masked_where(~wrong, wrong), cmap="autumn", alpha=0.8, vmin=0, vmax=1)
            row[1].set_title(f"wrong voxels ({int(wrong.sum())})", fontsize=8)
            shown = row[2].imshow(uncertainty, cmap="magma", vmin=0, vmax=1)
            row[2].set_title("uncertainty (normalised entropy)", fontsize=8)
            figure.colorbar(shown, ax=row[2], fraction=0.046)
            for axis_ in row:
                axis_.set_axis_off()
        figure.tight_layout()
        figure.savefig(out / "cases.png", dpi=72)
        plt.close(figure)

    def run(self) -> None:
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(1)
        measured = self.args.measure or list(self.tasks)
        for task in measured if not self.args.only_timing else []:
            self.results["tasks"][task] = self.run_task(task)
            self.save(out)
        for task in measured:
            self.results["tasks"].setdefault(task, {})["seconds"] = self.timing(task)
            self.save(out)
        if not self.args.only_timing:
            self.figure(out, measured[:3])
        (out / "tables.md").write_text(tables(self.results))
        print(tables(self.results))

    def save(self, out: Path) -> None:
        self.results["settings"] = {"cases": self.args.cases, "ood_cases": self.args.ood_cases, "band": self.args.band,
                                    "timing_cases": self.args.timing_cases, "repeats": self.args.repeats,
                                    "timing_threads": self.args.timing_threads,
                                    "tasks": {name: str(path) for name, path in self.tasks.items()}}
        (out / "results.json").write_text(json.dumps(self.results, indent=1))


def tables(results: dict) -> str:
    """The markdown tables of ``results.json``."""
    tasks = results["tasks"]
    checked = {task: entry for task, entry in tasks.items() if "kinds" in entry}  # not only timed
    kinds = list(dict.fromkeys(kind for entry in checked.values() for kind in entry["kinds"]))
    lines = ["AUROC of the combined score (the kind's images against the task's validation images) / fraction "
             "warned; `-`: the task's own images.", "",
             "| task | validation warned | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for task, entry in checked.items():
        validation = list(entry["validation"].values())
        scores = [case["score"] for case in validation]
        cells = []
        for kind in kinds:
            cases = list(entry["kinds"].get(kind, {}).values())
            if not cases:
                cells.append("-")
                continue
            cells.append(f"{auroc([c['score'] for c in cases], scores):.2f} / "
                         f"{np.mean([c['warned'] for c in cases]):.0%} (n={len(cases)})")
        warned = sum(case["warned"] for case in validation)
        lines.append(f"| {task} | {warned}/{len(validation)} ({warned / len(validation):.0%}) | " + " | ".join(cells)
                     + " |")
    lines += ["", "Uncertainty map: voxel-wise AUROC for a wrong voxel, within the band around the predicted and "
              "reference foreground (validation cases pooled).", "",
              "| task | voxels in the band | wrong | AUROC |", "|---|---|---|---|"]
    for task, entry in checked.items():
        band = entry["band"]
        lines.append(f"| {task} | {band['voxels']} | {band['wrong']} ({band['wrong'] / band['voxels']:.1%}) | "
                     f"{band['auroc']:.3f} |")
    lines += ["", "Cost on a warm segmenter (per case the fastest of the repeats, summed over the timing cases; "
              "own code: the seconds spent in the check's measurement and scoring, or in the map's entropy, timed "
              "directly during those runs):", "",
              "| task | segmentation (s) | with input check (s) | check's own code (s) | share | "
              "with uncertainty map (s) | map's own code (s) | share |", "|---|---|---|---|---|---|---|---|"]
    for task, entry in tasks.items():
        seconds = entry.get("seconds")
        if not seconds:
            continue
        base = seconds["segmentation"]
        check, check_own = seconds["with input check"], seconds["input check's own code"]
        uncertainty, uncertainty_own = seconds["with uncertainty map"], seconds["uncertainty map's own code"]
        lines.append(f"| {task} | {base:.2f} | {check:.2f} | {check_own:.3f} | {check_own / base:.1%} | "
                     f"{uncertainty:.2f} | {uncertainty_own:.3f} | {uncertainty_own / base:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelshare-bench input-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder with input check statistics")
    parser.add_argument("--task", dest="tasks", action="append", default=[], metavar="NAME=DIR",
                        help="a task of the model and its nnU-Net raw folder (default: the bundled model's tasks in "
                             "the shared data folder)")
    parser.add_argument("--abdomen", type=Path, default=DATA / ABDOMEN,
                        help="the TotalSegmentator example's folder (one CT, one MR)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=0, help="validation cases per task (0: all)")
    parser.add_argument("--ood-cases", type=int, default=12,
                        help="cases per kind of input the task should not take (of the validation cases)")
    parser.add_argument("--band", type=int, default=3, help="voxels around the foreground the uncertainty is rated in")
    parser.add_argument("--timing-cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timing-threads", type=int, default=2)
    parser.add_argument("--measure", nargs="+", default=[], metavar="TASK",
                        help="measure only these tasks (the others' images are still their inputs of other tasks), "
                             "so that several processes can share the work (default: every task)")
    parser.add_argument("--only-timing", action="store_true", help="measure only the cost (merge with --tables)")
    parser.add_argument("--tables", nargs="+", type=Path, default=[], metavar="RESULTS",
                        help="only write --out/tables.md from these results.json files (of --measure runs), merged")
    args = parser.parse_args(argv)
    if args.tables:
        merged: dict = {"tasks": {}}
        for path in args.tables:
            results = json.loads(path.read_text())
            tasks = {name: {**merged["tasks"].get(name, {}), **entry} for name, entry in results["tasks"].items()}
            merged = {**results, "tasks": {**merged["tasks"], **tasks}}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tables.md").write_text(tables(merged))
        print(tables(merged))
        return 0
    given = dict(item.split("=", 1) for item in args.tasks)
    args.tasks = {name: Path(folder) for name, folder in given.items()} or \
        {name: DATA / folder for name, folder in DEFAULT_TASKS.items()}
    Benchmark(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
