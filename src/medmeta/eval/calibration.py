"""Temperature scaling (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017):
one scalar T > 0 divides the logits, fitted by minimising the negative log-likelihood of held-out predictions.
``softmax(z / T)`` keeps the argmax (accuracy unchanged) and only moves the confidence: T > 1 softens an
overconfident model. The fit must never see the predictions it is judged on (see `medmeta.deploy.stability`,
which fits it on leave-one-out predictions of the support images).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

#: the temperatures searched (log scale): from 20x sharper to 50x softer
T_MIN, T_MAX = 0.05, 50.0


def nll(logits: Tensor, target: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)``; logits ``(n, k)``, target ``(n,)``."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, target))


def fit_temperature(
    logits: Tensor,
    target: Tensor,
    *,
    iterations: int = 60,
    prior_sd: float | None = None,
    prior: float = 1.0,
) -> float:
    """The T in [`T_MIN`, `T_MAX`] minimising `nll`, by golden-section search on log T.

    The NLL is convex in 1/T, hence unimodal in log T, so the search finds its minimum; deterministic.

    With `prior_sd`, the fit is shrunk towards `prior` (maximum a posteriori): a Gaussian prior on log T
    with that standard deviation is added to the summed NLL of the ``n`` predictions,
    ``n * nll(T) + (log T - log prior)**2 / (2 * prior_sd**2)``. The prior's weight is that of a fixed
    number of predictions, so a temperature fitted on 10 held-out predictions stays near `prior` unless
    they clearly ask otherwise, and one fitted on 80 follows them. The sum of the two terms need not be
    unimodal, so the search starts from the best of 121 points on the log-T grid.

    Args:
        logits: ``(n, k)`` held-out logits.
        target: ``(n,)`` int64 true classes.
        prior_sd: standard deviation of the prior on log T (None: plain maximum likelihood).
        prior: the prior's centre (1.0: the model's own probabilities).

    Raises:
        ValueError: fewer than 2 predictions, shapes that do not match, or a non-positive prior.
    """
    if logits.ndim != 2 or target.shape != logits.shape[:1] or len(target) < 2:
        raise ValueError(
            f"fit_temperature needs logits (n, k) and target (n,) with n >= 2, got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    if (prior_sd is not None and prior_sd <= 0) or prior <= 0:
        raise ValueError(
            f"the temperature prior needs prior > 0 and prior_sd > 0, got {prior} and {prior_sd}"
        )
    z, y = logits.detach().cpu(), target.detach().cpu().long()
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    if prior_sd is None:

        def objective(s: float) -> float:
            return nll(z, y, math.exp(s))

    else:
        n, centre, var = len(y), math.log(prior), prior_sd**2

        def objective(s: float) -> float:
            return n * nll(z, y, math.exp(s)) + (s - centre) ** 2 / (2 * var)

        grid = [lo + (hi - lo) * i / 120 for i in range(121)]
        best = min(range(121), key=lambda i: objective(grid[i]))
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, 120)]
    return math.exp(_golden_min(objective, lo, hi, iterations))


def fit_pooled_temperature(logits: list[Tensor], targets: list[Tensor]) -> float:
    """`fit_temperature` over groups of logits of different widths (e.g. episodes of 2 and 8 classes).

    Every group is padded to the widest with -inf columns, which leave its softmax, hence its NLL, unchanged.

    Args:
        logits: ``(n_i, k_i)`` per group.
        targets: ``(n_i,)`` per group.
    """
    width = max(z.shape[-1] for z in logits)
    padded = [
        torch.cat([z, torch.full((z.shape[0], width - z.shape[-1]), -torch.inf, dtype=z.dtype)], dim=-1)
        for z in logits
    ]
    return fit_temperature(torch.cat(padded), torch.cat(targets))


def _golden_min(f: Callable[[float], float], lo: float, hi: float, iterations: int) -> float:
    """The minimiser of a unimodal `f` on ``[lo, hi]`` by golden-section search (the bracket's midpoint)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2


#: log-spaced temperatures of the posterior over T (`temperature_posterior`), `T_MIN` to `T_MAX`
POSTERIOR_GRID = 121


def temperature_grid(points: int = POSTERIOR_GRID) -> Tensor:
    """``(points,)`` temperatures evenly spaced in log T from `T_MIN` to `T_MAX` (float64)."""
    return torch.logspace(math.log10(T_MIN), math.log10(T_MAX), points, dtype=torch.float64)


def temperature_posterior(logits: Tensor, target: Tensor, temperatures: Tensor | None = None) -> Tensor:
    """Posterior weights ``(G,)`` of the temperatures of `temperature_grid` given held-out predictions.

    A flat prior on log T over the grid times the likelihood of the ``n`` held-out predictions: with
    many predictions the weight concentrates at the maximum-likelihood T (`fit_temperature`); with the
    10 of a 2-way 5-shot support it stays spread, and `posterior_probabilities` then averages sharp and
    soft versions of the prediction instead of betting on one noisy T. No parameter to tune.

    Args:
        logits: ``(n, k)`` held-out logits, ``n >= 2``.
        target: ``(n,)`` int64 true classes.
        temperatures: ``(G,)`` (default `temperature_grid`).

    Raises:
        ValueError: fewer than 2 predictions or shapes that do not match.
    """
    if logits.ndim != 2 or target.shape != logits.shape[:1] or len(target) < 2:
        raise ValueError(
            f"temperature_posterior needs logits (n, k) and target (n,) with n >= 2, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    grid = temperature_grid() if temperatures is None else temperatures.double()
    z = logits.detach().double().cpu()[None] / grid[:, None, None]  # (G, n, k)
    y = target.detach().cpu().long()
    loglik = torch.log_softmax(z, dim=-1)[:, torch.arange(len(y)), y].sum(1)  # (G,)
    return torch.softmax(loglik, dim=0)


def posterior_probabilities(logits: Tensor, weights: Tensor, temperatures: Tensor | None = None) -> Tensor:
    """``sum_g weights[g] * softmax(logits / T_g)``: class probabilities ``(..., k)`` averaged over the
    temperature posterior (`temperature_posterior`). Every term has the argmax of `logits`, so the average
    has it too: accuracy is unchanged.

    Args:
        logits: ``(..., k)``.
        weights: ``(G,)`` summing to 1.
        temperatures: ``(G,)`` (default `temperature_grid`).
    """
    grid = temperature_grid(len(weights)) if temperatures is None else temperatures.double()
    shape = (-1,) + (1,) * logits.ndim  # one temperature per leading slice
    probs = torch.softmax(logits.double()[None] / grid.view(shape), dim=-1)  # (G, ..., k)
    return (weights.double().view(shape) * probs).sum(0)
