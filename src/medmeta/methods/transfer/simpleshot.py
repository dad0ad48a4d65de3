"""SimpleShot: nearest centroid on centred, L2-normalised features of a supervised backbone.

Wang, Chao, Weinberger, van der Maaten. "SimpleShot: Revisiting Nearest-Neighbor Classification for
Few-Shot Learning", 2019, arXiv:1911.04623.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from medmeta.methods.functional import compute_prototypes, prototype_logits
from medmeta.methods.transfer.base import (
    FeatureTransform,
    SupervisedMethod,
    SupervisedOptions,
    transform_features,
)
from medmeta.tasks.episode import Support


def simpleshot_centroids(
    features: Tensor, labels: Tensor, n_way: int, mean: Tensor, kind: FeatureTransform
) -> Tensor:
    """Class centroids ``(n_way, d)`` of transformed support features ``(n_support, d)``."""
    return compute_prototypes(transform_features(features, mean, kind), labels, n_way)


def simpleshot_logits(features: Tensor, centroids: Tensor, mean: Tensor, kind: FeatureTransform) -> Tensor:
    """Negative squared Euclidean distances ``(n_query, n_way)`` of transformed query features to the centroids."""
    return prototype_logits(transform_features(features, mean, kind), centroids, "sqeuclidean", 1.0)


class SimpleShotOptions(SupervisedOptions):
    """Options of `SimpleShot`.

    Attributes:
        transform: ``cl2n`` (centre by the training-feature mean, then L2-normalise; the paper's best),
            ``l2n`` or ``none``.
    """

    transform: FeatureTransform = "cl2n"


@dataclass(frozen=True)
class SimpleShotPredictor:
    """Nearest centroid in the transformed feature space; holds the centroids ``(n_way, d)``."""

    backbone: nn.Module
    centroids: Tensor
    mean: Tensor
    transform: FeatureTransform

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``."""
        return simpleshot_logits(self.backbone(query_images), self.centroids, self.mean, self.transform)


class SimpleShot(SupervisedMethod):
    """SimpleShot (Wang et al. 2019, arXiv:1911.04623) on a supervised-pretrained backbone.

    Features are centred by the mean training feature (the buffer ``feature_mean``, set by
    `medmeta.train.supervised.fit_supervised`) and L2-normalised; a query goes to the nearest class
    centroid. No parameter is learned at test time.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = SimpleShot(Conv4(in_channels=3, image_size=32))
        >>> # fit_supervised(method, ...); logits = method.adapt(support).predict(query_images)
    """

    Options = SimpleShotOptions
    options: SimpleShotOptions
    frozen_backbone: ClassVar[bool] = True

    @property
    def distance_logits(self) -> bool:
        return True

    def adapt(self, support: Support, query_images: Tensor | None = None) -> SimpleShotPredictor:
        mean = self.feature_mean.detach().clone()
        features = self.backbone(support.images)  # (n_support, d)
        centroids = simpleshot_centroids(
            features, support.labels, support.n_way, mean, self.options.transform
        )
        return SimpleShotPredictor(self.backbone, centroids, mean, self.options.transform)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        """``(T, n_support, d)``, ``(T, n_support)``, ``(T, n_query, d)`` -> ``(T, n_query, n_way)``."""
        kind, mean = self.options.transform, self.feature_mean
        centroids = simpleshot_centroids(support_features, support_labels, n_way, mean, kind)  # (T, n_way, d)
        return simpleshot_logits(query_features, centroids, mean, kind)
