"""ACC, BWT and forgetting on accuracy matrices computed by hand (Lopez-Paz and Ranzato 2017; Chaudhry et
al. 2018), and the task matrix from per-class accuracies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmeta.eval.continual import (
    average_accuracy,
    backward_transfer,
    continual_scores,
    forgetting,
    per_class_accuracy,
    task_matrix,
)

NAN = math.nan
# R[t, i]: accuracy on stage i's test images after learning stage t (3 stages)
R = np.array(
    [
        [0.90, NAN, NAN],
        [0.60, 0.80, NAN],
        [0.50, 0.70, 0.95],
    ]
)
# stage 1 improves after stage 2, so the best accuracy of stage 1 is not its own diagonal
R_IMPROVING = np.array(
    [
        [0.60, NAN, NAN],
        [0.80, 0.70, NAN],
        [0.50, 0.90, 0.90],
    ]
)


def test_acc_is_the_mean_of_the_last_row() -> None:
    assert average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)  # 0.716667


def test_bwt_averages_last_row_minus_diagonal_over_earlier_stages() -> None:
    # ((0.50 - 0.90) + (0.70 - 0.80)) / 2 = (-0.40 - 0.10) / 2
    assert backward_transfer(R) == pytest.approx(-0.25)
    # ((0.50 - 0.60) + (0.90 - 0.70)) / 2 = (-0.10 + 0.20) / 2
    assert backward_transfer(R_IMPROVING) == pytest.approx(0.05)


def test_forgetting_drops_from_the_best_accuracy_a_stage_ever_had() -> None:
    # stage 1: max(0.90, 0.60) - 0.50 = 0.40; stage 2: 0.80 - 0.70 = 0.10
    assert forgetting(R) == pytest.approx(0.25)
    # stage 1: max(0.60, 0.80) - 0.50 = 0.30 (the best is after stage 2, not the diagonal);
    # stage 2: 0.70 - 0.90 = -0.20
    assert forgetting(R_IMPROVING) == pytest.approx(0.05)
    assert forgetting(R_IMPROVING) != pytest.approx(-backward_transfer(R_IMPROVING))


def test_one_stage_has_no_backward_transfer_or_forgetting() -> None:
    one = np.array([[0.7]])
    assert average_accuracy(one) == pytest.approx(0.7)
    assert math.isnan(backward_transfer(one)) and math.isnan(forgetting(one))


def test_per_class_accuracy_counts_each_class_and_marks_classes_without_images() -> None:
    target = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 2, 1, 0, 2])
    acc = per_class_accuracy(pred, target, n_classes=4)
    np.testing.assert_allclose(acc[:3], [2 / 4, 1 / 2, 1.0])
    assert math.isnan(acc[3])


def test_scores_from_class_accuracies_weigh_classes_and_stages_as_defined() -> None:
    # stage 0 brings classes 0, 1, 2; stage 1 brings class 3
    stage_of_class = np.array([0, 0, 0, 1])
    class_acc = np.array(
        [
            [0.9, 0.6, 0.9, NAN],
            [0.3, 0.3, 0.6, 1.0],
        ]
    )
    r = task_matrix(class_acc, stage_of_class)
    np.testing.assert_allclose(r, [[0.8, NAN], [0.4, 1.0]])
    s = continual_scores(class_acc, stage_of_class)
    # accuracy over the classes seen: each class once -> (0.3 + 0.3 + 0.6 + 1.0) / 4 = 0.55
    np.testing.assert_allclose(s.stage_accuracy, [0.8, 0.55])
    assert s.acc == pytest.approx((0.4 + 1.0) / 2)  # each stage once: 0.7
    assert s.bwt == pytest.approx(0.4 - 0.8)
    assert s.forgetting == pytest.approx(0.8 - 0.4)
    assert s.to_dict()["task_matrix"] == [
        [pytest.approx(0.8), None],
        [pytest.approx(0.4), pytest.approx(1.0)],
    ]
