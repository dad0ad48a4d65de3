"""Supervised pretraining of the transfer baselines: the shared method base, heads and training loop.

The loop, `medmeta.pretrain.supervised.fit_supervised`, is imported from its module: it depends on
evaluation, which depends on the method registry, which depends on this package.
"""

from __future__ import annotations

from medmeta.pretrain.base import SupervisedMethod, SupervisedOptions, switch_method, transform_features
from medmeta.pretrain.heads import CosineHead, build_head, cosine_logits

__all__ = [
    "CosineHead",
    "SupervisedMethod",
    "SupervisedOptions",
    "build_head",
    "cosine_logits",
    "switch_method",
    "transform_features",
]
