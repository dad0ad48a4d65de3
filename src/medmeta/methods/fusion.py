"""`LateFusion`: a few-shot method adapted on each view of a case, its per-view probabilities averaged.

Late (decision-level) fusion: for V views of C channels (`medmeta.data.multiview`), the wrapped method adapts
once per view on that view of the support cases and predicts that view of each query; the case's
probabilities are the mean of the V softmax outputs (logits returned are their logarithm, so ``argmax`` and
``softmax`` read as usual). Feature-level fusion is a backbone (`medmeta.models.fusion.ViewFeatures`) and
early fusion is the views as input channels; neither needs a method of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medmeta.methods.base import FewShotMethod, Predictor
from medmeta.models.fusion import ViewFeatures
from medmeta.tasks.episode import Support

#: probabilities are floored here before the logarithm (a view certain of another class cannot give -inf)
_FLOOR = 1e-12


class _MeanProbability:
    def __init__(self, predictors: list[Predictor], views: int, channels: int) -> None:
        self.predictors, self.views, self.channels = predictors, views, channels

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, V * C, *spatial)`` -> ``(n_query, n_way)`` log of the mean per-view probability."""
        c = self.channels
        probs = [
            p.predict(query_images[:, v * c : (v + 1) * c]).softmax(-1) for v, p in enumerate(self.predictors)
        ]
        return torch.stack(probs).mean(0).clamp_min(_FLOOR).log()


class LateFusion(FewShotMethod):
    """`inner` (a method on one view's images) applied per view, probabilities averaged.

    Its ``backbone`` is the inner backbone shared over views (`ViewFeatures`), so methods with a frozen
    backbone are scored from cached features (`logits_from_features`) exactly as from images.

    Args:
        inner: the method for one view (its backbone takes ``channels`` input channels).
        views: V.
        channels: C.
    """

    def __init__(self, inner: FewShotMethod, views: int, channels: int) -> None:
        super().__init__(ViewFeatures(inner.backbone, views, channels), inner.options)
        self.inner = inner
        self.views, self.channels = views, channels
        self.frozen_backbone = inner.frozen_backbone  # type: ignore[misc]
        self.transductive = inner.transductive  # type: ignore[misc]
        self.per_image_prediction = inner.per_image_prediction  # type: ignore[misc]

    def adapt(self, support: Support, query_images: Tensor | None = None) -> Predictor:
        c = self.channels
        predictors = []
        for v in range(self.views):
            view = Support(support.images[:, v * c : (v + 1) * c], support.labels, support.n_way)
            query = None if query_images is None else query_images[:, v * c : (v + 1) * c]
            predictors.append(self.inner.adapt(view, query))
        return _MeanProbability(predictors, self.views, c)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        """``(T, n_support, V * F)``, ``(T, n_query, V * F)`` -> ``(T, n_query, n_way)``, view by view."""
        f = support_features.shape[-1] // self.views
        probs = [
            self.inner.logits_from_features(
                support_features[..., v * f : (v + 1) * f],
                support_labels,
                n_way,
                query_features[..., v * f : (v + 1) * f],
            ).softmax(-1)
            for v in range(self.views)
        ]
        return torch.stack(probs).mean(0).clamp_min(_FLOOR).log()
