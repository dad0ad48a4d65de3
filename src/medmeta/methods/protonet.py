"""Prototypical Networks.

Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning", NeurIPS 2017, arXiv:1703.05175.
Each class is represented by the mean embedding (prototype) of its support images; a query is classified
by a softmax over negative distances to the prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.episodes.episode import Episode, Support
from medmeta.methods.base import FewShotMethod, MethodOptions

Distance = Literal["sqeuclidean", "euclidean", "cosine"]


def compute_prototypes(features: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Class means.

    Args:
        features: ``(n_support, d)``.
        labels: ``(n_support,)`` int64 in ``0..n_way-1``, every class present.
        n_way: number of classes.

    Returns:
        ``(n_way, d)`` prototypes.
    """
    sums = torch.zeros(n_way, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)  # (n_way, d)
    counts = torch.bincount(labels, minlength=n_way).to(features.dtype)  # (n_way,)
    return sums / counts[:, None]


def prototype_logits(
    queries: Tensor, prototypes: Tensor, distance: Distance, scale: Tensor | float
) -> Tensor:
    """Logits ``(n_query, n_way)`` from query features ``(n_query, d)`` and prototypes ``(n_way, d)``.

    ``sqeuclidean``: ``-||q - p||^2 * scale``; ``euclidean``: ``-||q - p|| * scale``;
    ``cosine``: ``cos(q, p) * scale``.
    """
    if distance == "cosine":
        return F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).T * scale
    d2 = (
        queries.pow(2).sum(-1, keepdim=True) - 2 * queries @ prototypes.T + prototypes.pow(2).sum(-1)[None]
    ).clamp_min(0)  # (n_query, n_way)
    if distance == "euclidean":
        return -(d2 + 1e-12).sqrt() * scale
    return -d2 * scale


class ProtoNetOptions(MethodOptions):
    """Options of `ProtoNet`.

    Attributes:
        distance: ``sqeuclidean`` (the paper), ``euclidean`` (easyfsl) or ``cosine``.
        scale: logit multiplier (inverse temperature); 10 is usual for cosine.
        learn_scale: make the scale a learnable parameter.
    """

    distance: Distance = "sqeuclidean"
    scale: float = 1.0
    learn_scale: bool = False


@dataclass(frozen=True)
class PrototypePredictor:
    """Nearest-prototype classifier for one task; holds the prototypes ``(n_way, d)``."""

    backbone: nn.Module
    prototypes: Tensor
    distance: Distance
    scale: Tensor | float

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``."""
        return prototype_logits(self.backbone(query_images), self.prototypes, self.distance, self.scale)


class ProtoNet(FewShotMethod):
    """Prototypical Networks on any backbone.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = ProtoNet(Conv4(in_channels=3, image_size=32))
        >>> # predictor = method.adapt(episode.support); logits = predictor.predict(episode.query_images)
    """

    Options = ProtoNetOptions
    options: ProtoNetOptions

    def __init__(self, backbone: nn.Module, options: ProtoNetOptions | None = None) -> None:
        super().__init__(backbone, options or ProtoNetOptions())
        scale = torch.tensor(float(self.options.scale))
        if self.options.learn_scale:
            self.scale: Tensor = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def adapt(self, support: Support, query_images: Tensor | None = None) -> PrototypePredictor:
        features = self.backbone(support.images)  # (n_support, d)
        prototypes = compute_prototypes(features, support.labels, support.n_way)  # (n_way, d)
        return PrototypePredictor(self.backbone, prototypes, self.options.distance, self.scale)

    def episode_logits(self, episode: Episode) -> Tensor:
        """Support and query embedded in one forward pass, so batch-norm sees one batch."""
        n_support = episode.support_images.shape[0]
        features = self.backbone(
            torch.cat([episode.support_images, episode.query_images])
        )  # (n_support + n_query, d)
        prototypes = compute_prototypes(features[:n_support], episode.support_labels, episode.n_way)
        return prototype_logits(features[n_support:], prototypes, self.options.distance, self.scale)
