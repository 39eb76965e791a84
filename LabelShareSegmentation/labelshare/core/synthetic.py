"""Small synthetic multi-task data in nnU-Net raw layout, for the demo and the tests.

Three tasks with different label sets, sizes, file formats and geometry, so that the whole pipeline is exercised
without downloading anything:

``phantom3d``  3D .nii.gz volumes, anisotropic spacing (slices along z), float intensities up to ~10^4, 3 labels
               (body, organ, lesion: large, medium, small).
``xray2d``     2D .png projections (8-bit), 2 labels (lung_field, heart), not lateralised by name.
``sides3d``    3D .nrrd volumes with an oblique direction and spacing largest along x (slices along x), 2 labels
               (left_blob, right_blob): lateralised, so never flipped.

:func:`write_chest_task` writes a fourth task for add-task: ``chest``, an ``xray2d`` look-alike with four labels
(lung_left, lung_right, heart and a 20-pixel nodule), one more than a phantom3d + xray2d model's n*.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .fileio import atomic_write_json, write_image_atomic

TASKS = ("phantom3d", "xray2d", "sides3d")


def _ellipse(shape: tuple[int, ...], center, radii) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True)) <= 1.0


def _noisy(rng: np.random.Generator, label: np.ndarray, means: dict[int, float], noise: float) -> np.ndarray:
    image = np.zeros(label.shape, dtype=np.float32)
    for value, mean in means.items():
        image[label == value] = mean
    return image + rng.normal(0, noise, label.shape).astype(np.float32)


def _phantom_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (10, 48, 48)  # z, y, x
    label = np.zeros(shape, dtype=np.uint8)
    center = (4.5, 24 + rng.uniform(-3, 3), 24 + rng.uniform(-3, 3))
    label[_ellipse(shape, center, (6, rng.uniform(16, 20), rng.uniform(14, 19)))] = 1
    label[_ellipse(shape, (center[0], center[1] - 4, center[2] + 3), (4, rng.uniform(6, 9), rng.uniform(6, 8)))] = 2
    lesion = (center[0] + rng.uniform(-1, 1), center[1] + rng.uniform(4, 8), center[2] - rng.uniform(3, 7))
    label[_ellipse(shape, lesion, (2, 3, 3))] = 3
    scale = 10.0 ** rng.uniform(0, 4)  # intensity ranges that differ by 10^4 between cases
    image = _noisy(rng, label, {0: 0.1, 1: 0.4, 2: 0.7, 3: 1.0}, 0.08) * scale
    return image, label


def _xray_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (64, 96)  # rows, columns
    label = np.zeros(shape, dtype=np.uint8)
    for side in (-1, 1):
        lung = (30 + rng.uniform(-2, 2), 48 + side * 20)
        label[_ellipse(shape, lung, (rng.uniform(20, 24), rng.uniform(11, 14)))] = 1
    heart = (42 + rng.uniform(-2, 2), 52 + rng.uniform(-3, 3))
    label[_ellipse(shape, heart, (rng.uniform(10, 13), rng.uniform(9, 12)))] = 2
    image = _noisy(rng, label, {0: 200, 1: 60, 2: 140}, 18)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _sides_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (40, 40, 8)  # z, y, x: spacing is largest along x, so slices are cut along x
    label = np.zeros(shape, dtype=np.uint8)
    label[_ellipse(shape, (20 + rng.uniform(-2, 2), 13 + rng.uniform(-2, 2), 3.5), (8, 6, 4))] = 1
    label[_ellipse(shape, (20 + rng.uniform(-2, 2), 28 + rng.uniform(-2, 2), 3.5), (6, 5, 4))] = 2
    return _noisy(rng, label, {0: 0.0, 1: 1.0, 2: 1.0}, 0.25), label  # same intensity: only the side tells them apart


def write_task(root: Path, name: str, n_cases: int, seed: int = 0) -> Path:
    """Write one synthetic task folder (``name`` from :data:`TASKS`); returns the folder."""
    rng = np.random.default_rng([seed, TASKS.index(name)])
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    if name == "phantom3d":
        labels, ending, make = {"background": 0, "body": 1, "organ": 2, "lesion": 3}, ".nii.gz", _phantom_case
    elif name == "xray2d":
        labels, ending, make = {"background": 0, "lung_field": 1, "heart": 2}, ".png", _xray_case
    elif name == "sides3d":
        labels, ending, make = {"background": 0, "left_blob": 1, "right_blob": 2}, ".nrrd", _sides_case
    else:
        raise ValueError(f"unknown synthetic task {name!r}; known: {TASKS}")
    for index in range(n_cases):
        case = f"{name}_{index // 2:03d}_{'ed' if index % 2 == 0 else 'es'}" if name == "phantom3d" else \
            f"{name}_{index:03d}"
        image_array, label_array = make(rng)
        image, label = sitk.GetImageFromArray(image_array), sitk.GetImageFromArray(label_array)
        if name == "phantom3d":
            geometry = {"spacing": (1.2, 1.2, 4.0), "origin": (-30.0, 12.5, 100.0)}
        elif name == "sides3d":
            rotation = sitk.VersorTransform((0, 0, 1), np.pi / 9).GetMatrix()
            geometry = {"spacing": (5.0, 0.9, 0.9), "origin": (3.0, -7.0, 11.0), "direction": rotation}
        else:
            geometry = {}
        for img in (image, label):
            for key, value in geometry.items():
                getattr(img, f"Set{key.capitalize()}")(value)
        write_image_atomic(image, folder / "imagesTr" / f"{case}_0000{ending}")
        write_image_atomic(label, folder / "labelsTr" / f"{case}{ending}")
    atomic_write_json(folder / "dataset.json", {
        "name": f"LabelShare synthetic task {name}",
        "description": "Generated by labelshare.core.synthetic for demos and tests; not medical data.",
        "channel_names": {"0": "synthetic"}, "labels": labels, "numTraining": n_cases, "file_ending": ending,
        "license": "CC0 1.0 (generated)", "labelshare": {"patient_regex": r"^(.*?)_(?:ed|es)$"}
        if name == "phantom3d" else {}})
    return folder


def write_tasks(root: str | Path, cases: int = 12, seed: int = 0, names: tuple[str, ...] = TASKS) -> dict[str, Path]:
    """Write all synthetic tasks under ``root``; returns {task name: folder}."""
    root = Path(root)
    return {name: write_task(root, name, cases, seed) for name in names}


def write_chest_task(folder: str | Path, cases: int = 12) -> Path:
    """Write the ``chest`` task (module docstring) as 64x96 .png projections; returns the folder. Its images look
    like ``xray2d``'s (same intensities and layout) plus a small bright nodule inside the left lung."""
    folder = Path(folder)
    rng = np.random.default_rng(5)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rows, columns = np.mgrid[0:64, 0:96]
    for index in range(cases):
        label = np.zeros((64, 96), np.uint8)
        for value, centre in ((1, 28), (2, 68)):
            label[((rows - 30 - rng.uniform(-2, 2)) / 21) ** 2 + ((columns - centre) / 12) ** 2 <= 1] = value
        label[((rows - 42) / 11) ** 2 + ((columns - 50 - rng.uniform(-3, 3)) / 10) ** 2 <= 1] = 3
        nodule = (22 + rng.integers(-4, 5), 26 + rng.integers(-3, 4))
        label[(rows - nodule[0]) ** 2 + (columns - nodule[1]) ** 2 <= 6] = 4
        image = np.choose(label, [200, 60, 60, 140, 250]).astype(np.float32) + rng.normal(0, 15, label.shape)
        write_image_atomic(sitk.GetImageFromArray(np.clip(image, 0, 255).astype(np.uint8)),
                           folder / "imagesTr" / f"chest_{index:03d}_0000.png")
        write_image_atomic(sitk.GetImageFromArray(label), folder / "labelsTr" / f"chest_{index:03d}.png")
    atomic_write_json(folder / "dataset.json", {
        "name": "LabelShare synthetic task chest",
        "description": "Generated by labelshare.core.synthetic for demos and tests; not medical data.",
        "labels": {"background": 0, "lung_left": 1, "lung_right": 2, "heart": 3, "nodule": 4},
        "numTraining": cases, "file_ending": ".png", "channel_names": {"0": "synthetic"},
        "license": "CC0 1.0 (generated)"})
    return folder
