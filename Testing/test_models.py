"""Model folders: verification, fp16 storage, the model list, the demo's report."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from labelshare.cli import main
from labelshare.core.errors import ModelError
from labelshare.core.modelfolder import list_models, verify_folder
from labelshare.core.paths import user_models_dir
from labelshare.engine.models import environment_summary, load_model, save_model_folder


def test_model_folder_contents_and_card(tiny_model):
    names = {p.name for p in tiny_model.iterdir()}
    assert {"model.safetensors", "config.json", "labelspace.json", "manifest.json", "split.json", "metrics.json",
            "training_log.jsonl", "lineage.json", "README.md", "evaluation.csv", "training.json"} <= names
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    files = {p.relative_to(tiny_model).as_posix() for p in tiny_model.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {"manifest.json"} and "memory/memory.json" in files
    card = (tiny_model / "README.md").read_text()
    for task in ("phantom3d", "xray2d", "sides3d"):
        assert task in card
    assert "CC0 1.0 (generated)" in card
    lineage = json.loads((tiny_model / "lineage.json").read_text())
    assert lineage["parent"] is None and len(lineage["data"]["xray2d"]["fingerprint"]) == 64


def test_a_loaded_models_task_heads_are_computed_once(tiny_model):
    model = load_model(tiny_model, device="cpu")
    assert model.heads is model.heads and set(model.heads) == set(model.tasks)


def test_float16_weights_halve_the_file_and_keep_predictions(tiny_model, tmp_path):
    model = load_model(tiny_model, device="cpu")
    model.config.weights_dtype = "float16"
    half = tmp_path / "half"
    save_model_folder(half, model.network, model.config, model.labelspace)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (tiny_model / "model.safetensors").stat().st_size
    reloaded = load_model(half, device="cpu")
    images = torch.randn(2, 1, 32, 32)
    task = torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        assert torch.allclose(model.network(images, task), reloaded.network(images, task), atol=5e-2)


def test_extra_unlisted_file_is_ignored_but_a_listed_one_must_match(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model, tmp_path / "m")
    (folder / "notes.txt").write_text("my notes")
    verify_folder(folder)
    (folder / "README.md").write_text("edited")
    with pytest.raises(ModelError, match="README.md: contents do not match manifest.json"):
        verify_folder(folder)


def test_models_lists_valid_and_invalid_versions(tiny_model, tmp_path, capsys, monkeypatch):
    root = tmp_path / "store"
    shutil.copytree(tiny_model, root / "v1")
    broken = shutil.copytree(tiny_model, root / "v2")
    (broken / "model.safetensors").unlink()
    summaries = list_models([root])
    assert [s.valid for s in summaries] == [True, False]
    assert summaries[0].tasks == ["phantom3d", "xray2d", "sides3d"]
    assert "missing model.safetensors" in summaries[1].reason
    assert main(["models", "--root", str(root)]) == 0
    output = capsys.readouterr().out
    assert "v1  label-sharing  tasks: phantom3d, xray2d, sides3d" in output and "v2  INVALID" in output
    monkeypatch.setenv("LABELSHARE_HOME", str(tmp_path / "home"))
    assert user_models_dir() == tmp_path / "home" / "models"


@pytest.mark.slow
def test_demo_writes_report_tables_and_overlays(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--steps-per-epoch", "4", "--patch-pixels", "1024",
                 "--device", "cpu", "--progress", "quiet"]) == 0
    report = (out / "report.md").read_text()
    assert "## Label space" in report and "| shared | phantom3d | xray2d | sides3d |" in report
    assert sum(line.startswith("| phantom3d |") for line in report.splitlines()) == 4   # 3 labels + the mean
    for task in ("phantom3d", "xray2d", "sides3d"):
        png = out / "overlays" / f"{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"overlays/{task}.png" in report
    segmentations = list((out / "segmentations").rglob("*.*"))
    assert len(segmentations) == 3
    verify_folder(out / "model")
    assert np.isfinite(json.loads((out / "model" / "metrics.json").read_text())["mean_dice"]["xray2d"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes the CPU only where no GPU trains")
def test_the_training_machine_is_described_by_processor_vector_instructions_and_cores(tiny_model):
    described = environment_summary()["device"]
    assert described.startswith("CPU (") and torch.backends.cpu.get_cpu_capability() in described
    assert described.endswith(f", {os.cpu_count()} cores)")
    card = (tiny_model / "README.md").read_text()
    assert f"on {described}," in card  # the model card says where its training time was measured
