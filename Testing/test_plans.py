"""Per-task plans (labelshare.core.plans) and slices at plan resolution (labelshare.engine.slices): spacing and patch
rules, sliding windows, geometry round trips, and first-release models (no plans) still load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelshare.core.config import InferenceConfig, NetworkConfig
from labelshare.core.errors import LabelSpaceError
from labelshare.core.labelspace import LabelEntry, LabelSpace, LabelStats, TaskEntry
from labelshare.core.modelfolder import MODEL_FORMAT_VERSION, ModelConfig, verify_folder
from labelshare.core.paths import bundled_model_dirs, default_model_dir, version_order
from labelshare.core.plans import (DEFAULT_PATCH_MULTIPLE, PlanSettings, SliceGeometry, TaskPlan, fixed_size_plan,
                                   plan_task)
from labelshare.core.preprocessing import DEFAULT_PREPROCESSING, FIRST_PREPROCESSING
from labelshare.core.tasks import TaskDataset
from labelshare.engine.inference import Segmenter
from labelshare.engine.metrics import dice_per_label
from labelshare.engine.models import Model, load_model
from labelshare.engine.networks import build_network
from labelshare.engine.slices import pad_to_patch, resample_labels, window_logits
from labelshare.engine.statistics import compute_statistics
from format_fixtures import FIRST_RELEASE_FIXTURE
from taskfactory import blobs, write_task_folder

BUDGET = PlanSettings(image_pixels=256 * 256, patch_pixels=192 * 192)


def geometry(shape, spacing) -> SliceGeometry:
    return SliceGeometry(shape=tuple(shape), spacing=tuple(float(s) for s in spacing))


def test_anisotropic_in_plane_spacing_is_kept_and_the_patch_covers_the_median_slice():
    plan = plan_task([geometry((100, 200), (2.0, 1.0))] * 3, BUDGET)
    assert plan.spacing == (2.0, 1.0) and plan.median_shape == (100, 200)
    assert plan.patch_size == (112, 208)   # rounded up to multiples of 16, within the patch budget


def test_cases_of_different_spacing_meet_at_the_median_spacing():
    plan = plan_task([geometry((100, 100), (1.0, 1.0)), geometry((50, 50), (2.0, 2.0)),
                      geometry((60, 60), (2.0, 2.0))], BUDGET)
    assert plan.spacing == (2.0, 2.0)
    assert plan.target_shape((100, 100), (1.0, 1.0)) == (50, 50)
    assert plan.median_shape == (50, 50) and plan.patch_size == (64, 64)


def test_images_without_spacing_keep_their_aspect_ratio_under_the_resolution_cap():
    """A 960x480 mammogram (PNG: 1 mm placeholders) is coarsened, not squashed: 2:1 stays 2:1."""
    plan = plan_task([geometry((960, 480), (1.0, 1.0))] * 4, BUDGET)
    height, width = plan.target_shape((960, 480), (1.0, 1.0))
    assert height * width <= BUDGET.image_pixels * 1.01
    assert height / width == pytest.approx(2.0, rel=0.02)
    assert plan.spacing[0] == plan.spacing[1] == pytest.approx(math.sqrt(960 * 480 / BUDGET.image_pixels), rel=1e-6)
    assert plan.patch_size[0] * plan.patch_size[1] <= BUDGET.patch_pixels
    assert all(p % DEFAULT_PATCH_MULTIPLE == 0 for p in plan.patch_size)
    assert plan.patch_size[0] > plan.patch_size[1], "the patch follows the image's proportions"


def test_small_images_get_the_smallest_patch_that_holds_them():
    plan = plan_task([geometry((35, 51), (1.0, 1.0)), geometry((40, 47), (1.0, 1.0))], BUDGET)
    assert plan.spacing == (1.0, 1.0) and plan.patch_size == (48, 64)


def test_one_slice_volumes_are_planned_in_their_own_plane(tmp_path):
    label = blobs((1, 40, 64), {1: np.s_[:, 10:20, 10:30]})   # z, y, x: one slice along z
    root = write_task_folder(tmp_path / "t", {"a": 1}, [label] * 2, spacing=(0.5, 1.25, 8.0))
    stats = compute_statistics(TaskDataset.open(root), plan_settings=BUDGET)
    assert stats.plan.spacing == (1.25, 0.5)              # rows (y), columns (x); the 8 mm axis is the slice
    assert stats.plan.median_shape == (40, 64)


def test_fixed_size_plans_and_json_round_trip():
    fixed = PlanSettings(fixed_size=128).plan([])
    assert fixed == fixed_size_plan(128, DEFAULT_PREPROCESSING)
    assert fixed.target_shape((960, 480), (1.0, 1.0)) == (128, 128)
    planned = plan_task([geometry((100, 200), (2.0, 1.0))], BUDGET)
    for plan in (fixed, planned):
        assert TaskPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    for bad in (dict(fixed_size=50), dict(patch_pixels=10), dict(image_pixels=True)):
        with pytest.raises(LabelSpaceError):
            PlanSettings(**bad).check()
    with pytest.raises(LabelSpaceError, match="spacing"):
        plan_task([geometry((10, 10), (0.0, 1.0))], BUDGET)


def test_the_default_model_is_the_newest_bundled_one_and_segments_with_per_task_plans():
    bundled = bundled_model_dirs()
    assert bundled and bundled[0] == default_model_dir()
    config, space = verify_folder(default_model_dir())
    assert config.preprocessing.image_size is None
    assert all(task.plan is not None and not task.plan.fixed_size for task in space.tasks.values())


def test_model_versions_sort_by_number():
    names = ["labelshare-4tasks-v10", "labelshare-4tasks-v2", "labelshare-4tasks-v9", "labelshare-4tasks-v1"]
    assert sorted(names, key=version_order) == [names[3], names[1], names[2], names[0]]


def test_label_space_files_carry_plans_and_first_release_files_still_read(tmp_path, synthetic_space):
    synthetic_space.save(tmp_path / "ls.json")
    data = json.loads((tmp_path / "ls.json").read_text())
    assert data["format_version"] == 2 and data["plan_settings"] == synthetic_space.plan_settings.to_json()
    assert all("plan" in task for task in data["tasks"].values())
    assert LabelSpace.load(tmp_path / "ls.json") == synthetic_space
    first = json.loads((FIRST_RELEASE_FIXTURE / "labelspace.json").read_text())
    assert first["format_version"] == 1
    old = LabelSpace.from_json(first)
    assert old.plan_settings is None and all(task.plan is None for task in old.tasks.values())


def test_a_first_release_model_loads_with_its_fixed_size_and_a_new_one_with_its_plans(tiny_model):
    config, space = verify_folder(FIRST_RELEASE_FIXTURE)
    assert config.preprocessing.image_size == 64
    assert {name: task.plan for name, task in space.tasks.items()} == {name: fixed_size_plan(64, FIRST_PREPROCESSING)
                                                                       for name in space.task_names}
    assert json.loads((tiny_model / "config.json").read_text())["format_version"] == MODEL_FORMAT_VERSION
    new = load_model(tiny_model, device="cpu")
    assert new.config.preprocessing.image_size is None
    assert all(not task.plan.fixed_size for task in new.labelspace.tasks.values())


def small_network(out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(NetworkConfig(out_channels=out_channels, filters=[4, 8, 8, 8, 8])).eval()


@torch.no_grad()
def test_sliding_window_on_an_image_smaller_than_the_patch_is_the_whole_image_forward():
    network = small_network()
    images = torch.randn(2, 1, 40, 24)
    windows = window_logits(network, images, task_index=0, patch=(64, 48), windows_per_batch=16)
    padded, region = pad_to_patch(images, (64, 48))
    whole = network(padded, torch.zeros(2, dtype=torch.int64))[:, :, region[0], region[1]]
    assert windows.shape == (2, 3, 40, 24)
    assert torch.allclose(windows, whole, atol=1e-5)
    large = window_logits(network, torch.randn(1, 1, 100, 70), task_index=0, patch=(64, 48), windows_per_batch=16)
    assert large.shape == (1, 3, 100, 70) and torch.isfinite(large).all()


def test_labels_shrink_without_losing_thin_structures():
    labels = torch.zeros(1, 64, 64, dtype=torch.int64)
    labels[0, 10:50, 30:32] = 1   # a wall two pixels thick
    shrunk = resample_labels(labels, (32, 32), 2)
    assert (shrunk == 1).sum() >= 15, "the wall survives halving (nearest-neighbour may drop every other pixel)"


class Threshold(torch.nn.Module):
    """A stand-in network whose label 1 is 'the normalised image is above its mean': a known answer at any
    resolution, so only the resampling and windowing are under test."""

    def forward(self, images: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        return torch.cat([-images, images], dim=1) * 20


def threshold_model(plan: TaskPlan) -> Model:
    stats = LabelStats(relative_size=0.1, frequency=1.0, slices_with_label=1)
    entry = TaskEntry(name="blob", labels=[LabelEntry("blob", 1, 1, stats)], plan=plan)
    space = LabelSpace({"blob": entry}, plan_settings=PlanSettings())
    config = ModelConfig(method="label-sharing", layout="shared", network=NetworkConfig(out_channels=2))
    return Model(path=None, config=config, labelspace=space, network=Threshold())


@pytest.mark.parametrize("plan", [TaskPlan(patch_size=(32, 48), spacing=(1.6, 0.9)),   # coarser, windows slide
                                  TaskPlan(patch_size=(128, 128), spacing=(0.4, 0.4))],  # finer, one window
                         ids=["coarser", "finer"])
def test_geometry_round_trip_on_an_oblique_anisotropic_volume(plan):
    z, y, x = 7, 60, 50
    grid = np.mgrid[0:z, 0:y, 0:x].astype(np.float32)
    inside = ((grid[1] - 28) / 17) ** 2 + ((grid[2] - 22) / 13) ** 2 <= 1
    array = np.where(inside, 200.0, 20.0).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.1, 4.0))
    image.SetOrigin((-12.5, 40.0, 7.25))
    image.SetDirection(sitk.VersorTransform((1, 2, 3), 0.4).GetMatrix())
    result = Segmenter(threshold_model(plan), InferenceConfig(batch_size=4)).segment(image, "blob")
    assert (result.GetSize(), result.GetSpacing(), result.GetOrigin(), result.GetDirection()) == (
        image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert dice_per_label(sitk.GetArrayFromImage(result), inside.astype(np.uint8), [1])[1] > 0.97
