"""The replay buffer: reservoir sampling keeps a uniform, seeded sample under its size cap; the
class-balanced policy keeps equal counts per class."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medmeta.train.replay import ReplayBuffer


def _reservoir(n: int, capacity: int, seed: int) -> ReplayBuffer:
    buffer = ReplayBuffer(capacity, "reservoir", seed=seed)
    buffer.extend(range(n), [i % 3 for i in range(n)])
    return buffer


def test_a_buffer_with_room_keeps_every_item_in_order() -> None:
    for policy in ("reservoir", "class_balanced"):
        buffer = ReplayBuffer(10, policy, seed=0)  # type: ignore[arg-type]
        buffer.extend(range(7), [0, 1, 2, 0, 1, 2, 0])
        assert buffer.items.tolist() == list(range(7))
        assert buffer.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_reservoir_never_holds_more_than_its_capacity_and_labels_follow_their_items() -> None:
    buffer = _reservoir(100, 7, seed=3)
    assert len(buffer) == 7 and buffer.seen == 100
    assert len(set(buffer.items.tolist())) == 7
    assert buffer.labels.tolist() == [i % 3 for i in buffer.items.tolist()]


def test_reservoir_is_deterministic_in_its_seed() -> None:
    assert _reservoir(50, 5, seed=1).items.tolist() == _reservoir(50, 5, seed=1).items.tolist()
    assert any(
        _reservoir(50, 5, seed=1).items.tolist() != _reservoir(50, 5, seed=s).items.tolist()
        for s in range(2, 6)
    )


def test_reservoir_keeps_each_item_with_probability_capacity_over_n() -> None:
    n, capacity, runs = 20, 5, 4000
    kept = Counter(i for seed in range(runs) for i in _reservoir(n, capacity, seed).items.tolist())
    freq = np.array([kept[i] / runs for i in range(n)])
    assert (freq > 0).all(), "every item, first or last, can be kept"
    # binomial sd of a frequency: sqrt(0.25 * 0.75 / 4000) = 0.0068; 5 sd
    np.testing.assert_allclose(freq, capacity / n, atol=0.035)
    # a sample biased to early or late items would fail this: the first and last halves are kept alike
    assert abs(freq[:10].mean() - freq[10:].mean()) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_balanced_keeps_equal_counts_per_class_as_classes_arrive_stage_by_stage(seed: int) -> None:
    buffer = ReplayBuffer(30, "class_balanced", seed=seed)
    rng = np.random.default_rng(seed)
    item = 0
    for stage_classes, per_class in (([0, 1, 2, 3, 4, 5, 6, 7], 5), ([8, 9, 10, 11], 5), ([12, 13, 14], 10)):
        labels = rng.permutation(np.repeat(stage_classes, per_class))
        buffer.extend(range(item, item + len(labels)), labels)
        item += len(labels)
        counts = buffer.class_counts()
        assert len(buffer) <= 30
        seen = len(counts)
        if 30 % seen == 0:  # equal counts when the capacity divides
            assert set(counts.values()) == {30 // seen}, counts
        else:
            assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert buffer.class_counts() == {c: 2 for c in range(15)}


def test_class_balanced_never_evicts_a_minority_class_for_a_majority_one() -> None:
    buffer = ReplayBuffer(6, "class_balanced", seed=0)
    buffer.extend(range(6), [0] * 6)
    buffer.add(100, 1)  # the rare class gets a slot from the largest class
    buffer.extend(range(200, 260), [0] * 60)  # many more of class 0 replace only class 0 items
    assert buffer.class_counts() == {0: 5, 1: 1}
    assert 100 in buffer.items.tolist()


def test_a_bad_capacity_or_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 item"):
        ReplayBuffer(0, "reservoir", seed=0)
    with pytest.raises(ValueError, match="unknown buffer policy 'fifo'"):
        ReplayBuffer(3, "fifo", seed=0)  # type: ignore[arg-type]
