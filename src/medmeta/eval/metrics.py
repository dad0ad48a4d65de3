"""Per-episode metrics and their aggregation (mean with a 95% confidence interval)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def mean_ci(values: Sequence[float] | np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% CI, ``z * std / sqrt(n)`` (sample std).

    Returns ``(mean, 0.0)`` for a single value and ``(nan, nan)`` for none.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    if arr.size == 1:
        return float(arr[0]), 0.0
    return float(arr.mean()), float(z * arr.std(ddof=1) / math.sqrt(arr.size))


def confusion(pred: Tensor, target: Tensor, n_way: int) -> Tensor:
    """Confusion matrix ``(n_way, n_way)``, rows = true class, columns = predicted class."""
    return torch.bincount(target * n_way + pred, minlength=n_way * n_way).view(n_way, n_way)


def episode_metrics(logits: Tensor, target: Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of one episode.

    Args:
        logits: ``(n_query, n_way)``.
        target: ``(n_query,)`` int64.
    """
    n_way = logits.shape[1]
    pred = logits.argmax(1)
    cm = confusion(pred.cpu(), target.cpu(), n_way).double()  # (n_way, n_way)
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp)
    )
    present = support > 0
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
    }
