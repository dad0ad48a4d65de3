"""Reptile: first-order meta-learning by moving the initialisation towards task-adapted weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from medmeta.methods.functional import InnerUpdate, adam_update, sgd_update
from medmeta.methods.inner_loop import InnerLoopMethod, InnerLoopOptions
from medmeta.methods.meta_batch import meta_batch, replica, straight_through
from medmeta.tasks.episode import Episode, Support


def reptile_direction(theta: Sequence[Tensor], adapted: Sequence[Tensor]) -> list[Tensor]:
    """Reptile pseudo-gradient ``theta - theta_tilde`` (the gradient of ``0.5 * ||theta - theta_tilde||^2``)."""
    return [t.detach() - a.detach() for t, a in zip(theta, adapted, strict=True)]


class ReptileOptions(InnerLoopOptions):
    """Options of `Reptile` (see `InnerLoopOptions` for the shared ones).

    Attributes:
        inner_steps: inner optimiser steps per training task.
        inner_lr: inner learning rate.
        inner_optimizer: ``adam`` (the paper's choice, with ``beta1 = 0``) or ``sgd``.
        adam_betas: Adam's ``(beta1, beta2)``.
        train_on_query: during meta-training, run the inner loop on support and query images together
            (Reptile has no query loss; this gives the inner loop more data per task, like the paper's
            larger training shots). Adapting at evaluation always uses the support set only.
    """

    inner_steps: int = Field(5, ge=1)
    inner_lr: float = Field(1e-3, gt=0.0)
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    adam_betas: tuple[float, float] = (0.0, 0.999)
    train_on_query: bool = True


class Reptile(InnerLoopMethod):
    """Reptile (Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", 2018, arXiv:1803.02999).

    Each task adapts a copy of the weights with a few optimiser steps; the meta-update moves the
    initialisation towards the adapted weights, ``theta <- theta + eps * mean_t(theta_tilde_t - theta)``.

    Through the generic training loop: `episode_loss` and `batch_loss` return a scalar whose gradient is
    the Reptile direction ``theta - mean_t theta_tilde_t`` (that of ``0.5 * mean_t ||theta -
    theta_tilde_t||^2`` with ``theta_tilde`` held constant) and whose value is the last inner-step
    loss, so the outer optimiser performs the interpolation: plain SGD with learning rate ``eps`` is the
    paper's update, the loop's Adam is the common adaptive variant.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = Reptile(Conv4(in_channels=1, image_size=28), ReptileOptions(inner_steps=5))
    """

    Options = ReptileOptions
    options: ReptileOptions

    def inner_update(self) -> InnerUpdate:
        if self.options.inner_optimizer == "adam":
            return adam_update(self.options.inner_lr, self.options.adam_betas)
        return sgd_update(self.step_size)

    def _task(
        self, episode: Episode, worker: int, names: Sequence[str]
    ) -> tuple[Tensor, list[Tensor | None]]:
        support = episode.support
        if self.options.train_on_query:
            support = Support(
                torch.cat([episode.support_images, episode.query_images]),
                torch.cat([episode.support_labels, episode.query_labels]),
                episode.n_way,
            )
        losses: list[Tensor] = []
        final = self.trajectory(
            support,
            self.options.inner_steps,
            track=False,
            backbone=replica(self.backbone, worker),
            losses=losses,
        )[-1]
        theta = self.model_parameters()
        moved = [n for n in self.adapted if not (self.options.zero_head and n.startswith("head."))]
        grads: list[Tensor | None] = [
            reptile_direction([theta[n]], [final[n]])[0] if n in moved else None for n in names
        ]
        return losses[-1], grads

    def _trainable(self) -> tuple[list[str], list[Tensor]]:
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        return [n for n, _ in named], [p for _, p in named]

    def episode_loss(self, episode: Episode) -> Tensor:
        """Last inner-step loss, with the Reptile direction as its gradient (see the class docstring)."""
        names, params = self._trainable()
        value, grads = self._task(episode, -1, names)
        return straight_through(value, params, grads)

    def batch_loss(self, episodes: Sequence[Episode]) -> Tensor:
        """Mean over tasks of `episode_loss`, tasks run concurrently as `task_threads` allows."""
        names, params = self._trainable()
        return meta_batch(
            lambda i, w: self._task(episodes[i], w, names),
            len(episodes),
            params,
            threads=self.options.task_threads,
        )
