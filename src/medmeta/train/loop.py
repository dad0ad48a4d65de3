"""One generic meta-training loop for every method: ``fit`` = epochs of ``train_one_epoch`` + validation.

The loop only calls ``method.batch_loss(episodes)``; AMP, clipping and the optimiser step live in `step`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from medmeta.config import TrainConfig
from medmeta.errors import TrainingError
from medmeta.eval.evaluate import evaluate
from medmeta.methods.base import FewShotMethod
from medmeta.tasks.sampler import EpisodeSampler, MultiDomainSampler
from medmeta.train.keeper import BestKeeper
from medmeta.train.state import best_record_value, resume_training, save_train_state

logger = logging.getLogger(__name__)


class ProgressHook(Protocol):
    """Receives progress; the CLI passes a rich implementation, the API may pass None."""

    def start(self, description: str, total: int) -> None: ...

    def advance(self, n: int = 1, **info: Any) -> None: ...

    def stop(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
    return torch.device(name)


def step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: list[nn.Parameter],
    *,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
) -> float:
    """Backward, optional unscale + clip, exactly one optimiser step, zero the gradients.

    Returns:
        The gradient norm before clipping (``nan`` when the gradients are not finite).
    """
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    grads = [p.grad for p in parameters if p.grad is not None]
    if grad_clip is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip))
    elif grads:
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    else:
        norm = 0.0
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself when gradients are inf/nan
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


@dataclass
class FitResult:
    """What `fit` produced: per-epoch history and the checkpoint paths."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    best_val_accuracy: float = math.nan
    seconds: float = 0.0


def train_one_epoch(
    method: FewShotMethod,
    sampler: MultiDomainSampler,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    cfg: TrainConfig,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    scaler: torch.amp.GradScaler | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    progress: ProgressHook | None,
) -> float:
    """One epoch of meta-training; returns the mean training loss."""
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    steps = max(1, cfg.episodes_per_epoch // cfg.meta_batch)
    total_loss = 0.0
    for s in range(steps):
        batch_index = epoch * steps + s
        episodes = [ep.to(device).map_images(prepare) for ep in sampler.batch(batch_index, cfg.meta_batch)]
        with torch.autocast(device.type, enabled=scaler is not None):
            loss = method.batch_loss(episodes)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"training loss became {value} at epoch {epoch + 1}, step {s + 1}: lower train.lr or set "
                "train.grad_clip; checkpoints saved so far are kept"
            )
        step(loss, optimizer, params, scaler=scaler, grad_clip=cfg.grad_clip)
        if scheduler is not None:
            scheduler.step()
        total_loss += value
        if progress is not None:
            progress.advance(1, loss=value)
    return total_loss / steps


def fit(
    method: FewShotMethod,
    train_sampler: MultiDomainSampler,
    val_samplers: Sequence[EpisodeSampler],
    cfg: TrainConfig,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressHook | None = None,
    resume: bool = False,
    save_state: bool = True,
    on_start: Callable[[], None] | None = None,
) -> FitResult:
    """Meta-train `method` and keep the checkpoint with the best validation accuracy.

    Args:
        method: any registered method.
        train_sampler: training episodes (episode indices follow epochs, so runs are reproducible).
        val_samplers: fixed validation episodes (one sampler per domain; accuracy is their mean),
            evaluated after every epoch; empty: the last epoch is kept.
        cfg: training hyper-parameters.
        prepare: uint8 images -> normalised float images.
        out_dir: where ``best.json``/``last.json`` checkpoints, ``history.json`` and the training state
            (`medmeta.train.state`) go (None: not saved). The caller has claimed it
            (`medmeta.outputs.check_run_folder`).
        meta: extra JSON stored in the checkpoints (config, class names, normalisation...).
        progress: progress receiver.
        resume: continue from ``out_dir``'s training state (model, optimiser, scheduler, RNG, history).
        save_state: write the training state after every epoch (False when the caller never resumes,
            e.g. the benchmark, which trains a cut-short job again from scratch).
        on_start: called once everything is checked (and a resumed state restored), before the first
            training step: the caller's moment to touch the run folder.

    Returns:
        The history and checkpoint paths; `method` ends holding the best weights.

    Raises:
        TrainingError: the loss became NaN/inf (checkpoints already written are kept).
        ConfigError: `resume` with a run that differs from the folder's.
        CheckpointError: `resume` with a missing or altered training state.
    """
    device = resolve_device(cfg.device)
    method.to(device)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the method has no trainable parameter: nothing to meta-train")
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, cfg.episodes_per_epoch // cfg.meta_batch)
    scheduler = None
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    out = Path(out_dir) if out_dir is not None else None
    result = FitResult()
    keeper = BestKeeper(out, meta)
    first = 0
    if resume and out is not None:
        first = resume_training(
            out,
            model=method,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            keeper=keeper,
            cfg=cfg,
            meta=keeper.meta,
        )
        result.best_val_accuracy = best_record_value(keeper, "val_accuracy")
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    for epoch in range(first, cfg.epochs):
        t0 = time.perf_counter()
        method.set_epoch(epoch, cfg.epochs)
        if progress is not None:
            progress.start(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
        try:
            train_loss = train_one_epoch(
                method,
                train_sampler,
                optimizer,
                epoch,
                cfg,
                prepare=prepare,
                device=device,
                scaler=scaler,
                scheduler=scheduler,
                progress=progress,
            )
        finally:
            if progress is not None:
                progress.stop()
        record: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
        }
        val_acc = validate(method, val_samplers, cfg.val_episodes, record, prepare=prepare, device=device)
        record["seconds"] = time.perf_counter() - t0
        if keeper.end_epoch(method, epoch, record, val_acc):
            result.best_val_accuracy = val_acc
        if out is not None and save_state:
            save_train_state(
                out,
                model=method,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                keeper=keeper,
                meta=keeper.meta,
            )
    keeper.restore(method)
    result.history = keeper.history
    result.best_checkpoint, result.last_checkpoint = keeper.best_checkpoint, keeper.last_checkpoint
    result.seconds = time.perf_counter() - start
    return result


def validate(
    method: FewShotMethod,
    val_samplers: Sequence[EpisodeSampler],
    episodes: int,
    record: dict[str, float],
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> float:
    """Mean validation accuracy over the samplers (`episodes` shared between them; NaN without any), also
    written into `record` as ``val_accuracy`` and ``val_ci95`` (the widest CI)."""
    if not val_samplers or episodes <= 0:
        return math.nan
    per = max(1, episodes // len(val_samplers))
    results = [evaluate(method, vs, prepare=prepare, device=device, n_episodes=per) for vs in val_samplers]
    val_acc = sum(r.accuracy for r in results) / len(results)
    record["val_accuracy"] = val_acc
    record["val_ci95"] = max(r.ci95 for r in results)
    return val_acc
