"""Evaluate a method on seeded episodes and report the mean of each metric with its 95% CI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from medmeta.episodes.sampler import EpisodeSampler
from medmeta.eval.metrics import episode_metrics, mean_ci
from medmeta.methods.base import FewShotMethod


@dataclass(frozen=True)
class EvalResult:
    """Metrics over episodes; ``metrics[name] = (mean, ci95_half_width)`` in [0, 1] units."""

    domain: str
    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    metrics: dict[str, tuple[float, float]]
    per_episode_accuracy: list[float] = field(repr=False, default_factory=list)

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
    """
    total = len(sampler) if n_episodes is None else n_episodes
    was_training = method.training
    method.eval()
    values: dict[str, list[float]] = {}
    try:
        with torch.no_grad():
            for i in range(total):
                ep = sampler.episode(i).to(device).map_images(prepare)
                logits = method.episode_logits(ep)
                for k, v in episode_metrics(logits, ep.query_labels).items():
                    values.setdefault(k, []).append(v)
                if progress is not None:
                    progress(i + 1, total)
    finally:
        method.train(was_training)
    return EvalResult(
        domain=sampler.dataset.display_name,
        n_way=sampler.n_way,
        n_shot=sampler.n_shot,
        n_query=sampler.n_query,
        episodes=total,
        metrics={k: mean_ci(v) for k, v in values.items()},
        per_episode_accuracy=values.get("accuracy", []),
    )
