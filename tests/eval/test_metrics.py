"""Episode metrics against scikit-learn, and the 95% confidence interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from medmeta.eval.metrics import (
    batch_episode_metrics,
    calibration_bins,
    confusion,
    ece_from_bins,
    episode_metrics,
    mean_ci,
    ovr_auc,
)


def _episodes(
    t: int = 20, n_query: int = 12, n_way: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.arange(n_way).repeat_interleave(n_query // n_way).expand(t, -1).contiguous()
    logits = torch.randn(t, n_query, n_way, generator=g) + 1.5 * torch.nn.functional.one_hot(target, n_way)
    return logits, target


def test_every_metric_matches_scikit_learn_episode_by_episode() -> None:
    logits, target = _episodes()
    ours = batch_episode_metrics(logits, target)
    for t in range(len(logits)):
        y, probs = target[t].numpy(), torch.softmax(logits[t].double(), -1).numpy()
        pred = probs.argmax(1)
        assert ours["accuracy"][t] == pytest.approx(float((pred == y).mean()))
        assert ours["balanced_accuracy"][t] == pytest.approx(balanced_accuracy_score(y, pred))
        assert ours["macro_f1"][t] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
        assert ours["auc"][t] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_auc_counts_tied_scores_as_one_half_like_scikit_learn() -> None:
    probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]])
    target = torch.tensor([[0, 1, 0, 1, 1]])
    expected = roc_auc_score(target[0].numpy(), probs[0, :, 1].numpy())
    assert float(ovr_auc(probs, target)[0]) == pytest.approx(expected)


def test_auc_is_nan_when_no_class_has_both_positives_and_negatives() -> None:
    assert math.isnan(float(ovr_auc(torch.full((1, 3, 2), 0.5), torch.zeros(1, 3, dtype=torch.long))[0]))


def test_ece_matches_a_hand_computed_reliability_table() -> None:
    # confidences 0.9, 0.9 (one right) fall in bin (13/15, 14/15]; 0.6 (right) falls in (8/15, 9/15]
    probs = torch.tensor([[[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]]])
    target = torch.tensor([[0, 0, 0]])
    expected = (abs(1 - 1.8) + abs(1 - 0.6)) / 3
    assert float(ece_from_bins(calibration_bins(probs, target))[0]) == pytest.approx(expected)
    logits = probs.log()
    assert episode_metrics(logits[0], target[0])["ece"] == pytest.approx(expected)


def test_a_confidence_of_one_falls_in_the_last_bin() -> None:
    bins = calibration_bins(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[0]]), n_bins=10)
    assert bins[0, -1, 0] == 1 and bins[0, :-1, 0].sum() == 0


def test_pooled_ece_sums_the_bins_of_all_episodes() -> None:
    logits, target = _episodes(t=5)
    probs = torch.softmax(logits.double(), -1)
    pooled = ece_from_bins(calibration_bins(probs, target).sum(0))
    flat = calibration_bins(probs.reshape(1, -1, probs.shape[-1]), target.reshape(1, -1))[0]
    assert float(pooled) == pytest.approx(float(ece_from_bins(flat)))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_and_f1_average_only_classes_present_in_the_query() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]])  # predicts 0, 1, 2
    target = torch.tensor([[0, 1, 1]])  # class 2 absent from the query
    ours = batch_episode_metrics(logits, target)
    y, pred = target[0].numpy(), np.array([0, 1, 2])
    assert float(ours["balanced_accuracy"][0]) == pytest.approx(balanced_accuracy_score(y, pred))
    assert float(ours["macro_f1"][0]) == pytest.approx(f1_score(y, pred, labels=[0, 1], average="macro"))


def test_confusion_counts_true_rows_and_predicted_columns() -> None:
    cm = confusion(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_single_episode_metrics_equal_the_batched_ones() -> None:
    logits, target = _episodes(t=3)
    batched = batch_episode_metrics(logits, target)
    single = episode_metrics(logits[1], target[1])
    assert set(single) == {"accuracy", "balanced_accuracy", "macro_f1", "auc", "ece"}
    for k, v in single.items():
        assert v == pytest.approx(float(batched[k][1]))


def test_mismatched_logits_and_targets_are_refused_with_their_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        batch_episode_metrics(torch.zeros(2, 3, 4), torch.zeros(2, 5, dtype=torch.long))


def test_ten_thousand_episodes_are_scored_in_seconds() -> None:
    import time

    logits, target = _episodes(t=10_000, n_query=75, n_way=5)
    start = time.perf_counter()
    batch_episode_metrics(logits, target)
    assert time.perf_counter() - start < 10.0


def test_mean_ci_is_the_normal_approximation_with_the_sample_std() -> None:
    mean, half = mean_ci([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5
    assert half == pytest.approx(1.96 * np.std([0, 1, 1, 0], ddof=1) / 2)
    assert mean_ci([0.7]) == (0.7, 0.0)
    assert all(math.isnan(x) for x in mean_ci([]))
