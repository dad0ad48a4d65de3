"""Meta-SGD: MAML that also meta-learns one inner learning rate per weight."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.gradient_based.maml import MAML, MAMLOptions


class MetaSGDOptions(MAMLOptions):
    """Options of `MetaSGD` (see `MAMLOptions`); `inner_lr` is the initial value of every learned rate.

    Attributes:
        inner_lr: initial per-weight learning rate (the paper draws it from ``U(0.005, 0.1)``).
    """

    inner_lr: float = Field(0.05, gt=0.0)


class MetaSGD(MAML):
    """Meta-SGD (Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017,
    arXiv:1707.09835).

    The inner update is ``theta - alpha * grad`` with a learned ``alpha`` shaped like ``theta``, so the
    meta-learner chooses the direction and size of adaptation as well as the initialisation; ``alpha``
    gets its meta-gradient through the (second- or first-order) unrolled inner loop, like ``theta``.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = MetaSGD(Conv4(in_channels=1, image_size=28), MetaSGDOptions(inner_steps=1))
        >>> # method.inner_lrs[i] has the shape of the i-th adapted parameter, method.adapted[i]
    """

    Options = MetaSGDOptions
    options: MetaSGDOptions

    def __init__(self, backbone: nn.Module, options: MetaSGDOptions | None = None) -> None:
        super().__init__(backbone, options or MetaSGDOptions())
        params = self.model_parameters()
        self.inner_lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(params[n].detach(), self.options.inner_lr)) for n in self.adapted]
        )

    def step_size(self, step: int, index: int) -> Tensor:
        return self.inner_lrs[index]
