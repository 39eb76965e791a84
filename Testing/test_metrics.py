"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from labelshare.core.scores import CaseScore, Evaluation
from labelshare.engine.metrics import dice_per_label, hd95_per_label


def test_dice_matches_hand_computation():
    reference = np.zeros((10, 10), dtype=np.uint8)
    prediction = np.zeros((10, 10), dtype=np.uint8)
    reference[0:4, 0:4] = 1          # 16 px
    prediction[0:4, 2:6] = 1         # 16 px, 8 overlap -> 2*8/32 = 0.5
    reference[6:8, 6:8] = 2          # 4 px, prediction misses it -> 0
    prediction[9, 9] = 3             # label 3 only predicted -> 0
    dice = dice_per_label(prediction, reference, [1, 2, 3, 4])
    assert dice[1] == pytest.approx(0.5)
    assert dice[2] == 0.0
    assert dice[3] == 0.0
    assert math.isnan(dice[4])       # absent from both: NaN, excluded from means


def test_hd95_matches_hand_computation_with_spacing():
    reference = np.zeros((1, 5, 20), dtype=np.uint8)
    prediction = np.zeros((1, 5, 20), dtype=np.uint8)
    reference[0, 2, 2] = 1
    prediction[0, 2, 5] = 1          # one point each, 3 columns apart
    assert hd95_per_label(prediction, reference, [1])[1] == pytest.approx(3.0)
    assert hd95_per_label(prediction, reference, [1], spacing=(1.0, 1.0, 0.5))[1] == pytest.approx(1.5)
    reference[0, 2, 2:5] = 1
    prediction[0, 2, 5:8] = 1        # segments of 3: distances to the other segment are 3, 2, 1 in each direction
    # HD95 = max over both directions of the 95th percentile (linear interpolation) of [1, 2, 3] = 2.9
    assert hd95_per_label(prediction, reference, [1])[1] == pytest.approx(2.9, abs=1e-5)
    assert math.isnan(hd95_per_label(prediction, np.zeros_like(reference), [1])[1])


def test_summary_means_skip_nan_and_average_labels():
    evaluation = Evaluation([CaseScore("t", "c1", "a", 1, 0.8, 2.0), CaseScore("t", "c2", "a", 1, 0.6, 4.0),
                             CaseScore("t", "c1", "b", 2, float("nan"), float("nan")),
                             CaseScore("t", "c2", "b", 2, 0.4, 1.0)])
    summary = evaluation.summary()["t"]
    assert summary["a"]["dice_mean"] == pytest.approx(0.7) and summary["a"]["dice_sd"] == pytest.approx(0.1)
    assert summary["b"]["n"] == 1 and summary["b"]["dice_mean"] == pytest.approx(0.4)
    assert evaluation.mean_dice()["t"] == pytest.approx(0.55)
    assert "| t | a | 2 | 0.700 ± 0.100 | 3.00 ± 1.00 |" in evaluation.to_markdown()
    assert evaluation.to_csv().splitlines()[3] == "t,c1,b,2,nan,nan"
