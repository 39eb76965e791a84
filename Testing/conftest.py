"""Shared fixtures, made once per test session: synthetic task folders and two trained models (a tiny one of three
tasks; a two-task base model that add-task tests add to). A test that needs a network of its own is marked slow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labelshare.core import synthetic
from labelshare.core.config import TrainConfig
from labelshare.core.labelspace import LabelSpace
from labelshare.core.progress import Progress
from labelshare.core.tasks import TaskDataset
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training_run import train

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LABELSHARE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
REAL_TASKS = {"hippocampus": "msd_hippocampus", "acdc": "acdc_cardiac", "sunnybrook": "sunnybrook_lv",
              "mammo": "ddsm_mammo_tissue"}

TINY_CONFIG = dict(batch_size=6, epochs=1, steps_per_epoch=4, device="cpu", seed=0)


def real_task_dir(folder: str) -> Path:
    """A folder of ../shared/data, or a skip (with the reason) where the shared data is not on this machine."""
    path = SHARED_DATA / folder
    if not (path / "dataset.json").is_file():
        pytest.skip(f"real data not available: {path} is absent (set LABELSHARE_SHARED_DATA to ../shared/data)")
    return path


@pytest.fixture(scope="session")
def synthetic_tasks(tmp_path_factory) -> dict[str, Path]:
    """The three synthetic tasks (8 cases each), read-only for tests: copy before modifying."""
    return synthetic.write_tasks(tmp_path_factory.mktemp("synthetic"), cases=8)


@pytest.fixture(scope="session")
def synthetic_space(synthetic_tasks) -> LabelSpace:
    return LabelSpace.build([compute_statistics(TaskDataset.open(path, name))
                             for name, path in synthetic_tasks.items()])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synthetic_tasks, synthetic_space) -> Path:
    """A label-sharing model trained for a few steps on the synthetic tasks (valid folder, poor accuracy)."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    return train(list(synthetic_tasks.items()), synthetic_space, out, TrainConfig(**TINY_CONFIG),
                 progress=Progress("quiet"), command=["train", "(test fixture)"]).path


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, synthetic_tasks) -> Path:
    """phantom3d (3 labels, so n* = 3) + xray2d, trained long enough for Dice well above 0 (add-task's gate needs
    it): the model the add-task tests add to and update (valid folder; read-only for tests)."""
    tasks = [(name, synthetic_tasks[name]) for name in ("phantom3d", "xray2d")]
    space = LabelSpace.build([compute_statistics(TaskDataset.open(path, name)) for name, path in tasks])
    config = TrainConfig(batch_size=6, epochs=2, steps_per_epoch=20, device="cpu", seed=0)
    return train(tasks, space, tmp_path_factory.mktemp("base") / "v1", config, progress=Progress("quiet"),
                 command=["train", "(test fixture)"]).path
