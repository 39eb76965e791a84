"""Every model format LabelShare has written loads and segments as the code that wrote it did: tiny model folders of
the first release (format 1, task planes), of per-task plans (format 2, the models v2 and v3) and of the issue-29
prototype that trains model v4 (slice context, task weights), each with the labels its own code gave on fixed
inputs (Testing/format_fixtures.py says how they were made)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from labelshare.core.config import InferenceConfig, TrainConfig
from labelshare.core.errors import LabelShareError
from labelshare.core.modelfolder import verify_folder
from labelshare.core.preprocessing import CONTEXT_SLICING, FIRST_PREPROCESSING
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import load_model
from format_fixtures import DATA, FIRST_RELEASE_FIXTURE, PLANS_FIXTURE, PROTOTYPE_FIXTURE, VARIANTS, fixture_inputs

MAX_DIFFERENT = 1e-3  # a CPU with other vector instructions may flip a voxel where two labels tie


def labels_as_recorded(fixture: str) -> set[str]:
    """Segments every recorded input of the fixture with today's code and compares; returns the variants seen."""
    folder = DATA / f"format-{fixture}"
    reference = np.load(DATA / f"format-{fixture}-outputs.npz")
    model = load_model(folder, device="cpu")
    inputs = fixture_inputs()
    seen = set()
    for key in reference.files:
        name, variant, task = key.split(":")
        assert name == folder.name
        labels = sitk.GetArrayFromImage(Segmenter(model, InferenceConfig(**VARIANTS[variant])).segment(inputs[task],
                                                                                                       task))
        expected = reference[key]
        assert labels.shape == expected.shape, key
        assert np.mean(labels != expected) <= MAX_DIFFERENT, key
        seen.add(variant)
    assert {key.split(":")[2] for key in reference.files} == set(model.tasks), "every task was recorded"
    return seen


def test_the_first_release_format_loads_with_its_fixed_size_and_task_planes_and_segments_as_it_did():
    config, space = verify_folder(FIRST_RELEASE_FIXTURE)
    raw = json.loads((FIRST_RELEASE_FIXTURE / "config.json").read_text())
    assert raw["format_version"] == 1 and "plan_settings" not in json.loads(
        (FIRST_RELEASE_FIXTURE / "labelspace.json").read_text())
    assert config.method == "label-sharing-task-channels" and config.network.conditioning == "task_channels"
    assert all(task.plan.fixed_size and task.plan.size == (64, 64) for task in space.tasks.values())
    assert labels_as_recorded("first-release") == {"model", "mirror", "all", "none"}


def test_the_plans_format_of_the_models_v2_and_v3_loads_with_the_first_schemes_and_segments_as_it_did():
    _, space = verify_folder(PLANS_FIXTURE)
    plans = json.loads((PLANS_FIXTURE / "labelspace.json").read_text())
    assert all("preprocessing" not in task["plan"] for task in plans["tasks"].values())
    assert all(task.plan.preprocessing == FIRST_PREPROCESSING and not task.plan.fixed_size
               for task in space.tasks.values())
    assert space.groups == [[("phantom3d", "organ"), ("xray2d", "heart")]]
    assert labels_as_recorded("plans") == {"model", "mirror", "all", "none"}


def test_a_model_of_the_issue_29_prototype_loads_with_its_slice_context_and_segments_as_it_did():
    """The format model v4 is trained in: slice_context in a plan without schemes (read as largest-spacing v2), the
    rule's task_slice_context and min_image_side, a network of 3 input channels, training.json with task_weights and
    intensity_augmentation; the 2D task and the volume of one slice per input fill the network's 3 channels."""
    folder = PROTOTYPE_FIXTURE
    config, space = verify_folder(folder)
    assert config.network.in_channels == 3 and config.weights_dtype == "float16"
    assert {name: task.plan.slice_context for name, task in space.tasks.items()} == \
        {"phantom3d": 3, "xray2d": 1, "sides3d": 1}
    assert space.task("phantom3d").plan.preprocessing.slicing == CONTEXT_SLICING
    assert space.task("xray2d").plan.preprocessing == FIRST_PREPROCESSING
    rule = space.plan_settings
    assert rule.task_slice_context == {"phantom3d": 3} and rule.slice_context == 1 and rule.min_image_side == 56
    recorded = json.loads((folder / "training.json").read_text())
    training = TrainConfig.from_options(**{k: v for k, v in recorded.items() if k in TrainConfig.__dataclass_fields__})
    training.check()
    assert training.task_weights == {"phantom3d": 2.0} and training.intensity_augmentation == "standard"
    assert labels_as_recorded("prototype") == {"model", "mirror", "all", "none"}
    with pytest.raises(LabelShareError, match="lateralised"):
        Segmenter(load_model(folder, device="cpu"), InferenceConfig(mirror=True)).segment(
            fixture_inputs()["sides3d"], "sides3d")

