"""Evaluation over many seeded episodes: metrics with 95% confidence intervals, cached embeddings."""

from __future__ import annotations

from medmeta.eval.cache import EmbeddingCache, cached_episode_logits
from medmeta.eval.evaluate import EvalResult, evaluate
from medmeta.eval.metrics import batch_episode_metrics, episode_metrics, mean_ci

__all__ = [
    "EmbeddingCache",
    "EvalResult",
    "batch_episode_metrics",
    "cached_episode_logits",
    "episode_metrics",
    "evaluate",
    "mean_ci",
]
