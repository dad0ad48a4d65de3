"""Siamese networks trained with the contrastive loss.

Koch, Zemel, Salakhutdinov. "Siamese Neural Networks for One-shot Image Recognition", ICML Deep Learning
Workshop 2015 (https://www.cs.cmu.edu/~rsalakhu/papers/oneshot1.pdf), trained with the contrastive loss of
Hadsell, Chopra, LeCun. "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006. Pairs of
the same class are pulled together, pairs of different classes pushed at least a margin apart; a query
takes the class of its nearest support image (or of the smallest mean distance).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.base import MethodOptions
from medmeta.methods.functional import embed, squared_distances
from medmeta.methods.metric.common import SupportFeatureMethod
from medmeta.tasks.episode import Episode

Rule = Literal["nearest", "mean"]
_EPS = 1e-12


def contrastive_loss(features: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Class-balanced contrastive loss over every pair of distinct images.

    ``0.5 * (mean over same-class pairs of d^2 + mean over different-class pairs of max(0, margin - d)^2)``
    with ``d`` the Euclidean distance. Averaging the two kinds separately keeps the roughly
    ``(n_way - 1)``-to-1 excess of negative pairs in an episode from swamping the positives.

    Args:
        features: ``(N, d)`` embeddings.
        labels: ``(N,)`` int64 class labels.
        margin: distance beyond which a different-class pair costs nothing.

    Returns:
        Scalar loss (a term without pairs, such as positives in a 1-shot episode without queries, is 0).
    """
    d2 = squared_distances(features, features)  # (N, N)
    same = labels[:, None] == labels[None, :]  # (N, N)
    distinct = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)  # (N, N)
    positive, negative = same & distinct, ~same
    pull = d2[positive].mean() if bool(positive.any()) else d2.new_zeros(())
    push_terms = F.relu(margin - (d2[negative] + _EPS).sqrt()).pow(2)
    push = push_terms.mean() if bool(negative.any()) else d2.new_zeros(())
    return 0.5 * (pull + push)


def siamese_logits(
    query_features: Tensor,
    support_features: Tensor,
    support_labels: Tensor,
    n_way: int,
    rule: Rule,
    scale: float,
) -> Tensor:
    """``-scale`` times each query's distance to a class: to its nearest support image or the mean distance.

    Args:
        query_features: ``(..., n_query, d)``.
        support_features: ``(..., n_support, d)``.
        support_labels: ``(..., n_support)`` int64 in ``0..n_way-1``, every class present.
        n_way: number of classes.
        rule: ``nearest`` (minimum distance per class) or ``mean`` (mean distance per class).
        scale: logit multiplier; it changes calibration, not the predicted class.

    Returns:
        ``(..., n_query, n_way)`` logits.
    """
    distances = (
        squared_distances(query_features, support_features) + _EPS
    ).sqrt()  # (..., n_query, n_support)
    member = F.one_hot(support_labels, n_way).to(distances.dtype)  # (..., n_support, n_way)
    if rule == "mean":
        per_class = (distances @ member) / member.sum(-2)[..., None, :]  # (..., n_query, n_way)
    else:
        outside = (member == 0)[..., None, :, :]  # (..., 1, n_support, n_way)
        per_class = (
            distances[..., :, :, None].masked_fill(outside, float("inf")).amin(dim=-2)
        )  # (..., n_query, n_way)
    return -scale * per_class


class SiameseOptions(MethodOptions):
    """Options of `SiameseNet`.

    Attributes:
        margin: contrastive margin: different-class pairs farther apart than this cost nothing.
        normalize: L2-normalise embeddings (distances then lie in ``[0, 2]``, so margin 1 is meaningful).
        rule: ``nearest`` support image or ``mean`` distance per class at prediction time.
        scale: logit multiplier (inverse temperature of the reported probabilities; accuracy is unaffected).
    """

    margin: float = Field(1.0, gt=0.0)
    normalize: bool = True
    rule: Rule = "nearest"
    scale: float = Field(10.0, gt=0.0)


class SiameseNet(SupportFeatureMethod):
    """Koch, Zemel, Salakhutdinov. "Siamese Neural Networks for One-shot Image Recognition", ICML DL Workshop 2015.

    One shared backbone embeds both images of a pair; meta-training minimises the contrastive loss
    (Hadsell et al., CVPR 2006) over all pairs of an episode's support and query images. An N-way
    prediction ranks classes by the distance of the query to the nearest support image of each class
    (``rule="nearest"``) or by its mean distance to them (``rule="mean"``).

    Example:
        >>> from medmeta.models import Conv4
        >>> method = SiameseNet(Conv4(in_channels=3, image_size=64), SiameseOptions(margin=0.5, rule="mean"))
        >>> # loss = method.episode_loss(episode); logits = method.episode_logits(episode)
    """

    Options = SiameseOptions
    options: SiameseOptions

    def __init__(self, backbone: nn.Module, options: SiameseOptions | None = None) -> None:
        super().__init__(backbone, options or SiameseOptions())

    def embed(self, images: Tensor) -> Tensor:
        """``(N, C, *spatial)`` -> ``(N, d)`` embeddings (L2-normalised when ``normalize``)."""
        return self._finish(embed(self.backbone, images))

    def _finish(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=-1) if self.options.normalize else features

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        return siamese_logits(
            self._finish(query_features),
            self._finish(support_features),
            support_labels,
            n_way,
            self.options.rule,
            self.options.scale,
        )

    def episode_loss(self, episode: Episode) -> Tensor:
        """Contrastive loss over all pairs of the episode's support and query images."""
        images = torch.cat([episode.support_images, episode.query_images])  # (n_support + n_query, C, ...)
        labels = torch.cat([episode.support_labels, episode.query_labels])  # (n_support + n_query,)
        return contrastive_loss(self.embed(images), labels, self.options.margin)
