"""Baseline++: a cosine classifier, in pretraining and again on each task's support set.

Chen, Liu, Kira, Wang, Huang. "A Closer Look at Few-shot Classification", ICLR 2019, arXiv:1904.04232.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.functional import compute_prototypes
from medmeta.methods.transfer.base import SupervisedMethod, SupervisedOptions
from medmeta.models.heads import HeadKind, cosine_logits
from medmeta.tasks.episode import Support


def train_cosine_head(
    features: Tensor, labels: Tensor, weight: Tensor, *, scale: float, steps: int, lr: float
) -> Tensor:
    """`steps` full-batch Adam steps of cross-entropy on ``scale * cos(f, w_k)``.

    Episodes stacked along leading dimensions are trained independently (summed loss, element-wise
    Adam), so a batch gives each episode's own result.

    Args:
        features: support features ``(..., n, d)`` (constants).
        labels: ``(..., n)`` int64.
        weight: initial class directions ``(..., n_way, d)``.
        scale: logit scale.
        steps: optimiser steps.
        lr: Adam learning rate.

    Returns:
        Trained directions ``(..., n_way, d)``, detached.
    """
    w = weight.detach().clone().requires_grad_(True)
    x = features.detach()
    n_way, n = w.shape[-2], x.shape[-2]
    opt = torch.optim.Adam([w], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = cosine_logits(x, w, scale).reshape(-1, n_way)  # (batch * n, n_way)
            loss = F.cross_entropy(logits, labels.reshape(-1), reduction="sum") / n
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach()


class BaselinePPOptions(SupervisedOptions):
    """Options of `BaselinePP`.

    Attributes:
        pretrain_head: ``cosine`` (Baseline++) by default.
        steps: Adam steps of the support-set cosine classifier (0: normalised class means).
        lr: their learning rate.
        init: ``prototypes`` (normalised class means) or ``random`` (seeded unit directions).
        seed: seed of the ``random`` initialisation.
    """

    pretrain_head: HeadKind = "cosine"
    steps: int = Field(100, ge=0)
    lr: float = Field(1e-2, gt=0.0)
    init: Literal["prototypes", "random"] = "prototypes"
    seed: int = 0


@dataclass(frozen=True)
class CosinePredictor:
    """Cosine classifier over frozen features; holds the class directions ``(n_way, d)``."""

    backbone: nn.Module
    weight: Tensor
    scale: float

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)`` in ``[-scale, scale]``."""
        return cosine_logits(self.backbone(query_images), self.weight, self.scale)


class BaselinePP(SupervisedMethod):
    """Baseline++ (Chen et al. 2019, arXiv:1904.04232).

    The backbone is pretrained with a cosine classifier over all training classes, which reduces
    intra-class variation; each task trains a new cosine classifier on its frozen support features.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = BaselinePP(Conv4(in_channels=3, image_size=32))
        >>> # fit_supervised(method, ...); logits = method.adapt(support).predict(query_images)
    """

    Options = BaselinePPOptions
    options: BaselinePPOptions
    frozen_backbone: ClassVar[bool] = True

    def _fit(self, features: Tensor, labels: Tensor, n_way: int) -> Tensor:
        """Class directions ``(..., n_way, d)`` for support features ``(..., n_support, d)``."""
        o = self.options
        if o.init == "prototypes":
            weight = F.normalize(compute_prototypes(F.normalize(features, dim=-1), labels, n_way), dim=-1)
        else:
            g = torch.Generator().manual_seed(o.seed)
            *batch, _, d = features.shape
            weight = F.normalize(torch.randn(*batch, n_way, d, generator=g), dim=-1).to(features)
        return train_cosine_head(features, labels, weight, scale=o.cosine_scale, steps=o.steps, lr=o.lr)

    def adapt(self, support: Support, query_images: Tensor | None = None) -> CosinePredictor:
        features = self.backbone(support.images).detach()  # (n_support, d)
        weight = self._fit(features, support.labels, support.n_way)  # (n_way, d)
        return CosinePredictor(self.backbone, weight, self.options.cosine_scale)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        """``(T, n_support, d)``, ``(T, n_support)``, ``(T, n_query, d)`` -> ``(T, n_query, n_way)``."""
        weight = self._fit(support_features.detach(), support_labels, n_way)  # (T, n_way, d)
        return cosine_logits(query_features, weight, self.options.cosine_scale)
