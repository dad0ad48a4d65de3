"""Temperature scaling (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017):
one scalar T > 0 divides the logits, fitted by minimising the negative log-likelihood of held-out predictions.
``softmax(z / T)`` keeps the argmax (accuracy unchanged) and only moves the confidence: T > 1 softens an
overconfident model. The fit must never see the predictions it is judged on (see `medmeta.deploy.stability`,
which fits it on leave-one-out predictions of the support images).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: the temperatures searched (log scale): from 20x sharper to 50x softer
T_MIN, T_MAX = 0.05, 50.0


def nll(logits: Tensor, target: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)``; logits ``(n, k)``, target ``(n,)``."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, target))


def fit_temperature(logits: Tensor, target: Tensor, *, iterations: int = 60) -> float:
    """The T in [`T_MIN`, `T_MAX`] minimising `nll`, by golden-section search on log T.

    The NLL is convex in 1/T, hence unimodal in log T, so the search finds its minimum; deterministic.

    Args:
        logits: ``(n, k)`` held-out logits.
        target: ``(n,)`` int64 true classes.

    Raises:
        ValueError: fewer than 2 predictions, or shapes that do not match.
    """
    if logits.ndim != 2 or target.shape != logits.shape[:1] or len(target) < 2:
        raise ValueError(
            f"fit_temperature needs logits (n, k) and target (n,) with n >= 2, got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    z, y = logits.detach().cpu(), target.detach().cpu().long()
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(z, y, math.exp(a)), nll(z, y, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(z, y, math.exp(b))
    return math.exp((lo + hi) / 2)
