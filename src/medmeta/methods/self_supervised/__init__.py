"""Self-supervised pretraining of backbones on unlabelled images (lightly's heads and losses).

`SSL_METHODS` maps ``ssl.method`` to its class; `build_ssl_method` builds one around a backbone.
"""

from __future__ import annotations

from torch import nn

from medmeta.config import SSLConfig
from medmeta.methods.self_supervised.base import SelfSupervisedMethod
from medmeta.methods.self_supervised.byol import BYOL
from medmeta.methods.self_supervised.dino import DINO
from medmeta.methods.self_supervised.moco import MoCo
from medmeta.methods.self_supervised.simclr import SimCLR

SSL_METHODS: dict[str, type[SelfSupervisedMethod]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "dino": DINO,
}


def build_ssl_method(cfg: SSLConfig, backbone: nn.Module, feature_dim: int) -> SelfSupervisedMethod:
    """The configured method around `backbone` (whose features are `feature_dim` wide)."""
    return SSL_METHODS[cfg.method](backbone, feature_dim, cfg)


__all__ = ["BYOL", "DINO", "SSL_METHODS", "MoCo", "SelfSupervisedMethod", "SimCLR", "build_ssl_method"]
