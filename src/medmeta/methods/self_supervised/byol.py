"""BYOL: an online network predicts a momentum target network's projection of the other view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medmeta.config import SSLConfig
from medmeta.methods.self_supervised.base import SelfSupervisedMethod, lightly, momentum_copy


class BYOL(SelfSupervisedMethod):
    """Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020
    (https://arxiv.org/abs/2006.07733).

    The online network (backbone, lightly's ``BYOLProjectionHead`` and ``BYOLPredictionHead``) predicts the
    target network's projection of the other view; the loss is the symmetrised negative cosine similarity
    (lightly's ``NegativeCosineSimilarity``). No negatives: the target, a momentum copy of the backbone and
    projection head, keeps the representation from collapsing.

    Example:
        >>> method = BYOL(Conv4(1, image_size=16), 64, SSLConfig(method="byol"))  # doctest: +SKIP
        >>> method.batch_loss([view0, view1]).backward(); optimizer.step(); method.after_step(0, 100)  # doctest: +SKIP
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SSLConfig) -> None:
        super().__init__(backbone, feature_dim, cfg)
        heads = lightly("models.modules.heads")
        self.projection_head = heads.BYOLProjectionHead(feature_dim, cfg.hidden_dim, cfg.output_dim)
        self.prediction_head = heads.BYOLPredictionHead(cfg.output_dim, cfg.hidden_dim, cfg.output_dim)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = lightly("loss").NegativeCosineSimilarity()

    def predict(self, images: Tensor) -> Tensor:
        """Online predictions ``(B, output_dim)`` of ``(B, C, H, W)`` images."""
        return self.prediction_head(self.projection_head(self.backbone(images)))

    @torch.no_grad()
    def target(self, images: Tensor) -> Tensor:
        """Target projections ``(B, output_dim)`` (no gradient)."""
        return self.projection_head_momentum(self.backbone_momentum(images))

    def batch_loss(self, views: Sequence[Tensor]) -> Tensor:
        self._check_views(views)
        p0, p1 = self.predict(views[0]), self.predict(views[1])
        z0, z1 = self.target(views[0]), self.target(views[1])
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    @torch.no_grad()
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.backbone, self.backbone_momentum),
            (self.projection_head, self.projection_head_momentum),
        ]
