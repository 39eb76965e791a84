"""Slice context (2.5D input; issue 29): each slice with its neighbours as input channels in training, validation and
inference (the plan's slicing scheme, labelshare.core.preprocessing); the edge slices repeated; a 2D image one slice
in every channel; plans that give volumes their context and small structures a finer spacing; a plan of one slice
that works exactly as before."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelshare import cli
from labelshare.core.config import InferenceConfig, NetworkConfig
from labelshare.core.errors import LabelSpaceError, ModelError
from labelshare.core.labelspace import LabelEntry, LabelSpace, LabelStats, TaskEntry
from labelshare.core.modelfolder import ModelConfig, verify_folder
from labelshare.core.plans import PlanSettings, SliceGeometry, TaskPlan, plan_task
from labelshare.core.preprocessing import (CONTEXT_SLICING, DEFAULT_PREPROCESSING, FIRST_PREPROCESSING,
                                           context_offsets, slice_stacks)
from labelshare.core.tasks import TaskDataset
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import Model, save_model_folder
from labelshare.engine.networks import build_network
from labelshare.engine.sampling import PatchSampler, TaskSlices, crop
from labelshare.engine.statistics import compute_statistics
from taskfactory import blobs, write_task_folder

CONTEXT_PREPROCESSING = dataclasses.replace(DEFAULT_PREPROCESSING, slicing=CONTEXT_SLICING)


def context_plan(context: int, **fields) -> TaskPlan:
    """A plan of ``context`` slices per input (the neighbours' slicing scheme when more than one)."""
    fields = {"patch_size": (32, 32), "spacing": (1.0, 1.0), **fields}
    return TaskPlan(slice_context=context, preprocessing=CONTEXT_PREPROCESSING if context > 1 else
                    DEFAULT_PREPROCESSING, **fields)


def numbered_slices(count: int, shape=(6, 5)) -> np.ndarray:
    """(count, h, w) slices whose every pixel holds the slice's index."""
    return np.broadcast_to(np.arange(count, dtype=np.float32)[:, None, None], (count, *shape)).copy()


@pytest.mark.parametrize("context, expected", [
    (1, [[0], [1], [4]]),
    (3, [[0, 0, 1], [0, 1, 2], [3, 4, 4]]),
    (5, [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [2, 3, 4, 4, 4]]),
])
def test_stacks_hold_the_neighbours_and_repeat_the_edge_slices(context, expected):
    slices = numbered_slices(5)
    stacks = context_plan(context).stacks(slices, [0, 1, 4], context)
    assert stacks.shape == (3, context, 6, 5)
    assert stacks[:, :, 2, 3].tolist() == expected


def test_a_task_of_less_context_fills_the_outer_channels_with_its_outermost_slices():
    assert context_offsets(1, 5).tolist() == [0, 0, 0, 0, 0]
    assert context_offsets(3, 5).tolist() == [-1, -1, 0, 1, 1]
    assert context_plan(3).stacks(numbered_slices(5), [2], 5)[0, :, 0, 0].tolist() == [1, 1, 2, 3, 3]
    one_slice = numbered_slices(1)
    assert slice_stacks(one_slice, [0], context_offsets(5, 5))[0, :, 0, 0].tolist() == [0] * 5


class PreviousSlice(torch.nn.Module):
    """A 2.5D 'network' that segments what is bright in its first input channel (the slice before)."""

    def forward(self, images: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        return torch.cat([-images[:, :1], images[:, :1]], dim=1) * 20


def previous_slice_model(plan: TaskPlan) -> Model:
    stats = LabelStats(relative_size=0.1, frequency=1.0, slices_with_label=1)
    entry = TaskEntry(name="blob", labels=[LabelEntry("blob", 1, 1, stats)], plan=plan)
    space = LabelSpace({"blob": entry}, plan_settings=PlanSettings(slice_context=plan.slice_context))
    config = ModelConfig(method="label-sharing", layout="shared",
                         network=NetworkConfig(out_channels=2, in_channels=plan.slice_context))
    return Model(path=None, config=config, labelspace=space, network=PreviousSlice())


def test_inference_takes_the_neighbours_along_the_slicing_axis_of_an_oblique_volume():
    """The volume is cut along y (its largest spacing), not z, and is rotated: the neighbours are those of the image
    array along y, the first slice is its own neighbour, and the output stays on the input's grid."""
    z, y, x = 20, 7, 30
    inside = np.zeros((z, y, x), bool)
    for j in range(y):                       # a box that moves from slice to slice along y
        inside[2 + j: 8 + j, j, 3 + 2 * j: 12 + 2 * j] = True
    image = sitk.GetImageFromArray(np.where(inside, 200.0, 20.0).astype(np.float32))
    image.SetSpacing((0.7, 4.0, 1.1))        # x, y, z: y is the through-plane axis
    image.SetDirection(sitk.VersorTransform((1, 2, 3), 0.4).GetMatrix())
    plan = context_plan(3, spacing=(1.1, 0.7))
    segmenter = Segmenter(previous_slice_model(plan), InferenceConfig(batch_size=3, largest_component="none"))
    result = segmenter.segment(image, "blob")
    assert result.GetDirection() == image.GetDirection() and result.GetSize() == image.GetSize()
    output = sitk.GetArrayFromImage(result).astype(bool)
    for j in range(y):
        assert np.array_equal(output[:, j], inside[:, max(j - 1, 0)]), f"slice {j}"


def test_a_2d_image_is_its_own_neighbour():
    array = blobs((40, 30), {1: np.s_[10:20, 5:15]}).astype(np.float32) * 100
    segmenter = Segmenter(previous_slice_model(context_plan(5, patch_size=(48, 32))))
    image = sitk.GetImageFromArray(array)   # kept: the batches are a view of its pixels
    stacks = segmenter.slice_batches(image, "blob").raw(0, 1)
    assert stacks.shape == (1, 5, 40, 30) and all(np.array_equal(channel, array) for channel in stacks[0])
    output = sitk.GetArrayFromImage(segmenter.segment(image, "blob"))
    assert np.array_equal(output, array > 0)


def test_training_patches_hold_the_slice_stack_and_the_centre_slice_target():
    count = 4
    targets = [np.stack([np.full((20, 20), i % 2, np.uint8) for i in range(count)])]
    bank = TaskSlices(task="t", plan=context_plan(3), cases=["c"],
                      images=[numbered_slices(count, (20, 20)).astype(np.float16)], targets=targets,
                      flip_allowed=True)
    sampler = PatchSampler([bank], [None], 1, foreground_fraction=0.0, rng=np.random.default_rng(0))
    assert sampler.channels == 3, "the network's channels default to the widest context of the banks"
    seen = set()
    for _ in range(40):
        image, target = sampler.patch(bank)
        centre = image[:, 16, 16]               # the patch is padded around the 20x20 slice
        index = int(centre[1])
        assert centre.tolist() == [max(index - 1, 0), index, min(index + 1, count - 1)]
        assert (target[6:26, 6:26] == index % 2).all()
        seen.add(index)
    assert seen == set(range(count))


def test_a_plan_of_one_slice_gives_the_patches_and_inputs_of_before(tmp_path):
    """k = 1 in a network of one input channel: the same random draws give the crops of the bare slices that training
    cut before slice context (one channel), and inference's input is the raw slices with one channel added."""
    rng = np.random.default_rng(5)
    images = [rng.normal(size=(3, 24, 20)).astype(np.float16)]
    targets = [(rng.random((3, 24, 20)) > 0.7).astype(np.uint8)]
    bank = TaskSlices(task="t", plan=context_plan(1), cases=["c"], images=images, targets=targets, flip_allowed=True)
    sampler = PatchSampler([bank], [None], 1, foreground_fraction=0.5, rng=np.random.default_rng(9))
    replay = np.random.default_rng(9)
    for _ in range(30):
        image, target = sampler.patch(bank)
        assert image.shape == (1, 32, 32)
        # the draws of the sampler before slice context, repeated with the same seed
        if bank.rows_with and replay.random() < 0.5:
            position = list(bank.rows_with)[replay.integers(len(bank.rows_with))]
            case, index = bank.rows[replay.choice(bank.rows_with[position])]
            pixels = np.flatnonzero(targets[case][index] == position)
            row, column = np.unravel_index(pixels[replay.integers(len(pixels))], (24, 20))
            top, left = row - replay.integers(32), column - replay.integers(32)
            top, left = int(np.clip(top, -8, 0)), int(np.clip(left, -12, 0))
        else:
            case, index = bank.rows[replay.integers(len(bank.rows))]
            top, left = -4, -6
        old_image, old_target = crop(images[case][index][None].astype(np.float32), targets[case][index], (32, 32),
                                     (top, left))
        assert np.array_equal(image, old_image) and np.array_equal(target, old_target)
    array = rng.normal(size=(4, 9, 11)).astype(np.float32)
    segmenter = Segmenter(previous_slice_model(context_plan(1)))
    image = sitk.GetImageFromArray(array)   # kept: the batches are a view of its pixels
    raw = segmenter.slice_batches(image, "blob").raw(1, 3)
    assert raw.shape == (2, 1, 9, 11) and np.array_equal(raw[:, 0], array[1:3])


def test_volumes_get_the_slice_context_and_2d_images_one_slice(tmp_path):
    settings = PlanSettings(slice_context=5)
    volume = write_task_folder(tmp_path / "v", {"a": 1}, [blobs((6, 20, 24), {1: np.s_[:, 5:9, 5:9]})] * 2)
    flat = write_task_folder(tmp_path / "f", {"a": 1}, [blobs((20, 24), {1: np.s_[5:9, 5:9]})] * 2, ending=".png")
    one_slice = write_task_folder(tmp_path / "s", {"a": 1}, [blobs((1, 20, 24), {1: np.s_[:, 5:9, 5:9]})] * 2)
    plans = {name: compute_statistics(TaskDataset.open(root, name), plan_settings=settings).plan
             for name, root in (("volume", volume), ("flat", flat), ("slice", one_slice))}
    assert {name: plan.slice_context for name, plan in plans.items()} == {"volume": 5, "flat": 1, "slice": 1}
    assert plans["volume"].preprocessing.slicing == CONTEXT_SLICING, "a plan of neighbours records their scheme"
    assert plans["flat"].preprocessing == DEFAULT_PREPROCESSING
    assert "5 slices per input" in plans["volume"].describe()
    assert TaskPlan.from_json(json.loads(json.dumps(plans["volume"].to_json()))) == plans["volume"]
    written = plans["flat"].to_json()
    assert "slice_context" not in written and written["preprocessing"]["slicing"] == {"name": "largest-spacing",
                                                                                      "version": 1}, \
        "a plan of one slice is written as before (older LabelShare versions read it)"
    for bad in (2, 0, 17, True):
        with pytest.raises(LabelSpaceError, match="odd number of slices"):
            PlanSettings(slice_context=bad).check()
    with pytest.raises(LabelSpaceError, match="largest-spacing v1 takes 1 slice"):
        TaskPlan(patch_size=(32, 32), spacing=(1.0, 1.0), slice_context=3, preprocessing=FIRST_PREPROCESSING)


def test_a_plan_of_the_prototype_reads_as_the_neighbours_scheme():
    """Plans written by the issue-29 prototype record slice_context but no schemes (model v4 was trained so)."""
    written = {"patch_size": [64, 48], "spacing": [1.0, 1.0], "median_shape": [50, 35], "source_spacing": [1.0, 1.0],
               "slice_context": 5}
    plan = TaskPlan.from_json(written)
    assert plan.slice_context == 5 and plan.preprocessing == CONTEXT_PREPROCESSING
    assert TaskPlan.from_json({**written, "slice_context": 1}).preprocessing == FIRST_PREPROCESSING
    rule = PlanSettings.from_json({"image_pixels": 65536, "patch_pixels": 16384, "min_image_side": 64,
                                   "task_slice_context": {"hippocampus": 5}})
    assert rule.slice_context_of("hippocampus") == 5 and rule.slice_context_of("acdc") == 1
    assert rule.min_image_side == 64 and rule.preprocessing == FIRST_PREPROCESSING
    with pytest.raises(LabelSpaceError, match="slice_context"):
        TaskPlan.from_json({**written, "slice_context": "5"})


def test_the_context_is_set_per_task_and_a_task_added_later_is_planned_alike(tmp_path, capsys):
    volume = write_task_folder(tmp_path / "v", {"a": 1}, [blobs((6, 20, 24), {1: np.s_[:, 5:9, 5:9]})] * 2)
    thick = write_task_folder(tmp_path / "t", {"a": 1}, [blobs((4, 20, 24), {1: np.s_[:, 5:9, 5:9]})] * 2)
    out = tmp_path / "ls.json"
    assert cli.main(["labelspace", "build", "--task", f"volume={volume}", "--task", f"thick={thick}",
                     "--slice-context", "5", "--slice-context", "thick=1", "-o", str(out)]) == 0
    space = LabelSpace.load(out)
    assert {name: entry.plan.slice_context for name, entry in space.tasks.items()} == {"volume": 5, "thick": 1}
    assert json.loads(out.read_text())["plan_settings"]["task_slice_context"] == {"thick": 1}
    later = compute_statistics(TaskDataset.open(thick, "thick"), plan_settings=space.plan_settings)
    assert later.plan.slice_context == 1, "a task named in the rule keeps its context when it is added again"
    assert ModelConfig.for_method("label-sharing", space, "float32").network.in_channels == 5
    capsys.readouterr()
    for arguments, message in ((["--slice-context", "other=3"], "--slice-context other=...: not a task given"),
                               (["--slice-context", "thick=4"], "--slice-context of task 'thick' 4: an odd number")):
        assert cli.main(["labelspace", "build", "--task", f"thick={thick}", *arguments, "-o",
                         str(tmp_path / "no.json")]) == 1
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as parse_error:
        cli.main(["labelspace", "build", "--task", f"thick={thick}", "--slice-context", "three", "-o",
                  str(tmp_path / "no.json")])
    assert parse_error.value.code == 2
    assert "--slice-context: three: expected K or TASK=K" in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()


def test_small_slices_are_planned_finer_up_to_the_minimum_side_and_the_cap_still_holds():
    hippocampus_like = [SliceGeometry((50, 35), (1.0, 1.0), slices=36)] * 3
    assert plan_task(hippocampus_like, PlanSettings(patch_pixels=16384)).spacing == (1.0, 1.0)
    finer = plan_task(hippocampus_like, PlanSettings(patch_pixels=16384, min_image_side=64))
    assert finer.spacing == pytest.approx((35 / 64, 35 / 64))
    assert finer.median_shape == (91, 64) and finer.patch_size == (96, 64)
    large = [SliceGeometry((256, 216), (1.0, 1.0), slices=10)] * 3
    assert plan_task(large, PlanSettings(min_image_side=64)) == plan_task(large, PlanSettings())
    capped = plan_task(hippocampus_like, PlanSettings(image_pixels=64 * 64, min_image_side=128))
    assert capped.median_shape[0] * capped.median_shape[1] <= 64 * 64 * 1.01, "the resolution cap wins"
    settings = PlanSettings(min_image_side=96, slice_context=3, task_slice_context={"flat": 1})
    assert PlanSettings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert set(PlanSettings().to_json()) == {"image_pixels", "patch_pixels", "patch_multiple", "preprocessing"}, \
        "a rule without the new fields is written as before"
    with pytest.raises(LabelSpaceError, match="--min-image-side"):
        PlanSettings(min_image_side=8).check()


def test_a_model_has_one_input_channel_per_slice_of_its_widest_context(tmp_path):
    stats = LabelStats(relative_size=0.1, frequency=1.0, slices_with_label=1)
    plans = {"volume": context_plan(3), "xray": context_plan(1)}
    space = LabelSpace({name: TaskEntry(name=name, labels=[LabelEntry("a", 1, 1, stats)], plan=plan)
                        for name, plan in plans.items()}, plan_settings=PlanSettings(slice_context=3))
    config = ModelConfig.for_method("label-sharing", space, "float32")
    assert config.network.in_channels == 3
    network = build_network(config.network)
    assert network(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64)).shape == (2, 2, 32, 32)
    narrow = ModelConfig(method="label-sharing", layout="shared", network=NetworkConfig(out_channels=2))
    save_model_folder(tmp_path / "m", build_network(narrow.network), narrow, space)
    with pytest.raises(ModelError, match="3 slices per input but the network has 1 input channels"):
        verify_folder(tmp_path / "m")
