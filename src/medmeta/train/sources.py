"""Episodic batch sources for `medmeta.train.loop.fit`: meta-batches of episodes of any task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from medmeta.config import TrainConfig
from medmeta.tasks.base import TaskEpisode


class EpisodeBatches(Protocol):
    """A seeded sampler's meta-batches (`medmeta.tasks.base.SeededSampler.batch`)."""

    def batch(self, index: int, size: int) -> Sequence[TaskEpisode]: ...


class EpisodicMethod(Protocol):
    """A method trained on episodes: every classification method and every segmenter."""

    def batch_loss(self, episodes: Sequence[Any]) -> Tensor: ...


class EpisodicBatches:
    """Meta-batches of ``cfg.meta_batch`` episodes; the loss is the method's ``batch_loss``.

    An epoch is ``cfg.episodes_per_epoch // cfg.meta_batch`` steps (at least one); batch ``b`` holds
    episodes ``b * meta_batch ..`` of `sampler`, so episode indices run on across epochs.

    Args:
        sampler: any seeded sampler (classification, segmentation, superpixel pseudo-episodes).
        cfg: ``meta_batch`` and ``episodes_per_epoch``.
        prepare: applied to the images on the device (uint8 -> normalised float); None: used as they are.

    Example:
        >>> source = EpisodicBatches(sampler, cfg.train, prepare=normalization)  # doctest: +SKIP
        >>> fit(method, source, cfg.train)  # doctest: +SKIP
    """

    def __init__(
        self,
        sampler: EpisodeBatches,
        cfg: TrainConfig,
        *,
        prepare: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.sampler = sampler
        self.meta_batch = cfg.meta_batch
        self.steps_per_epoch = max(1, cfg.episodes_per_epoch // cfg.meta_batch)
        self.prepare = prepare

    def batch(self, index: int, device: torch.device) -> list[TaskEpisode]:
        episodes = [ep.to(device) for ep in self.sampler.batch(index, self.meta_batch)]
        if self.prepare is not None:
            episodes = [ep.map_images(self.prepare) for ep in episodes]
        return episodes

    def loss(self, method: EpisodicMethod, batch: list[TaskEpisode]) -> Tensor:
        return method.batch_loss(batch)

    def after_epoch(self, method: object, device: torch.device) -> None:
        """Nothing: episodic methods keep no statistics of the training data."""
