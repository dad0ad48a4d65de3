"""What the metric methods share: support and query embedded in one backbone pass, and the method and
predictor of every metric method that scores queries from support features (Matching, Relation and
Siamese networks)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from medmeta.methods.base import FewShotMethod
from medmeta.methods.functional import embed
from medmeta.tasks.episode import Episode, Support


def one_pass_episode_logits(method: FewShotMethod, episode: Episode) -> Tensor:
    """Query logits ``(n_query, n_way)`` of a method scored from features (`logits_from_features`), with
    support and query embedded in one forward pass, so batch norm sees one batch in training mode."""
    n_support = episode.support_images.shape[0]
    images = torch.cat([episode.support_images, episode.query_images])  # (n_support + n_query, C, ...)
    features = embed(method.backbone, images)  # (n_support + n_query, d)
    return method.logits_from_features(
        features[None, :n_support], episode.support_labels[None], episode.n_way, features[None, n_support:]
    )[0]


@dataclass(frozen=True)
class SupportFeaturePredictor:
    """The classifier of one task: the method's `logits_from_features` against stored support features.

    Attributes:
        method: whose backbone and scoring rule are used (never modified).
        support_features: ``(n_support, d)`` backbone outputs of the support images.
        support_labels: ``(n_support,)`` int64 in ``0..n_way-1``.
        n_way: classes of the task.
    """

    method: FewShotMethod
    support_features: Tensor
    support_labels: Tensor
    n_way: int

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``."""
        query = embed(self.method.backbone, query_images)[None]  # (1, n_query, d)
        return self.method.logits_from_features(
            self.support_features[None], self.support_labels[None], self.n_way, query
        )[0]


class SupportFeatureMethod(FewShotMethod):
    """A metric method defined by its scoring rule alone: `adapt` embeds the support set once and
    `episode_logits` embeds support and query in one pass; subclasses write `logits_from_features`."""

    frozen_backbone: ClassVar[bool] = True

    @abc.abstractmethod
    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        """``(T, n_support, d)``, ``(T, n_support)``, ``n_way``, ``(T, n_query, d)`` -> ``(T, n_query, n_way)``."""

    def adapt(self, support: Support, query_images: Tensor | None = None) -> SupportFeaturePredictor:
        features = embed(self.backbone, support.images)  # (n_support, d)
        return SupportFeaturePredictor(self, features, support.labels, support.n_way)

    def episode_logits(self, episode: Episode) -> Tensor:
        return one_pass_episode_logits(self, episode)
