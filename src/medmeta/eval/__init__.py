"""Evaluation over many seeded episodes: metrics with 95% confidence intervals."""

from __future__ import annotations

from medmeta.eval.evaluate import EvalResult, evaluate
from medmeta.eval.metrics import episode_metrics, mean_ci

__all__ = ["EvalResult", "episode_metrics", "evaluate", "mean_ci"]
