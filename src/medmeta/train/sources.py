"""Episodic batch sources for `medmeta.train.loop.fit`: meta-batches of episodes of any task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from medmeta.config import TrainConfig
from medmeta.tasks.base import TaskEpisode
from medmeta.train.distributed import task_shard


class EpisodeBatches(Protocol):
    """A seeded sampler's meta-batches (`medmeta.tasks.base.SeededSampler.batch`)."""

    def batch(
        self, index: int, size: int, positions: Sequence[int] | None = None
    ) -> Sequence[TaskEpisode]: ...


class EpisodicMethod(Protocol):
    """A method trained on episodes: every classification method and every segmenter."""

    def batch_loss(self, episodes: Sequence[Any]) -> Tensor: ...


class EpisodicBatches:
    """Meta-batches of ``cfg.meta_batch`` episodes; the loss is the method's ``batch_loss``.

    An epoch is ``cfg.episodes_per_epoch // cfg.meta_batch`` steps (at least one); batch ``b`` holds
    episodes ``b * meta_batch ..`` of `sampler`, so episode indices run on across epochs. In distributed
    training each rank draws only its block of every batch (`shard`): the same global episode indices,
    whatever the number of ranks.

    Args:
        sampler: any seeded sampler (classification, segmentation, superpixel pseudo-episodes).
        cfg: ``meta_batch`` and ``episodes_per_epoch``.
        prepare: applied to the images on the device (uint8 -> normalised float); None: used as they are.
        positions: only these positions of every meta-batch (see `shard`); None: the whole batch.

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
        positions: range | None = None,
    ) -> None:
        self.sampler = sampler
        self.cfg = cfg
        self.meta_batch = cfg.meta_batch
        self.steps_per_epoch = max(1, cfg.episodes_per_epoch // cfg.meta_batch)
        self.prepare = prepare
        self.positions = positions

    def shard(self, rank: int, world_size: int) -> tuple[EpisodicBatches, float]:
        """Rank `rank`'s block of every meta-batch (`medmeta.train.distributed.task_shard`) and its share.

        Raises:
            ConfigError: fewer tasks per meta-batch than ranks.
        """
        positions = task_shard(self.meta_batch, rank, world_size)
        part = EpisodicBatches(self.sampler, self.cfg, prepare=self.prepare, positions=positions)
        return part, len(positions) / self.meta_batch

    def batch(self, index: int, device: torch.device) -> list[TaskEpisode]:
        if self.positions is None:
            drawn = self.sampler.batch(index, self.meta_batch)
        else:
            drawn = self.sampler.batch(index, self.meta_batch, self.positions)
        episodes = [ep.to(device) for ep in drawn]
        if self.prepare is not None:
            episodes = [ep.map_images(self.prepare) for ep in episodes]
        return episodes

    def loss(self, method: EpisodicMethod, batch: list[TaskEpisode]) -> Tensor:
        return method.batch_loss(batch)

    def after_epoch(self, method: object, device: torch.device) -> None:
        """Nothing: episodic methods keep no statistics of the training data."""
