"""A short meta-training of a model-based method on real blood-cell images, tested on unseen cell types.

A small Conv4 (16 channels) on 28x28 grey images keeps Meta-LSTM's coordinate-wise LSTM (one column per
learner weight) and MANN's sequences within seconds on one CPU thread.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medmeta.data.registry import DomainSpec
from medmeta.methods import build_method
from medmeta.methods.base import FewShotMethod
from medmeta.models.backbones import Conv4
from medmeta.pipeline import default_normalization
from medmeta.tasks.episode import Episode
from medmeta.tasks.sampler import EpisodeSampler
from tests._helpers.real_data import TEST_CLASSES, TRAIN_CLASSES

N_WAY = 3


@dataclass(frozen=True)
class ShortRun:
    """Training losses (one per episode) and test accuracy ``(mean, 95% CI)`` before and after."""

    losses: list[float]
    before: tuple[float, float]
    after: tuple[float, float]


def _normalised(ep: Episode) -> Episode:
    norm = default_normalization(1)
    return Episode(
        norm(ep.support_images), ep.support_labels, norm(ep.query_images), ep.query_labels, ep.class_ids
    )


def _accuracy(method: FewShotMethod, sampler: EpisodeSampler, episodes: int) -> tuple[float, float]:
    method.eval()
    scores = []
    with torch.no_grad():
        for i in range(episodes):
            ep = _normalised(sampler.episode(i))
            scores.append(float((method.episode_logits(ep).argmax(-1) == ep.query_labels).float().mean()))
    method.train()
    return statistics.mean(scores), 1.96 * statistics.stdev(scores) / math.sqrt(episodes)


def short_meta_training(
    data_dir: Path,
    name: str,
    options: dict[str, Any],
    *,
    episodes: int,
    lr: float,
    test_episodes: int = 30,
) -> ShortRun:
    """3-way 5-shot 5-query: Adam on `episodes` episodes of five blood-cell classes, tested on the three
    others before and after."""

    def load(classes: str) -> Any:
        return DomainSpec.parse(f"blood_pbc:{classes}").load(root=data_dir, image_size=28, channels=1)

    train = EpisodeSampler(load(TRAIN_CLASSES), N_WAY, 5, 5, seed=0)
    test = EpisodeSampler(load(TEST_CLASSES), N_WAY, 5, 5, seed=1)
    torch.manual_seed(0)
    method = build_method(name, Conv4(in_channels=1, hidden=16, image_size=28), {"n_way": N_WAY, **options})
    before = _accuracy(method, test, test_episodes)
    optimizer = torch.optim.Adam(method.parameters(), lr=lr)
    losses = []
    for i in range(episodes):
        loss = method.episode_loss(_normalised(train.episode(i)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return ShortRun(losses, before, _accuracy(method, test, test_episodes))


def assert_meta_training_helps(
    data_dir: Path, name: str, options: dict[str, Any], *, episodes: int, lr: float
) -> ShortRun:
    """The last quarter of the training losses below the first, and the whole test CI above chance."""
    run = short_meta_training(data_dir, name, options, episodes=episodes, lr=lr)
    quarter = max(1, episodes // 4)
    first, last = statistics.mean(run.losses[:quarter]), statistics.mean(run.losses[-quarter:])
    assert last < first, (first, last)
    mean, ci = run.after
    assert mean - ci > 1 / N_WAY, (run.before, run.after)
    return run
