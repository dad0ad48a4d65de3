"""DINO: a student matches a momentum teacher's centred, sharpened outputs across global and local views."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medmeta.config import SSLConfig
from medmeta.methods.self_supervised.base import SelfSupervisedMethod, lightly, momentum_copy


class DINO(SelfSupervisedMethod):
    """Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (https://arxiv.org/abs/2104.14294).

    The teacher (a momentum copy of the backbone and lightly's ``DINOProjectionHead``) sees the two global
    views; the student sees every view, the local crops too, and learns to match the teacher's output
    distribution over ``output_dim`` prototypes (lightly's ``DINOLoss``, which centres the teacher and warms
    its temperature up over ``teacher_warmup_epochs``).

    Example:
        >>> method = DINO(Conv4(1, image_size=16), 64, SSLConfig(method="dino", local_crops=2))  # doctest: +SKIP
        >>> method.batch_loss([g0, g1, l0, l1]).backward(); optimizer.step(); method.after_step(0, 100)  # doctest: +SKIP
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SSLConfig) -> None:
        super().__init__(backbone, feature_dim, cfg)
        heads = lightly("models.modules.heads")
        dims = (feature_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.output_dim)
        with (
            warnings.catch_warnings()
        ):  # lightly's head uses torch's deprecated weight_norm: not the user's concern
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            self.projection_head = heads.DINOProjectionHead(*dims)
            # the head's weight-normalised layer cannot be deep-copied: a twin starts from the same weights
            self.teacher_head = heads.DINOProjectionHead(*dims)
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head.load_state_dict(self.projection_head.state_dict())
        lightly("models.utils").deactivate_requires_grad(self.teacher_head)
        self.criterion = lightly("loss").DINOLoss(
            output_dim=cfg.output_dim,
            warmup_teacher_temp=min(0.04, cfg.teacher_temperature),
            teacher_temp=cfg.teacher_temperature,
            warmup_teacher_temp_epochs=cfg.teacher_warmup_epochs,
            student_temp=cfg.temperature,
        )

    def student(self, images: Tensor) -> Tensor:
        """Student outputs ``(B, output_dim)``."""
        return self.projection_head(self.backbone(images))

    @torch.no_grad()
    def teacher(self, images: Tensor) -> Tensor:
        """Teacher outputs ``(B, output_dim)`` (no gradient)."""
        return self.teacher_head(self.teacher_backbone(images))

    def batch_loss(self, views: Sequence[Tensor]) -> Tensor:
        self._check_views(views)
        teacher_out = [self.teacher(v) for v in views[: self.global_views]]
        student_out = [self.student(v) for v in views]
        return self.criterion(teacher_out, student_out, epoch=self.epoch)

    @torch.no_grad()
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.projection_head, self.teacher_head)]
