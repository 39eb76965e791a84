"""Make a task with more labels than n* from a real one: every structure is cut in two along the middle column of
the bounding box of the task's first label (left/right half in image columns), so K labels become 2K.

    labelshare-bench split-task ../shared/data/sunnybrook_lv OUT_DIR   # OUT_DIR outside the repository

Used by run_experiments.sh (into a temporary folder) to exercise head expansion.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from labelshare.core.fileio import atomic_write_json, read_json, write_image_atomic
from labelshare.core.tasks import TaskDataset


def split_task(source: Path, target: Path) -> Path:
    task = TaskDataset.open(source)
    if target.exists():
        raise SystemExit(f"{target}: already exists")
    (target / "imagesTr").mkdir(parents=True)
    (target / "labelsTr").mkdir()
    first = min(task.labels.values())
    offset = max(task.labels.values())
    for case in task.cases:
        shutil.copy(case.image_path, target / "imagesTr" / case.image_path.name)
        label_image = sitk.ReadImage(str(case.label_path))
        label = sitk.GetArrayFromImage(label_image)
        columns = np.nonzero(label == first)[-1]
        middle = (columns.min() + columns.max()) / 2 if columns.size else label.shape[-1] / 2
        right = np.arange(label.shape[-1]) >= middle
        split = np.where(right & (label > 0), label + offset, label).astype(label.dtype)
        result = sitk.GetImageFromArray(split)
        result.CopyInformation(label_image)
        write_image_atomic(result, target / "labelsTr" / case.label_path.name)
    metadata = read_json(source / "dataset.json")
    labels = {"background": 0}
    labels.update({f"{name}_left": value for name, value in task.labels.items()})
    labels.update({f"{name}_right": value + offset for name, value in task.labels.items()})
    metadata.update(labels=labels, name=f"{metadata.get('name', task.name)} (structures split left/right)",
                    labelshare={**metadata.get("labelshare", {}), "lateralised": True})
    atomic_write_json(target / "dataset.json", metadata)
    return target


def main(argv: list[str] | None = None) -> None:
    source, target = (sys.argv[1:] if argv is None else argv)[:2]
    split_task(Path(source), Path(target))


if __name__ == "__main__":
    main()
