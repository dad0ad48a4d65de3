"""The interface of the few-shot segmenters (`medmeta.methods.learner.FewShotLearner` for masks).

``adapt(support)`` takes a `MaskSupport` (K images and their binary masks of one structure) and returns a
predictor that never changes the segmenter; ``predictor.predict(query_images)`` gives ``(N, 2, H, W)``
logits (channel 0 background, channel 1 foreground); ``episode_loss(episode)`` is what training minimises.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.methods.learner import FewShotLearner, LearnerOptions, Predictor
from medmeta.tasks.segmentation import MaskSupport, SegEpisode, check_pairs


class SegOptions(LearnerOptions):
    """Hyper-parameters of a segmenter; each method subclasses this with its own fields."""

    in_channels: int = 1
    base: int = 16
    depth: int = 3


class FewShotSegmenter(FewShotLearner[MaskSupport, SegEpisode]):
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
    def adapt(self, support: MaskSupport) -> Predictor:
        """Build a predictor from K annotated images of one structure; never mutates ``self``.

        Args:
            support: images ``(K, C, H, W)`` float and masks ``(K, H, W)`` in ``{0, 1}``.
        """

    def segment(self, support: MaskSupport, query_images: Tensor) -> Tensor:
        """Validate, adapt and predict: ``(N, 2, H, W)`` query logits."""
        check_pairs(query_images, None, "query")
        return self.adapt(support).predict(query_images)

    def episode_loss(self, episode: SegEpisode) -> Tensor:
        """Training loss of one episode (default: pixel cross-entropy of the query predictions)."""
        if episode.query_masks is None:
            raise ValueError("episode_loss needs query masks")
        logits = self.adapt(episode.support).predict(episode.query_images)
        return seg_loss(logits, episode.query_masks)


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
