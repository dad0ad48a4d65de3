"""SimCLR: two views of each image attract, every other image of the batch repels."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medmeta.config import SSLConfig
from medmeta.methods.self_supervised.base import SelfSupervisedMethod, lightly


class SimCLR(SelfSupervisedMethod):
    """Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020 (https://arxiv.org/abs/2002.05709).

    The backbone's features of two views pass through a projection head (lightly's
    ``SimCLRProjectionHead``); the NT-Xent loss (lightly's ``NTXentLoss``) treats the other view of the same
    image as the positive and the other ``2B - 2`` views of the batch as negatives.

    Example:
        >>> method = SimCLR(Conv4(1, image_size=16), 64, SSLConfig(hidden_dim=32, output_dim=16))  # doctest: +SKIP
        >>> method.batch_loss([view0, view1]).backward()  # doctest: +SKIP
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SSLConfig) -> None:
        super().__init__(backbone, feature_dim, cfg)
        heads = lightly("models.modules.heads")
        self.projection_head = heads.SimCLRProjectionHead(feature_dim, cfg.hidden_dim, cfg.output_dim)
        self.criterion = lightly("loss").NTXentLoss(temperature=cfg.temperature)

    def project(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> projections ``(B, output_dim)``."""
        return self.projection_head(self.backbone(images))

    def batch_loss(self, views: Sequence[Tensor]) -> Tensor:
        self._check_views(views)
        return self.criterion(self.project(views[0]), self.project(views[1]))
