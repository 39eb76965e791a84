"""What a model is for, read from its folder (LabelShareLib/model_info.py, issue 27 item 2), and the licence rule
the model card and the module share (labelshare.core.modelfolder.is_non_commercial)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LabelShareSegmentation"))
from LabelShareLib.model_info import intended_modalities, modality_warning, model_info  # noqa: E402

from labelshare.core.modelfolder import is_non_commercial  # noqa: E402
from labelshare.core.paths import bundled_model_dirs  # noqa: E402

pytest_plugins = ["slicer_support"]


@pytest.mark.parametrize("folder", bundled_model_dirs(), ids=lambda path: path.name)
def test_every_fact_is_the_cards(folder):
    """The module shows what the card says: the same licences, intended inputs, cases and validation Dice."""
    info = model_info(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    space = json.loads((folder / "labelspace.json").read_text(encoding="utf-8"))
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert list(info.tasks) == list(space["tasks"])
    for name, task in info.tasks.items():
        assert task.licence == space["tasks"][name]["license"] and task.licence in card
        assert f"- **{name}**: {task.intended_input}" in card
        assert task.modality == task.intended_input.split(";")[0]
        for label, dice in task.dice.items():
            assert dice == metrics["validation"][name][label]["dice_mean"]
            assert f"| {name} | {label} | {dice:.3f} ±" in card
        assert task.trained and task.trained in card
    flagged = ", ".join(info.non_commercial_tasks)
    assert (f"**Non-commercial use only:** trained on {flagged}," in card) == bool(flagged)
    assert info.non_commercial_tasks == ["acdc", "mammo"]


def test_licence_rule_and_modality_words():
    assert is_non_commercial("CC BY-NC-SA 4.0") and is_non_commercial("free for non-commercial research")
    assert is_non_commercial("publicly released for research use without a formal licence")
    assert not is_non_commercial("CC BY-SA 4.0 (Medical Segmentation Decathlon data license)")
    assert not is_non_commercial("CC0 1.0 Universal; citation requested") and not is_non_commercial("")
    assert not is_non_commercial("a licence"), "the word licence contains 'nc' but is no restriction"
    assert intended_modalities("cine MRI (SSFP)") == ("MR",) and intended_modalities("CT, portal venous") == ("CT",)
    assert intended_modalities("X-ray (mammography, 8-bit grayscale)") == ("MG",)
    assert intended_modalities("chest X-ray") == ("CR", "DX") and intended_modalities("image") == ()


def test_modality_warning_needs_both_modalities(mrml_scene):
    import slicer
    info = model_info(bundled_model_dirs()[0]).tasks["hippocampus"]
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan")
    assert modality_warning(volume, info) == ""  # no subject-hierarchy item: not from DICOM
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
    hierarchy.SetItemAttribute(item, "DICOM.Modality", "us")
    assert modality_warning(volume, info).startswith("'scan' is US (its DICOM Modality), but task hippocampus")
    hierarchy.SetItemAttribute(item, "DICOM.Modality", "MR")
    assert modality_warning(volume, info) == "" and modality_warning(None, info) == ""
