"""Linear probe: L2-regularised multinomial logistic regression on frozen pretrained features.

Tian, Wang, Krishnan, Tenenbaum, Isola. "Rethinking Few-Shot Image Classification: a Good Embedding Is
All You Need?", ECCV 2020, arXiv:2003.11539.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.transfer.base import (
    FeatureTransform,
    SupervisedMethod,
    SupervisedOptions,
    transform_features,
)
from medmeta.tasks.episode import Support


def fit_logistic_regression(
    features: Tensor, labels: Tensor, n_way: int, *, c: float = 1.0, max_iter: int = 100, tol: float = 1e-7
) -> tuple[Tensor, Tensor]:
    """Minimise ``c * sum_i CE(W x_i + b, y_i) + ||W||^2 / 2`` (scikit-learn's objective) with L-BFGS.

    With ``n`` samples in ``d >> n`` dimensions the optimal ``W`` lies in the span of the samples, so the
    problem is solved in the ``rank(X) <= n`` coordinates of an SVD and mapped back (same optimum, a
    ``d/n`` times smaller problem). Runs in float64 with gradients enabled (also under ``no_grad``).

    Args:
        features: ``(n, d)``; treated as constants.
        labels: ``(n,)`` int64 in ``0..n_way-1``.
        n_way: number of classes.
        c: inverse regularisation strength (scikit-learn's ``C``).
        max_iter: L-BFGS iterations.
        tol: gradient tolerance.

    Returns:
        ``(W (n_way, d), b (n_way,))`` in the dtype of `features`.
    """
    x = features.detach().double()
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # (n, r), (r,), (r, d)
    keep = s > s.max().clamp_min(1e-300) * 1e-10
    z = u[:, keep] * s[keep]  # (n, r'): the samples in row-space coordinates
    a = torch.zeros(n_way, z.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(n_way, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [a, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = c * F.cross_entropy(z @ a.T + b, labels, reduction="sum") + 0.5 * a.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    weight = a.detach() @ vh[keep]  # (n_way, d)
    return weight.to(features.dtype), b.detach().to(features.dtype)


class LinearProbeOptions(SupervisedOptions):
    """Options of `LinearProbe`.

    Attributes:
        transform: feature transform before the probe: ``cl2n`` (centre by the training mean, then
            L2-normalise), ``l2n`` or ``none``.
        c: inverse L2 regularisation strength.
        max_iter: L-BFGS iterations per task.
    """

    transform: FeatureTransform = "cl2n"
    c: float = Field(1.0, gt=0.0)
    max_iter: int = Field(100, ge=1)


@dataclass(frozen=True)
class LinearProbePredictor:
    """Logistic regression on frozen features: ``W f(x) + b`` with ``W (n_way, d)``."""

    backbone: nn.Module
    weight: Tensor
    bias: Tensor
    mean: Tensor
    transform: FeatureTransform

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``."""
        features = transform_features(self.backbone(query_images), self.mean, self.transform)  # (n_query, d)
        return features @ self.weight.T + self.bias


class LinearProbe(SupervisedMethod):
    """Linear probe (Tian et al. 2020, arXiv:2003.11539) on a supervised-pretrained backbone.

    The backbone is frozen; each task fits a multinomial logistic regression on its support features
    (L-BFGS, deterministic). The pretraining is Chen et al.'s Baseline (arXiv:1904.04232).

    Example:
        >>> from medmeta.models import Conv4
        >>> method = LinearProbe(Conv4(in_channels=3, image_size=32), LinearProbeOptions(c=10.0))
        >>> # fit_supervised(method, ...); logits = method.adapt(support).predict(query_images)
    """

    Options = LinearProbeOptions
    options: LinearProbeOptions
    frozen_backbone: ClassVar[bool] = True

    def adapt(self, support: Support, query_images: Tensor | None = None) -> LinearProbePredictor:
        o = self.options
        mean = self.feature_mean.detach().clone()
        features = transform_features(self.backbone(support.images).detach(), mean, o.transform)  # (n, d)
        weight, bias = fit_logistic_regression(
            features, support.labels, support.n_way, c=o.c, max_iter=o.max_iter
        )
        return LinearProbePredictor(self.backbone, weight, bias, mean, o.transform)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        """``(T, n_support, d)``, ``(T, n_support)``, ``(T, n_query, d)`` -> ``(T, n_query, n_way)``.

        One L-BFGS fit per episode (a joint fit would stop at a different point of each optimum).
        """
        o, mean = self.options, self.feature_mean
        support = transform_features(support_features.detach(), mean, o.transform)  # (T, n_support, d)
        query = transform_features(query_features, mean, o.transform)  # (T, n_query, d)
        out = []
        for t in range(support.shape[0]):
            weight, bias = fit_logistic_regression(
                support[t], support_labels[t], n_way, c=o.c, max_iter=o.max_iter
            )
            out.append(query[t] @ weight.T + bias)  # (n_query, n_way)
        return torch.stack(out)
