"""What every few-shot learner is, whatever its task: the contract classification and segmentation share.

A learner is an `nn.Module` holding meta-learned state and validated, frozen `Options`.
``adapt(support)`` builds a `Predictor` for one task and never changes the learner;
``predictor.predict(query_images)`` gives the task's outputs; ``episode_loss(episode)`` is what training
minimises and ``batch_loss(episodes)`` its mean over a meta-batch. Each task family fixes the types:

==================  ======================================  ================================================
family              support                                 ``predict`` output
==================  ======================================  ================================================
classification      `medmeta.tasks.episode.Support`         ``(n_query, n_way)`` logits
segmentation        `medmeta.tasks.segmentation.MaskSupport` ``(n_query, 2, H, W)`` logits (background, fg)
==================  ======================================  ================================================

Detection and registration add a row, not a copy. The one contract suite (``tests/methods/test_contract.py``)
runs over every registered learner of every family through this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

S = TypeVar("S", contravariant=True)
E = TypeVar("E")


@runtime_checkable
class Predictor(Protocol):
    """What `FewShotLearner.adapt` returns: a model of one task."""

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` float -> the task's per-query outputs (see the module's table)."""
        ...


class LearnerOptions(BaseModel):
    """Hyper-parameters of a learner: frozen, and unknown fields are refused by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class FewShotLearner(nn.Module, abc.ABC, Generic[S, E]):
    """Base of every few-shot learner; `S` is its support type, `E` its episode type.

    Subclasses set ``Options`` and implement `adapt` and `episode_loss`.
    """

    Options: ClassVar[type[LearnerOptions]] = LearnerOptions

    @abc.abstractmethod
    def adapt(self, support: S) -> Predictor:
        """Build a predictor from the support set; never mutates ``self``."""

    @abc.abstractmethod
    def episode_loss(self, episode: E) -> Tensor:
        """Training loss of one episode (a 0-d tensor)."""

    def batch_loss(self, episodes: Sequence[E]) -> Tensor:
        """Mean `episode_loss` over a meta-batch; learners that vectorise across tasks override this."""
        return torch.stack([self.episode_loss(ep) for ep in episodes]).mean()

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch (0-based); for schedules such as MAML++'s."""
