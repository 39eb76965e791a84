"""The robustness campaign of issue #11 (``labelshare-bench robustness``) itself: its size, how it classifies an
outcome, and the helpers that make its bad inputs (the campaign's own run is in the README, not in the suite)."""

from __future__ import annotations

import json

from labelshare_benchmarks import robustness_campaign as campaign


def test_the_campaign_has_at_least_100_bad_inputs_and_20_kills_each_named_once():
    bad_inputs = [p.name for p in campaign.bad_input_probes() if p.expect == "error"]
    worker_bad_inputs = [p.name for p in campaign.worker_probes() if p.expect == "error"]
    kills = [k.name for k in campaign.kills(0, dict.fromkeys(campaign.KILLS, 10.0))]
    assert len(bad_inputs) + len(worker_bad_inputs) >= 100
    assert len(kills) >= 20 and {k.split(" #")[0] for k in kills} >= {"kill: train", "kill: add-task",
                                                                        "kill: segment", "kill: collection"}
    names = bad_inputs + worker_bad_inputs + kills
    assert len(names) == len(set(names))


def test_outcomes_are_classified_from_status_and_stderr():
    one_line = "labelshare: error: /data/x.nii.gz: input image is truncated"
    assert campaign.exit_outcome("error", 1, one_line) == ("clear error", one_line)
    assert campaign.exit_outcome("error", 2, "usage: ...\nlabelshare train: error: argument --seed")[0] == \
        "clear error"
    assert campaign.exit_outcome("error", 75, "labelshare: stopped: interrupted by SIGTERM")[0] == "clear error"
    assert campaign.exit_outcome("error", 0, "")[0] == "wrongly accepted"
    assert campaign.exit_outcome("error", 1, "Traceback (most recent call last):\n  ...\nKeyError: 'tag'")[0] == \
        "traceback"
    assert campaign.exit_outcome("error", -15, "")[0] == "traceback"  # killed without a word
    assert campaign.exit_outcome("error", 1, "something went wrong")[0] == "traceback"
    assert campaign.exit_outcome("done", 0, "") == ("done", "")
    assert campaign.exit_outcome("done", 1, one_line)[0] == "control failed"


def test_edit_json_keeps_the_changed_object_whatever_the_change_returns(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "heart": 1}}))
    campaign.edit_json(path, lambda data: data["labels"].pop("background"))  # pop returns 0: not the new file
    assert json.loads(path.read_text()) == {"labels": {"heart": 1}}


def test_leftovers_name_temporary_files_and_staging_folders_with_nothing_to_resume(tmp_path):
    (tmp_path / ".m.partial").mkdir()
    (tmp_path / ".m.partial" / "split.json").write_text("{}")
    (tmp_path / ".n.partial" / ".checkpoint").mkdir(parents=True)
    (tmp_path / ".n.partial" / ".checkpoint" / "checkpoint.json").write_text("{}")
    assert campaign.leftovers(tmp_path) == [".m.partial (a staging folder with nothing to resume)"]
