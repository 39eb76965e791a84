"""Every bundled model segments as the code that made it did: its labels on small generated images are compared with
those that code recorded (Testing/data/bundled-model-outputs.npz, keyed ``<model folder>:<variant>:<task>``;
Testing/format_fixtures.py records them for a new bundled model). Mirroring a lateralised task, which older code
ignored, is refused since issue 31."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from labelshare.core.config import InferenceConfig
from labelshare.core.errors import LabelShareError
from labelshare.core.paths import bundled_model_dirs
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import load_model
from format_fixtures import VARIANTS, bundled_input

REFERENCE = Path(__file__).parent / "data" / "bundled-model-outputs.npz"
MAX_DIFFERENT = 1e-3  # a CPU with other vector instructions may flip a voxel where two labels tie


@pytest.mark.parametrize("folder", bundled_model_dirs(), ids=lambda path: path.name)
def test_bundled_models_segment_as_recorded(folder):
    reference = np.load(REFERENCE)
    keys = [key for key in reference.files if key.split(":")[0] == folder.name]
    assert keys, (f"{REFERENCE.name} records no labels of the bundled model {folder.name}: record them with the code "
                  "that made it (Testing/format_fixtures.py record)")
    model = load_model(folder, device="cpu")
    recorded: dict[str, dict[str, np.ndarray]] = {}
    for key in keys:
        _, variant, task = key.split(":")
        expected = reference[key]
        image = bundled_input(expected.ndim)
        segmenter = Segmenter(model, InferenceConfig(**VARIANTS[variant]))
        if VARIANTS[variant].get("mirror") and model.labelspace.task(task).lateralised:  # refused: one rule
            with pytest.raises(LabelShareError, match=f"task '{task}' is lateralised"):
                segmenter.segment(image, task)
            continue
        labels = sitk.GetArrayFromImage(segmenter.segment(image, task))
        assert labels.shape == expected.shape, key
        assert np.mean(labels != expected) <= MAX_DIFFERENT, key
        recorded.setdefault(task, {})[variant] = expected
    assert set(recorded) == set(model.tasks), "every task of the model is recorded"
    if any(len(variants) > 1 for variants in recorded.values()):  # the variants differ somewhere: a comparison can fail
        assert any(not np.array_equal(labels, variants["model"]) for variants in recorded.values()
                   for name, labels in variants.items() if name != "model")
