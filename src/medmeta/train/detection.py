"""Base training of a few-shot detector: its Faster R-CNN on the base classes with all their boxes.

Mini-batches of letterboxed images, random horizontal and vertical flips (smears and scans have no up),
AdamW with a cosine schedule; the order and flips come from one seeded generator, so a run repeats.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from medmeta.errors import DataError, TrainingError
from medmeta.methods.detection.base import FewShotDetector, detection_loss
from medmeta.tasks.detection import check_boxes

log = logging.getLogger(__name__)


@dataclass
class DetFitResult:
    """What base training did: the mean loss of each epoch and the seconds it took."""

    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def flip(
    images: Tensor, boxes: Sequence[Tensor], horizontal: Tensor, vertical: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """Flip image ``i`` of ``(N, C, H, W)`` left-right where ``horizontal[i]`` and up-down where ``vertical[i]``.

    Boxes ``(n_i, 4)`` follow their images.
    """
    h, w = images.shape[-2:]
    images = images.clone()
    out = []
    for i, b in enumerate(boxes):
        b = b.clone()
        if bool(horizontal[i]):
            images[i] = images[i].flip(-1)
            b[:, [0, 2]] = w - b[:, [2, 0]]
        if bool(vertical[i]):
            images[i] = images[i].flip(-2)
            b[:, [1, 3]] = h - b[:, [3, 1]]
        out.append(b)
    return images, out


def fit_detector(
    detector: FewShotDetector,
    images: Tensor,
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    epochs: int = 6,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> DetFitResult:
    """Train ``detector.model`` on images ``(N, 3, H, W)`` with boxes and labels (indices of base classes).

    Args:
        on_step: called as ``on_step(step, total_steps, loss)`` after each optimiser step.

    Raises:
        DataError: the data do not fit the detector (labels beyond its base classes, no image).
        TrainingError: the loss is not finite.
    """
    check_boxes(images, boxes, labels, len(detector.base_classes), "training set")
    if epochs < 1 or batch_size < 1:
        raise DataError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    model = detector.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    per_epoch = math.ceil(images.shape[0] / batch_size)
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / total))
    )
    result, start, step = DetFitResult(), time.perf_counter(), 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(images.shape[0], generator=gen)
        running = 0.0
        for b in range(per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size].tolist()
            hflip = torch.rand(len(idx), generator=gen) < 0.5
            vflip = torch.rand(len(idx), generator=gen) < 0.5
            batch, batch_boxes = flip(images[idx], [boxes[i] for i in idx], hflip, vflip)
            loss = detection_loss(model, batch, batch_boxes, [labels[i] for i in idx])
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"detector loss is {loss.item()} at epoch {epoch}: lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            running += loss.item()
            step += 1
            if on_step is not None:
                on_step(step, total, loss.item())
        result.epoch_losses.append(running / per_epoch)
        log.info("detector epoch %d/%d: loss %.3f", epoch + 1, epochs, result.epoch_losses[-1])
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
