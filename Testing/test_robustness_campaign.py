"""The robustness campaign of issue #11 (``labelshare-bench robustness``) itself: its size, how it classifies an
outcome, and the helpers that make its bad inputs (the campaign's own run is in the README, not in the suite)."""

from __future__ import annotations

import json

from labelshare_benchmarks import robustness_campaign as campaign
from labelshare_benchmarks import robustness_fixtures as fixtures
from labelshare_benchmarks import robustness_kills as kill_runs
from labelshare_benchmarks import robustness_probes as probes
from labelshare_benchmarks import robustness_runner as runner


def test_the_campaign_has_at_least_100_bad_inputs_and_20_kills_each_named_once():
    bad_inputs = [p.name for p in campaign.all_bad_input_probes() if p.expect == "error"]
    worker_bad_inputs = [p.name for p in campaign.all_worker_probes() if p.expect == "error"]
    kills = [k.name for k in kill_runs.kills(0, dict.fromkeys(kill_runs.KILLS, 10.0))]
    assert len(bad_inputs) + len(worker_bad_inputs) >= 100
    assert len(kills) >= 20 and {k.split(" #")[0] for k in kills} >= {"kill: train", "kill: add-task",
                                                                        "kill: segment", "kill: collection"}
    names = bad_inputs + worker_bad_inputs + kills
    assert len(names) == len(set(names))


def test_outcomes_are_classified_from_status_and_stderr():
    one_line = "labelshare: error: /data/x.nii.gz: input image is truncated"
    assert runner.exit_outcome("error", 1, one_line) == ("clear error", one_line)
    assert runner.exit_outcome("error", 2, "usage: ...\nlabelshare train: error: argument --seed")[0] == \
        "clear error"
    assert runner.exit_outcome("error", 75, "labelshare: stopped: interrupted by SIGTERM")[0] == "clear error"
    assert runner.exit_outcome("error", 0, "")[0] == "wrongly accepted"
    assert runner.exit_outcome("error", 1, "Traceback (most recent call last):\n  ...\nKeyError: 'tag'")[0] == \
        "traceback"
    assert runner.exit_outcome("error", -15, "")[0] == "traceback"  # killed without a word
    assert runner.exit_outcome("error", 1, "something went wrong")[0] == "traceback"
    assert runner.exit_outcome("done", 0, "") == ("done", "")
    assert runner.exit_outcome("done", 1, one_line)[0] == "control failed"


def test_edit_json_keeps_the_changed_object_whatever_the_change_returns(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "heart": 1}}))
    fixtures.edit_json(path, lambda data: data["labels"].pop("background"))  # pop returns 0: not the new file
    assert json.loads(path.read_text()) == {"labels": {"heart": 1}}


def test_leftovers_name_temporary_files_and_staging_folders_with_nothing_to_resume(tmp_path):
    (tmp_path / ".m.partial").mkdir()
    (tmp_path / ".m.partial" / "split.json").write_text("{}")
    (tmp_path / ".n.partial" / ".checkpoint").mkdir(parents=True)
    (tmp_path / ".n.partial" / ".checkpoint" / "checkpoint.json").write_text("{}")
    assert runner.leftovers(tmp_path) == [".m.partial (a staging folder with nothing to resume)"]


def test_issue_31_probes_are_part_of_the_campaign_and_named_by_their_item():
    from labelshare_benchmarks import robustness_stops_and_checks as issue_31
    names = [p.name for p in campaign.all_bad_input_probes()] + [p.name for p in campaign.all_worker_probes()]
    added = [p.name for p in issue_31.bad_input_probes()] + [p.name for p in issue_31.worker_probes()]
    assert set(added) <= set(names) and all(name.startswith("31.") for name in added)
    assert all(p.says for p in issue_31.bad_input_probes() if p.expect == "error")  # each checks what it is told


def test_a_one_line_error_that_does_not_say_what_the_probe_asks_is_unclear(tmp_path):
    one_line = "labelshare: error: 2 of 3 images failed (1 done, 0 skipped, 2 failed)"
    assert runner.exit_outcome("error", 4, one_line)[0] == "clear error"  # a batch with failures
    said = probes.Probe("root missing", lambda f, d: ["models", "--root", str(d / "absent")],
                          says="no such folder")
    other = probes.Probe("root missing, another message", said.build, says="model folder does not exist")
    assert runner.run_probe(said, None, tmp_path / "said", 120).outcome == "clear error"
    assert runner.run_probe(other, None, tmp_path / "other", 120).outcome == "unclear error"
