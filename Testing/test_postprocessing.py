"""Post-processing chosen on the validation cases (nnU-Net's largest-connected-component decision): the choice, how
segmentation applies it, training recording it, and ``labelshare postprocess`` adding it to an older model."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

import labelshare.engine.inference as inference
from labelshare.cli import build_parser, main
from labelshare.commands import segment_config_from
from labelshare.core.config import InferenceConfig
from labelshare.core.errors import LabelShareError
from labelshare.core.fileio import sha256_file
from labelshare.core.modelfolder import verify_folder
from labelshare.core.tasks import TaskDataset
from labelshare.core.worker_protocol import request_config
from labelshare.engine.evaluation import choose_postprocessing, evaluate_cases
from labelshare.engine.inference import Segmenter
from labelshare.engine.models import load_model
from labelshare.engine.postprocess_run import postprocess
from format_fixtures import FIRST_RELEASE_FIXTURE


class ReferencePlusIsland:
    """Stands in for a segmenter: returns each case's reference with a far-away fragment of one label added."""

    def __init__(self, task: TaskDataset, label_id: int, calls: list | None = None, largest_component: str = "model"):
        self.task, self.label_id, self.largest_component = task, label_id, largest_component
        self.calls = [] if calls is None else calls

    def configured(self, largest_component: str) -> ReferencePlusIsland:
        return ReferencePlusIsland(self.task, self.label_id, self.calls, largest_component)

    def segment(self, image: sitk.Image, task_name: str) -> sitk.Image:
        self.calls.append(self.largest_component)
        pixels = sitk.GetArrayViewFromImage(image)
        reference = next(reference for case in self.task.cases
                         for case_image, _, reference in [self.task.read_case(case)]
                         if np.array_equal(sitk.GetArrayViewFromImage(case_image), pixels))
        predicted = reference.copy()
        predicted[(slice(0, 2),) * predicted.ndim] = self.label_id  # a corner: background in every case
        result = sitk.GetImageFromArray(predicted)
        result.CopyInformation(image)
        return result


def test_the_largest_component_is_kept_only_of_labels_whose_validation_dice_it_raises(tiny_model, synthetic_tasks):
    model = load_model(tiny_model, device="cpu")
    task = TaskDataset.open(synthetic_tasks["phantom3d"], "phantom3d")
    cases = [c.name for c in task.cases[:3]]
    for case in cases:  # the corner is background, so the fragment is a false detection of its own
        _, _, reference = task.read_case(task.case(case))
        assert not reference[(slice(0, 3),) * reference.ndim].any()
    organ = task.labels["organ"]
    segmenter = ReferencePlusIsland(task, organ)
    chosen, evaluation = choose_postprocessing(model, task, cases, segmenter=segmenter)
    assert chosen == ["organ"]
    assert segmenter.calls == ["none"] * len(cases)  # segmented once per case, without the model's own clean-up
    # the scores are those of the chosen pipeline: the fragment removed, every other label as segmented (perfect)
    for label in evaluation.labels("phantom3d"):
        dice = evaluation.values("phantom3d", label)
        assert np.allclose(dice[~np.isnan(dice)], 1.0), label
    assert len(evaluation.scores) == len(cases) * len(task.labels)


def test_segmentation_applies_the_models_choice_unless_told_all_or_none(tiny_model, synthetic_tasks, monkeypatch):
    model = load_model(tiny_model, device="cpu")
    model.config = replace(model.config, largest_component={"phantom3d": ["organ"]})
    cleaned = []
    monkeypatch.setattr(inference, "keep_largest_components",
                        lambda image, ids: cleaned.append(sorted(ids)) or image)
    task = TaskDataset.open(synthetic_tasks["phantom3d"], "phantom3d")
    image, _, _ = task.read_case(task.cases[0])
    all_ids = sorted(i for i, _ in model.task_labels("phantom3d"))
    for setting, expected in (("model", [[task.labels["organ"]]]), ("all", [all_ids]), ("none", [])):
        cleaned.clear()
        Segmenter(model, InferenceConfig(largest_component=setting)).segment(image, "phantom3d")
        assert cleaned == expected, setting
    cleaned.clear()
    Segmenter(model).segment(image, "xray2d")  # a task the model chose nothing for
    assert cleaned == []


def test_largest_component_is_one_option_model_all_or_none_from_every_edge():
    """``--largest-component {model,all,none}`` (alone: all), the worker's ``largest_component`` and the Slicer
    logic's keyword all set InferenceConfig.largest_component, whose default is the model's choice."""
    parser = build_parser()
    segment = ["segment", "--task", "t", "in.nii.gz", "-o", "out.nii.gz"]

    def chosen(*extra):
        return segment_config_from(parser.parse_args([*segment, *extra])).inference.largest_component

    assert chosen() == "model" == InferenceConfig().largest_component
    assert chosen("--largest-component") == "all"  # the flag of the releases before the choice
    assert [chosen("--largest-component", choice) for choice in ("model", "all", "none")] == ["model", "all", "none"]
    with pytest.raises(SystemExit):
        parser.parse_args([*segment, "--largest-component", "some"])
    request = {"task": "t", "input": "in.nii.gz", "output": "out.nii.gz"}
    assert request_config({**request, "largest_component": "none"}, "segment").inference.largest_component == "none"
    with pytest.raises(LabelShareError, match="'largest_component' must be one of \"model\", \"all\", \"none\""):
        request_config({**request, "largest_component": "never"}, "segment")
    with pytest.raises(LabelShareError, match="'largest_component' must be a string, not true"):
        request_config({**request, "largest_component": True}, "segment")


def test_training_records_its_choice_and_its_metrics_are_what_segmentation_gives(tiny_model, synthetic_tasks):
    config, space = verify_folder(tiny_model)
    assert set(config.largest_component) <= set(space.tasks)
    model = load_model(tiny_model, device="cpu")
    metrics = json.loads((tiny_model / "metrics.json").read_text())["validation"]
    task = TaskDataset.open(synthetic_tasks["phantom3d"], "phantom3d")
    evaluation = evaluate_cases(model, task, model.validation_cases("phantom3d")).summary()["phantom3d"]
    for label, scores in metrics["phantom3d"].items():
        assert scores["dice_mean"] == pytest.approx(evaluation[label]["dice_mean"], nan_ok=True)
    first_release, _ = verify_folder(FIRST_RELEASE_FIXTURE)
    assert first_release.largest_component == {}  # chosen before post-processing existed: none


def test_postprocess_writes_a_new_version_and_leaves_the_model_unchanged(tiny_model, synthetic_tasks, tmp_path,
                                                                        monkeypatch):
    before = {p.name: sha256_file(p) for p in tiny_model.iterdir() if p.is_file()}
    out = tmp_path / "tiny-postprocessed"
    arguments = ["postprocess", "--model", str(tiny_model), "--out", str(out), "--progress", "quiet"]
    tasks = [f"--task={name}={path}" for name, path in synthetic_tasks.items()]
    monkeypatch.setattr(sys, "argv", ["labelshare", *arguments, *tasks])  # the command line the lineage records
    assert main() == 0
    assert {p.name: sha256_file(p) for p in tiny_model.iterdir() if p.is_file()} == before
    config, _ = verify_folder(out)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["parent"] == tiny_model.name and lineage["operation"] == "postprocess"
    assert lineage["command"][:1] == ["postprocess"] and lineage["training_command"] == ["train", "(test fixture)"]
    weights, parents = load_file(out / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    assert weights.keys() == parents.keys() and all(torch.equal(weights[k], parents[k]) for k in weights)
    assert (out / "split.json").read_bytes() == (tiny_model / "split.json").read_bytes()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["validation"]) == set(synthetic_tasks)
    card = (out / "README.md").read_text()
    assert "training command: `labelshare train (test fixture)`" in card
    assert ("largest connected component is kept of" in card) == bool(config.largest_component)

    with pytest.raises(LabelShareError, match="already exists"):
        postprocess(tiny_model, list(synthetic_tasks.items()), out)
    with pytest.raises(LabelShareError, match="missing: xray2d"):
        postprocess(tiny_model, [(n, p) for n, p in synthetic_tasks.items() if n != "xray2d"], tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_postprocess_refuses_a_model_folder_that_fails_its_check(tiny_model, synthetic_tasks, tmp_path):
    copy = tmp_path / "damaged"
    copy.mkdir()
    for file in tiny_model.iterdir():
        if file.is_file():
            (copy / file.name).write_bytes(file.read_bytes())
    (copy / "labelspace.json").write_text("{}")
    with pytest.raises(LabelShareError, match="do not match manifest.json"):
        postprocess(copy, list(synthetic_tasks.items()), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not Path(tmp_path / ".out.partial").exists()
