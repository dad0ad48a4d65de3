"""The one interface every few-shot segmentation method implements.

``adapt(support_images, support_masks)`` returns a `SegPredictor` for one structure and never changes the
method; ``predictor.predict(query_images)`` gives ``(N, 2, H, W)`` logits (channel 0 background,
channel 1 foreground); ``episode_loss(episode)`` is what training minimises.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from medmeta.tasks.segmentation import SegEpisode, check_pairs


@runtime_checkable
class SegPredictor(Protocol):
    """What `FewShotSegmenter.adapt` returns: a segmenter for one structure."""

    def predict(self, query_images: Tensor) -> Tensor:
        """``(N, C, H, W)`` float -> ``(N, 2, H, W)`` logits (background, foreground)."""
        ...


class SegOptions(BaseModel):
    """Hyper-parameters of a segmenter; each method subclasses this with its own fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_channels: int = 1
    base: int = 16
    depth: int = 3


class FewShotSegmenter(nn.Module, abc.ABC):
    """Base class of the few-shot segmenters.

    Subclasses set `Options`, build their state in ``__init__(options)`` and implement `adapt`.
    ``training_source`` says what their training episodes are: manual ``labels`` of the training
    structures, or ``superpixels`` of unlabelled images (SSL-ALPNet); ``none`` for the trivial baselines,
    which have nothing to train.
    """

    Options: ClassVar[type[SegOptions]] = SegOptions
    training_source: ClassVar[Literal["labels", "superpixels", "none"]] = "labels"

    def __init__(self, options: SegOptions | None = None) -> None:
        super().__init__()
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None = None) -> FewShotSegmenter:
        """Build from a plain dict of options (validated by ``cls.Options``)."""
        return cls(cls.Options(**(options or {})))

    @abc.abstractmethod
    def adapt(self, support_images: Tensor, support_masks: Tensor) -> SegPredictor:
        """Build a predictor from K annotated images; never mutates ``self``.

        Args:
            support_images: ``(K, C, H, W)`` float.
            support_masks: ``(K, H, W)`` float in ``{0, 1}``.
        """

    def segment(self, support_images: Tensor, support_masks: Tensor, query_images: Tensor) -> Tensor:
        """Validate, adapt and predict: ``(N, 2, H, W)`` query logits."""
        check_pairs(support_images, support_masks, "support")
        check_pairs(query_images, None, "query")
        return self.adapt(support_images, support_masks).predict(query_images)

    def episode_loss(self, episode: SegEpisode) -> Tensor:
        """Training loss of one episode (default: pixel cross-entropy of the query predictions)."""
        if episode.query_masks is None:
            raise ValueError("episode_loss needs query masks")
        logits = self.adapt(episode.support_images, episode.support_masks).predict(episode.query_images)
        return seg_loss(logits, episode.query_masks)

    def batch_loss(self, episodes: Sequence[SegEpisode]) -> Tensor:
        """Mean `episode_loss` over a meta-batch (what `medmeta.train.loop.fit` minimises)."""
        return torch.stack([self.episode_loss(ep) for ep in episodes]).mean()

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch; segmenters keep no schedule of their own."""


def seg_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Pixel cross-entropy plus soft Dice loss of the foreground (robust to small structures).

    Args:
        logits: ``(N, 2, H, W)``.
        masks: ``(N, H, W)`` in ``{0, 1}``.
    """
    ce = F.cross_entropy(logits, masks.long())
    fg = logits.softmax(1)[:, 1]  # (N, H, W)
    inter = (fg * masks).sum((1, 2))
    dice = (2 * inter + 1.0) / (fg.sum((1, 2)) + masks.sum((1, 2)) + 1.0)  # (N,)
    return ce + (1 - dice).mean()


def two_class_logits(fg_logit: Tensor) -> Tensor:
    """``(N, H, W)`` foreground logit -> ``(N, 2, H, W)`` logits ``[0, fg]`` (softmax = sigmoid(fg))."""
    return torch.stack([torch.zeros_like(fg_logit), fg_logit], 1)
