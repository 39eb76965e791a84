"""Label space: the paper's size ordering and both constraints, on hand-made label maps."""

import json

import numpy as np
import pytest
from taskfactory import blobs, write_task_folder

from labelshare.core.errors import LabelSpaceError, UnknownTaskError
from labelshare.core.labelspace import LabelSpace, parse_group
from labelshare.core.tasks import TaskDataset
from labelshare.engine.statistics import compute_statistics


def _stats(tmp_path, name, labels, arrays, **kwargs):
    return compute_statistics(TaskDataset.open(write_task_folder(tmp_path / name, labels, arrays, **kwargs), name))


@pytest.fixture
def three_tasks(tmp_path):
    # task a (2D, 10x10 = 100 px): big=30 px, small=4 px
    a = _stats(tmp_path, "a", {"small": 1, "big": 2},
               [blobs((10, 10), {2: np.s_[0:5, 0:6], 1: np.s_[8:10, 8:10]})], ending=".png")
    # task b: three labels; "mid" appears in one of two images: relative size is averaged over images containing it
    b = _stats(tmp_path, "b", {"x": 1, "y": 2, "z": 3},
               [blobs((10, 10), {1: np.s_[0:2, 0:1], 2: np.s_[3:7, 3:7], 3: np.s_[9:10, 0:10]}),
                blobs((10, 10), {1: np.s_[0:2, 0:2], 2: np.s_[3:5, 3:5]})], ending=".png")
    # task c: one label only (fewer labels than n*)
    c = _stats(tmp_path, "c", {"only": 1}, [blobs((10, 10), {1: np.s_[0:3, 0:3]})], ending=".png")
    return a, b, c


def test_relative_size_is_mean_over_images_containing_the_label(three_tasks):
    _, b, _ = three_tasks
    assert b.stats["x"].relative_size == pytest.approx((2 / 100 + 4 / 100) / 2)
    assert b.stats["y"].relative_size == pytest.approx((16 / 100 + 4 / 100) / 2)
    assert b.stats["z"].relative_size == pytest.approx(10 / 100)   # only in image 1: not diluted by image 2
    assert b.stats["z"].frequency == pytest.approx(0.5)
    assert b.n_slices == 2


def test_kth_largest_label_of_every_task_goes_to_shared_label_k(three_tasks):
    space = LabelSpace.build(list(three_tasks))
    assert space.n_shared == 3
    assert {e.name: e.shared for e in space.task("a").labels} == {"big": 1, "small": 2}
    assert {e.name: e.shared for e in space.task("b").labels} == {"y": 1, "z": 2, "x": 3}
    assert {e.name: e.shared for e in space.task("c").labels} == {"only": 1}
    assert space.shared_members()[0] == {"a": "big", "b": "y", "c": "only"}
    assert space.shared_members()[2] == {"b": "x"}


def test_both_constraints_hold(three_tasks):
    space = LabelSpace.build(list(three_tasks))
    for task in space.tasks.values():
        shared = [e.shared for e in task.labels]
        assert len(shared) == len(set(shared))          # at most one label of a task per shared label
        assert all(1 <= s <= space.n_shared for s in shared)   # every label on exactly one shared label
    total = sum(len(t.labels) for t in space.tasks.values())
    assert sum(len(m) for m in space.shared_members()) == total


def test_ties_are_broken_by_label_id_deterministically(tmp_path):
    # two labels with exactly the same size: the lower id ranks first, whatever their order in dataset.json
    stats = _stats(tmp_path, "tie", {"second": 2, "first": 1},
                   [blobs((8, 8), {1: np.s_[0:2, 0:2], 2: np.s_[5:7, 5:7]})], ending=".png")
    assert stats.size_order() == ["first", "second"]
    assert LabelSpace.build([stats]).task("tie").label("first").shared == 1


def test_groups_pin_labels_and_the_rest_follow_size(three_tasks):
    space = LabelSpace.build(list(three_tasks), [parse_group("a:small=b:x")])
    assert space.task("a").label("small").shared == space.task("b").label("x").shared == 1
    assert space.task("a").label("big").shared == 2          # a's free labels in size order
    assert [space.task("b").label(n).shared for n in ("y", "z")] == [2, 3]
    assert space.n_shared == 3


@pytest.mark.parametrize("group, message", [
    ("a:small=a:big", "two labels of task 'a'"),
    ("a:nope=b:x", "has no label 'nope'"),
    ("a-small=b:x", "each member is TASK:LABEL"),
])
def test_bad_groups_are_refused(three_tasks, group, message):
    with pytest.raises(LabelSpaceError, match=message):
        LabelSpace.build(list(three_tasks), [parse_group(group)])


def test_group_with_unknown_task_lists_known_tasks(three_tasks):
    with pytest.raises(UnknownTaskError, match="known tasks: a, b, c"):
        LabelSpace.build(list(three_tasks), [parse_group("zz:x=b:x")])


def test_json_round_trip_keeps_mapping_both_ways_and_statistics(three_tasks, tmp_path):
    space = LabelSpace.build(list(three_tasks), [parse_group("a:small=b:x")])
    space.save(tmp_path / "ls.json")
    data = json.loads((tmp_path / "ls.json").read_text())
    assert data["format_version"] == 2 and data["n_shared"] == 3
    assert data["shared_labels"][0]["members"] == {"a": "small", "b": "x", "c": "only"}
    assert LabelSpace.load(tmp_path / "ls.json") == space
    assert {e.id: e.shared for e in space.task("b").labels} == {1: 1, 2: 2, 3: 3}
    assert {e.id: e.shared for e in space.task("a").labels} == {1: 1, 2: 2}


def test_a_tampered_json_violating_a_constraint_is_refused(three_tasks, tmp_path):
    data = LabelSpace.build(list(three_tasks)).to_json()
    data["tasks"]["b"]["labels"][0]["shared"] = data["tasks"]["b"]["labels"][1]["shared"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(LabelSpaceError, match="two of its labels map to one shared label"):
        LabelSpace.load(tmp_path / "bad.json")


def test_table_lists_every_task_and_label(three_tasks):
    table = LabelSpace.build(list(three_tasks)).table()
    for name in ("big", "small", "x", "y", "z", "only"):
        assert name in table
    assert table.count("\n| ") == 3   # one row per shared label after the header


def test_task_without_any_foreground_is_refused(tmp_path):
    with pytest.raises(LabelSpaceError, match="no case contains any foreground label"):
        _stats(tmp_path, "empty", {"thing": 1}, [np.zeros((6, 6), dtype=np.uint8)], ending=".png")
