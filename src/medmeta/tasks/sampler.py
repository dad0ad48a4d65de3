"""Seeded N-way K-shot episode samplers over a preloaded `ImageDataset`.

Episode ``i`` of a sampler with seed ``s`` depends only on ``(s, i)``: samplers are random-access, so a
run can be resumed, split across workers or repeated bit for bit. Sampling is index arithmetic on a uint8
array: no file is decoded and no float conversion is done here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medmeta.data.datasets import ImageDataset, check_training_domains
from medmeta.errors import ConfigError, DataError
from medmeta.tasks.base import SeededSampler
from medmeta.tasks.episode import Episode


class EpisodeSampler(SeededSampler[Episode]):
    """Draws N-way K-shot Q-query episodes from one domain.

    Args:
        dataset: the images to draw from.
        n_way: classes per episode; None means every class of the dataset (a 4-class domain gives
            4-way episodes).
        n_shot: support images per class.
        n_query: query images per class.
        seed: base seed; episode ``i`` is drawn from ``numpy.random.default_rng((seed, i))``.
        n_episodes: length when iterated.

    Raises:
        DataError: fewer classes than `n_way`, or fewer than ``n_shot + n_query`` images in a class.

    Example:
        >>> from medmeta.data.synthetic import make_synthetic
        >>> sampler = EpisodeSampler(make_synthetic(), n_way=5, n_shot=1, n_query=3, seed=0)
        >>> sampler.episode(0).support_images.shape
        torch.Size([5, 3, 64, 64])
    """

    def __init__(
        self,
        dataset: ImageDataset,
        n_way: int | None,
        n_shot: int,
        n_query: int,
        *,
        seed: int = 0,
        n_episodes: int = 100,
    ) -> None:
        if n_shot < 1:
            raise DataError(f"n_shot must be >= 1, got {n_shot}")
        if n_query < 1:
            raise DataError(f"n_query must be >= 1, got {n_query}")
        n_way = dataset.n_classes if n_way is None else n_way
        if n_way < 2:
            raise DataError(f"n_way must be >= 2, got {n_way}")
        need = n_shot + n_query
        counts = np.bincount(dataset.labels, minlength=dataset.n_classes)
        small = [(dataset.class_names[c], int(n)) for c, n in enumerate(counts) if n < need]
        if small:
            listed = ", ".join(f"'{name}' has {n} images" for name, n in small[:4])
            more = f" and {len(small) - 4} more classes" if len(small) > 4 else ""
            raise DataError(
                f"{dataset.display_name}: {listed}{more}, fewer than n_shot + n_query = "
                f"{n_shot} + {n_query}: lower --n-shot/--n-query or add images to that class"
            )
        if dataset.n_classes < n_way:
            raise DataError(
                f"{dataset.display_name} has {dataset.n_classes} classes, fewer than n_way={n_way}: "
                "lower --n-way, use --n-way all, or add classes"
            )
        self.dataset = dataset
        self.n_way = n_way
        self.n_shot = n_shot
        self.n_query = n_query
        self.seed = seed
        self.n_episodes = n_episodes
        self._class_idx = [dataset.indices_of_class(c) for c in range(dataset.n_classes)]
        self._support_labels = torch.arange(n_way).repeat_interleave(n_shot)  # (n_way * n_shot,)
        self._query_labels = torch.arange(n_way).repeat_interleave(n_query)  # (n_way * n_query,)

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dataset indices of episode `index`: ``(support (n_way*n_shot,), query (n_way*n_query,), classes)``."""
        rng = np.random.default_rng((self.seed, index))
        n_classes = len(self._class_idx)
        classes = (
            rng.choice(n_classes, self.n_way, replace=False)
            if self.n_way < n_classes
            else (rng.permutation(n_classes))
        )
        k = self.n_shot + self.n_query
        picks = np.stack(
            [self._class_idx[c][rng.choice(len(self._class_idx[c]), k, replace=False)] for c in classes]
        )  # (n_way, n_shot + n_query)
        return picks[:, : self.n_shot].reshape(-1), picks[:, self.n_shot :].reshape(-1), classes

    def episode(self, index: int) -> Episode:
        """Episode number `index` (uint8 images, labels in class order of ``class_ids``)."""
        support_idx, query_idx, classes = self.indices(index)
        images = self.dataset.images
        return Episode(
            support_images=torch.from_numpy(images[support_idx]),  # (n_way*n_shot, C, H, W)
            support_labels=self._support_labels,
            query_images=torch.from_numpy(images[query_idx]),  # (n_way*n_query, C, H, W)
            query_labels=self._query_labels,
            class_ids=torch.from_numpy(classes.astype(np.int64)),
        )


class MultiDomainSampler(SeededSampler[Episode]):
    """Episodes from several domains: each episode (or each batch) comes from one domain.

    With ``n_way=None`` each episode has every class of its domain (variable ways: a 4-class domain
    gives 4-way episodes); with a number, every domain must have at least that many classes.

    Args:
        datasets: one dataset per domain.
        n_way: classes per episode (None: all classes of the chosen domain).
        n_shot: support images per class.
        n_query: query images per class.
        seed: base seed.
        n_episodes: length when iterated.
        weights: probability of each domain (default: uniform).
    """

    def __init__(
        self,
        datasets: Sequence[ImageDataset],
        n_way: int | None,
        n_shot: int,
        n_query: int,
        *,
        seed: int = 0,
        n_episodes: int = 100,
        weights: Sequence[float] | None = None,
    ) -> None:
        check_training_domains(datasets)
        self.samplers = [
            EpisodeSampler(
                d,
                n_way,
                n_shot,
                n_query,
                seed=seed + 7919 * (i + 1),
                n_episodes=n_episodes,
            )
            for i, d in enumerate(datasets)
        ]
        w = np.ones(len(datasets)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(datasets),) or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"domain weights {list(w)} must be one non-negative number per domain")
        self.weights = w / w.sum()
        self.seed = seed
        self.n_episodes = n_episodes

    def domain_of(self, index: int) -> int:
        """Which domain episode (or batch) `index` comes from."""
        if len(self.samplers) == 1:
            return 0
        return int(np.random.default_rng((self.seed, index, 1)).choice(len(self.samplers), p=self.weights))

    def episode(self, index: int) -> Episode:
        return self.samplers[self.domain_of(index)].episode(index)

    def batch(self, index: int, size: int, positions: Sequence[int] | None = None) -> list[Episode]:
        """Batch `index` of `size` episodes, all from one domain so they stack (`positions`: only those)."""
        sampler = self.samplers[self.domain_of(index)]
        return [sampler.episode(index * size + t) for t in (range(size) if positions is None else positions)]


def queries_per_class(test: ImageDataset, n_shot: int, n_query: int, owner: str, fix: str) -> int:
    """Queries per class for `n_shot`-shot test episodes of every class of `test`: `n_query`, or fewer
    when the smallest class has fewer than ``n_shot + n_query`` images.

    Args:
        owner: what `test` belongs to, for the message (``"domain 'x'"``, ``"site 'x'"``).
        fix: what to do instead, for the message.

    Raises:
        ConfigError: a test class has no image left for a query after `n_shot` support images.
    """
    counts = test.class_counts()
    smallest = min(counts, key=lambda c: counts[c])
    fits = counts[smallest] - n_shot
    if fits < 1:
        raise ConfigError(
            f"{owner}: test class '{smallest}' has {counts[smallest]} images, too few for {n_shot}-shot "
            f"episodes with at least one query: {fix}"
        )
    return min(n_query, fits)
