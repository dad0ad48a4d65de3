"""Prototypical Networks.

Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning", NeurIPS 2017, arXiv:1703.05175.
Each class is represented by the mean embedding (prototype) of its support images; a query is classified
by a softmax over negative distances to the prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.base import FewShotMethod, MethodOptions
from medmeta.methods.functional import Distance, compute_prototypes, embed, prototype_logits
from medmeta.methods.metric.common import one_pass_episode_logits
from medmeta.tasks.episode import Episode, Support


class ProtoNetOptions(MethodOptions):
    """Options of `ProtoNet`.

    Attributes:
        distance: ``sqeuclidean`` (the paper), ``euclidean`` (easyfsl) or ``cosine``.
        scale: logit multiplier (inverse temperature); 10 is usual for cosine.
        learn_scale: make the scale a learnable parameter.
    """

    distance: Distance = "sqeuclidean"
    scale: float = Field(1.0, gt=0.0)
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
        return prototype_logits(
            embed(self.backbone, query_images), self.prototypes, self.distance, self.scale
        )


class ProtoNet(FewShotMethod):
    """Snell, Swersky, Zemel. "Prototypical Networks for Few-shot Learning", NeurIPS 2017, arXiv:1703.05175.

    A query's logits are its negative distances to the class means (prototypes) of the support
    embeddings. Meta-training minimises the query cross-entropy through the backbone.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = ProtoNet(Conv4(in_channels=3, image_size=32), ProtoNetOptions(distance="euclidean"))
        >>> # predictor = method.adapt(episode.support); logits = predictor.predict(episode.query_images)
    """

    Options = ProtoNetOptions
    options: ProtoNetOptions
    frozen_backbone: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, options: ProtoNetOptions | None = None) -> None:
        super().__init__(backbone, options or ProtoNetOptions())
        scale = torch.tensor(float(self.options.scale))
        if self.options.learn_scale:
            self.scale: Tensor = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    @property
    def distance_logits(self) -> bool:
        return self.options.distance != "cosine"

    def adapt(self, support: Support, query_images: Tensor | None = None) -> PrototypePredictor:
        features = embed(self.backbone, support.images)  # (n_support, d)
        prototypes = compute_prototypes(features, support.labels, support.n_way)  # (n_way, d)
        return PrototypePredictor(self.backbone, prototypes, self.options.distance, self.scale)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        prototypes = compute_prototypes(support_features, support_labels, n_way)  # (T, n_way, d)
        return prototype_logits(query_features, prototypes, self.options.distance, self.scale)

    def episode_logits(self, episode: Episode) -> Tensor:
        return one_pass_episode_logits(self, episode)
