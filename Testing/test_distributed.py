"""Training under torchrun: two gloo processes on the CPU, one model folder written by rank 0."""

import json
import os
import subprocess
import sys

import pytest

from labelshare.core.progress import parse_event
from labelshare.engine.models import load_model


@pytest.mark.slow
def test_torchrun_two_processes_train_one_model(tmp_path, synthetic_tasks, synthetic_space):
    space_path = tmp_path / "ls.json"
    synthetic_space.save(space_path)
    out = tmp_path / "ddp-model"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "labelshare", "train", "--labelspace", str(space_path), "--out", str(out), "--epochs", "2",
               "--steps-per-epoch", "3", "--batch-size", "8", "--device", "cpu",
               "--progress", "json"]
    for name, path in synthetic_tasks.items():
        command += ["--task", f"{name}={path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    events = [e for e in map(parse_event, result.stdout.splitlines()) if e]
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 1 and done[0]["output"] == str(out)          # only rank 0 reports
    assert len([e for e in events if e["event"] == "metrics"]) == 2    # one validation per epoch, rank 0 only
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["environment"]["world_size"] == 2
    load_model(out, device="cpu")
