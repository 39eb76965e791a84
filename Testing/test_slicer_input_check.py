"""The input check and the uncertainty map in LabelShare Segmentation's logic, on real slicer-core and a real
``labelshare worker`` with the tiny model: an unusual volume is segmented with a warning kept on its segmentation
node, a usual one without; the DICOM modality of a volume reaches the check; the uncertainty map comes back as a
volume on the input's grid shown in colour over the image."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from labelshare.core.fileio import read_json
from labelshare.core.modelfolder import write_manifest
from labelshare.core.tasks import TaskDataset

pytest_plugins = ["slicer_support"]  # fixtures: mrml_scene, slicer_env
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LabelShareSegmentation"))
from LabelShareLib import volumes  # noqa: E402
from LabelShareLib.jobs import JobState  # noqa: E402
from LabelShareSegmentationLib import input_warning, uncertainty_node  # noqa: E402
from LabelShareSegmentationLib.logic import SegmentationLogic  # noqa: E402

TASK = "phantom3d"


@pytest.fixture(scope="module")
def logic():
    logic = SegmentationLogic()
    yield logic
    logic.stop()


@pytest.fixture
def usual(mrml_scene, synthetic_tasks, tiny_model):
    """A training case of the task as a volume node: in distribution (the statistics were fitted on it)."""
    name = read_json(tiny_model / "split.json", "split")["tasks"][TASK]["train"][0]
    image = sitk.ReadImage(str(TaskDataset.open(synthetic_tasks[TASK], TASK).case(name).image_path))
    return volumes.image_to_volume(image, mrml_scene, "usual")


def noise_volume(volume, scene):
    image = volumes.volume_to_image(volume)
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=sitk.GetArrayViewFromImage(image).shape)
                                   .astype(np.float32))
    noise.CopyInformation(image)
    return volumes.image_to_volume(noise, scene, "noise")


def test_an_unusual_volume_is_segmented_with_a_warning_beside_its_segments(logic, usual, tiny_model, mrml_scene):
    node = logic.segment(usual, TASK, model=tiny_model, device="cpu", timeout=120)
    assert input_warning(node) == "" and not any("unlike" in note for note in logic.job.notes)

    noise = noise_volume(usual, mrml_scene)
    job = logic.start(noise, TASK, model=tiny_model, device="cpu")
    assert job.wait(120) == JobState.DONE, job.error  # a warning, never a refusal
    warned = job.result
    assert warned.GetSegmentation().GetNumberOfSegments() == 3
    assert input_warning(warned).startswith("'noise' is unlike the training images of task phantom3d")
    assert len(job.warnings) == 1 and job.warnings[0]["input_check"]["warned"]
    assert any(note.startswith("unlike the training images of task phantom3d") for note in job.notes)

    # segmented again into the same node, a usual volume clears the warning
    assert logic.segment(usual, TASK, model=tiny_model, device="cpu", output_node=warned, timeout=120) is warned
    assert input_warning(warned) == ""


@pytest.fixture
def mri_model(tiny_model, tmp_path) -> Path:
    """The tiny model with the task's intended input named MRI (the synthetic tasks name no modality)."""
    model = Path(shutil.copytree(tiny_model, tmp_path / "mri"))
    space = json.loads((model / "labelspace.json").read_text())
    space["tasks"][TASK]["intended_input"] = "MRI (synthetic)"
    (model / "labelspace.json").write_text(json.dumps(space))
    write_manifest(model)
    return model


def test_a_volume_of_another_modality_is_warned_by_its_dicom_tag(logic, usual, mri_model, mrml_scene):
    """The volume's DICOM Modality (its subject hierarchy item's, as Slicer's DICOM import sets it) goes with it to
    the worker: a CT volume is warned for an MRI task although its image is the usual one."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    item = hierarchy.GetItemByDataNode(usual) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), usual)
    hierarchy.SetItemAttribute(item, "DICOM.Modality", "CT")
    node = logic.segment(usual, TASK, model=mri_model, device="cpu", timeout=120)
    assert "is CT (its DICOM Modality), but task phantom3d was trained on MRI (synthetic) (MR)" in input_warning(node)
    hierarchy.SetItemAttribute(item, "DICOM.Modality", "MR")
    assert input_warning(logic.segment(usual, TASK, model=mri_model, device="cpu", timeout=120)) == ""


def test_the_uncertainty_map_is_shown_over_the_image_on_its_grid(logic, usual, tiny_model, mrml_scene):
    node = logic.segment(usual, TASK, model=tiny_model, device="cpu", timeout=120, uncertainty_map=True)
    shown = uncertainty_node(node)
    assert shown is not None and shown.IsA("vtkMRMLScalarVolumeNode")
    image, map_image = volumes.volume_to_image(usual), volumes.volume_to_image(shown)
    assert map_image.GetSize() == image.GetSize()
    np.testing.assert_allclose(map_image.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(map_image.GetOrigin(), image.GetOrigin())
    values = slicer.util.arrayFromVolume(shown)
    assert values.min() >= 0 and values.max() <= 1 and values.max() > 0
    assert shown.GetDisplayNode().GetColorNodeID() == volumes.UNCERTAINTY_COLOURS
    composite = mrml_scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    if composite.GetNumberOfItems():
        assert composite.GetItemAsObject(0).GetForegroundVolumeID() == shown.GetID()
    # segmented again, the same map node is updated rather than a second one added
    count = mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    assert logic.segment(usual, TASK, model=tiny_model, device="cpu", output_node=node, timeout=120,
                         uncertainty_map=True) is node
    assert uncertainty_node(node) is shown
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count
