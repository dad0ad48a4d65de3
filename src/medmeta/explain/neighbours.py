"""Nearest support images of each query in a metric method's embedding space."""

from __future__ import annotations

import torch
from torch import Tensor


def nearest_support(query_features: Tensor, support_features: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The `k` support images closest to each query (Euclidean distance between backbone embeddings).

    Args:
        query_features: ``(n_query, d)``.
        support_features: ``(n_support, d)``.
        k: neighbours per query (capped at ``n_support``).

    Returns:
        ``(distances (n_query, k), indices (n_query, k))``, nearest first.
    """
    d = torch.cdist(query_features.double(), support_features.double())  # (n_query, n_support)
    k = min(k, support_features.shape[0])
    dist, idx = d.topk(k, dim=1, largest=False)  # (n_query, k) each
    return dist.float(), idx
