"""The loop's after-step hook: a trainable's ``after_step(step, total_steps)`` runs once after every optimiser
step (where self-supervised methods move their momentum copies)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medmeta.config import TrainConfig
from medmeta.train.loop import fit


class Counter(nn.Module):
    """A trainable that records the loop's calls of its after-step hook."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls: list[tuple[int, int, float]] = []

    def set_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def after_step(self, step: int, total_steps: int) -> None:
        self.calls.append((step, total_steps, float(self.w.detach())))


class Squares:
    steps_per_epoch = 3

    def batch(self, index: int, device: torch.device) -> Tensor:
        return torch.tensor(float(index))

    def loss(self, method: Counter, batch: Tensor) -> Tensor:
        return (method.w - batch) ** 2

    def after_epoch(self, method: Any, device: torch.device) -> None:
        pass


def test_fit_calls_after_step_once_after_every_optimiser_step() -> None:
    method = Counter()
    fit(method, Squares(), TrainConfig(epochs=2, lr=0.1, device="cpu", val_episodes=0))
    assert [(s, t) for s, t, _ in method.calls] == [(s, 6) for s in range(6)]
    assert method.calls[0][2] != 1.0  # the weight had already been stepped
