"""Fine-tuning: a new linear head (and optionally the whole backbone) trained on each task's support set.

Chen, Liu, Kira, Wang, Huang. "A Closer Look at Few-shot Classification", ICLR 2019, arXiv:1904.04232
(Baseline); Dhillon, Chaudhari, Ravichandran, Soatto. "A Baseline for Few-Shot Image Classification",
ICLR 2020, arXiv:1909.02729 (fine-tuning the whole network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from medmeta.methods.functional import compute_prototypes
from medmeta.methods.transfer.base import (
    FeatureTransform,
    SupervisedMethod,
    SupervisedOptions,
    transform_features,
)
from medmeta.tasks.episode import Support

HeadInit = Literal["prototypes", "zeros", "random"]


def init_linear_head(
    features: Tensor, labels: Tensor, n_way: int, kind: HeadInit, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Initial linear heads for support features.

    ``prototypes``: ``W = 2 c_k``, ``b = -||c_k||^2`` with class means ``c_k``, so the head starts as
    the squared-Euclidean nearest-prototype classifier (Triantafillou et al. 2020, Proto-MAML);
    ``zeros``; ``random``: uniform in ``+-1/sqrt(d)`` like ``nn.Linear``, drawn from `generator`.

    Args:
        features: ``(..., n_support, d)``.
        labels: ``(..., n_support)`` int64 in ``0..n_way-1``.
        n_way: number of classes.
        kind: initialisation.
        generator: CPU generator for ``random``.

    Returns:
        ``(W (..., n_way, d), b (..., n_way))``.
    """
    *batch, _, d = features.shape
    if kind == "prototypes":
        c = compute_prototypes(features, labels, n_way)  # (..., n_way, d)
        return 2 * c, -c.pow(2).sum(-1)
    if kind == "zeros":
        return features.new_zeros(*batch, n_way, d), features.new_zeros(*batch, n_way)
    bound = d**-0.5
    w = (torch.rand(*batch, n_way, d, generator=generator) * 2 - 1) * bound
    b = (torch.rand(*batch, n_way, generator=generator) * 2 - 1) * bound
    return w.to(features), b.to(features)


def linear_logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``(..., n, d)``, ``(..., n_way, d)``, ``(..., n_way)`` -> ``(..., n, n_way)``."""
    return features @ weight.transpose(-1, -2) + bias[..., None, :]


def finetune_head(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, *, steps: int, lr: float
) -> tuple[Tensor, Tensor]:
    """`steps` full-batch Adam steps of cross-entropy on linear heads over fixed features.

    Episodes stacked along leading dimensions are trained independently (the loss is a sum over
    episodes and Adam works element by element), so a batch gives each episode's own result.

    Args:
        features: ``(..., n, d)`` (constants).
        labels: ``(..., n)`` int64.
        weight: initial ``(..., n_way, d)``.
        bias: initial ``(..., n_way)``.
        steps: optimiser steps.
        lr: Adam learning rate.

    Returns:
        The trained ``(W, b)``, detached.
    """
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True)
    x = features.detach()
    n_way, n = w.shape[-2], x.shape[-2]
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = linear_logits(x, w, b).reshape(-1, n_way)  # (batch * n, n_way)
            loss = F.cross_entropy(logits, labels.reshape(-1), reduction="sum") / n
            opt.zero_grad()
            loss.backward()
            opt.step()
    return w.detach(), b.detach()


def finetune_network(
    backbone: nn.Module,
    images: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    steps: int,
    lr: float,
    backbone_lr: float,
    mean: Tensor,
    transform: FeatureTransform,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Fine-tune copies of the backbone's parameters and buffers jointly with a linear head.

    The backbone module is only called through `torch.func.functional_call`; its own tensors are
    never touched (batch-norm statistics in training mode update the copied buffers).

    Args:
        backbone: the pretrained feature extractor.
        images: support images ``(n, C, *spatial)``.
        labels: ``(n,)`` int64.
        weight: initial head ``(n_way, d)``.
        bias: initial head bias ``(n_way,)``.
        steps: full-batch Adam steps.
        lr: head learning rate.
        backbone_lr: backbone learning rate.
        mean: training-feature mean ``(d,)`` for the feature transform.
        transform: feature transform between backbone and head.

    Returns:
        ``(parameters and buffers by name, W, b)``.
    """
    params = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in backbone.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in backbone.named_buffers()}
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam(
        [
            {"params": [p for p in params.values() if p.requires_grad], "lr": backbone_lr},
            {"params": [w, b], "lr": lr},
        ]
    )
    with torch.enable_grad():
        for _ in range(steps):
            features = functional_call(backbone, (params, buffers), (images,))  # (n, d)
            logits = linear_logits(transform_features(features, mean, transform), w, b)  # (n, n_way)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    state = {n: t.detach() for n, t in {**params, **buffers}.items()}
    return state, w.detach(), b.detach()


class FinetuneOptions(SupervisedOptions):
    """Options of `Finetune`.

    Attributes:
        mode: ``head``: train only a new linear head on frozen features; ``full``: the backbone too.
        steps: full-batch Adam steps on the support set.
        lr: head learning rate.
        backbone_lr: backbone learning rate (``full`` only).
        head_init: ``prototypes`` (start as nearest prototype), ``zeros`` or ``random`` (seeded).
        transform: feature transform before the head (``none``, ``l2n``, ``cl2n``).
        seed: seed of the ``random`` head initialisation.
    """

    mode: Literal["head", "full"] = "head"
    steps: int = Field(100, ge=0)
    lr: float = Field(1e-2, gt=0.0)
    backbone_lr: float = Field(1e-4, gt=0.0)
    head_init: HeadInit = "prototypes"
    transform: FeatureTransform = "cl2n"
    seed: int = 0


@dataclass(frozen=True)
class FinetunePredictor:
    """A fine-tuned linear head, over the original backbone or over fine-tuned copies of its tensors."""

    backbone: nn.Module
    state: dict[str, Tensor] | None
    weight: Tensor
    bias: Tensor
    mean: Tensor
    transform: FeatureTransform

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``."""
        if self.state is None:
            features = self.backbone(query_images)  # (n_query, d)
        else:
            features = functional_call(self.backbone, self.state, (query_images,))  # (n_query, d)
        return linear_logits(transform_features(features, self.mean, self.transform), self.weight, self.bias)


class Finetune(SupervisedMethod):
    """Fine-tuning baseline (Chen et al. 2019, arXiv:1904.04232; Dhillon et al. 2020, arXiv:1909.02729).

    The backbone is pretrained on all training classes; each task trains a new linear head on its
    support set, and with ``mode="full"`` fine-tunes copies of the backbone's weights as well. The method
    itself never changes; results are deterministic (full-batch steps, seeded initialisation).

    Example:
        >>> from medmeta.models import Conv4
        >>> method = Finetune(Conv4(in_channels=3, image_size=32), FinetuneOptions(mode="full", steps=20))
        >>> # fit_supervised(method, ...); logits = method.adapt(support).predict(query_images)
    """

    Options = FinetuneOptions
    options: FinetuneOptions

    @property
    def frozen_backbone(self) -> bool:  # type: ignore[override]
        """True in ``head`` mode (a head trained on fixed features); ``full`` mode changes the backbone."""
        return self.options.mode == "head"

    def adapt(self, support: Support, query_images: Tensor | None = None) -> FinetunePredictor:
        o = self.options
        mean = self.feature_mean.detach().clone()
        features = transform_features(self.backbone(support.images).detach(), mean, o.transform)  # (n, d)
        generator = torch.Generator().manual_seed(o.seed)
        weight, bias = init_linear_head(features, support.labels, support.n_way, o.head_init, generator)
        if o.mode == "head":
            weight, bias = finetune_head(features, support.labels, weight, bias, steps=o.steps, lr=o.lr)
            return FinetunePredictor(self.backbone, None, weight, bias, mean, o.transform)
        state, weight, bias = finetune_network(
            self.backbone,
            support.images,
            support.labels,
            weight,
            bias,
            steps=o.steps,
            lr=o.lr,
            backbone_lr=o.backbone_lr,
            mean=mean,
            transform=o.transform,
        )
        return FinetunePredictor(self.backbone, state, weight, bias, mean, o.transform)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        """``(T, n_support, d)``, ``(T, n_support)``, ``(T, n_query, d)`` -> ``(T, n_query, n_way)``.

        Raises:
            NotImplementedError: in ``full`` mode, where the backbone changes per task.
        """
        o = self.options
        if o.mode != "head":
            raise NotImplementedError(
                "Finetune(mode='full') changes its backbone per task, so it cannot score cached features: "
                "evaluate it with use_cache=False"
            )
        mean = self.feature_mean
        support = transform_features(support_features.detach(), mean, o.transform)  # (T, n_support, d)
        generator = torch.Generator().manual_seed(o.seed)
        weight, bias = init_linear_head(support, support_labels, n_way, o.head_init, generator)
        weight, bias = finetune_head(support, support_labels, weight, bias, steps=o.steps, lr=o.lr)
        return linear_logits(transform_features(query_features, mean, o.transform), weight, bias)
