"""Cached evaluation: embed each test image once, then score thousands of episodes from the features.

For a method whose backbone does not change per task (``frozen_backbone``), an episode's logits depend
on its images only through their backbone features, and in eval mode a feature does not depend on the
rest of its batch. So the features of every image the episodes use are computed once, and each episode
is scored by gathering rows of that table and calling the method's ``logits_from_features`` on a stack
of episodes. Episodes are the sampler's own (``sampler.indices(i)``), so cached and uncached evaluation
see identical episodes; their logits agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from medmeta.methods.base import FewShotMethod
from medmeta.methods.functional import embed
from medmeta.tasks.sampler import EpisodeSampler

#: Largest ``episodes * n_query * n_way * d`` scored in one call: keeps the gathered features of a
#: chunk small enough to stay in cache, and pairwise tensors (Relation Networks) near 16 MB.
PAIR_BUDGET = 4_000_000
#: Input values per embedding batch (3x64x64 images: 244 per batch; the first Conv4 layer then holds ~250 MB).
PIXEL_BUDGET = 3_000_000


def episode_indices(sampler: EpisodeSampler, n_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices of episodes ``0..n_episodes-1``.

    Returns:
        ``(support (n_episodes, n_way * n_shot), query (n_episodes, n_way * n_query))`` int64 arrays.
    """
    support = np.empty((n_episodes, sampler.n_way * sampler.n_shot), dtype=np.int64)
    query = np.empty((n_episodes, sampler.n_way * sampler.n_query), dtype=np.int64)
    for i in range(n_episodes):
        support[i], query[i], _ = sampler.indices(i)
    return support, query


def embed_images(
    method: FewShotMethod,
    images: np.ndarray,
    *,
    prepare: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
) -> Tensor:
    """Backbone features of uint8 images, in batches, without gradients.

    Batches go through `medmeta.methods.functional.embed` (channels-last layout for medmeta's backbones).

    Args:
        method: a method in eval mode.
        images: ``(N, C, *spatial)`` uint8.
        prepare: uint8 images -> normalised float images.
        device: where the backbone runs.
        batch_size: images per forward pass (default: as many as `PIXEL_BUDGET` allows, at most 512).

    Returns:
        ``(N, d)`` features on `device`.
    """
    per_image = int(np.prod(images.shape[1:]))
    size = batch_size or max(1, min(512, PIXEL_BUDGET // per_image))
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), size):
            batch = prepare(torch.from_numpy(images[start : start + size]).to(device))  # (B, C, *spatial)
            chunks.append(embed(method.backbone, batch))  # (B, d)
    return torch.cat(chunks)


@dataclass(frozen=True)
class EmbeddingCache:
    """Backbone features of the dataset images that a set of episodes uses.

    Attributes:
        features: ``(n_embedded, d)``.
        row: ``(len(dataset),)`` int64, the row of each dataset image in `features` (-1: not embedded).
    """

    features: Tensor
    row: np.ndarray

    @classmethod
    def build(
        cls,
        method: FewShotMethod,
        images: np.ndarray,
        used: np.ndarray,
        *,
        prepare: Callable[[Tensor], Tensor],
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
    ) -> EmbeddingCache:
        """Embed ``images[used]`` once (duplicates in `used` are embedded once)."""
        unique = np.unique(used)
        row = np.full(len(images), -1, dtype=np.int64)
        row[unique] = np.arange(len(unique))
        features = embed_images(method, images[unique], prepare=prepare, device=device, batch_size=batch_size)
        return cls(features, row)

    def take(self, indices: np.ndarray) -> Tensor:
        """Features of dataset images `indices` ``(...)`` -> ``(..., d)``."""
        rows = self.row[indices]
        if (rows < 0).any():
            raise KeyError("an index was not embedded in this cache: build it from every index you take")
        return self.features[torch.from_numpy(rows).to(self.features.device)]


def cached_episode_logits(
    method: FewShotMethod,
    sampler: EpisodeSampler,
    *,
    prepare: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    n_episodes: int | None = None,
    chunk_episodes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits of episodes ``0..n_episodes-1`` of `sampler`, each image embedded once.

    Args:
        method: a method with ``frozen_backbone``, in eval mode.
        sampler: the seeded episodes.
        prepare: uint8 images -> normalised float images.
        device: where the method runs.
        n_episodes: number of episodes (default ``len(sampler)``).
        chunk_episodes: episodes scored per call of ``logits_from_features`` (default: as many as fit
            `PAIR_BUDGET`).
        progress: called as ``progress(done, total)`` once per episode.

    Returns:
        ``(logits (n_episodes, n_query_total, n_way), query labels (n_episodes, n_query_total))``.

    Raises:
        ValueError: the method does not declare a frozen backbone, or is in training mode.
    """
    if not method.frozen_backbone:
        raise ValueError(
            f"{type(method).__name__} adapts its backbone per task (frozen_backbone is False): its "
            "episodes cannot be scored from cached features; evaluate with use_cache=False"
        )
    if method.training:
        raise ValueError("cached evaluation needs the method in eval mode: call method.eval() first")
    total = len(sampler) if n_episodes is None else n_episodes
    first = sampler.episode(0)
    support_labels, query_labels = first.support_labels.to(device), first.query_labels.to(device)
    support_idx, query_idx = episode_indices(sampler, total)
    cache = EmbeddingCache.build(
        method,
        sampler.dataset.images,
        np.concatenate([support_idx.ravel(), query_idx.ravel()]),
        prepare=prepare,
        device=device,
    )
    n_way, n_query, dim = sampler.n_way, query_idx.shape[1], cache.features.shape[1]
    chunk = chunk_episodes or max(1, min(512, PAIR_BUDGET // (n_query * n_way * dim)))
    out = []
    with torch.no_grad():
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            s = cache.take(support_idx[start:stop])  # (t, n_support, d)
            q = cache.take(query_idx[start:stop])  # (t, n_query, d)
            labels = support_labels.expand(stop - start, -1)  # (t, n_support)
            out.append(method.logits_from_features(s, labels, n_way, q))  # (t, n_query, n_way)
            if progress is not None:
                for done in range(start + 1, stop + 1):
                    progress(done, total)
    return torch.cat(out), query_labels.expand(total, -1)
