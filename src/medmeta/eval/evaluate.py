"""Evaluate a method on seeded episodes and report the mean of each metric with its 95% CI.

Methods with a frozen backbone are scored from cached embeddings (see `medmeta.eval.cache`): each test
image is embedded once, so thousands of episodes take seconds. Other methods adapt on every episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from medmeta.eval.cache import cached_episode_logits
from medmeta.eval.metrics import batch_episode_metrics, calibration_bins, ece_from_bins, mean_ci
from medmeta.methods.base import FewShotMethod
from medmeta.tasks.sampler import EpisodeSampler


@dataclass(frozen=True)
class EvalResult:
    """Metrics over episodes; ``metrics[name] = (mean, ci95_half_width)`` in [0, 1] units.

    ``metrics`` holds the per-episode means of accuracy, balanced_accuracy, macro_f1, auc (macro
    one-vs-rest) and ece (15 bins). ``pooled`` holds metrics over all queries of all episodes at once:
    ``ece`` there is the usual dataset-level calibration error (a 75-query episode's own ECE is biased up).
    """

    domain: str
    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    metrics: dict[str, tuple[float, float]]
    per_episode_accuracy: list[float] = field(repr=False, default_factory=list)
    pooled: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"][0]

    @property
    def ci95(self) -> float:
        return self.metrics["accuracy"][1]

    def summary(self) -> str:
        return (
            f"{self.domain} {self.n_way}-way {self.n_shot}-shot: accuracy "
            f"{100 * self.accuracy:.2f} ± {100 * self.ci95:.2f}% (95% CI, {self.episodes} episodes)"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = {k: {"mean": m, "ci95": c} for k, (m, c) in self.metrics.items()}
        return out


def evaluate(
    method: FewShotMethod,
    sampler: EpisodeSampler,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    n_episodes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool | None = None,
    on_logits: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> EvalResult:
    """Evaluate `method` on episodes ``0..n_episodes-1`` of `sampler`.

    The method runs in eval mode under ``torch.no_grad()``; methods that need gradients to adapt
    (MAML and kin) enable them inside ``adapt``. The training/eval mode is restored afterwards.

    Args:
        method: the few-shot method.
        sampler: seeded episodes (the same sampler and seed give the same episodes to every method).
        prepare: uint8 images -> normalised float images (see `medmeta.data.transforms.Normalization`).
        device: where the method runs.
        n_episodes: number of episodes (default: ``len(sampler)``).
        progress: called as ``progress(done, total)``.
        use_cache: score episodes from embeddings computed once per image; None (default) does so
            whenever ``method.frozen_backbone`` is True.
        on_logits: called once with ``(logits (T, n_query_total, n_way), target (T, n_query_total))``
            on the CPU, for results beyond the summary metrics (confusion matrices, reliability diagrams).

    Raises:
        ValueError: ``use_cache=True`` for a method whose backbone changes per task.
    """
    total = len(sampler) if n_episodes is None else n_episodes
    cached = method.frozen_backbone if use_cache is None else use_cache
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            if cached:
                logits, target = cached_episode_logits(
                    method, sampler, prepare=prepare, device=device, n_episodes=total, progress=progress
                )
            else:
                logits_list, target_list = [], []
                for i in range(total):
                    ep = sampler.episode(i).to(device).map_images(prepare)
                    logits_list.append(method.episode_logits(ep).float().cpu())
                    target_list.append(ep.query_labels.cpu())
                    if progress is not None:
                        progress(i + 1, total)
                logits, target = torch.stack(logits_list), torch.stack(target_list)
    finally:
        method.train(was_training)
    if on_logits is not None:
        on_logits(logits.detach().cpu(), target.cpu())
    values = batch_episode_metrics(logits, target)
    probs = torch.softmax(logits.detach().cpu().double(), dim=-1)
    pooled_bins = calibration_bins(probs, target.cpu()).sum(0)  # (n_bins, 3)
    return EvalResult(
        domain=sampler.dataset.display_name,
        n_way=sampler.n_way,
        n_shot=sampler.n_shot,
        n_query=sampler.n_query,
        episodes=total,
        metrics={k: mean_ci(v.numpy()) for k, v in values.items()},
        per_episode_accuracy=values["accuracy"].tolist(),
        pooled={"ece": float(ece_from_bins(pooled_bins))},
    )


class AccuracyValidation:
    """Validation of classification training (a `medmeta.train.loop.Validation`): mean accuracy.

    `episodes` validation episodes are shared between the samplers (one per validation domain); the
    record gains ``val_accuracy`` (their mean) and ``val_ci95`` (the widest CI). Without a sampler or
    episode it records nothing, and the training keeps its last epoch.

    Example:
        >>> validation = AccuracyValidation([val_sampler], 100, prepare=normalization)  # doctest: +SKIP
        >>> fit(method, source, cfg, validation=validation)  # doctest: +SKIP
    """

    metric = "val_accuracy"

    def __init__(
        self,
        samplers: Sequence[EpisodeSampler],
        episodes: int,
        *,
        prepare: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.samplers, self.episodes, self.prepare = list(samplers), episodes, prepare

    def __call__(self, method: FewShotMethod, device: torch.device) -> dict[str, float]:
        if not self.samplers or self.episodes <= 0:
            return {}
        per = max(1, self.episodes // len(self.samplers))
        results = [
            evaluate(method, s, prepare=self.prepare, device=device, n_episodes=per) for s in self.samplers
        ]
        return {
            "val_accuracy": sum(r.accuracy for r in results) / len(results),
            "val_ci95": max(r.ci95 for r in results),
        }
