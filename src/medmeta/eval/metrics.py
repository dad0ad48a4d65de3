"""Per-episode metrics, vectorised over episodes, and their aggregation (mean with a 95% confidence interval).

Every metric is computed in torch for a stack of T episodes at once, so scoring thousands of episodes
costs no more than one call per metric (a per-episode scikit-learn call would dominate evaluation). The
tests check each metric against scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

#: Bins of the expected calibration error (equal width on the top-class confidence).
ECE_BINS = 15


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
    """Confusion matrices, rows = true class, columns = predicted class.

    Args:
        pred: ``(..., n_query)`` predicted classes.
        target: ``(..., n_query)`` true classes.
        n_way: number of classes.

    Returns:
        ``(..., n_way, n_way)`` int64 counts.
    """
    flat = (target * n_way + pred).reshape(-1, pred.shape[-1])  # (T, n_query)
    counts = torch.zeros(flat.shape[0], n_way * n_way, dtype=torch.int64, device=pred.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))  # (T, n_way * n_way)
    return counts.view(*pred.shape[:-1], n_way, n_way)


def ovr_auc(probs: Tensor, target: Tensor) -> Tensor:
    """Macro one-vs-rest ROC AUC per episode (ties count one half), as scikit-learn's
    ``roc_auc_score(target, probs, multi_class="ovr", average="macro")``.

    Computed from average ranks (Mann-Whitney U): ``AUC_c = (sum of positive ranks - P(P+1)/2) / (P N)``.

    Args:
        probs: ``(T, n_query, n_way)`` class probabilities.
        target: ``(T, n_query)`` int64.

    Returns:
        ``(T,)`` float64; NaN for an episode where no class has both positives and negatives.
    """
    n_way = probs.shape[-1]
    scores = probs.double().transpose(1, 2).contiguous()  # (T, n_way, n_query)
    ordered = scores.sort(-1).values  # (T, n_way, n_query)
    below = torch.searchsorted(ordered, scores, right=False)  # (T, n_way, n_query)
    at_or_below = torch.searchsorted(ordered, scores, right=True)
    ranks = (below + at_or_below + 1).double() / 2  # average 1-based ranks
    positive = (target[:, None, :] == torch.arange(n_way, device=target.device)[None, :, None]).double()
    n_pos = positive.sum(-1)  # (T, n_way)
    n_neg = target.shape[1] - n_pos
    auc = ((ranks * positive).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)  # (T, n_way)
    return auc.nanmean(-1)


def calibration_bins(probs: Tensor, target: Tensor, n_bins: int = ECE_BINS) -> Tensor:
    """Per-episode reliability counts on the top-class confidence, bins ``(k/n_bins, (k+1)/n_bins]``.

    Args:
        probs: ``(T, n_query, n_way)`` class probabilities.
        target: ``(T, n_query)`` int64.
        n_bins: number of equal-width bins.

    Returns:
        ``(T, n_bins, 3)`` float64: per bin the number of queries, the number correct and the summed
        confidence. Sum over T to pool episodes.
    """
    confidence, pred = probs.double().max(-1)  # (T, n_query)
    bins = (confidence * n_bins).ceil().long().clamp(1, n_bins) - 1  # (T, n_query)
    values = torch.stack(
        [torch.ones_like(confidence), (pred == target).double(), confidence], dim=-1
    )  # (T, n_query, 3)
    out = torch.zeros(*confidence.shape[:-1], n_bins, 3, dtype=torch.float64, device=probs.device)
    return out.scatter_add_(-2, bins[..., None].expand(*bins.shape, 3), values)


def ece_from_bins(bins: Tensor) -> Tensor:
    """Expected calibration error ``sum_b |correct_b - confidence_b| / n`` from `calibration_bins` output.

    Args:
        bins: ``(..., n_bins, 3)``.

    Returns:
        ``(...)`` float64.
    """
    return (bins[..., 1] - bins[..., 2]).abs().sum(-1) / bins[..., 0].sum(-1)


def batch_episode_metrics(logits: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Accuracy, balanced accuracy, macro-F1, one-vs-rest AUC and ECE of T episodes of equal shape.

    Probabilities are ``softmax(logits)``. Balanced accuracy and macro-F1 average over the classes that
    appear in the query set, as scikit-learn's ``balanced_accuracy_score`` does (for ``f1_score``, pass
    those classes as ``labels``); sampled episodes have every class in the query, where this is moot.

    Args:
        logits: ``(T, n_query, n_way)``.
        target: ``(T, n_query)`` int64.

    Returns:
        Each metric as a ``(T,)`` float64 CPU tensor.
    """
    if logits.ndim != 3 or target.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (T, n_query, n_way) and target (T, n_query), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}: stack episodes of one shape, or call episode_metrics for one episode"
        )
    logits, target = logits.detach().cpu(), target.detach().cpu()
    n_way = logits.shape[-1]
    probs = torch.softmax(logits.double(), dim=-1)  # (T, n_query, n_way)
    cm = confusion(logits.argmax(-1), target, n_way).double()  # (T, n_way, n_way)
    tp = cm.diagonal(dim1=-2, dim2=-1)  # (T, n_way)
    support, predicted = cm.sum(-1), cm.sum(-2)  # (T, n_way)
    recall = tp / support.clamp_min(1)
    precision = tp / predicted.clamp_min(1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0).double()
    n_present = present.sum(-1)
    return {
        "accuracy": tp.sum(-1) / cm.sum((-2, -1)),
        "balanced_accuracy": (recall * present).sum(-1) / n_present,
        "macro_f1": (f1 * present).sum(-1) / n_present,
        "auc": ovr_auc(probs, target),
        "ece": ece_from_bins(calibration_bins(probs, target)),
    }


def episode_metrics(logits: Tensor, target: Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, one-vs-rest AUC and ECE of one episode.

    Args:
        logits: ``(n_query, n_way)``.
        target: ``(n_query,)`` int64.
    """
    return {k: float(v[0]) for k, v in batch_episode_metrics(logits[None], target[None]).items()}
