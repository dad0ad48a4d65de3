"""The few-shot episode: a support set to adapt on and a query set to predict."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from medmeta.errors import MedmetaError
from medmeta.tasks.base import TaskEpisode


def _check_labels(labels: Tensor, n_way: int, what: str) -> None:
    if labels.dtype != torch.int64:
        raise MedmetaError(f"{what} labels must be int64, got {labels.dtype}: cast with .long()")
    if labels.ndim != 1:
        raise MedmetaError(f"{what} labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise MedmetaError(f"{what} set is empty: give at least one image per class")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_way:
        raise MedmetaError(
            f"{what} labels must lie in 0..{n_way - 1} (n_way={n_way}), got values {lo}..{hi}: "
            "relabel classes to consecutive ids"
        )


@dataclass(frozen=True)
class Support:
    """Labelled images a method adapts on.

    Attributes:
        images: ``(n_support, C, H, W)`` or ``(n_support, C, D, H, W)``; float for methods, uint8 from samplers.
        labels: ``(n_support,)`` int64 in ``0..n_way-1``; every class appears at least once.
        n_way: number of classes.
    """

    images: Tensor
    labels: Tensor
    n_way: int

    def __post_init__(self) -> None:
        if self.n_way < 1:
            raise MedmetaError(f"n_way must be >= 1, got {self.n_way}")
        _check_labels(self.labels, self.n_way, "support")
        if self.images.shape[0] != self.labels.shape[0]:
            raise MedmetaError(f"support has {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.images.ndim not in (4, 5):
            raise MedmetaError(
                f"support images must be (N, C, H, W) or (N, C, D, H, W), got {tuple(self.images.shape)}"
            )
        present = torch.bincount(self.labels, minlength=self.n_way)
        if bool((present == 0).any()):
            missing = torch.nonzero(present == 0).flatten().tolist()
            raise MedmetaError(
                f"support set has no image of class id(s) {missing}: every class needs >= 1 shot"
            )


@dataclass(frozen=True)
class Episode(TaskEpisode):
    """One N-way K-shot task.

    Attributes:
        support_images: ``(n_way * n_shot, C, H, W)`` (2D) or ``(n_way * n_shot, C, D, H, W)`` (3D).
        support_labels: ``(n_way * n_shot,)`` int64 in ``0..n_way-1``.
        query_images: ``(n_query_total, C, H, W)`` or ``(n_query_total, C, D, H, W)``.
        query_labels: ``(n_query_total,)`` int64 in ``0..n_way-1``.
        class_ids: ``(n_way,)`` int64, the dataset class id behind each episode label.

    Images from a sampler are uint8 in ``[0, 255]``; call `to_float` (or the training loop does) before a model.
    """

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    class_ids: Tensor

    def __post_init__(self) -> None:
        n_way = int(self.class_ids.numel())
        if n_way < 1:
            raise MedmetaError("an episode needs at least one class")
        _check_labels(self.support_labels, n_way, "support")
        _check_labels(self.query_labels, n_way, "query")
        if self.support_images.shape[0] != self.support_labels.shape[0]:
            raise MedmetaError(
                f"support has {self.support_images.shape[0]} images but {self.support_labels.shape[0]} labels"
            )
        if self.query_images.shape[0] != self.query_labels.shape[0]:
            raise MedmetaError(
                f"query has {self.query_images.shape[0]} images but {self.query_labels.shape[0]} labels"
            )
        self.check_images()
        if torch.bincount(self.support_labels, minlength=n_way).min() == 0:
            raise MedmetaError("every class of the episode needs at least one support image")

    @property
    def n_way(self) -> int:
        return int(self.class_ids.numel())

    @property
    def support(self) -> Support:
        return Support(self.support_images, self.support_labels, self.n_way)
