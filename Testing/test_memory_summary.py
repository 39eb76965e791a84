"""``labelshare-bench incremental-summary --memory``: the rehearsal-memory table's changes and paired standard errors
come from the runs' per-case scores (evaluation.csv of the run and of ``labelshare evaluate``), against the base and
against full replay, with the memory each run replayed from."""

from __future__ import annotations

import json
import math
import statistics

from labelshare_benchmarks.incremental import memory_gate
from labelshare_benchmarks.incremental.summarize import memory_summary

OLD_TASKS = ("hippocampus", "acdc", "mammo")


def write_run(folder, scores, steps=300, gate=None, memory_bytes=None):
    """A model folder as the summary reads it: scores = {task: [per-case Dice]} (one label per case)."""
    folder.mkdir(parents=True)
    rows = ["task,case,label,label_id,dice,hd95"]
    rows += [f"{task},{task}_{i:03d},l,1,{dice},1.0"
             for task, values in scores.items() for i, dice in enumerate(values)]
    (folder / "evaluation.csv").write_text("\n".join(rows) + "\n")
    (folder / "metrics.json").write_text(json.dumps(
        {"mean_dice": {task: statistics.fmean(values) for task, values in scores.items()}}))
    (folder / "training.json").write_text(json.dumps({"epochs": steps // 100, "steps_per_epoch": 100}))
    if gate is not None:
        (folder / "forgetting.json").write_text(json.dumps(gate))
    if memory_bytes is not None:
        (folder / "memory").mkdir()
        (folder / "memory" / "memory.json").write_text(json.dumps({"bytes": memory_bytes}))


def test_memory_rows_change_and_paired_error_against_base_and_full_replay(tmp_path):
    runs = tmp_path / "runs"
    base = {"hippocampus": [0.80, 0.90, 0.70], "acdc": [0.60, 0.70, 0.80], "mammo": [0.50, 0.55, 0.60]}
    write_run(runs / "base-3task", base)
    write_run(runs / "base-3task-mem48", base, memory_bytes=5_000_000)
    full = {"hippocampus": [0.80, 0.88, 0.70], "acdc": [0.61, 0.70, 0.80], "mammo": [0.50, 0.55, 0.60],
            "sunnybrook": [0.90, 0.80]}
    write_run(runs / "mem-sunnybrook-full", full, gate={"passed": True, "worst": {"task": "hippocampus",
                                                                                  "change": -0.0067}})
    # the memory-only run's own evaluation holds the new task; the old tasks come from labelshare evaluate
    write_run(runs / "mem-sunnybrook-48", {"sunnybrook": [0.85, 0.80]}, memory_bytes=6_000_000,
              gate={"passed": True, "worst": {"task": "acdc", "change": -0.005},
                    "scored_on": {"acdc": "the rehearsal memory's 32 gate slices"}})
    hippocampus_after = [0.78, 0.90, 0.67]
    for task, values in {**base, "hippocampus": hippocampus_after}.items():
        write_run(runs / "mem-sunnybrook-48.evaluation" / task, {task: values})
    (runs / "wallclock.tsv").write_text("mem-sunnybrook-full\t600.0\nmem-sunnybrook-48\t420.5\n")

    text = memory_summary(runs, tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "memory-results.json").read_text())
    assert [r["run"] for r in rows] == ["mem-sunnybrook-full", "mem-sunnybrook-48"]
    memory_row = rows[1]
    differences = [a - b for a, b in zip(hippocampus_after, base["hippocampus"], strict=True)]
    hippocampus = memory_row["old"]["hippocampus"]
    assert math.isclose(hippocampus["change"], statistics.fmean(differences))
    assert math.isclose(hippocampus["se"], statistics.stdev(differences) / math.sqrt(3))
    versus = [a - b for a, b in zip(hippocampus_after, full["hippocampus"], strict=True)]
    assert math.isclose(hippocampus["vs_full"], statistics.fmean(versus))
    assert memory_row["old"]["mammo"]["change"] == 0.0
    assert math.isclose(memory_row["new"]["vs_full"], statistics.fmean([0.85 - 0.90, 0.80 - 0.80]))
    assert memory_row["memory_mb"] == 5.0 and memory_row["new_memory_mb"] == 6.0
    assert memory_row["gate"] == {"passed": True, "worst_task": "acdc", "worst_change": -0.005, "scored_on": "memory"}
    assert memory_row["steps"] == 300 and memory_row["wallclock_s"] == 420.5
    assert rows[0]["memory_mb"] is None and rows[0]["gate"]["scored_on"] == "validation"
    line = next(s for s in text.splitlines() if s.startswith("| memory only, 48 slices per task |"))
    assert f"{100 * statistics.fmean(differences):+.1f} ± {100 * statistics.stdev(differences) / math.sqrt(3):.1f}" \
        in line and "passed (-0.5 acdc, memory)" in line and "| 5.00 |" in line


def test_a_row_repeated_with_another_seed_is_compared_with_full_replay_of_that_seed(tmp_path):
    runs = tmp_path / "runs"
    base = {"hippocampus": [0.80, 0.90], "acdc": [0.60, 0.70], "mammo": [0.50, 0.60]}
    write_run(runs / "base-3task", base)
    write_run(runs / "mem-sunnybrook-full", {**base, "sunnybrook": [0.90, 0.80]})
    write_run(runs / "mem-sunnybrook-full-seed1", {**base, "hippocampus": [0.70, 0.80], "sunnybrook": [0.85, 0.75]})
    write_run(runs / "mem-sunnybrook-48-seed1", {**base, "sunnybrook": [0.85, 0.75]})

    text = memory_summary(runs, tmp_path / "out")
    rows = {r["run"]: r for r in json.loads((tmp_path / "out" / "memory-results.json").read_text())}
    assert set(rows) == {"mem-sunnybrook-full", "mem-sunnybrook-full-seed1", "mem-sunnybrook-48-seed1"}
    seeded = rows["mem-sunnybrook-48-seed1"]
    assert seeded["description"].endswith("(seed 1)")
    assert math.isclose(seeded["old"]["hippocampus"]["vs_full"], 0.10)  # against seed 1's full replay, not seed 0's
    assert math.isclose(seeded["new"]["vs_full"], 0.0)
    # full replay ran with two seeds: their mean (hippocampus -5 and 0 points) and the gate count
    mean_line = next(s for s in text.splitlines() if s.startswith("| old tasks' folders (full replay) | 2 |"))
    assert "| -5.0 |" in mean_line and "| 0 of 2 |" in mean_line and "| 0.825 |" in mean_line


def test_the_memory_gate_benchmark_sees_no_change_of_a_model_against_itself(base_model, tmp_path):
    assert memory_gate.main(["--base", str(base_model), str(base_model), "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "memory-gate.json").read_text())
    assert {row["task"] for row in rows} == {"phantom3d", "xray2d"}
    for row in rows:
        assert row["gate_slices"] > 0 and row["validation_cases"] > 0
        assert row["validation_change"] == row["slice_mean_change"] == row["pooled_change"] == 0.0
        assert row["replay_change"] == 0.0
    assert "| v1 | phantom3d |" in (tmp_path / "memory-gate.md").read_text()
