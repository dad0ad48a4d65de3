"""MoCo v2: queries attract the momentum encoder's key of the other view and repel a queue of old keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medmeta.config import SSLConfig
from medmeta.methods.self_supervised.base import SelfSupervisedMethod, lightly, momentum_copy


class MoCo(SelfSupervisedMethod):
    """He, Fan, Wu, Xie and Girshick, "Momentum Contrast for Unsupervised Visual Representation Learning",
    CVPR 2020 (https://arxiv.org/abs/1911.05722); v2 heads from Chen, Fan, Girshick and He, "Improved
    Baselines with Momentum Contrastive Learning", 2020 (https://arxiv.org/abs/2003.04297).

    A query (backbone + lightly's ``MoCoProjectionHead`` on view 0) is contrasted with the key of view 1
    from a momentum copy of both, and with a memory bank of ``memory_bank_size`` earlier keys (lightly's
    ``NTXentLoss`` with a memory bank). After each step the copies move towards the trained networks
    (``update_momentum``).

    Example:
        >>> method = MoCo(Conv4(1, image_size=16), 64, SSLConfig(method="moco"))  # doctest: +SKIP
        >>> method.batch_loss([view0, view1]).backward(); optimizer.step(); method.after_step(0, 100)  # doctest: +SKIP
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SSLConfig) -> None:
        super().__init__(backbone, feature_dim, cfg)
        heads = lightly("models.modules.heads")
        self.projection_head = heads.MoCoProjectionHead(feature_dim, cfg.hidden_dim, cfg.output_dim)
        self.backbone_momentum = momentum_copy(self.backbone)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = lightly("loss").NTXentLoss(
            temperature=cfg.temperature, memory_bank_size=(cfg.memory_bank_size, cfg.output_dim)
        )
        # lightly keeps the queue out of the state dict; checkpoints and --resume need it
        bank = self.criterion.memory_bank
        for name in ("bank", "bank_ptr"):
            bank.register_buffer(name, getattr(bank, name), persistent=True)

    def query(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> queries ``(B, output_dim)``."""
        return self.projection_head(self.backbone(images))

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> keys of the momentum encoder ``(B, output_dim)`` (no gradient)."""
        return self.projection_head_momentum(self.backbone_momentum(images))

    def batch_loss(self, views: Sequence[Tensor]) -> Tensor:
        self._check_views(views)
        return self.criterion(self.query(views[0]), self.key(views[1]))

    @torch.no_grad()
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.backbone, self.backbone_momentum),
            (self.projection_head, self.projection_head_momentum),
        ]
