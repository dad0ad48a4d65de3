"""Stack episodes of equal shape into a batch for methods that vectorise across tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from medmeta.errors import MedmetaError
from medmeta.tasks.episode import Episode


@dataclass(frozen=True)
class EpisodeBatch:
    """T episodes stacked.

    Attributes:
        support_images: ``(T, n_way * n_shot, C, H, W)`` (or ``C, D, H, W`` for 3D).
        support_labels: ``(T, n_way * n_shot)``.
        query_images: ``(T, n_query_total, C, H, W)``.
        query_labels: ``(T, n_query_total)``.
        class_ids: ``(T, n_way)``.
    """

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    class_ids: Tensor

    def __len__(self) -> int:
        return int(self.support_images.shape[0])

    def episodes(self) -> list[Episode]:
        return [
            Episode(
                self.support_images[t],
                self.support_labels[t],
                self.query_images[t],
                self.query_labels[t],
                self.class_ids[t],
            )
            for t in range(len(self))
        ]


def collate_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Stack episodes whose tensors have equal shapes.

    Raises:
        MedmetaError: the episodes differ in n_way, shots, queries or image shape.
    """
    if not episodes:
        raise MedmetaError("cannot collate an empty list of episodes")
    first = episodes[0]
    for i, ep in enumerate(episodes[1:], start=1):
        if ep.support_images.shape != first.support_images.shape or (
            ep.query_images.shape != first.query_images.shape
        ):
            raise MedmetaError(
                f"episode {i} has support {tuple(ep.support_images.shape)} / query "
                f"{tuple(ep.query_images.shape)}, episode 0 has {tuple(first.support_images.shape)} / "
                f"{tuple(first.query_images.shape)}: batch only episodes of one n_way, n_shot and n_query"
            )
    return EpisodeBatch(
        support_images=torch.stack([e.support_images for e in episodes]),
        support_labels=torch.stack([e.support_labels for e in episodes]),
        query_images=torch.stack([e.query_images for e in episodes]),
        query_labels=torch.stack([e.query_labels for e in episodes]),
        class_ids=torch.stack([e.class_ids for e in episodes]),
    )
