"""Training loop of the few-shot segmenters: seeded episodes, Adam, best checkpoint by validation Dice."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmeta.config import TrainConfig
from medmeta.errors import TrainingError
from medmeta.seg.base import FewShotSegmenter
from medmeta.seg.evaluate import evaluate_structure_episodes
from medmeta.tasks.segmentation import EpisodeSource
from medmeta.train.keeper import BestKeeper
from medmeta.train.loop import ProgressHook, resolve_device, step
from medmeta.train.state import best_record_value, resume_training, save_train_state

logger = logging.getLogger(__name__)


@dataclass
class SegFitResult:
    """History and checkpoints of `fit_segmenter`."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    best_val_dice: float = math.nan
    seconds: float = 0.0


def fit_segmenter(
    model: FewShotSegmenter,
    episodes: EpisodeSource,
    cfg: TrainConfig,
    *,
    val_episodes: EpisodeSource | None = None,
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressHook | None = None,
    resume: bool = False,
    on_start: Callable[[], None] | None = None,
) -> SegFitResult:
    """Train `model` on ``episodes(i)`` for ``epochs * episodes_per_epoch`` episodes.

    Episode indices run ``0, 1, ...`` across epochs, so a run is reproducible from ``cfg.seed``.
    After each epoch, ``cfg.val_episodes`` validation episodes (from `val_episodes`) give a mean Dice;
    the best epoch (the last one without validation) is saved as ``out_dir/best`` (safetensors + JSON),
    and the training state after every epoch (`medmeta.train.state`): `resume` continues from it.
    `on_start` is called once everything is checked, before the first training step.

    Raises:
        TrainingError: the model has nothing to train, or the loss became NaN/inf.
        ConfigError: `resume` with a run that differs from the folder's.
    """
    device = resolve_device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{type(model).__name__} has no trainable parameter: it needs no training")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = Path(out_dir) if out_dir is not None else None
    result = SegFitResult()
    keeper = BestKeeper(out, meta, save_last=False)
    first = 0
    if resume and out is not None:
        first = resume_training(
            out,
            model=model,
            optimizer=optimizer,
            scheduler=None,
            scaler=None,
            keeper=keeper,
            cfg=cfg,
            meta=keeper.meta,
        )
        result.best_val_dice = best_record_value(keeper, "val_dice")
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    steps = max(1, cfg.episodes_per_epoch // cfg.meta_batch)
    index = first * steps * cfg.meta_batch
    for epoch in range(first, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        if progress is not None:
            progress.start(f"epoch {epoch + 1}/{cfg.epochs}", steps)
        total = 0.0
        try:
            for s in range(steps):
                batch = [episodes(index + j).to(device) for j in range(cfg.meta_batch)]
                index += cfg.meta_batch
                loss = torch.stack([model.episode_loss(ep) for ep in batch]).mean()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(
                        f"segmentation loss became {value} at epoch {epoch + 1}, step {s + 1}: lower train.lr "
                        "or set train.grad_clip"
                    )
                step(loss, optimizer, params, grad_clip=cfg.grad_clip)
                total += value
                if progress is not None:
                    progress.advance(1, loss=value)
        finally:
            if progress is not None:
                progress.stop()
        record: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / steps}
        val_dice = math.nan
        if val_episodes is not None and cfg.val_episodes > 0:
            dices = evaluate_structure_episodes(model, val_episodes, cfg.val_episodes, device)["dice"]
            val_dice = record["val_dice"] = float(sum(dices) / len(dices))
        record["seconds"] = time.perf_counter() - t0
        if keeper.end_epoch(model, epoch, record, val_dice):
            result.best_val_dice = val_dice
        if out is not None:
            save_train_state(
                out,
                model=model,
                optimizer=optimizer,
                scheduler=None,
                scaler=None,
                keeper=keeper,
                meta=keeper.meta,
            )
    keeper.restore(model)
    result.history, result.best_checkpoint = keeper.history, keeper.best_checkpoint
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
