"""Scores of a continual run: from per-class test accuracies after each stage to ACC, BWT and forgetting.

The run tests, after each stage ``t`` (0-based, ``T`` stages), one classifier over every class seen so far,
which gives a class accuracy matrix ``a[t, c]`` (NaN for classes not yet seen). A stage's classes form one
task: ``R[t, i]`` is the mean accuracy over stage ``i``'s classes after learning stage ``t``
(``i <= t``; NaN above the diagonal). Then, with the standard definitions:

- accuracy after stage ``t``: the mean of ``a[t, c]`` over every class seen so far (each class counts once);
- ACC (average accuracy), Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning",
  NeurIPS 2017, arXiv:1706.08840: ``ACC = 1/T sum_i R[T-1, i]`` (each stage counts once);
- BWT (backward transfer), same paper: ``BWT = 1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i])``; negative
  values are forgetting;
- forgetting, Chaudhry, Dokania, Ajanthan and Torr, "Riemannian Walk for Incremental Learning:
  Understanding Forgetting and Intransigence", ECCV 2018, arXiv:1801.10112:
  ``f_j = max_{l in j..T-2} R[l, j] - R[T-1, j]`` for each earlier stage ``j < T-1``, and
  ``F = 1/(T-1) sum_j f_j``: the drop from the best accuracy a stage ever had.

GEM's forward transfer needs each task's accuracy before training on it, which is undefined here (a
class-incremental classifier has no output for classes it has not seen yet), so it is not reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """Accuracy of each class ``(n_classes,)``; NaN for a class with no test image.

    Args:
        pred: ``(N,)`` predicted class ids.
        target: ``(N,)`` true class ids in ``0..n_classes-1``.
    """
    total = np.bincount(target, minlength=n_classes).astype(np.float64)  # (n_classes,)
    right = np.bincount(target[pred == target], minlength=n_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / total, np.nan)


def task_matrix(class_accuracy: np.ndarray, stage_of_class: np.ndarray) -> np.ndarray:
    """``R (T, T)``: ``R[t, i]`` = mean accuracy over stage ``i``'s classes after stage ``t``; NaN for ``i > t``.

    Args:
        class_accuracy: ``(T, n_classes)``, NaN for classes not yet seen.
        stage_of_class: ``(n_classes,)`` the stage (0-based) that brings each class.
    """
    n_stages = class_accuracy.shape[0]
    out = np.full((n_stages, n_stages), np.nan)
    for t in range(n_stages):
        for i in range(t + 1):
            out[t, i] = float(np.mean(class_accuracy[t, stage_of_class == i]))
    return out


def average_accuracy(r: np.ndarray) -> float:
    """ACC (Lopez-Paz and Ranzato 2017): the mean of the last row of `r` ``(T, T)``."""
    return float(np.mean(r[-1]))


def backward_transfer(r: np.ndarray) -> float:
    """BWT (Lopez-Paz and Ranzato 2017): ``1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i])``; NaN for ``T = 1``."""
    n = r.shape[0]
    if n < 2:
        return math.nan
    return float(np.mean([r[-1, i] - r[i, i] for i in range(n - 1)]))


def forgetting(r: np.ndarray) -> float:
    """Average forgetting (Chaudhry et al. 2018): ``1/(T-1) sum_{j<T-1} (max_{l in j..T-2} R[l, j] - R[T-1, j])``;
    NaN for ``T = 1``."""
    n = r.shape[0]
    if n < 2:
        return math.nan
    return float(np.mean([np.max(r[j : n - 1, j]) - r[-1, j] for j in range(n - 1)]))


@dataclass(frozen=True)
class ContinualScores:
    """One run's scores (fractions in ``[0, 1]``; BWT in ``[-1, 1]``).

    Attributes:
        stage_accuracy: ``(T,)`` mean accuracy over the classes seen after each stage.
        task_matrix: ``(T, T)`` R (see the module docstring).
        acc: ACC.
        bwt: BWT.
        forgetting: average forgetting.
    """

    stage_accuracy: np.ndarray
    task_matrix: np.ndarray
    acc: float
    bwt: float
    forgetting: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""

        def clean(x: Any) -> Any:
            if isinstance(x, list):
                return [clean(v) for v in x]
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "stage_accuracy": clean(self.stage_accuracy.tolist()),
            "task_matrix": clean(self.task_matrix.tolist()),
            "acc": clean(self.acc),
            "bwt": clean(self.bwt),
            "forgetting": clean(self.forgetting),
        }


def continual_scores(class_accuracy: np.ndarray, stage_of_class: np.ndarray) -> ContinualScores:
    """Every score of one run from its class accuracy matrix ``(T, n_classes)`` (NaN: not yet seen)."""
    r = task_matrix(class_accuracy, stage_of_class)
    seen = [np.nanmean(class_accuracy[t, stage_of_class <= t]) for t in range(class_accuracy.shape[0])]
    return ContinualScores(
        stage_accuracy=np.asarray(seen, dtype=np.float64),
        task_matrix=r,
        acc=average_accuracy(r),
        bwt=backward_transfer(r),
        forgetting=forgetting(r),
    )
