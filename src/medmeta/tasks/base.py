"""What every few-shot task shares, whatever its target (class label, mask; later boxes, image pairs).

A task episode is a frozen dataclass holding ``support_images``/``query_images`` and one target tensor per
side; `TaskEpisode` gives it device moves and image mapping, and each task's ``__post_init__`` validates
its targets. A sampler is random-access and seeded: `SeededSampler.episode(i)` depends only on
``(seed, i)``, and a meta-batch ``b`` of size ``m`` is episodes ``b * m .. b * m + m - 1``, so a run can be
resumed, split across workers or repeated bit for bit.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

from medmeta.errors import DataError

E = TypeVar("E", bound="TaskEpisode")
Ep = TypeVar("Ep", covariant=True)


class TaskEpisode:
    """Mixin of the frozen episode dataclasses (`medmeta.tasks.episode.Episode`,
    `medmeta.tasks.segmentation.SegEpisode`).

    Subclasses declare ``support_images``, ``query_images`` and their target fields, and validate the
    targets in ``__post_init__`` (`check_images` checks the part every task shares).
    """

    support_images: Tensor
    query_images: Tensor

    def check_images(self) -> None:
        """Support and query images must agree in everything but their count.

        Raises:
            DataError: they differ in channels or spatial size.
        """
        if self.support_images.shape[1:] != self.query_images.shape[1:]:
            raise DataError(
                f"support images {tuple(self.support_images.shape[1:])} and query images "
                f"{tuple(self.query_images.shape[1:])} differ in shape: resize them to one size"
            )

    def map_images(self: E, fn: Callable[[Tensor], Tensor]) -> E:
        """A copy whose support and query images are ``fn(images)`` (targets unchanged)."""
        return dataclasses.replace(  # type: ignore[type-var]
            self,
            support_images=fn(self.support_images),
            query_images=fn(self.query_images),
        )

    def to(self: E, device: torch.device | str) -> E:
        """Move every tensor to `device` (non-blocking where possible)."""
        moved = {
            f.name: value.to(device, non_blocking=True)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if isinstance(value := getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)  # type: ignore[type-var]


class SeededSampler(abc.ABC, Generic[Ep]):
    """Base of every episode sampler: episode ``i`` depends only on ``(seed, i)``.

    Subclasses implement `episode`; iteration yields episodes ``0 .. n_episodes - 1`` and `batch` gives the
    training loop its meta-batches.
    """

    seed: int
    n_episodes: int

    @abc.abstractmethod
    def episode(self, index: int) -> Ep:
        """Episode number `index` (the same every time)."""

    def batch(self, index: int, size: int, positions: Sequence[int] | None = None) -> list[Ep]:
        """Meta-batch `index` of `size` episodes: episodes ``index * size + t``.

        Args:
            positions: only the episodes at these positions ``t`` of the batch (a rank's share of it in
                distributed training); None: all `size`.
        """
        return [self.episode(index * size + t) for t in (range(size) if positions is None else positions)]

    def __len__(self) -> int:
        return self.n_episodes

    def __iter__(self) -> Iterator[Ep]:
        for i in range(self.n_episodes):
            yield self.episode(i)

    def __call__(self, index: int) -> Ep:
        return self.episode(index)
