"""Classification heads for supervised pretraining: a linear layer, or a cosine classifier (Baseline++).

The cosine classifier is the ``distLinear`` head of Chen, Liu, Kira, Wang, Huang. "A Closer Look at
Few-shot Classification", ICLR 2019, arXiv:1904.04232: logits are scaled cosine similarities between a
feature and one weight vector per class, so classes compete by direction, not by feature norm.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HeadKind = Literal["linear", "cosine"]


def cosine_logits(features: Tensor, weight: Tensor, scale: Tensor | float) -> Tensor:
    """Scaled cosine similarities.

    Args:
        features: ``(..., n, d)``.
        weight: ``(..., n_classes, d)``, one direction per class.
        scale: logit multiplier (inverse temperature).

    Returns:
        ``(..., n, n_classes)`` logits in ``[-scale, scale]``.
    """
    return F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2) * scale


class CosineHead(nn.Module):
    """Cosine classifier ``scale * cos(feature, w_c)`` (Chen et al. 2019, Baseline++'s ``distLinear``).

    Args:
        in_features: feature width d.
        n_classes: number of classes.
        scale: fixed logit multiplier.

    Example:
        >>> head = CosineHead(64, 5)
        >>> head(torch.randn(2, 64)).shape
        torch.Size([2, 5])
    """

    scale: Tensor

    def __init__(self, in_features: int, n_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, features: Tensor) -> Tensor:
        """``(n, d)`` -> ``(n, n_classes)``."""
        return cosine_logits(features, self.weight, self.scale)


def build_head(kind: HeadKind, in_features: int, n_classes: int, *, scale: float = 10.0) -> nn.Module:
    """A ``linear`` (``nn.Linear``) or ``cosine`` (`CosineHead`) head mapping ``(n, d)`` to ``(n, n_classes)``."""
    if kind == "cosine":
        return CosineHead(in_features, n_classes, scale)
    if kind == "linear":
        return nn.Linear(in_features, n_classes)
    raise ValueError(f"head kind must be 'linear' or 'cosine', got {kind!r}")
