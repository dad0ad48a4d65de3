"""Ensembles of trained few-shot methods: a weighted average of temperature-calibrated probabilities.

Guo, Pleiss, Sun, Weinberger. "On Calibration of Modern Neural Networks", ICML 2017, arXiv:1706.04599
(temperature scaling); Lakshminarayanan, Pritzel, Blundell. "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles", NeurIPS 2017, arXiv:1612.01474 (averaging members' probabilities).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.eval.cache import cached_episode_logits
from medmeta.eval.evaluate import EvalResult
from medmeta.eval.metrics import episode_metrics, mean_ci
from medmeta.methods.base import FewShotMethod, Predictor
from medmeta.tasks.episode import Episode, Support
from medmeta.tasks.sampler import EpisodeSampler


def mix_log_probs(logits: Sequence[Tensor], temperatures: Tensor, weights: Tensor) -> Tensor:
    """``log sum_m w_m softmax(z_m / T_m)``: the ensemble's log-probabilities (valid logits).

    Args:
        logits: one ``(..., n_way)`` tensor per member.
        temperatures: ``(M,)`` positive.
        weights: ``(M,)`` non-negative, summing to 1.

    Returns:
        ``(..., n_way)`` log-probabilities.
    """
    stacked = torch.stack(
        [F.log_softmax(z / t, dim=-1) for z, t in zip(logits, temperatures, strict=True)]
    )  # (M, ..., n_way)
    log_w = weights.clamp_min(1e-30).log().to(stacked).view(-1, *([1] * (stacked.ndim - 1)))  # (M, 1, ...)
    return torch.logsumexp(stacked + log_w, dim=0)


def fit_temperature(logits: Sequence[Tensor], labels: Sequence[Tensor], max_iter: int = 100) -> float:
    """Temperature ``T`` minimising the summed negative log-likelihood of ``softmax(z / T)``.

    Args:
        logits: groups of ``(n_g, n_way_g)`` logits (groups may differ in ``n_way``).
        labels: matching ``(n_g,)`` int64 labels.
        max_iter: L-BFGS iterations on ``log(1/T)`` (the NLL is convex in ``1/T``).

    Returns:
        The temperature (1.0 when there is nothing to fit).
    """
    z = [g.detach().double() for g in logits]
    y = list(labels)
    log_beta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_beta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        beta = log_beta.exp()
        loss = sum((F.cross_entropy(g * beta, t, reduction="sum") for g, t in zip(z, y, strict=True)))
        assert isinstance(loss, Tensor)
        loss.backward()
        return loss

    if not z:
        return 1.0
    with torch.enable_grad():
        opt.step(closure)
    return float(1.0 / log_beta.detach().exp())


def fit_weights(true_log_probs: Tensor, max_iter: int = 200) -> Tensor:
    """Mixture weights maximising ``sum_i log sum_m w_m p_m(y_i | x_i)`` over the probability simplex.

    Args:
        true_log_probs: ``(M, n)`` each member's (calibrated) log-probability of each sample's true class.
        max_iter: L-BFGS iterations on the softmax parametrisation (the objective is concave in ``w``).

    Returns:
        ``(M,)`` float64 weights summing to 1.
    """
    lp = true_log_probs.detach().double()
    a = torch.zeros(lp.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = -torch.logsumexp(lp + F.log_softmax(a, 0)[:, None], dim=0).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return torch.softmax(a.detach(), 0)


@dataclass(frozen=True)
class EnsemblePredictor:
    """The members' predictors for one task, mixed by `mix_log_probs`."""

    predictors: tuple[Predictor, ...]
    temperatures: Tensor
    weights: Tensor

    def member_logits(self, query_images: Tensor) -> list[Tensor]:
        """Each member's raw logits ``(n_query, n_way)``."""
        return [p.predict(query_images) for p in self.predictors]

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> ensemble log-probabilities ``(n_query, n_way)``."""
        return mix_log_probs(self.member_logits(query_images), self.temperatures, self.weights)


class Ensemble(FewShotMethod):
    """Weighted average of temperature-calibrated member probabilities (Guo et al. 2017, arXiv:1706.04599;
    Lakshminarayanan et al. 2017, arXiv:1612.01474).

    Each member adapts to the task on its own; its logits are divided by its temperature, turned into
    probabilities and averaged with the member weights. The logits returned are the log of that average.
    Fit temperatures and weights on validation episodes with `fit_ensemble`. Not in the `METHODS`
    registry (it is built from trained members, not from a backbone); every evaluation function accepts it.

    Args:
        members: trained methods (they must share the input normalisation).
        temperatures: ``(M,)`` (default 1).
        weights: ``(M,)`` non-negative (default uniform; normalised to sum 1).
        names: a label per member for reports.

    Example:
        >>> # members = [pipeline.load_method(p)[0] for p in ("runs/a/best.json", "runs/b/best.json")]
        >>> # ensemble = fit_ensemble(members, val_samplers, prepare=norm)
        >>> # results = evaluate_ensemble(ensemble, test_sampler, prepare=norm)  # ensemble and members
    """

    temperatures: Tensor
    weights: Tensor

    def __init__(
        self,
        members: Sequence[FewShotMethod],
        temperatures: Sequence[float] | Tensor | None = None,
        weights: Sequence[float] | Tensor | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(nn.Identity())  # no backbone of its own: the members carry theirs
        m = len(members)
        if m == 0:
            raise ValueError("an ensemble needs at least one member method")
        t = torch.ones(m) if temperatures is None else torch.as_tensor(temperatures, dtype=torch.float32)
        w = torch.ones(m) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        if t.shape != (m,) or w.shape != (m,):
            raise ValueError(
                f"got {m} members, {tuple(t.shape)} temperatures and {tuple(w.shape)} weights: give one each"
            )
        if not bool((t > 0).all()) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ValueError(
                f"temperatures must be > 0 and weights >= 0 with a positive sum, got {t.tolist()}, {w.tolist()}"
            )
        self.members = nn.ModuleList(members)
        self.names = (
            list(names) if names is not None else [f"{type(x).__name__}#{i}" for i, x in enumerate(members)]
        )
        if len(self.names) != m:
            raise ValueError(f"got {len(self.names)} names for {m} members")
        self.register_buffer("temperatures", t)
        self.register_buffer("weights", w / w.sum())

    def adapt(self, support: Support, query_images: Tensor | None = None) -> EnsemblePredictor:
        """Adapt every member; transductive members receive `query_images`.

        Raises:
            ValueError: a member is transductive and `query_images` is None.
        """
        predictors = []
        for name, member in zip(self.names, self.members, strict=True):
            assert isinstance(member, FewShotMethod)
            if member.transductive and query_images is None:
                raise ValueError(f"member {name} is transductive: pass query_images to adapt")
            predictors.append(member.adapt(support, query_images if member.transductive else None))
        return EnsemblePredictor(tuple(predictors), self.temperatures, self.weights)

    def episode_logits(self, episode: Episode) -> Tensor:
        """Ensemble log-probabilities ``(n_query, n_way)``; the query goes to transductive members only."""
        return self.adapt(episode.support, episode.query_images).predict(episode.query_images)

    def describe(self) -> dict[str, Any]:
        """Names, temperatures and weights as JSON-ready data."""
        return {
            "members": list(self.names),
            "temperatures": self.temperatures.tolist(),
            "weights": self.weights.tolist(),
        }


def member_episode_logits(
    ensemble: Ensemble,
    sampler: EpisodeSampler,
    *,
    prepare: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    n_episodes: int | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Every member's logits on episodes ``0..n_episodes-1`` (eval mode, no gradients).

    Members with a frozen backbone are scored from cached embeddings (`medmeta.eval.cache`), the others
    adapt on every episode (transductive ones see the query), exactly as `evaluate` scores them.

    Returns:
        ``([(n_episodes, n_query_total, n_way) per member], labels (n_episodes, n_query_total))`` on CPU.
    """
    total = len(sampler) if n_episodes is None else n_episodes
    was_training = ensemble.training
    ensemble.to(device).eval()
    out: list[Tensor] = []
    labels = torch.stack([sampler.episode(0).query_labels] * total)  # the sampler's labels are fixed
    try:
        with torch.no_grad():
            for member in ensemble.members:
                assert isinstance(member, FewShotMethod)
                if member.frozen_backbone:
                    z, _ = cached_episode_logits(
                        member, sampler, prepare=prepare, device=device, n_episodes=total
                    )
                    out.append(z.float().cpu())
                    continue
                per_episode = []
                for i in range(total):
                    ep = sampler.episode(i).to(device).map_images(prepare)
                    per_episode.append(member.episode_logits(ep).float().cpu())
                out.append(torch.stack(per_episode))
    finally:
        ensemble.train(was_training)
    return out, labels


def fit_ensemble(
    members: Sequence[FewShotMethod] | Ensemble,
    val_samplers: Sequence[EpisodeSampler],
    *,
    prepare: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    n_episodes: int | None = None,
    fit_member_weights: bool = True,
    names: Sequence[str] | None = None,
) -> Ensemble:
    """Fit each member's temperature, then the mixture weights, on validation episodes.

    The weights follow the validation episodes: drawn from held-out images of the *training* classes,
    they favour the member that fits those classes best (a cosine-head Baseline++ took 99% of the weight
    in our blood-cell runs and was the weakest member on unseen classes). Validate on a domain with
    unseen classes when you can, or pass ``fit_member_weights=False``; the temperatures transfer better.

    Args:
        members: trained methods, or an `Ensemble` whose members are refitted.
        val_samplers: validation episodes (never the test episodes); groups may differ in ``n_way``.
        prepare: uint8 images -> normalised float images.
        device: where the members run.
        n_episodes: episodes per sampler (default: each sampler's length).
        fit_member_weights: False keeps uniform weights (temperature scaling only).
        names: member labels (default: class names).

    Returns:
        A new `Ensemble` (sharing the member modules) with the fitted temperatures and weights.

    Raises:
        ValueError: no validation sampler.
    """
    if not val_samplers:
        raise ValueError("fit_ensemble needs validation episodes: pass at least one EpisodeSampler")
    if isinstance(members, Ensemble):
        names = names or members.names
        methods = [m for m in members.members if isinstance(m, FewShotMethod)]
    else:
        methods = list(members)
    base = Ensemble(methods, names=names)
    groups = [
        member_episode_logits(base, s, prepare=prepare, device=device, n_episodes=n_episodes)
        for s in val_samplers
    ]
    labels = [y.reshape(-1) for _, y in groups]  # per group (n_g,)
    temperatures, true_lp = [], []
    for m in range(len(methods)):
        logits = [zs[m].reshape(-1, zs[m].shape[-1]) for zs, _ in groups]  # per group (n_g, n_way_g)
        t = fit_temperature(logits, labels)
        temperatures.append(t)
        true_lp.append(
            torch.cat(
                [
                    F.log_softmax(z.double() / t, -1).gather(1, y[:, None])[:, 0]
                    for z, y in zip(logits, labels, strict=True)
                ]
            )
        )  # (n,)
    weights = fit_weights(torch.stack(true_lp)) if fit_member_weights else None
    return Ensemble(methods, temperatures, None if weights is None else weights.float(), names=base.names)


def _result(sampler: EpisodeSampler, logits: Tensor, labels: Tensor, domain: str) -> EvalResult:
    values: dict[str, list[float]] = {}
    for z, y in zip(logits, labels, strict=True):
        for k, v in episode_metrics(z, y).items():
            values.setdefault(k, []).append(float(v))
    return EvalResult(
        domain=domain,
        n_way=sampler.n_way,
        n_shot=sampler.n_shot,
        n_query=sampler.n_query,
        episodes=int(logits.shape[0]),
        metrics={k: mean_ci(v) for k, v in values.items()},
        per_episode_accuracy=values.get("accuracy", []),
    )


def evaluate_ensemble(
    ensemble: Ensemble,
    sampler: EpisodeSampler,
    *,
    prepare: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    n_episodes: int | None = None,
) -> dict[str, EvalResult]:
    """The ensemble and each member on the same episodes (members scored once, as `member_episode_logits`).

    Returns:
        ``{"ensemble": result, member name: result, ...}``; every result's domain names what it scores.
    """
    member_logits, labels = member_episode_logits(
        ensemble, sampler, prepare=prepare, device=device, n_episodes=n_episodes
    )
    mixed = mix_log_probs(member_logits, ensemble.temperatures.cpu(), ensemble.weights.cpu())
    domain = sampler.dataset.display_name
    out = {"ensemble": _result(sampler, mixed, labels, f"{domain} [ensemble]")}
    for name, z in zip(ensemble.names, member_logits, strict=True):
        out[name] = _result(sampler, z, labels, f"{domain} [{name}]")
    return out
