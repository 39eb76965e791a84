"""Preprocessing as an executable plan: named, versioned schemes that a task's plan records and the code dispatches
on, plans from before the schemes were recorded, and the patch multiple derived from the network."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelshare.core.config import NetworkConfig
from labelshare.core.errors import LabelSpaceError, ModelError
from labelshare.core.fileio import atomic_write_json
from labelshare.core.labelspace import LabelSpace
from labelshare.core.modelfolder import verify_folder, write_manifest
from labelshare.core.plans import (DEFAULT_PATCH_MULTIPLE, FIRST_PATCH_MULTIPLE, PlanSettings, SliceGeometry, TaskPlan,
                                   plan_task)
from labelshare.core.preprocessing import (DEFAULT_PREPROCESSING, FIRST_PREPROCESSING, NORMALISATIONS, RESAMPLINGS,
                                           SLICINGS, Preprocessing, Scheme, case_slices)
from labelshare.core.tasks import TaskDataset
from labelshare.engine.slices import IndexLinearResampling, to_plan
from format_fixtures import FIRST_RELEASE_FIXTURE, PLANS_FIXTURE
from taskfactory import blobs, write_task_folder


class RawIntensities:
    """A normalisation scheme for the tests: the intensities as they are."""

    finite = True

    @classmethod
    def of(cls, array):
        return cls()

    def apply(self, array):
        return np.asarray(array, dtype=np.float32)


class NearestResampling:
    """A resampling scheme for the tests: nearest neighbour."""

    @staticmethod
    def images(images, shape):
        return torch.nn.functional.interpolate(images, size=tuple(shape), mode="nearest")

    labels = staticmethod(IndexLinearResampling.labels)


@pytest.fixture
def test_schemes(monkeypatch):
    """Two schemes registered for one test (the registries are the code's; they are restored afterwards)."""
    raw, nearest = Scheme("raw", 1), Scheme("nearest", 1)
    monkeypatch.setitem(NORMALISATIONS._entries, raw, RawIntensities)
    monkeypatch.setitem(RESAMPLINGS._entries, nearest, NearestResampling)
    return raw, nearest


def test_plans_record_their_schemes_and_plans_without_them_are_the_first_ones():
    plan = plan_task([SliceGeometry((100, 80), (1.0, 1.0))], PlanSettings())
    data = json.loads(json.dumps(plan.to_json()))
    assert data["preprocessing"] == {"normalisation": {"name": "percentile-zscore", "version": 1},
                                     "slicing": {"name": "largest-spacing", "version": 1},
                                     "resampling": {"name": "index-linear", "version": 1}}
    assert TaskPlan.from_json(data) == plan and plan.preprocessing == DEFAULT_PREPROCESSING
    del data["preprocessing"]
    assert TaskPlan.from_json(data).preprocessing == FIRST_PREPROCESSING
    settings = PlanSettings().to_json()
    assert settings["patch_multiple"] == DEFAULT_PATCH_MULTIPLE and "preprocessing" in settings
    older = PlanSettings.from_json({"image_pixels": 65536, "patch_pixels": 16384})
    assert older.patch_multiple == FIRST_PATCH_MULTIPLE and older.preprocessing == FIRST_PREPROCESSING


def test_models_of_earlier_formats_read_as_the_schemes_they_were_made_with():
    for folder in (FIRST_RELEASE_FIXTURE, PLANS_FIXTURE):
        config, space = verify_folder(folder)
        assert all(task.plan.preprocessing == FIRST_PREPROCESSING for task in space.tasks.values()), folder.name
        assert space.plan_settings.patch_multiple == 16
    assert all(task.plan.fixed_size for task in verify_folder(FIRST_RELEASE_FIXTURE)[1].tasks.values())


def test_a_scheme_this_labelshare_does_not_know_is_refused_naming_the_file_and_task(tmp_path):
    data = json.loads((PLANS_FIXTURE / "labelspace.json").read_text())
    data["tasks"]["xray2d"]["plan"]["preprocessing"] = {"normalisation": {"name": "percentile-zscore", "version": 9}}
    atomic_write_json(tmp_path / "labelspace.json", data)
    with pytest.raises(LabelSpaceError, match=r"labelspace.json: task 'xray2d': plan: normalisation scheme "
                                              r"percentile-zscore v9 is unknown to this LabelShare"):
        LabelSpace.load(tmp_path / "labelspace.json")
    data["tasks"]["xray2d"]["plan"]["preprocessing"] = {"slicing": "largest-spacing"}
    atomic_write_json(tmp_path / "labelspace.json", data)
    with pytest.raises(LabelSpaceError, match="a scheme is"):
        LabelSpace.load(tmp_path / "labelspace.json")


def test_the_code_dispatches_on_the_plans_schemes(tmp_path, test_schemes):
    raw, nearest = test_schemes
    label = blobs((3, 12, 10), {1: np.s_[..., 2:6, 2:6]})
    task = TaskDataset.open(write_task_folder(tmp_path / "t", {"a": 1}, [label]), "t")
    default = case_slices(task, task.cases[0], DEFAULT_PREPROCESSING)
    raw_steps = dataclasses.replace(DEFAULT_PREPROCESSING, normalisation=raw)
    unnormalised = case_slices(task, task.cases[0], raw_steps)
    image = sitk.GetArrayFromImage(task.read_case(task.cases[0])[0])
    assert np.allclose(unnormalised.image, image) and not np.allclose(default.image, image)
    assert abs(float(default.image.mean())) < 0.5  # z-scored
    plan = TaskPlan(patch_size=(32, 32), spacing=(0.5, 0.5), preprocessing=DEFAULT_PREPROCESSING)
    slices = np.linspace(0, 1, 2 * 6 * 5, dtype=np.float32).reshape(2, 1, 6, 5)
    linear = to_plan(slices, (1.0, 1.0), plan, "cpu")
    nearest_plan = dataclasses.replace(plan, preprocessing=dataclasses.replace(DEFAULT_PREPROCESSING,
                                                                               resampling=nearest))
    blocky = to_plan(slices, (1.0, 1.0), nearest_plan, "cpu")
    assert linear.shape == blocky.shape == (2, 1, 12, 10)
    assert torch.equal(blocky[0, 0, ::2, ::2], torch.from_numpy(slices[0, 0]))  # nearest: every value repeated
    assert not torch.allclose(linear, blocky)


def test_every_known_scheme_is_registered_once_and_resolves():
    for registry in (NORMALISATIONS, SLICINGS, RESAMPLINGS):
        assert len(set(registry.schemes)) == len(registry.schemes)
        for scheme in registry.schemes:
            assert registry.get(scheme) is not None
    with pytest.raises(ValueError, match="registered twice"):
        SLICINGS.register("largest-spacing", 1, object)
    assert Preprocessing.from_json(None) == FIRST_PREPROCESSING


def test_the_patch_multiple_is_the_networks_down_sampling(tiny_model, tmp_path):
    assert NetworkConfig(out_channels=2).patch_multiple == DEFAULT_PATCH_MULTIPLE == 16
    assert NetworkConfig(out_channels=2, filters=[8, 16, 32, 64]).patch_multiple == 8
    shallow = PlanSettings(patch_multiple=8)
    plan = plan_task([SliceGeometry((41, 57), (1.0, 1.0))], shallow)
    assert plan.patch_size == (48, 64) and all(side % 8 == 0 for side in plan.patch_size)
    assert any(side % 16 for side in plan_task([SliceGeometry((41, 35), (1.0, 1.0))], shallow).patch_size)
    with pytest.raises(LabelSpaceError, match="multiple of 8"):
        PlanSettings(fixed_size=36, patch_multiple=8).check()
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = json.loads((model / "labelspace.json").read_text())
    task = next(iter(data["tasks"]))
    data["tasks"][task]["plan"]["patch_size"] = [40, 48]  # fits a network that halves three times, not four
    atomic_write_json(model / "labelspace.json", data)
    write_manifest(model)
    with pytest.raises(ModelError, match=f"task '{task}': patch size 40x48 is not a multiple of 16"):
        verify_folder(model)
