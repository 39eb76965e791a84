"""The recipe experiments of docs/resolution: ``compare-recipes`` (recipes on one split) and ``cross-validation``
(k-fold split files by patient; recipes pooled and compared fold by fold), on hand-made model folders."""

from __future__ import annotations

import dataclasses
import json

import pytest

from labelshare.core.fileio import read_json
from labelshare.core.labelspace import LabelEntry, LabelSpace, LabelStats, TaskEntry
from labelshare.core.plans import PlanSettings, TaskPlan
from labelshare.core.preprocessing import CONTEXT_SLICING, DEFAULT_PREPROCESSING
from labelshare_benchmarks import compare_recipes, cross_validation
from labelshare_benchmarks.cross_validation import patient_folds
from taskfactory import blobs, write_task_folder


def model_folder(folder, case_dice: dict, validation, slice_context=1, steps=200, learning_rate=2e-3):
    """A hand-made evaluated model folder of task t: ``case_dice`` maps (case, label) to Dice."""
    folder.mkdir(parents=True)
    (folder / "training.json").write_text(json.dumps({"epochs": steps // 100, "steps_per_epoch": 100,
                                                      "learning_rate": learning_rate, "device": "cpu",
                                                      "run_identity": folder.name}))
    (folder / "split.json").write_text(json.dumps({"tasks": {"t": {"train": ["z"], "validation": list(validation)}}}))
    (folder / "evaluation.csv").write_text("task,case,label,label_id,dice,hd95\n" + "".join(
        f"t,{case},{label},1,{dice},1.0\n" for (case, label), dice in case_dice.items()))
    (folder / "training_log.jsonl").write_text(json.dumps({"epoch": 1, "step": steps, "elapsed_s": 60.0,
                                                           "validation_dice": {"t": {"x": 0.5}}}) + "\n")
    stats = LabelStats(relative_size=0.1, frequency=1.0, slices_with_label=1)
    slicing = CONTEXT_SLICING if slice_context > 1 else DEFAULT_PREPROCESSING.slicing
    plan = TaskPlan(patch_size=(64, 48), spacing=(1.0, 1.0), slice_context=slice_context,
                    preprocessing=dataclasses.replace(DEFAULT_PREPROCESSING, slicing=slicing))
    LabelSpace({"t": TaskEntry(name="t", labels=[LabelEntry("x", 1, 1, stats)], plan=plan)},
               plan_settings=PlanSettings(slice_context=slice_context)).save(folder / "labelspace.json")
    return folder


def test_compare_recipes_pairs_models_of_one_split_and_says_what_differs(tmp_path, capsys):
    base = model_folder(tmp_path / "k1", {("a", "x"): 0.8, ("b", "x"): 0.6}, "ab")
    context = model_folder(tmp_path / "k3", {("a", "x"): 0.9, ("b", "x"): 0.8}, "ab", slice_context=3,
                           learning_rate=1e-3)
    out = tmp_path / "report"
    assert compare_recipes.main([str(base), str(context), "--out", str(out)]) == 0
    text = (out / "recipes.md").read_text()
    assert "| task | label | k1 | k3 |" in text
    # differences 0.1 and 0.2: +15 points, sd 0.0707 / sqrt(2) = 5 points
    assert "| t | **mean** (2 cases) | 0.700 | 0.850 (+15.0 ± 5.0) |" in text
    assert "- `k3`: 200 steps; plan t: spacing 1x1 mm, patch 64x48, 3 slices per input; training settings " \
           "against `k1`: learning_rate 0.001" in text
    assert read_json(out / "recipes.json")["models"][1]["task_mean"]["t"]["difference_to_first"] == pytest.approx(0.15)
    assert (out / "recipes.png").read_bytes()[:4] == b"\x89PNG"
    other_split = model_folder(tmp_path / "other", {("a", "x"): 0.8}, "a")
    assert compare_recipes.main([str(base), str(other_split), "--out", str(tmp_path / "refused")]) == 1
    assert "other: its split.json differs" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_folds_keep_patients_whole_cover_every_case_once_and_balance_counts(tmp_path):
    cases = [(f"p{p}_frame{f}", f"p{p}") for p in range(11) for f in (1, 2)] + [("single", "q")]
    folds = patient_folds(cases, 5, seed=0)
    assert sorted(case for fold in folds for case in fold) == sorted(case for case, _ in cases)
    assert max(map(len, folds)) - min(map(len, folds)) <= 2
    for fold in folds:
        patients = {case.split("_")[0] for case in fold}
        assert all(f"{patient}_frame1" in fold and f"{patient}_frame2" in fold for patient in patients - {"single"})
    assert patient_folds(cases, 5, seed=0) == folds and patient_folds(cases, 5, seed=1) != folds

    labels = [blobs((1, 8, 8), {1: (slice(None), slice(2, 5), slice(2, 5))})] * 6
    root = write_task_folder(tmp_path / "t", {"x": 1}, labels)
    assert cross_validation.main(["folds", "--task", f"t={root}", "--folds", "3", "--out", str(tmp_path / "f")]) == 0
    splits = [read_json(tmp_path / "f" / f"fold-{i}.split.json")["tasks"]["t"] for i in (1, 2, 3)]
    assert sorted(case for split in splits for case in split["validation"]) == [f"case_{i:03d}" for i in range(6)]
    assert all(not set(split["train"]) & set(split["validation"]) and len(split["train"]) == 4 for split in splits)


def test_cross_validation_pools_the_folds_and_pairs_recipes_case_by_case_and_fold_by_fold(tmp_path, capsys):
    standard = [model_folder(tmp_path / "standard" / "f1", {("a", "x"): 0.8, ("b", "x"): 0.6}, "ab"),
                model_folder(tmp_path / "standard" / "f2", {("c", "x"): 0.5, ("d", "x"): 0.7}, "cd")]
    # the second recipe's folds are given in another order: they are matched by their validation cases
    scanner = [model_folder(tmp_path / "scanner" / "f2", {("c", "x"): 0.7, ("d", "x"): 0.7}, "cd"),
               model_folder(tmp_path / "scanner" / "f1", {("a", "x"): 0.8, ("b", "x"): 0.8}, "ab")]
    out = tmp_path / "cv"
    recipes = [f"standard={','.join(map(str, standard))}", f"scanner={','.join(map(str, scanner))}"]
    assert cross_validation.main(["summary", "--recipe", recipes[0], "--recipe", recipes[1], "--out", str(out)]) == 0
    result = read_json(out / "cv.json")["recipes"]
    assert result["standard"]["tasks"]["t"]["fold_means"] == pytest.approx([0.7, 0.6])
    scanner_t = result["scanner"]["tasks"]["t"]
    assert scanner_t["fold_means"] == pytest.approx([0.8, 0.7]) and scanner_t["case_mean"] == pytest.approx(0.75)
    # case differences 0, 0.2, 0.2, 0: mean 0.1, sd 0.11547 / 2; fold differences 0.1, 0.1: standard error 0
    paired = scanner_t["paired_to_first"]
    assert paired["difference"] == pytest.approx(0.1) and paired["standard_error"] == pytest.approx(0.057735, abs=1e-5)
    assert paired["fold_differences"] == pytest.approx([0.1, 0.1]) and paired["fold_standard_error"] == pytest.approx(0)
    assert "+10.0 ± 5.8 (folds: +10.0 ± 0.0)" in (out / "cv.md").read_text()

    overlapping = model_folder(tmp_path / "overlap" / "f2", {("b", "x"): 0.5}, "bc")
    assert cross_validation.main(["summary", "--recipe", f"a={standard[0]},{overlapping}", "--out",
                                  str(tmp_path / "no")]) == 1
    assert "validates case 'b' that another fold of recipe 'a' validates too" in capsys.readouterr().err
    other = model_folder(tmp_path / "other" / "f1", {("a", "x"): 0.5}, "a")
    assert cross_validation.main(["summary", "--recipe", recipes[0], "--recipe", f"b={other}", "--out",
                                  str(tmp_path / "no")]) == 1
    assert "recipe 'b'" in capsys.readouterr().err and not (tmp_path / "no").exists()
