"""The interface of the few-shot classification methods (`medmeta.methods.learner.FewShotLearner` for labels).

A method is an `nn.Module` holding meta-learned state around a backbone. ``adapt(support)`` builds a
`Predictor` for one task and never changes the method; its ``predict(query_images)`` gives
``(n_query, n_way)`` logits; ``episode_loss(episode)`` is what meta-training minimises.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.methods.learner import FewShotLearner, LearnerOptions, Predictor
from medmeta.tasks.episode import Episode, Support

__all__ = ["FewShotMethod", "MethodOptions", "Predictor"]


class MethodOptions(LearnerOptions):
    """Hyper-parameters of a method; each method subclasses this with its own fields."""


class FewShotMethod(FewShotLearner[Support, Episode]):
    """Base class of every few-shot method.

    Subclasses set `Options` (a `MethodOptions` subclass), build their state in ``__init__(backbone,
    options)`` and implement `adapt`. Images reaching a method are normalised float tensors.
    """

    transductive: ClassVar[bool] = False
    #: False for methods whose meta-learned head ties classes to label positions (MAML and kin):
    #: permuting the support labels then does not simply permute the logits.
    permutation_invariant: ClassVar[bool] = True
    #: "episodic": meta-trained by `medmeta.train.loop.fit` on `batch_loss`; "supervised": pretrained
    #: on the union of training classes by `medmeta.train.supervised.fit_supervised`.
    trainer: ClassVar[Literal["episodic", "supervised"]] = "episodic"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: True for methods whose backbone is the same for every task (metric methods): evaluation may then
    #: embed each test image once and score episodes from cached features with `logits_from_features`.
    frozen_backbone: ClassVar[bool] = False
    #: True for methods whose predictors normalise batch norm with the statistics of the query batch they
    #: are given (MAML and kin): a deployed model then predicts one image at a time, so an image's result
    #: never depends on the others sent with it.
    per_image_prediction: ClassVar[bool] = False

    @property
    def distance_logits(self) -> bool:
        """True when logits are negative distances to class centres (ProtoNet, SimpleShot): the support's
        spread then sets the scale of a task's temperature (`medmeta.eval.spread`)."""
        return False

    def __init__(self, backbone: nn.Module, options: MethodOptions | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_options(cls, backbone: nn.Module, options: dict[str, Any] | None = None) -> FewShotMethod:
        """Build from a plain dict of options (validated by ``cls.Options``)."""
        return cls(backbone, cls.Options(**(options or {})))

    @abc.abstractmethod
    def adapt(self, support: Support, query_images: Tensor | None = None) -> Predictor:
        """Build a predictor from the support set; never mutates ``self``.

        Args:
            support: images ``(n_way * n_shot, C, *spatial)`` and labels ``(n_way * n_shot,)``.
            query_images: the query images, used only by transductive methods.
        """

    def episode_logits(self, episode: Episode) -> Tensor:
        """Query logits ``(n_query_total, n_way)`` after adapting on the episode's support."""
        query = episode.query_images if self.transductive else None
        return self.adapt(episode.support, query).predict(episode.query_images)

    def episode_loss(self, episode: Episode) -> Tensor:
        """Meta-training loss of one episode (default: query cross-entropy)."""
        return F.cross_entropy(self.episode_logits(episode), episode.query_labels)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        """Query logits from backbone features of T episodes at once (methods with `frozen_backbone`).

        In eval mode this equals `episode_logits` on the images behind the features.

        Args:
            support_features: ``(T, n_support, d)`` backbone outputs for the support images.
            support_labels: ``(T, n_support)`` int64 in ``0..n_way-1``.
            n_way: classes per episode.
            query_features: ``(T, n_query, d)`` backbone outputs for the query images.

        Returns:
            ``(T, n_query, n_way)`` logits.

        Raises:
            NotImplementedError: the method changes its backbone per task (``frozen_backbone`` is False).
        """
        raise NotImplementedError(
            f"{type(self).__name__} adapts its backbone to each task, so it cannot score cached features: "
            "evaluate it with use_cache=False, or set frozen_backbone = True and implement this hook"
        )
