"""Synthetic episodes for method and task tests."""

from __future__ import annotations

import numpy as np
import torch

from medmeta.data.datasets import ImageDataset
from medmeta.tasks.episode import Episode


def make_episode(
    n_way: int = 3,
    n_shot: int = 2,
    n_query: int = 3,
    shape: tuple[int, ...] = (3, 16, 16),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Episode:
    """A random float episode whose classes differ in mean intensity (so methods can learn them)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.linspace(-1, 1, n_way)

    def images(n_per: int) -> torch.Tensor:
        x = torch.randn(n_way * n_per, *shape, generator=g, dtype=dtype)
        return x + offsets.repeat_interleave(n_per).view(-1, *([1] * len(shape))).to(dtype)

    return Episode(
        support_images=images(n_shot),
        support_labels=torch.arange(n_way).repeat_interleave(n_shot),
        query_images=images(n_query),
        query_labels=torch.arange(n_way).repeat_interleave(n_query),
        class_ids=torch.arange(n_way),
    )


def three_class_toy() -> ImageDataset:
    """36 images (16x16 RGB) of 3 classes whose brightness bands overlap a little: 12 per class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    images = (rng.integers(0, 60, (36, 3, 16, 16)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    return ImageDataset(images=images, labels=labels, class_names=("a", "b", "c"), domain="toy")
