"""``labelshare rank`` (labelshare/engine/ranking.py): the most uncertain image first, stable output, one model load."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from labelshare.core import synthetic
from labelshare.engine import ranking as ranking_module
from labelshare.cli import main
from labelshare.core.config import RankConfig, TrainConfig
from labelshare.core.errors import DataError, Interrupted
from labelshare.core.inputs import collect_inputs
from labelshare.core.labelspace import LabelSpace
from labelshare.core.progress import Progress, parse_event
from labelshare.core.ranking_table import read_ranking
from labelshare.core.tasks import TaskDataset
from labelshare.engine.models import load_model
from labelshare.engine.ranking import rank_cases
from labelshare.engine.statistics import compute_statistics
from labelshare.engine.training_run import train


@pytest.fixture(scope="module")
def xray_model(tmp_path_factory):
    """A model trained long enough on the synthetic 2D task to segment its easy images well (Dice ~0.95)."""
    root = tmp_path_factory.mktemp("xray")
    folder = synthetic.write_task(root, "xray2d", 8)
    space = LabelSpace.build([compute_statistics(TaskDataset.open(folder, "xray2d"))])
    config = TrainConfig(batch_size=8, epochs=1, steps_per_epoch=40, device="cpu", seed=0)
    return train([("xray2d", folder)], space, root / "model", config, progress=Progress("quiet"),
                 command=["(test fixture)"]).path


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """Four easy images like the training ones and one ambiguous image: the same anatomy, but lungs, heart and
    background only a few grey levels apart in the same noise."""
    folder = tmp_path_factory.mktemp("unlabelled")
    rng = np.random.default_rng(5)
    for index in range(4):
        image, _ = synthetic._xray_case(rng)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / f"easy_{index}.png"))
    _, label = synthetic._xray_case(rng)
    ambiguous = np.clip(synthetic._noisy(rng, label, {0: 140, 1: 110, 2: 125}, 18), 0, 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(ambiguous), str(folder / "ambiguous.png"))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("score", ["entropy", "tta"])
def test_the_ambiguous_image_ranks_above_the_easy_ones(xray_model, unlabelled, score):
    events = []
    config = RankConfig(task="xray2d", score=score, device="cpu")
    ranking = rank_cases(load_model(xray_model, device="cpu"), collect_inputs([unlabelled]), config,
                         Progress("quiet", callback=events.append))
    assert [case.name for case in ranking.cases][0] == "ambiguous"
    scores = [case.score for case in ranking.cases]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert scores[0] > 1.1 * scores[1]
    assert ranking.failures == [] and ranking.labels == ["lung_field", "heart"]
    assert all(case.voxels["lung_field"] > case.voxels["heart"] > 0 for case in ranking.cases)
    assert [e["index"] for e in events] == [1, 2, 3, 4, 5] and events[-1]["fraction"] == 1.0


@pytest.mark.slow
def test_the_ranking_table_is_stable_and_reads_back(xray_model, unlabelled, tmp_path):
    tables = []
    for run in range(2):
        output = tmp_path / f"ranking{run}.csv"
        assert main(["rank", "--model", str(xray_model), "--task", "xray2d", str(unlabelled), "-o", str(output),
                     "--device", "cpu", "--progress", "quiet"]) == 0
        tables.append([{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(output.open())])
    assert tables[0] == tables[1]
    assert list(tables[0][0]) == ["rank", "case", "score", "voxels_lung_field", "voxels_heart", "input"]
    assert [row["rank"] for row in tables[0]] == ["1", "2", "3", "4", "5"]
    cases = read_ranking(tmp_path / "ranking0.csv")
    assert [c.name for c in cases] == [row["case"] for row in tables[0]]
    assert cases[0].source == unlabelled / "ambiguous.png" and cases[0].voxels["heart"] > 0


@pytest.mark.slow
def test_a_failing_image_does_not_stop_the_others(xray_model, unlabelled, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    output = tmp_path / "ranking.csv"
    status = main(["rank", "--model", str(xray_model), "--task", "xray2d", str(unlabelled), str(broken), "-o",
                   str(output), "--device", "cpu", "--progress", "quiet"])
    assert status == 4
    assert "1 of 6 images failed; the others are ranked" in capsys.readouterr().err
    assert len(read_ranking(output)) == 5


@pytest.mark.slow
def test_no_table_when_every_image_failed(xray_model, tmp_path, capsys):
    """A table without a row would read as "nothing to annotate": rank writes none and says why (status 4)."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"not a png")
    status = main(["rank", "--model", str(xray_model), "--task", "xray2d", str(tmp_path / "a.png"),
                   str(tmp_path / "b.png"), "-o", str(tmp_path / "ranking.csv"), "--device", "cpu", "--progress",
                   "json"])
    captured = capsys.readouterr()
    assert status == 4 and not (tmp_path / "ranking.csv").exists()
    assert captured.err.strip().splitlines()[-1] == ("labelshare: error: all 2 images failed; no ranking table "
                                                     "written")
    last = parse_event(captured.out.strip().splitlines()[-1])
    assert (last["event"], last["ranked"], last["failed"]) == ("error", 0, 2)


@pytest.mark.slow
def test_a_signal_stops_the_whole_ranking(xray_model, unlabelled, tmp_path, capsys, monkeypatch):
    """SIGINT/SIGTERM (Interrupted, raised where the command is) is not one image's failure: the ranking stops,
    writes no table and says how to continue (status 75)."""
    scored = []

    def interrupted_at_the_second_image(segmenter, image, *args):
        scored.append(image)
        if len(scored) == 2:
            raise Interrupted("interrupted by SIGTERM")
        return score_image(segmenter, image, *args)
    score_image = ranking_module._score_image
    monkeypatch.setattr(ranking_module, "_score_image", interrupted_at_the_second_image)
    status = main(["rank", "--model", str(xray_model), "--task", "xray2d", str(unlabelled), "-o",
                   str(tmp_path / "ranking.csv"), "--device", "cpu", "--progress", "quiet"])
    assert status == 75 and len(scored) == 2 and not (tmp_path / "ranking.csv").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "labelshare: stopped: interrupted by SIGTERM; nothing was written; repeat the command")


def test_a_bad_ranking_table_is_one_line_error(tmp_path):
    table = tmp_path / "other.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="other.csv: not a ranking table of labelshare rank"):
        read_ranking(table)


@pytest.mark.slow
def test_auto_scores_by_mirroring_only_where_the_task_allows_it(xray_model, unlabelled):
    assert RankConfig(task="t").score == "auto"
    assert RankConfig(task="t").score_for(lateralised=True) == "entropy"
    assert RankConfig(task="t").score_for(lateralised=False) == "tta"
    assert RankConfig(task="t", score="entropy").score_for(lateralised=False) == "entropy"
    ranking = rank_cases(load_model(xray_model, device="cpu"), collect_inputs([unlabelled / "easy_0.png"]),
                         RankConfig(task="xray2d", device="cpu"))
    assert ranking.score == "tta" and [case.name for case in ranking.cases] == ["easy_0"]
