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

from labelshare.core.errors import ModelError  # noqa: E402
from labelshare.core.paths import bundled_model_dirs, default_model_dir  # noqa: E402


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


def test_only_the_newest_version_of_each_lineage_is_listed_unless_all_are_asked_for(tmp_path):
    """Issue 27: the model list showed three versions of the same model with no description. A version that
    LabelShare Training publishes (``<lineage>-v<N>`` in the models folder) supersedes the bundled one."""
    store = ModelStore()
    bundled = [folder.name for folder in bundled_model_dirs()]
    lineage = store_module.version_of(bundled[0])[0]
    models = tmp_path / "models"
    shutil.copytree(default_model_dir(), models / f"{lineage}-v9")  # the user's update of the bundled model
    shutil.copytree(default_model_dir(), models / "liver-v1")
    names = [Path(s.path).name for s in store.available(models, all_versions=False)]
    assert names == [f"{lineage}-v9", "liver-v1"]
    assert [Path(s.path).name for s in store.available(models)] == [f"{lineage}-v9", *bundled, "liver-v1"]
    kept = store.available(models, all_versions=False, keep=[bundled_model_dirs()[-1]])  # a scene's older choice
    assert [Path(s.path).name for s in kept] == [f"{lineage}-v9", bundled[-1], "liver-v1"]
    assert store_module.version_of("liver-v12") == ("liver", 12) and store_module.version_of("x") == ("x", 1)


def test_use_this_model_is_taken_once_by_the_segmentation_module():
    store, heard = ModelStore(), []
    store.changed.subscribe(heard.append)
    assert store.take_chosen() is None
    store.choose("/models/liver-v2")
    assert heard == [Path("/models/liver-v2")]
    assert store.take_chosen() == Path("/models/liver-v2") and store.take_chosen() is None


def test_settings_both_modules_share(tmp_path, monkeypatch):
    from LabelShareLib import settings as settings_module
    from LabelShareLib.settings import DictSettings, Settings
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    store = DictSettings()
    settings = Settings(store)
    assert settings.models_folder == str(tmp_path / "home" / "models") and settings.added_model_folders == []
    settings.add_model_folder(tmp_path / "a")
    settings.add_model_folder(tmp_path / "a")
    assert Settings(store).added_model_folders == [str(tmp_path / "a")]  # one list, kept once
    store.setValue(settings_module.ADDED_MODEL_FOLDERS, "not json")  # edited by hand
    assert settings.added_model_folders == []
    assert settings.train_automatically_after == 0 and not settings.show_all_versions
    settings.show_all_versions, settings.train_automatically_after = True, 5
    assert Settings(store).show_all_versions and Settings(store).train_automatically_after == 5


def test_mirroring_is_refused_for_a_lateralised_task_with_the_engines_reason(tiny_model):
    """The Segmentation module disables its mirror box with this reason instead of failing at Apply."""
    store = ModelStore()
    assert "task 'sides3d' is lateralised" in store.mirroring_refused(tiny_model, "sides3d")
    assert store.mirroring_refused(tiny_model, "xray2d") == ""
