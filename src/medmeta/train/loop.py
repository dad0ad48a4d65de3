"""One training loop for every method and task: ``fit`` = epochs of ``train_one_epoch`` + validation.

The loop knows neither the task nor the kind of batch. It draws batch ``b`` from a `BatchSource`
(`medmeta.train.sources.EpisodicBatches` for meta-training on classification or segmentation episodes,
`medmeta.train.supervised.SupervisedBatches` for supervised pretraining,
`medmeta.train.self_supervised.ViewBatches` for self-supervised pretraining), asks the source for the loss,
and owns everything else: Adam, the LR schedule, AMP, clipping and the optimiser step (`step`), the NaN
check, progress, validation (a `Validation`), checkpoints (`BestKeeper`) and resuming (`medmeta.train.state`).

Distributed (``fit(..., distributed=...)``, one process per rank under torchrun): each rank meta-trains
its block of every meta-batch (the source's ``shard``), and `medmeta.train.sync.RankSync` all-reduces the
loss, buffers and gradients, weighted so they are the means over the global meta-batch, before the step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from medmeta.config import TrainConfig
from medmeta.errors import TrainingError
from medmeta.train.distributed import Distributed
from medmeta.train.keeper import BestKeeper
from medmeta.train.state import best_record_value, resume_training, save_train_state
from medmeta.train.sync import RankSync, broadcast_state

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
    reduce: Callable[[list[nn.Parameter]], None] | None = None,
) -> float:
    """Backward, optional all-reduce, optional unscale + clip, exactly one optimiser step, zero the gradients.

    Args:
        reduce: called on `parameters` right after ``backward`` (distributed: `RankSync.gradients`, which
            makes every rank's gradients the global meta-batch's), before any unscaling or clipping.

    Returns:
        The gradient norm before clipping (``nan`` when the gradients are not finite).
    """
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()
    if reduce is not None:
        reduce(parameters)
    if scaler is not None:
        scaler.unscale_(optimizer)
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


class Trainable(Protocol):
    """What `fit` trains: an `nn.Module` told the epoch before it starts (every method base has this)."""

    training: bool

    def parameters(self, recurse: bool = True) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def to(self, device: torch.device) -> Any: ...

    def set_epoch(self, epoch: int, epochs: int) -> None: ...


class BatchSource(Protocol):
    """Where training batches come from: batch ``b`` depends only on the source's seed and ``b``.

    Attributes:
        steps_per_epoch: optimiser steps (batches) per epoch.
    """

    steps_per_epoch: int

    def batch(self, index: int, device: torch.device) -> Any:
        """Batch number `index` of the run (``epoch * steps_per_epoch + step``), on `device`."""
        ...

    def loss(self, method: Any, batch: Any) -> torch.Tensor:
        """The scalar training loss of `method` on `batch` (runs under autocast when AMP is on)."""
        ...

    def after_epoch(self, method: Any, device: torch.device) -> None:
        """Refresh what the method derives from the training data (called before validation)."""
        ...

    # Sources that can be split across ranks also have ``shard(rank, world_size) -> (source of the rank's
    # part of every batch, that part's share of a batch's loss)`` (`medmeta.train.sources.EpisodicBatches`).


class Validation(Protocol):
    """Scores the method after every epoch; the epoch with the highest `metric` is kept.

    Attributes:
        metric: the record key holding the score (``val_accuracy``, ``val_dice``).
    """

    metric: str

    def __call__(self, method: Any, device: torch.device) -> dict[str, float]:
        """Record entries, `metric` among them (empty: no validation this run)."""
        ...


@dataclass
class FitResult:
    """What `fit` produced: per-epoch history and the checkpoint paths.

    Attributes:
        best_score: the kept epoch's validation `metric` (NaN without validation).
        metric: the validation metric's record key (``val_accuracy``, ``val_dice``; ``""`` without one).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    best_score: float = math.nan
    metric: str = ""
    seconds: float = 0.0


def train_one_epoch(
    method: Trainable,
    source: BatchSource,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    cfg: TrainConfig,
    *,
    device: torch.device,
    scaler: torch.amp.GradScaler | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    progress: ProgressHook | None,
    sync: RankSync | None = None,
) -> float:
    """One epoch of training; returns the mean training loss (over the global meta-batches with `sync`).

    After every optimiser step, a method with an ``after_step(step, total_steps)`` method (0-based step of
    the run, ``epochs * steps_per_epoch`` steps in all) has it called: the moment for updates that are not
    gradient steps, such as the momentum copies of self-supervised methods.
    """
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    after_step: Callable[[int, int], None] | None = getattr(method, "after_step", None)
    steps = source.steps_per_epoch
    total_loss = 0.0
    for s in range(steps):
        batch = source.batch(epoch * steps + s, device)
        if sync is not None:
            sync.snapshot(method)  # type: ignore[arg-type]
        with torch.autocast(device.type, enabled=scaler is not None):
            loss = source.loss(method, batch)
        value = float(loss.detach()) if sync is None else sync.merge(loss)
        if not math.isfinite(value):
            raise TrainingError(
                f"training loss became {value} at epoch {epoch + 1}, step {s + 1}: lower train.lr or set "
                "train.grad_clip; checkpoints saved so far are kept"
            )
        reduce = None if sync is None else sync.gradients
        step(loss, optimizer, params, scaler=scaler, grad_clip=cfg.grad_clip, reduce=reduce)
        if after_step is not None:
            after_step(epoch * steps + s, cfg.epochs * steps)
        if scheduler is not None:
            scheduler.step()
        total_loss += value
        if progress is not None:
            progress.advance(1, loss=value)
    return total_loss / steps


def fit(
    method: Trainable,
    source: BatchSource,
    cfg: TrainConfig,
    *,
    validation: Validation | None = None,
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressHook | None = None,
    resume: bool = False,
    save_state: bool = True,
    save_last: bool = True,
    on_start: Callable[[], None] | None = None,
    distributed: Distributed | None = None,
) -> FitResult:
    """Train `method` on `source` and keep the checkpoint with the best validation score.

    Args:
        method: any method of any task (a classification `FewShotMethod`, a `FewShotSegmenter`...).
        source: the training batches and their loss (batch indices follow epochs, so runs are reproducible).
        cfg: training hyper-parameters: epochs, Adam ``lr``/``weight_decay``, ``lr_schedule``, ``amp``,
            ``grad_clip``, ``device``.
        validation: scores the method after every epoch; None: the last epoch is kept.
        out_dir: where ``best``/``last`` checkpoints, ``history.json`` and the training state
            (`medmeta.train.state`) go (None: not saved). The caller has claimed it
            (`medmeta.outputs.check_run_folder`).
        meta: extra JSON stored in the checkpoints (config, class names, normalisation...).
        progress: progress receiver.
        resume: continue from ``out_dir``'s training state (model, optimiser, scheduler, RNG, history).
        save_state: write the training state after every epoch (False when the caller never resumes,
            e.g. the benchmark, which trains a cut-short job again from scratch).
        save_last: also write the ``last`` checkpoint after every epoch.
        on_start: called once everything is checked (and a resumed state restored), before the first
            training step: the caller's moment to touch the run folder.
        distributed: this process's rank in a torchrun job (its process group joined): the source must
            have ``shard`` (episodic meta-batches); every rank starts from rank 0's state (fresh or
            resumed) and takes identical steps. Only rank 0 should be given `out_dir`, `validation`,
            `progress` and `on_start`; the others train and write nothing.

    Returns:
        The history and checkpoint paths; `method` ends holding the best weights.

    Raises:
        TrainingError: the method has nothing to train, the loss became NaN/inf (checkpoints already
            written are kept), or `distributed` with a source whose batches cannot be split.
        ConfigError: `resume` with a run that differs from the folder's, or `distributed` with fewer tasks
            per meta-batch than ranks.
        CheckpointError: `resume` with a missing or altered training state.
    """
    device = resolve_device(cfg.device)
    method.to(device)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{type(method).__name__} has no trainable parameter: it needs no training")
    sync = None
    if distributed is not None:
        source, sync = _shard(source, distributed, device)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = source.steps_per_epoch
    scheduler = None
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    out = Path(out_dir) if out_dir is not None else None
    result = FitResult(metric="" if validation is None else validation.metric)
    keeper = BestKeeper(out, meta, save_last=save_last)
    first = 0
    if resume and out is not None:
        first = resume_training(
            out,
            model=method,  # type: ignore[arg-type]
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            keeper=keeper,
            cfg=cfg,
            meta=keeper.meta,
        )
        if validation is not None:
            result.best_score = best_record_value(keeper, validation.metric)
    if sync is not None:
        first = broadcast_state(method, optimizer, scheduler, scaler, first, sync.device)  # type: ignore[arg-type]
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
                source,
                optimizer,
                epoch,
                cfg,
                device=device,
                scaler=scaler,
                scheduler=scheduler,
                progress=progress,
                sync=sync,
            )
        finally:
            if progress is not None:
                progress.stop()
        source.after_epoch(method, device)
        record: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
        }
        score = math.nan
        if validation is not None:
            record.update(validation(method, device))
            score = record.get(validation.metric, math.nan)
        record["seconds"] = time.perf_counter() - t0
        if keeper.end_epoch(method, epoch, record, score):  # type: ignore[arg-type]
            result.best_score = score
        if out is not None and save_state:
            save_train_state(
                out,
                model=method,  # type: ignore[arg-type]
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                keeper=keeper,
                meta=keeper.meta,
            )
    keeper.restore(method)  # type: ignore[arg-type]
    result.history = keeper.history
    result.best_checkpoint, result.last_checkpoint = keeper.best_checkpoint, keeper.last_checkpoint
    result.seconds = time.perf_counter() - start
    return result


def _shard(source: BatchSource, run: Distributed, device: torch.device) -> tuple[BatchSource, RankSync]:
    """This rank's part of `source` and the collectives that merge the parts (see `fit`)."""
    shard: Callable[[int, int], tuple[BatchSource, float]] | None = getattr(source, "shard", None)
    if shard is None:
        raise TrainingError(
            f"{type(source).__name__} batches cannot be split across processes (only episodic meta-batches "
            "can): run this training in one process, without torchrun"
        )
    part, share = shard(run.rank, run.world_size)
    return part, RankSync(share, device)
