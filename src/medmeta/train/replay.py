"""A fixed-size replay buffer: which past training images a continual learner may keep.

The buffer holds item ids (the caller maps them to images) and their class labels. Two policies decide
what stays once it is full:

- ``reservoir``: Vitter, "Random Sampling with a Reservoir", ACM TOMS 1985 (Algorithm R), as used for
  experience replay by Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019,
  arXiv:1902.10486. After ``n`` items the buffer is a uniform sample of them: each is held with probability
  ``capacity / n``, whatever the order.
- ``class_balanced``: class-balancing reservoir sampling (CBRS), Chrysakis and Moens, "Online Continual
  Learning from Imbalanced Data", ICML 2020. A new item of a class smaller than the largest one replaces a
  random item of a largest class; an item of a largest class replaces a random item of its own class with
  probability ``held / seen`` of that class (reservoir sampling within the class). Counts per class end
  equal (within one when the capacity does not divide).

Every choice comes from the buffer's own seeded generator: the same seed and items give the same buffer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from medmeta.config.continual import BufferPolicy


class ReplayBuffer:
    """At most `capacity` ``(item, label)`` pairs, kept by `policy`.

    Args:
        capacity: most items held.
        policy: ``reservoir`` or ``class_balanced`` (see the module docstring).
        seed: seeds every random choice.

    Example:
        >>> buffer = ReplayBuffer(4, "class_balanced", seed=0)
        >>> buffer.extend(range(6), [0, 0, 0, 1, 1, 1])
        >>> sorted(buffer.class_counts().items())
        [(0, 2), (1, 2)]
    """

    def __init__(self, capacity: int, policy: BufferPolicy, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"a replay buffer holds at least 1 item, got capacity {capacity}")
        if policy not in ("reservoir", "class_balanced"):
            raise ValueError(f"unknown buffer policy '{policy}': use reservoir or class_balanced")
        self.capacity, self.policy = capacity, policy
        self._rng = np.random.default_rng(seed)
        self._items: list[int] = []
        self._labels: list[int] = []
        self.seen = 0
        self._seen_per_class: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> np.ndarray:
        """``(len,)`` int64 ids of the items held, in slot order."""
        return np.asarray(self._items, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """``(len,)`` int64 labels of the items held."""
        return np.asarray(self._labels, dtype=np.int64)

    def class_counts(self) -> dict[int, int]:
        """Items held per label."""
        return dict(Counter(self._labels))

    def extend(self, items: Iterable[int], labels: Iterable[int]) -> None:
        """`add` each pair in order."""
        for item, label in zip(items, labels, strict=True):
            self.add(int(item), int(label))

    def add(self, item: int, label: int) -> None:
        """Offer one item: kept while there is room, else as the policy decides."""
        self.seen += 1
        self._seen_per_class[label] += 1
        if len(self._items) < self.capacity:
            self._items.append(item)
            self._labels.append(label)
            return
        slot = self._reservoir_slot() if self.policy == "reservoir" else self._balanced_slot(label)
        if slot is not None:
            self._items[slot], self._labels[slot] = item, label

    def _reservoir_slot(self) -> int | None:
        """Algorithm R: the ``n``-th item (``n = seen``) replaces slot ``j ~ U{0..n-1}`` when ``j < capacity``."""
        j = int(self._rng.integers(0, self.seen))
        return j if j < self.capacity else None

    def _balanced_slot(self, label: int) -> int | None:
        counts = Counter(self._labels)
        largest = max(counts.values())
        if counts.get(label, 0) < largest:  # evict a random item of a largest class
            biggest = sorted(c for c, n in counts.items() if n == largest)
            victim = biggest[int(self._rng.integers(0, len(biggest)))]
            return self._random_slot_of(victim)
        held, seen = counts[label], self._seen_per_class[label]
        if self._rng.random() < held / seen:  # reservoir sampling within the class
            return self._random_slot_of(label)
        return None

    def _random_slot_of(self, label: int) -> int:
        slots = [i for i, lab in enumerate(self._labels) if lab == label]
        return slots[int(self._rng.integers(0, len(slots)))]
