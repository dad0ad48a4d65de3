"""Compare fusion of a case's views with each view alone, on identical seeded episodes of whole cases.

Strategies (`medmeta.data.multiview` holds the views, ``(N, V, H, W)``): ``view:NAME`` (one view, the others
ignored), ``early`` (the V views as the backbone's input channels; needs V equal to its channels),
``feature`` (one backbone per view, features concatenated: `medmeta.models.fusion.ViewFeatures`) and
``late`` (the method adapted per view, probabilities averaged: `medmeta.methods.fusion.LateFusion`). Every
strategy uses the same frozen backbone and the same few-shot rule (``protonet`` or ``linear_probe``) built
fresh around it, and sees the same episodes (seeded by ``seed`` alone), so a difference between two rows is
the fusion's. Each fused row also gives its paired difference to the best single view (mean ± 95% CI of
the per-episode accuracy differences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medmeta.data.multiview import MultiViewSet
from medmeta.data.transforms import Normalization
from medmeta.errors import ConfigError
from medmeta.eval.evaluate import evaluate
from medmeta.eval.metrics import mean_ci
from medmeta.methods import build_method
from medmeta.methods.base import FewShotMethod
from medmeta.methods.fusion import LateFusion
from medmeta.models.fusion import ViewFeatures
from medmeta.tasks.sampler import EpisodeSampler

#: few-shot rules that need nothing learned beyond the backbone
FUSION_METHODS = ("protonet", "linear_probe")


@dataclass(frozen=True)
class FusionRow:
    """One strategy at one number of shots; accuracies in [0, 1]; ``vs_best_view`` is a paired
    ``(mean, ci95)`` difference to the best single view (None for single views)."""

    strategy: str
    shots: int
    episodes: int
    accuracy: tuple[float, float]
    balanced_accuracy: tuple[float, float]
    auc: tuple[float, float]
    per_episode: list[float]
    vs_best_view: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "per_episode"}
        return {**out, "accuracy_per_episode": self.per_episode}


def _per_view(x: Tensor, channels: int, norm: Normalization) -> Tensor:
    """uint8 ``(N, V, H, W)`` -> normalised ``(N, V * C, H, W)``, each grey view repeated to C channels."""
    n, v, h, w = x.shape
    rep = x.unsqueeze(2).expand(n, v, channels, h, w).reshape(n * v, channels, h, w)  # (N * V, C, H, W)
    return norm(rep).reshape(n, v * channels, h, w)


def _one_view(index: int, channels: int, norm: Normalization) -> Callable[[Tensor], Tensor]:
    """``prepare`` of one view: uint8 cases ``(N, V, H, W)`` -> view `index` ``(N, channels, H, W)``."""
    return lambda x: _per_view(x[:, index : index + 1], channels, norm)


def strategies(
    backbone: nn.Module, views: tuple[str, ...], channels: int, norm: Normalization, method: str
) -> dict[str, tuple[FewShotMethod, Callable[[Tensor], Tensor]]]:
    """Every strategy's method and its ``prepare`` (uint8 cases -> the method's input), by name."""
    if method not in FUSION_METHODS:
        raise ConfigError(f"fusion method '{method}': choose one of {', '.join(FUSION_METHODS)}")
    single = build_method(method, backbone)
    out: dict[str, tuple[FewShotMethod, Callable[[Tensor], Tensor]]] = {}
    for i, name in enumerate(views):
        out[f"view:{name}"] = (single, _one_view(i, channels, norm))
    if len(views) == channels:
        out["early"] = (single, norm)
    out["feature"] = (
        build_method(method, ViewFeatures(backbone, len(views), channels)),
        lambda x: _per_view(x, channels, norm),
    )
    out["late"] = (
        LateFusion(build_method(method, backbone), len(views), channels),
        lambda x: _per_view(x, channels, norm),
    )
    return out


def compare_fusion(
    cases: MultiViewSet,
    backbone: nn.Module,
    *,
    channels: int,
    normalization: Normalization,
    method: str = "protonet",
    shots: tuple[int, ...] = (1, 5, 10),
    n_query: int = 15,
    episodes: int = 600,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[FusionRow]:
    """Accuracy of every strategy (`strategies`) on the same episodes of `cases` (all classes per episode).

    Args:
        cases: the test cases (their views at the backbone's image size).
        backbone: a frozen backbone taking ``channels``-channel images.
        channels: the backbone's input channels C.
        normalization: the backbone's input normalisation (C channels).
        method: the few-shot rule on the backbone's features.
        shots, n_query, episodes, seed: the episodes (``n_query`` lowered to fit the smallest class).

    Raises:
        DataError: a class too small for ``shots + 1`` cases.
    """
    backbone.eval()
    smallest = min(cases.dataset.class_counts().values())
    rows: list[FusionRow] = []
    for k in shots:
        sampler = EpisodeSampler(
            cases.dataset, None, k, max(1, min(n_query, smallest - k)), seed=seed, n_episodes=episodes
        )
        found: list[FusionRow] = []
        for name, (m, prepare) in strategies(backbone, cases.views, channels, normalization, method).items():
            if progress is not None:
                progress(f"{name}, {k}-shot")
            torch.manual_seed(seed)
            result = evaluate(m, sampler, prepare=prepare, n_episodes=episodes)
            found.append(
                FusionRow(
                    name,
                    k,
                    episodes,
                    result.metrics["accuracy"],
                    result.metrics["balanced_accuracy"],
                    result.metrics["auc"],
                    result.per_episode_accuracy,
                )
            )
        best = max((r for r in found if r.strategy.startswith("view:")), key=lambda r: r.accuracy[0])
        for r in found:
            if r.strategy.startswith("view:"):
                rows.append(r)
                continue
            diff = np.asarray(r.per_episode) - np.asarray(best.per_episode)
            rows.append(FusionRow(**{**r.__dict__, "vs_best_view": mean_ci(diff)}))
    return rows
