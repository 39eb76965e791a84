"""Write small nnU-Net raw task folders from numpy arrays, for tests."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def write_task_folder(root: Path, labels: dict[str, int], label_arrays: Sequence[np.ndarray],
                      images: Sequence[np.ndarray] | None = None, ending: str = ".nii.gz",
                      case_names: Sequence[str] | None = None, channel_suffix: bool = True,
                      spacing: Sequence[float] | None = None, extra_json: dict | None = None) -> Path:
    """A task folder with one case per label array (images default to label-dependent intensities plus noise)."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for index, label in enumerate(label_arrays):
        name = case_names[index] if case_names else f"case_{index:03d}"
        if images is not None:
            image = images[index]
        else:
            image = (label.astype(np.float32) * 50 + rng.normal(0, 5, label.shape)).astype(np.float32)
            if ending == ".png":
                image = np.clip(image + 60, 0, 255).astype(np.uint8)
        image_itk, label_itk = sitk.GetImageFromArray(image), sitk.GetImageFromArray(label.astype(np.uint8))
        if spacing is not None:
            image_itk.SetSpacing(spacing)
            label_itk.SetSpacing(spacing)
        suffix = "_0000" if channel_suffix else ""
        sitk.WriteImage(image_itk, str(root / "imagesTr" / f"{name}{suffix}{ending}"))
        sitk.WriteImage(label_itk, str(root / "labelsTr" / f"{name}{ending}"))
    dataset = {"labels": {"background": 0, **labels}, "channel_names": {"0": "test"}, "file_ending": ending,
               "numTraining": len(label_arrays), **(extra_json or {})}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def blobs(shape: tuple[int, ...], boxes: dict[int, tuple[slice, ...]]) -> np.ndarray:
    """A label array with the given label boxes (later boxes overwrite earlier ones)."""
    array = np.zeros(shape, dtype=np.uint8)
    for value, box in boxes.items():
        array[box] = value
    return array
