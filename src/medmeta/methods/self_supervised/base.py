"""What every self-supervised method is: a backbone plus lightly's heads, trained on views of unlabelled images.

`medmeta.train.loop.fit` minimises ``batch_loss(views)`` (views from
`medmeta.train.self_supervised.ViewBatches`) and calls ``after_step(step, total_steps)`` after every
optimiser step, where the momentum methods move their momentum copies (lightly's ``update_momentum``, the
momentum following lightly's ``cosine_schedule``). The backbone sits under ``backbone.``, as in every
few-shot method, so a pretraining checkpoint initialises any method's backbone.
"""

from __future__ import annotations

import abc
import copy
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import ClassVar

from torch import Tensor, nn

from medmeta._optional import optional_import
from medmeta.config import SSLConfig

FEATURE = "self-supervised pretraining"


def lightly(submodule: str) -> ModuleType:
    """``lightly.<submodule>``, or an error saying to install ``medmeta[ssl]``."""
    optional_import("lightly", FEATURE)
    return importlib.import_module(f"lightly.{submodule}")


class SelfSupervisedMethod(nn.Module, abc.ABC):
    """A backbone and its self-supervised heads.

    Args:
        backbone: maps ``(N, C, H, W)`` to ``(N, feature_dim)``.
        feature_dim: the backbone's output width.
        cfg: heads, temperatures, momentum schedule.

    Attributes:
        global_views: views every batch must hold (the first ones); the rest are DINO's local views.
    """

    global_views: ClassVar[int] = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SSLConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.cfg = cfg
        self.epoch, self.epochs = 0, 1

    @abc.abstractmethod
    def batch_loss(self, views: Sequence[Tensor]) -> Tensor:
        """The training loss (0-d) of one batch of views, each ``(B, C, H, W)``: view ``i`` of image ``b``
        is ``views[i][b]``."""

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch (0-based)."""
        self.epoch, self.epochs = epoch, epochs

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(trained, momentum copy)`` module pairs that `after_step` moves together (none by default)."""
        return []

    def after_step(self, step: int, total_steps: int) -> None:
        """Called by the training loop after optimiser step `step` (0-based) of `total_steps`: moves every
        momentum copy towards its trained module (lightly's ``update_momentum``) by `momentum`."""
        pairs = self.momentum_pairs()
        if not pairs:
            return
        m = self.momentum(step, total_steps)
        update = lightly("models.utils").update_momentum
        for trained, follower in pairs:
            update(trained, follower, m)

    def momentum(self, step: int, total_steps: int) -> float:
        """The momentum after step `step`: lightly's cosine schedule from ``cfg.momentum`` to
        ``cfg.momentum_end`` over the run."""
        scheduler = lightly("utils.scheduler")
        return float(
            scheduler.cosine_schedule(step, max(total_steps, 1), self.cfg.momentum, self.cfg.momentum_end)
        )

    def _check_views(self, views: Sequence[Tensor]) -> None:
        if len(views) < self.global_views:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.global_views} views per image, got {len(views)}"
            )


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` (lightly's ``deactivate_requires_grad``), moved only by momentum updates."""
    copied = copy.deepcopy(module)
    lightly("models.utils").deactivate_requires_grad(copied)
    return copied
