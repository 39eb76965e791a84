"""The rehearsal memory (labelshare.core.memory, labelshare.engine.memory): written into every new version, verified
with it, chosen from the right side of the split, and used by add-task and an update in place of the old tasks'
folders; bad memories are refused with one line. Tiny synthetic tasks, as in test_incremental.py."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from labelshare import cli
from labelshare.core import synthetic
from labelshare.core.config import AddTaskConfig, MemoryConfig, TrainConfig
from labelshare.core.errors import LabelShareError, ModelError
from labelshare.core.fileio import sha256_file
from labelshare.core.labelspace import LabelSpace
from labelshare.core.memory import MEMORY_DIR, MEMORY_FILE, dequantise, quantise
from labelshare.core.modelfolder import read_memory, verify_folder, write_manifest
from labelshare.core.progress import Progress
from labelshare.core.tasks import TaskDataset
from labelshare.engine.incremental import add_task
from labelshare.core.layouts import TaskHead, task_heads
from labelshare.engine import memory as memory_engine
from labelshare.engine.memory import SELECTION, memory_slices, part_count, select_exemplars, spread_rows
from labelshare.engine.sampling import TaskSlices, load_task_slices
from labelshare.engine.postprocess_run import make_memory
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training_run import train

BUDGET = dict(epochs=1, steps_per_epoch=8, batch_size=6, learning_rate=3e-4, device="cpu")
SMALL_MEMORY = dict(memory_slices=12, gate_slices=16, replay_pixels=20 * 48 * 48,  # 20 slices of 48 x 48 pixels
                    gate_pixels=20 * 48 * 48)
OLD_TASKS = ("phantom3d", "xray2d")


@pytest.fixture(scope="module")
def base(tmp_path_factory, synthetic_tasks) -> Path:
    """phantom3d + xray2d trained long enough for a meaningful gate, with a small rehearsal memory."""
    tasks = [(name, synthetic_tasks[name]) for name in OLD_TASKS]
    space = LabelSpace.build([compute_statistics(TaskDataset.open(path, name)) for name, path in tasks])
    config = TrainConfig(batch_size=6, epochs=2, steps_per_epoch=20, device="cpu", seed=0)
    return train(tasks, space, tmp_path_factory.mktemp("memory-base") / "v1", config, progress=Progress("quiet"),
                 command=["train", "(test fixture)"], memory_config=MemoryConfig(**SMALL_MEMORY)).path


def without_memory(model: Path, target: Path) -> Path:
    """A copy of a model as versions were before they carried a memory (no memory/, manifest rewritten)."""
    shutil.copytree(model, target)
    shutil.rmtree(target / MEMORY_DIR)
    write_manifest(target)
    return target


def edited_memory(model: Path, target: Path, edit) -> Path:
    """A copy of a model whose memory.json ``edit`` changed, with a manifest that vouches for it (so that only the
    memory's own checks can refuse it)."""
    shutil.copytree(model, target)
    data = json.loads((target / MEMORY_FILE).read_text())
    edit(data)
    (target / MEMORY_FILE).write_text(json.dumps(data))
    write_manifest(target)
    return target


# -- choosing -------------------------------------------------------------------------------------------------------
def test_k_center_covers_the_features_and_every_label_and_case():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (40, 2)), rng.normal(5, 0.1, (3, 2))])  # a far cluster of 3
    case_of = np.arange(43) // 2
    presence = np.zeros((43, 2), dtype=bool)
    presence[:, 0] = True
    presence[7, 1] = True  # one slice holds the small label
    chosen = select_exemplars(6, case_of, presence, features, seed=0)
    assert len(chosen) == 6 and len(set(chosen)) == 6
    assert 7 in chosen  # the only slice of the small label
    assert any(i >= 40 for i in chosen)  # the far cluster is covered
    assert len(set(case_of[chosen])) == 6  # one slice per case while other cases are left
    spread = select_exemplars(6, case_of, presence, None, seed=0)
    assert 7 in spread and len(set(case_of[spread])) == 6
    assert select_exemplars(50, case_of, presence, features, seed=0) == list(range(43))


def test_candidates_are_spread_over_cases_and_hold_the_labels():
    targets = [np.zeros((20, 4, 4), np.uint8) for _ in range(3)]
    for target in targets:
        target[8:12, 1, 1] = 1  # the structure is in the middle of every stack
    bank = TaskSlices(task="t", plan=None, cases=["a", "b", "c"], images=[t.astype(np.float16) for t in targets],
                      targets=targets, flip_allowed=True)
    head = TaskHead(task="t", index=0, channels=[0, 1], target_lut=np.array([0, 1]), output_lut=np.array([0, 1]),
                    label_positions=[1], position_names={1: "x"})
    rows = spread_rows(bank, np.arange(len(bank)), head, 12)
    cases = bank.rows[rows][:, 0]
    assert sorted(np.bincount(cases).tolist()) == [4, 4, 4]
    held = [bool(bank.targets[c][i].any()) for c, i in bank.rows[rows]]
    assert sum(held) >= 6 and not {0, 19} & set(bank.rows[rows][:, 1].tolist())


def test_the_replay_choice_has_several_candidates_per_exemplar(monkeypatch):
    targets = [np.zeros((400, 4, 4), np.uint8) for _ in range(3)]
    for target in targets:
        target[100:300, 1, 1] = 1
    bank = TaskSlices(task="t", plan=None, cases=["a", "b", "c"], images=[t.astype(np.float16) for t in targets],
                      targets=targets, flip_allowed=True)
    head = TaskHead(task="t", index=0, channels=[0, 1], target_lut=np.array([0, 1]), output_lut=np.array([0, 1]),
                    label_positions=[1], position_names={1: "x"})
    features = np.random.default_rng(0).normal(size=(len(bank), 3)).astype(np.float32)
    monkeypatch.setattr(memory_engine, "candidate_features", lambda network, bank, rows, head, device: features[rows])
    rows, candidates = memory_engine.choose_part(None, bank, head, "replay", 150, 0, torch.device("cpu"))
    assert len(rows) == 150 and candidates == 4 * 150  # a choice among several candidates per exemplar, not all
    assert memory_engine.choose_part(None, bank, head, "replay", 20, 0, torch.device("cpu"))[1] == 384

def test_a_task_of_small_slices_keeps_more_replay_and_gate_slices():
    def bank(height, width):
        images = [np.zeros((10, height, width), np.float16) for _ in range(3)]
        return TaskSlices(task="t", plan=None, cases=["a", "b", "c"], images=images,
                          targets=[i.astype(np.uint8) for i in images], flip_allowed=True)

    config = MemoryConfig(memory_slices=48, replay_pixels=500_000, gate_slices=32, gate_pixels=200_000)
    assert part_count(config, bank(384, 276), "replay") == 48  # large slices: the slice count
    assert part_count(config, bank(384, 276), "gate") == 32
    assert part_count(config, bank(50, 40), "replay") == 250  # small slices: as many as hold the pixels
    assert part_count(config, bank(50, 40), "gate") == 100
    assert part_count(MemoryConfig(memory_slices=48, replay_pixels=0, gate_pixels=0), bank(50, 40), "replay") == 48
    assert part_count(MemoryConfig(memory_slices=48, replay_pixels=0, gate_pixels=0), bank(50, 40), "gate") == 32


def test_quantised_intensities_keep_their_range():
    image = np.linspace(-2.5, 6.0, 3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)
    values, low, high = quantise(image)
    assert values.dtype == np.uint8 and (low, high) == (-2.5, 6.0)
    assert np.abs(dequantise(values, low, high) - image).max() <= (high - low) / 255 / 2 + 1e-6


# -- writing and verifying --------------------------------------------------------------------------------------------
def test_train_writes_a_verified_memory_from_the_right_side_of_the_split(base, synthetic_tasks):
    config, space = verify_folder(base)
    manifest = json.loads((base / "manifest.json").read_text())["files"]
    memory = read_memory(base, space)
    assert set(memory.tasks) == set(OLD_TASKS) and memory.patient_images
    split = json.loads((base / "split.json").read_text())["tasks"]
    for name, task in memory.tasks.items():
        assert f"{MEMORY_DIR}/{task.parts['replay'].images}" in manifest
        assert set(task.parts["replay"].cases) <= set(split[name]["train"])  # never a validation case
        assert set(task.parts["gate"].cases) <= set(split[name]["validation"])  # never a training case
        for part, slices, pixels_held in (("replay", "memory_slices", "replay_pixels"),
                                          ("gate", "gate_slices", "gate_pixels")):
            pixels = statistics.median(h * w for h, w in (r.shape for r in task.parts[part].slices))
            wanted = max(SMALL_MEMORY[slices], SMALL_MEMORY[pixels_held] // pixels)  # more of small slices
            assert task.count(part) == min(wanted, task.selection["candidates"][part])
        assert task.plan == space.tasks[name].plan and task.licence == space.tasks[name].license
        assert task.bytes == sum((base / MEMORY_DIR / f).stat().st_size for part in task.parts.values()
                                 for f in (part.images, part.labels))
        images, labels = memory.arrays(base, name, "replay")
        assert images.shape[:2] == (task.count("replay"), 1) and labels.shape[0] == task.count("replay")
        # every label of the task is held by some replay slice (the small lesion too)
        held = {label for s in task.parts["replay"].slices for label in s.labels}
        assert held == set(task.labels)
        ids = set(np.unique(labels).tolist())
        assert ids <= {0, *task.labels.values()} and len(ids) > 1
    card = (base / "README.md").read_text()
    assert "## Rehearsal memory" in card and "CC0" in card and "KB in `memory/`" in card


def test_the_memory_reads_back_as_the_training_slices_it_was_chosen_from(base, synthetic_tasks):
    config, space = verify_folder(base)
    memory = read_memory(base, space)
    head = task_heads(config.layout, space)["phantom3d"]
    stored = memory_slices(base, memory, "phantom3d", "replay", head, flip_allowed=True)
    original = load_task_slices(TaskDataset.open(synthetic_tasks["phantom3d"], "phantom3d"), stored.cases, head,
                                space.tasks["phantom3d"].plan)
    records = memory.tasks["phantom3d"].parts["replay"].slices
    assert len(stored) == len(records)  # one labelled slice per exemplar: its only row
    for number, (case, images, targets) in enumerate(zip(stored.cases, stored.images, stored.targets, strict=True)):
        record, source = records[number], original.cases.index(case)
        assert images.shape[0] == 1 and stored.labelled_slices(number) == [0]  # a 2D plan: the slice alone
        assert np.array_equal(targets[0], original.targets[source][record.slice])  # exact, in the head's positions
        expected = original.images[source][record.slice].astype(np.float32)
        step = (expected.max() - expected.min()) / 255
        assert np.abs(images[0].astype(np.float32) - expected).max() <= step / 2 + 0.01


def test_a_tampered_memory_file_is_refused_naming_it(base, tmp_path, capsys):
    copy = tmp_path / "tampered"
    shutil.copytree(base, copy)
    target = copy / MEMORY_DIR / "xray2d.replay.images.nii.gz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"xray2d\.replay\.images\.nii\.gz: contents do not match manifest\.json"):
        verify_folder(copy)
    status = cli.main(["add-task", "--model", str(copy), "--task", f"sides3d={tmp_path}", "--out",
                       str(tmp_path / "v2")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(error) == 1
    assert error[0].startswith("labelshare: error: ") and "xray2d.replay.images.nii.gz" in error[0]


def test_a_memory_that_does_not_match_the_model_is_refused(base, tmp_path):
    def relabel(data):
        data["tasks"]["xray2d"]["labels"] = {"lung_field": 1, "liver": 2}

    with pytest.raises(ModelError, match=r"memory\.json: task 'xray2d' holds labels .*liver.* but the model's label "
                                         r"space has"):
        verify_folder(edited_memory(base, tmp_path / "relabelled", relabel))

    validation = json.loads((base / "split.json").read_text())["tasks"]["xray2d"]["validation"][0]

    def leak(data):
        data["tasks"]["xray2d"]["parts"]["replay"]["slices"][0]["case"] = validation

    with pytest.raises(ModelError, match=f"replay part of task 'xray2d' holds case '{validation}', which is not a "
                                         "training case"):
        verify_folder(edited_memory(base, tmp_path / "leaked", leak))

    def unlisted(data):
        data["tasks"]["xray2d"]["parts"]["gate"]["labels"] = "xray2d.gate.other.nii.gz"

    copy = edited_memory(base, tmp_path / "unlisted", unlisted)
    (copy / MEMORY_DIR / "xray2d.gate.other.nii.gz").write_bytes(b"")  # there, but not vouched for by the manifest
    with pytest.raises(ModelError, match="xray2d.gate.other.nii.gz: not listed in manifest.json"):
        verify_folder(copy)


# -- using it -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def added(tmp_path_factory, base, synthetic_tasks) -> Path:
    """sides3d added to the base without any old folder: replay, distillation and gate from the memory."""
    events = []
    result = add_task(base, ("sides3d", synthetic_tasks["sides3d"]), tmp_path_factory.mktemp("added") / "v2",
                      AddTaskConfig.from_options(**BUDGET, **SMALL_MEMORY),
                      progress=Progress("quiet", callback=events.append))
    return result.path


def test_add_task_without_old_folders_passes_the_gate_and_keeps_the_old_tasks(added, base):
    report = json.loads((added / "forgetting.json").read_text())
    assert report["passed"] and report["threshold"] == AddTaskConfig().max_regression
    assert set(report["tasks"]) == set(OLD_TASKS)
    for name in OLD_TASKS:
        assert "rehearsal memory's" in report["scored_on"][name] and "gate slices" in report["scored_on"][name]
        assert report["task_means"][name]["change"] * 100 >= -AddTaskConfig().max_regression
    assert "rehearsal memory" in (added / "forgetting.md").read_text()
    metrics = json.loads((added / "metrics.json").read_text())
    assert set(metrics["validation"]) == {"sides3d"} and set(metrics["memory_gate"]) == set(OLD_TASKS)
    lineage = json.loads((added / "lineage.json").read_text())
    assert lineage["replay"]["from_memory"] == list(OLD_TASKS) and lineage["distillation"]["weight"] > 0
    assert set(lineage["task_folders"]) == {"sides3d"}
    assert all(lineage["data"][name]["from_memory"] for name in OLD_TASKS)
    # the new version's memory: the old tasks' exemplars kept byte for byte, the new task's chosen
    old_memory, new_memory = read_memory(base, verify_folder(base)[1]), read_memory(added, verify_folder(added)[1])
    assert list(new_memory.tasks) == [*OLD_TASKS, "sides3d"]
    for name in OLD_TASKS:
        for part in old_memory.tasks[name].parts.values():
            for file in (part.images, part.labels):
                assert sha256_file(added / MEMORY_DIR / file) == sha256_file(base / MEMORY_DIR / file)
    split = json.loads((added / "split.json").read_text())["tasks"]
    assert split["xray2d"] == json.loads((base / "split.json").read_text())["tasks"]["xray2d"]
    assert set(new_memory.tasks["sides3d"].parts["replay"].cases) <= set(split["sides3d"]["train"])


def test_an_update_from_memory_chooses_the_updated_task_again(added, tmp_path):
    more = synthetic.write_task(tmp_path, "xray2d", n_cases=12)  # the same first 8 cases and 4 new ones
    out = add_task(added, ("xray2d", more), tmp_path / "v3",
                   AddTaskConfig.from_options(max_regression=100, **BUDGET, **SMALL_MEMORY),
                   progress=Progress("quiet")).path
    lineage = json.loads((out / "lineage.json").read_text())
    # sides3d's folder is recorded in the parent's lineage and still there: folders win over the memory
    assert lineage["operation"] == "update-task" and lineage["replay"]["from_memory"] == ["phantom3d"]
    old_memory, new_memory = read_memory(added, verify_folder(added)[1]), read_memory(out, verify_folder(out)[1])
    split = json.loads((out / "split.json").read_text())["tasks"]["xray2d"]
    assert len(split["train"]) + len(split["validation"]) == 12
    replay = new_memory.tasks["xray2d"].parts["replay"]
    assert set(replay.cases) <= set(split["train"]) and replay.cases != old_memory.tasks["xray2d"].parts["replay"].cases
    assert new_memory.tasks["phantom3d"].to_json() == old_memory.tasks["phantom3d"].to_json()


def test_an_update_from_a_folder_of_new_cases_only_keeps_the_old_cases_through_the_memory(added, tmp_path):
    """The Slicer workspace case: the task's folder holds only the cases collected now."""
    more = TaskDataset.open(synthetic.write_task(tmp_path / "all", "xray2d", n_cases=12), "xray2d")
    new_only = tmp_path / "new-only"
    for case in more.cases[8:]:  # the 4 cases the model has not seen
        for path in (case.image_path, case.label_path):
            (new_only / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, new_only / path.parent.name / path.name)
    data = json.loads((more.root / "dataset.json").read_text())
    (new_only / "dataset.json").write_text(json.dumps({**data, "numTraining": 4}))
    events = []
    out = add_task(added, ("xray2d", new_only), tmp_path / "v3",
                   AddTaskConfig.from_options(max_regression=100, **BUDGET, **SMALL_MEMORY),
                   progress=Progress("quiet", callback=events.append)).path
    assert any("its rehearsal memory stands in for them" in e.get("message", "") for e in events)
    old_split = json.loads((added / "split.json").read_text())["tasks"]["xray2d"]
    split = json.loads((out / "split.json").read_text())["tasks"]["xray2d"]
    assert set(old_split["train"]) <= set(split["train"]) and set(old_split["validation"]) <= set(split["validation"])
    assert len(split["train"]) + len(split["validation"]) == 12
    report = json.loads((out / "forgetting.json").read_text())
    assert "gate slices" in report["scored_on"]["xray2d"]  # scored on the old validation cases, from the memory
    memory = read_memory(out, verify_folder(out)[1])  # replay ⊆ training cases, gate ⊆ validation cases: verified
    chosen = set(memory.tasks["xray2d"].parts["replay"].cases)
    assert chosen & set(old_split["train"])  # the old cases' exemplars are still rehearsed


def test_a_model_without_a_memory_still_works_with_folders_and_says_which_folders_it_needs(
        base, tmp_path, synthetic_tasks):
    old = without_memory(base, tmp_path / "old")
    verify_folder(old)
    assert read_memory(old, verify_folder(old)[1]) is None
    with pytest.raises(LabelShareError, match=r"holds no rehearsal memory; give the folder of old task\(s\) "
                                              r"phantom3d, xray2d with --replay-task phantom3d=DIR"):
        add_task(old, ("sides3d", synthetic_tasks["sides3d"]), tmp_path / "a", AddTaskConfig.from_options(**BUDGET),
                 progress=Progress("quiet"))
    out = add_task(old, ("sides3d", synthetic_tasks["sides3d"]), tmp_path / "v2",
                   AddTaskConfig.from_options(max_regression=100, **BUDGET, **SMALL_MEMORY),
                   replay_tasks=[(name, synthetic_tasks[name]) for name in OLD_TASKS],
                   progress=Progress("quiet")).path
    memory = read_memory(out, verify_folder(out)[1])
    assert list(memory.tasks) == [*OLD_TASKS, "sides3d"]  # chosen from the folders given
    report = json.loads((out / "forgetting.json").read_text())
    assert all("validation cases" in report["scored_on"][name] for name in OLD_TASKS)


def test_no_memory_holds_no_patient_images_and_needs_the_folders(tmp_path, synthetic_tasks):
    tasks = [("xray2d", synthetic_tasks["xray2d"])]
    space = LabelSpace.build([compute_statistics(TaskDataset.open(synthetic_tasks["xray2d"], "xray2d"))])
    model = train(tasks, space, tmp_path / "private", TrainConfig(**BUDGET), progress=Progress("quiet"),
                  memory_config=MemoryConfig(write_memory=False)).path
    memory = read_memory(model, verify_folder(model)[1])
    assert not memory.patient_images and not memory.tasks
    assert not list((model / MEMORY_DIR).glob("*.nii.gz"))
    assert "no rehearsal memory" in (model / "README.md").read_text()
    with pytest.raises(LabelShareError, match=r"made with --no-memory .*--replay-task xray2d=DIR"):
        add_task(model, ("sides3d", synthetic_tasks["sides3d"]), tmp_path / "a", AddTaskConfig.from_options(**BUDGET),
                 progress=Progress("quiet"))


def test_the_memory_command_gives_an_older_model_a_memory_as_a_new_version(base, tmp_path, synthetic_tasks, capsys):
    old = without_memory(base, tmp_path / "old")
    before = {p.name: sha256_file(p) for p in old.iterdir() if p.is_file()}
    status = cli.main(["memory", "--model", str(old), "--task", f"phantom3d={synthetic_tasks['phantom3d']}",
                       "--out", str(tmp_path / "with-memory"), "--device", "cpu"])
    assert status == 1 and "give the folder of old task(s) xray2d" in capsys.readouterr().err
    out = make_memory(old, [(name, synthetic_tasks[name]) for name in OLD_TASKS], tmp_path / "with-memory",
                      MemoryConfig(**SMALL_MEMORY), "cpu", command=["memory", "(test)"])
    assert {p.name: sha256_file(p) for p in old.iterdir() if p.is_file()} == before  # the old model is only read
    assert sha256_file(out / "model.safetensors") == before["model.safetensors"]
    for name in ("split.json", "metrics.json", "labelspace.json"):
        assert sha256_file(out / name) == before[name]
    memory = read_memory(out, verify_folder(out)[1])
    assert list(memory.tasks) == list(OLD_TASKS)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["parent"] == "old" and lineage["operation"] == "memory"
    # the same weights, the same data and the same sizes choose the same exemplars as training did
    original = read_memory(base, verify_folder(base)[1])
    assert [s.to_json() for s in memory.tasks["xray2d"].parts["replay"].slices] == \
        [s.to_json() for s in original.tasks["xray2d"].parts["replay"].slices]


def test_a_memory_chosen_by_another_method_is_chosen_again(base, tmp_path, synthetic_tasks):
    older = edited_memory(base, tmp_path / "older",
                          lambda data: data["tasks"]["xray2d"]["selection"].update(replay="an earlier method"))
    out = make_memory(older, [(name, synthetic_tasks[name]) for name in OLD_TASKS], tmp_path / "again",
                      MemoryConfig(**SMALL_MEMORY), "cpu", command=["memory", "(test)"])
    memory, original = read_memory(out, verify_folder(out)[1]), read_memory(base, verify_folder(base)[1])
    assert memory.tasks["xray2d"].selection["chosen_by"] == "again"
    assert memory.tasks["xray2d"].selection["replay"] == SELECTION["replay"]
    assert memory.tasks["phantom3d"].selection == original.tasks["phantom3d"].selection  # the same choice: copied
