"""Score a trained method on a held-out domain: one record per cell with everything the report needs.

The per-episode values of every metric are kept (so seeds can be pooled and CIs recomputed exactly),
together with the pooled reliability counts and a confusion matrix in the domain's own class order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from medmeta.data.datasets import ImageDataset
from medmeta.eval.calibration import (
    fit_temperature,
    posterior_probabilities,
    temperature_grid,
    temperature_posterior,
)
from medmeta.eval.evaluate import EvalResult, evaluate
from medmeta.eval.loo import LOO_PRIOR_SD, held_out_predictions
from medmeta.eval.metrics import batch_episode_metrics, calibration_bins, confusion, ece_from_bins, mean_ci
from medmeta.eval.spread import spread_temperature
from medmeta.methods.base import FewShotMethod
from medmeta.tasks.episode import Support
from medmeta.tasks.sampler import EpisodeSampler

METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "ece",
    "ece_calibrated",
    "ece_loo",
    "ece_loo_spread",
)


def class_confusion(
    logits: torch.Tensor, target: torch.Tensor, classes: np.ndarray, n_classes: int
) -> np.ndarray:
    """Confusion counts over episodes in the dataset's class order (rows true, columns predicted).

    Args:
        logits: ``(T, n_query_total, n_way)``.
        target: ``(T, n_query_total)`` episode labels.
        classes: ``(T, n_way)`` dataset class id of each episode label.
        n_classes: classes of the dataset.

    Returns:
        ``(n_classes, n_classes)`` int64.
    """
    ids = torch.from_numpy(classes.astype(np.int64))  # (T, n_way)
    true = ids.gather(1, target)  # (T, n_query_total)
    pred = ids.gather(1, logits.argmax(-1))  # (T, n_query_total)
    return confusion(pred.reshape(-1), true.reshape(-1), n_classes).numpy()


def metric_summary(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and 95% CI half-width of each metric over episodes (NaN episodes of AUC left out)."""
    out = {}
    for name, v in values.items():
        finite = v[np.isfinite(v)]
        mean, ci = mean_ci(finite)
        out[name] = {"mean": mean, "ci95": ci}
    return out


def evaluate_with_logits(
    method: FewShotMethod,
    sampler: EpisodeSampler,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EvalResult, torch.Tensor, torch.Tensor]:
    """`evaluate` on every episode of `sampler`, with its logits ``(T, n_query_total, n_way)`` and targets
    ``(T, n_query_total)``."""
    captured: dict[str, torch.Tensor] = {}

    def keep(logits: torch.Tensor, target: torch.Tensor) -> None:
        captured["logits"], captured["target"] = logits, target

    result = evaluate(method, sampler, prepare=prepare, device=device, progress=progress, on_logits=keep)
    return result, captured["logits"], captured["target"]


def pooled_ece(logits: torch.Tensor, target: torch.Tensor) -> float:
    """ECE over every query of every episode at once (15 bins): logits ``(T, q, n_way)``, target ``(T, q)``."""
    return _pooled_ece_of_probs(torch.softmax(logits.double(), dim=-1), target)  # probs (T, q, n_way)


def _pooled_ece_of_probs(probs: torch.Tensor, target: torch.Tensor) -> float:
    """`pooled_ece` of probabilities ``(T, q, n_way)`` (e.g. averaged over temperatures, not one softmax)."""
    return float(ece_from_bins(calibration_bins(probs, target).sum(0)))


class LooFits(NamedTuple):
    """The temperatures one episode's leave-one-out predictions give (`loo_temperatures`)."""

    plain: float
    #: shrunk towards 1 (`medmeta.eval.loo.LOO_PRIOR_SD`)
    shrunk: float
    #: posterior weights ``(G,)`` over `medmeta.eval.calibration.temperature_grid`
    posterior: torch.Tensor
    #: shrunk towards the support's spread times the model's spread scale (`medmeta.eval.spread`); None
    #: without a spread scale
    spread: float | None


def loo_temperatures(
    method: FewShotMethod,
    sampler: EpisodeSampler,
    episodes: int,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    spread_scale: float | None = None,
) -> list[LooFits | None]:
    """Leave-one-out temperatures of the supports of episodes ``0..episodes-1`` (`LooFits`, all from the
    same held-out predictions); None for a support that cannot be held out (1-shot)."""
    was_training = method.training
    method.eval()
    try:
        out: list[LooFits | None] = []
        for i in range(episodes):
            ep = sampler.episode(i).to(device).map_images(prepare)
            held = held_out_predictions(method, Support(ep.support_images, ep.support_labels, ep.n_way))
            out.append(
                None
                if held is None
                else LooFits(
                    fit_temperature(*held),
                    fit_temperature(*held, prior_sd=LOO_PRIOR_SD),
                    temperature_posterior(*held),
                    None if spread_scale is None else spread_temperature(*held, spread_scale),
                )
            )
        return out
    finally:
        method.train(was_training)


def _episode_eces(
    logits: torch.Tensor, target: torch.Tensor, rows: list[int], temps: list[float]
) -> np.ndarray:
    """``(T,)`` ECE of each episode in `rows` after its temperature in `temps`; NaN elsewhere."""
    out = np.full(logits.shape[0], np.nan)
    for i, t in zip(rows, temps, strict=True):
        out[i] = float(batch_episode_metrics(logits[i : i + 1] / t, target[i : i + 1])["ece"][0])
    return out


def evaluate_cell(
    method: FewShotMethod,
    test: ImageDataset,
    *,
    n_shot: int,
    n_query: int,
    episodes: int,
    seed: int,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    temperature: float | None = None,
    loo_episodes: int = 0,
    spread_scale: float | None = None,
) -> dict[str, Any]:
    """Evaluate on `episodes` all-class `n_shot`-shot episodes of `test` (seeded: same for every method).

    With `temperature` (fitted away from the test domain, `medmeta.bench.calibration`), ``ece_calibrated`` is
    the ECE of ``softmax(logits / temperature)``; the argmax, hence every other metric, is unchanged. Without
    it, ``ece_calibrated`` is NaN. On the first `loo_episodes` episodes, ``ece_loo`` is the ECE after the
    episode's own temperature, fitted on leave-one-out predictions of its support images
    (`medmeta.eval.loo`); NaN on the other episodes and for 1-shot supports, which cannot be held out.
    With `spread_scale` (`medmeta.eval.spread.episodes_spread_scale` on the training domains' validation
    episodes), ``ece_loo_spread`` is the same with the fit shrunk towards the support's spread
    (`medmeta.eval.spread`: what ``medmeta adapt`` does for a model with distance logits); NaN without it.

    Returns:
        JSON-ready fields: ``n_way``, ``n_query``, ``episodes``, ``eval_seed``, ``metrics`` (mean and
        ci95 per metric), ``per_episode`` (values per metric), ``pooled_ece`` (also
        ``pooled_ece_calibrated``, ``pooled_ece_loo`` and ``pooled_ece_loo_shrunk`` (the temperature shrunk
        towards 1, `medmeta.eval.loo.LOO_PRIOR_SD`), ``pooled_ece_loo_posterior`` (probabilities averaged over
        the temperature posterior, `medmeta.eval.calibration.posterior_probabilities`; ``_t``: one temperature, the
        posterior mean of log T), ``pooled_ece_loo_spread`` (None without `spread_scale`) with
        ``pooled_ece_loo_before``, the raw ECE pooled
        over the same leave-one-out episodes: one episode's own ECE is biased up, a pooled ECE is not),
        ``calibration``
        (``(15, 3)`` counts, correct, summed confidence), ``confusion`` and ``classes``.
    """
    sampler = EpisodeSampler(test, None, n_shot, n_query, seed=seed, n_episodes=episodes)
    result, logits, target = evaluate_with_logits(
        method, sampler, prepare=prepare, device=device, progress=progress
    )
    values = {k: v.numpy() for k, v in batch_episode_metrics(logits, target).items()}
    if temperature is None:
        values["ece_calibrated"] = np.full(len(values["ece"]), np.nan)
    else:
        values["ece_calibrated"] = batch_episode_metrics(logits / temperature, target)["ece"].numpy()
    fits = loo_temperatures(
        method,
        sampler,
        min(loo_episodes, episodes),
        prepare=prepare,
        device=device,
        spread_scale=spread_scale,
    )
    loo = [None if f is None else f.plain for f in fits]
    done = [i for i, t in enumerate(loo) if t is not None]
    plain = [f.plain for f in fits if f is not None]
    shrunk = [f.shrunk for f in fits if f is not None]
    posteriors = [f.posterior for f in fits if f is not None]
    spread = [f.spread for f in fits if f is not None and f.spread is not None]
    log_grid = temperature_grid().log()
    # each episode's posterior mean of log T, as one temperature
    posterior_means = [float((w * log_grid).sum().exp()) for w in posteriors]
    values["ece_loo"] = _episode_eces(logits, target, done, plain)
    values["ece_loo_spread"] = _episode_eces(logits, target, done if spread else [], spread)

    def pooled_after(temps: list[float]) -> float | None:
        """Pooled ECE of the leave-one-out episodes, each at its own temperature (None without any)."""
        if not temps:
            return None
        scale = torch.tensor(temps, dtype=torch.float64)[:, None, None]  # (E, 1, 1)
        return pooled_ece(logits[done].double() / scale, target[done])

    probs = torch.softmax(logits.double(), dim=-1)  # (T, n_query_total, n_way)
    classes = np.stack([sampler.indices(i)[2] for i in range(episodes)])  # (T, n_way)
    return {
        "n_way": sampler.n_way,
        "n_query": n_query,
        "episodes": episodes,
        "eval_seed": seed,
        "temperature": temperature,
        "loo_temperatures": loo,
        "loo_temperatures_shrunk": shrunk,
        "spread_scale": spread_scale,
        "loo_temperatures_spread": spread,
        "metrics": metric_summary(values),
        "per_episode": {k: values[k].tolist() for k in METRICS},
        "pooled_ece": result.pooled["ece"],
        "pooled_ece_calibrated": None if temperature is None else pooled_ece(logits / temperature, target),
        "pooled_ece_loo": pooled_after(plain),
        "pooled_ece_loo_shrunk": pooled_after(shrunk),
        "pooled_ece_loo_posterior": _pooled_ece_of_probs(
            torch.stack(
                [posterior_probabilities(logits[i], w) for i, w in zip(done, posteriors, strict=True)]
            ),
            target[done],
        )
        if done
        else None,
        "pooled_ece_loo_posterior_t": pooled_after(posterior_means),
        "loo_temperatures_posterior_mean": posterior_means,
        "pooled_ece_loo_spread": pooled_after(spread),
        "pooled_ece_loo_before": pooled_ece(logits[done], target[done]) if done else None,
        "calibration": calibration_bins(probs, target).sum(0).tolist(),
        "confusion": class_confusion(logits, target, classes, test.n_classes).tolist(),
        "classes": list(test.class_names),
    }
