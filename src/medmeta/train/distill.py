"""Knowledge distillation into a small metric student: the loss, the teacher's views and the batches.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning Workshop,
arXiv:1503.02531. The student matches the teacher's class distribution softened by a temperature ``T``:
``T**2 * KL(softmax(z_t / T) || softmax(z_s / T))`` (the ``T**2`` keeps the gradient scale independent of
``T``), plus the cross-entropy on the labelled support. The teacher labels each unlabelled image's views
once, and the student is trained on exactly those views (the teacher and the student always see the same
input, as Beyer et al. 2022, arXiv:2106.05237, recommend). `DistillBatches` is a
`medmeta.train.loop.BatchSource`, so the ordinary `fit` loop trains the student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.data.augment import ViewAugment
from medmeta.methods.base import FewShotMethod
from medmeta.methods.functional import embed
from medmeta.train.self_supervised import generator_for
from medmeta.train.supervised import batch_indices

#: Light views for distillation: a mild crop, left-right flips (never upside down), a small rotation,
#: brightness and contrast; no blur or noise, which would change what a lesion looks like.
LIGHT_AUGMENT = ViewAugment(
    crop_scale=(0.8, 1.0),
    hflip=0.5,
    vflip=0.0,
    rotation=10.0,
    brightness=0.1,
    contrast=0.1,
    blur=0.0,
    noise=0.0,
)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T**2 * mean_i KL(softmax(teacher_i / T) || softmax(student_i / T))`` (Hinton et al. 2015).

    Args:
        student_logits: ``(n, n_way)``.
        teacher_logits: ``(n, n_way)`` logits or log-probabilities (an ensemble's log of averaged
            probabilities is a valid input: softmax is unchanged by the constant that separates them).
        temperature: ``T > 0``.

    Returns:
        Scalar loss (0 exactly when the two softened distributions agree).

    Raises:
        ValueError: a non-positive temperature or mismatched shapes.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must have the same (n, n_way) shape"
        )
    log_t = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=-1)  # (n, n_way)
    log_s = F.log_softmax(student_logits / temperature, dim=-1)  # (n, n_way)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (n,)
    return kl.mean() * temperature**2


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    support_logits: Tensor,
    support_labels: Tensor,
    *,
    temperature: float,
    ce_weight: float = 1.0,
) -> Tensor:
    """`kd_loss` on the teacher-labelled images plus ``ce_weight`` times the support cross-entropy.

    Args:
        student_logits: ``(n, n_way)`` the student's logits on the teacher-labelled images.
        teacher_logits: ``(n, n_way)`` the teacher's logits (or log-probabilities) on the same images.
        support_logits: ``(n_support, n_way)`` the student's logits on the labelled support.
        support_labels: ``(n_support,)`` int64 in ``0..n_way-1``.
        temperature: softening temperature of the KL term.
        ce_weight: weight of the cross-entropy term.
    """
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return kd + ce_weight * F.cross_entropy(support_logits, support_labels)


def fit_temperature_to_teacher(student_logits: Tensor, teacher_logits: Tensor, max_iter: int = 100) -> float:
    """Temperature ``T`` minimising ``mean_i KL(softmax(teacher_i) || softmax(student_i / T))``.

    The student's probabilities are then as confident as the teacher's (calibrated) ones; the objective
    is convex in ``1/T``, solved by L-BFGS on ``log(1/T)`` in float64.

    Args:
        student_logits: ``(n, n_way)``.
        teacher_logits: ``(n, n_way)`` logits or log-probabilities (their softmax is the target).

    Returns:
        The temperature (1.0 for no image).
    """
    if student_logits.shape[0] == 0:
        return 1.0
    z = student_logits.detach().double()
    target = F.softmax(teacher_logits.detach().double(), dim=-1)  # (n, n_way)
    log_beta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_beta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = -(target * F.log_softmax(z * log_beta.exp(), dim=-1)).sum(-1).mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(1.0 / log_beta.detach().exp())


def to_uint8(images: Tensor) -> Tensor:
    """Float intensities in ``[0, 1]`` -> uint8 ``(N, C, H, W)``, rounded."""
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


def make_views(
    images: Tensor, n_views: int, seed: int, augment: ViewAugment = LIGHT_AUGMENT, chunk: int = 256
) -> Tensor:
    """The images themselves, then ``n_views - 1`` seeded augmentations of each, as uint8.

    Args:
        images: uint8 ``(N, C, H, W)``.
        n_views: views per image (the first is the image unchanged).
        seed: same seed, same views.
        augment: the random view.
        chunk: images augmented at once.

    Returns:
        uint8 ``(n_views * N, C, H, W)``, view-major: row ``v * N + i`` is view ``v`` of image ``i``.
    """
    side = images.shape[-1]
    out = [images]
    for v in range(1, n_views):
        for start in range(0, images.shape[0], chunk):
            g = generator_for(seed, v * 1_000_003 + start)
            part = images[start : start + chunk].float() / 255.0  # (chunk, C, H, W) in [0, 1]
            out.append(to_uint8(augment(part, side, g)))
    return torch.cat(out)  # (n_views * N, C, H, W)


@dataclass(frozen=True)
class DistillBatch:
    """One step's inputs: the augmented support and teacher-labelled views, normalised."""

    support: Tensor  # (n_support, C, H, W)
    support_labels: Tensor  # (n_support,)
    views: Tensor  # (batch, C, H, W)
    teacher_logits: Tensor  # (batch, n_way)


@dataclass
class DistillBatches:
    """`medmeta.train.loop.BatchSource` for a metric student (ProtoNet and kin, ``frozen_backbone``).

    Every step embeds the whole support set (a fresh seeded augmentation) and `batch_size` teacher-labelled
    views in one pass; the student's logits come from its own ``logits_from_features`` with the support
    as the task, as they will after adaptation.

    Attributes:
        support: uint8 ``(n_support, C, H, W)``; support_labels ``(n_support,)`` int64; n_way classes.
        views: uint8 ``(n_views, C, H, W)`` teacher-labelled images; teacher_logits ``(n_views, n_way)``.
        prepare: uint8 -> normalised float images (the student's normalisation).
        steps_per_epoch: optimiser steps; batch_size: views per step; seed: seeds batches and support views.
        temperature, ce_weight: see `distillation_loss`.

    Example:
        >>> # source = DistillBatches(support, labels, 4, views, teacher_logits, norm, 300, 64, 0, 4.0, 1.0)
        >>> # fit(student_method, source, TrainConfig(epochs=1, lr=1e-3, lr_schedule="cosine", device="cpu"))
    """

    support: Tensor
    support_labels: Tensor
    n_way: int
    views: Tensor
    teacher_logits: Tensor
    prepare: Callable[[Tensor], Tensor]
    steps_per_epoch: int
    batch_size: int
    seed: int
    temperature: float
    ce_weight: float
    augment: ViewAugment = LIGHT_AUGMENT

    def batch(self, index: int, device: torch.device) -> DistillBatch:
        pick = torch.from_numpy(batch_indices(self.views.shape[0], self.batch_size, self.seed, index))
        g = generator_for(self.seed + 1, index)
        support = to_uint8(self.augment(self.support.float() / 255.0, self.support.shape[-1], g))
        return DistillBatch(
            self.prepare(support).to(device),
            self.support_labels.to(device),
            self.prepare(self.views[pick]).to(device),
            self.teacher_logits[pick].to(device),
        )

    def loss(self, method: FewShotMethod, batch: DistillBatch) -> Tensor:
        n_support = batch.support.shape[0]
        features = embed(method.backbone, torch.cat([batch.support, batch.views]))  # (n_support + B, d)
        logits = method.logits_from_features(
            features[None, :n_support], batch.support_labels[None], self.n_way, features[None]
        )[0]  # (n_support + B, n_way)
        return distillation_loss(
            logits[n_support:],
            batch.teacher_logits,
            logits[:n_support],
            batch.support_labels,
            temperature=self.temperature,
            ce_weight=self.ce_weight,
        )

    def after_epoch(self, method: FewShotMethod, device: torch.device) -> None:
        """Nothing derived from the data to refresh."""
