"""The model store both modules share (LabelShareLib.store) and its change notification (LabelShareLib.signals):
each folder is hashed once per session unless its files change, a folder that failed keeps its reason until it is
fixed, and subscribers hear about new versions. Runs on a copy of the bundled model (no training, no torch)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LabelShareSegmentation"))
from LabelShareLib import store as store_module  # noqa: E402
from LabelShareLib.signals import Signal  # noqa: E402
from LabelShareLib.store import ModelStore, default_store  # noqa: E402

from labelshare.errors import ModelError  # noqa: E402
from labelshare.paths import bundled_model_dirs, default_model_dir  # noqa: E402


@pytest.fixture
def model(tmp_path) -> Path:
    """A copy of the bundled model as version 1 in a models folder."""
    bundled = default_model_dir()
    assert bundled is not None, "no default model under LabelShareSegmentation/Resources/Models"
    return Path(shutil.copytree(bundled, tmp_path / "models" / "bundled-copy-v1"))


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """Names of the folders the engine's check (which hashes every file) ran on, in order."""
    calls = []
    check = store_module.verify_folder

    def counting(path):
        calls.append(Path(path).name)
        return check(path)
    monkeypatch.setattr(store_module, "verify_folder", counting)
    return calls


def test_each_folder_is_hashed_once_per_session_however_it_is_reached(model, hashed, tmp_path):
    store = ModelStore()
    bundled = [folder.name for folder in bundled_model_dirs()]
    listed = store.available(model.parent)
    assert [Path(s.path).name for s in listed] == [*bundled, model.name] and all(s.valid for s in listed)
    assert hashed == [*bundled, model.name]
    # model list refreshes, the task list, the labels line and Apply's check all use the cached result
    for _ in range(3):
        store.available(model.parent)
    summary = store.summary(model)
    assert summary.tasks == listed[-1].tasks and summary.path == model and summary.created == listed[-1].created
    assert store.models_in(model) == [summary] and store.label_space(model).task_names == summary.tasks
    assert [label.name for label in store.task_labels(model, "acdc")] == ["rv_cavity", "myocardium", "lv_cavity"]
    link = tmp_path / "link-to-model"  # another path to the same folder: same check (keyed by the resolved path)
    link.symlink_to(model, target_is_directory=True)
    assert store.summary(link).valid and store.summary(link).path == link
    assert hashed == [*bundled, model.name]

    store.forget(model)
    assert store.summary(model).valid and hashed == [*bundled, model.name, model.name]


def test_a_changed_folder_is_checked_again_and_a_failed_one_until_it_is_fixed(model, hashed):
    store = ModelStore()
    assert store.summary(model).valid and len(hashed) == 1
    manifest = model / "manifest.json"  # a version rewritten in place gets a new manifest
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert store.summary(model).valid and len(hashed) == 2

    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "ab") as stream:
        stream.write(b"corrupt")
    broken = store.summary(model)
    assert not broken.valid and "do not match manifest.json" in broken.reason and len(hashed) == 3
    assert store.summary(model).reason == broken.reason and len(hashed) == 3, "a failed check is cached too"
    with pytest.raises(ModelError, match="do not match manifest.json"):
        store.verify(model)
    os.truncate(weights, size)  # fixed: same contents, new time
    assert store.summary(model).valid and len(hashed) == 4

    (model / "config.json").unlink()
    assert "missing config.json" in store.summary(model).reason and len(hashed) == 5


def test_shared_store_serves_both_modules():
    assert default_store() is default_store() is store_module.default_store()
    assert isinstance(default_store(), ModelStore) and isinstance(default_store().changed, Signal)


def test_subscribers_hear_every_notification_until_they_unsubscribe(caplog):
    heard = []

    class Widget:
        def onModelsChanged(self, model=None):
            heard.append(("widget", model))

    widget = Widget()
    signal = Signal("the model store")
    signal.subscribe(widget.onModelsChanged)
    signal.subscribe(widget.onModelsChanged)  # a second subscribe adds nothing

    def broken(model=None):
        raise RuntimeError("this widget is gone")
    signal.subscribe(broken)
    signal.subscribe(lambda model=None: heard.append(("after", model)))
    assert len(signal) == 3
    with caplog.at_level(logging.ERROR):
        signal.notify("liver-v2")
    assert heard == [("widget", "liver-v2"), ("after", "liver-v2")], "a failing subscriber does not stop the rest"
    assert "this widget is gone" in caplog.text and "the model store" in caplog.text

    signal.unsubscribe(widget.onModelsChanged)  # another bound-method object of the same widget method
    signal.unsubscribe(broken)
    signal.unsubscribe(broken)  # not subscribed any more: nothing happens
    signal.notify("liver-v3")
    assert heard[2:] == [("after", "liver-v3")]
