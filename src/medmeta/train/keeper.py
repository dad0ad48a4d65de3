"""End-of-epoch bookkeeping shared by every training loop (episodic, supervised pretraining, segmentation).

Per epoch: append the history record, write ``last`` (optional) and, when the epoch is the best so far,
``best`` checkpoints (safetensors + JSON) and ``history.json`` into the run folder, and keep a copy of the
best weights in memory so the loop can end holding them. An epoch's score is its validation metric;
without validation it is the epoch index, so the last epoch wins. Every file is written atomically, so a
run killed mid-save keeps the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmeta.train.checkpoint import _atomic_write_text, save_checkpoint

logger = logging.getLogger(__name__)


class BestKeeper:
    """History, checkpoints and best weights of one training run.

    Example:
        >>> keeper = BestKeeper(out_dir, meta)  # doctest: +SKIP
        >>> for epoch in range(epochs):  # doctest: +SKIP
        ...     keeper.end_epoch(model, epoch, {"epoch": epoch + 1, "train_loss": loss}, val_accuracy)
        >>> keeper.restore(model)  # doctest: +SKIP
    """

    def __init__(
        self, out: Path | None, meta: dict[str, Any] | None = None, *, save_last: bool = True
    ) -> None:
        self.out = out
        self.meta = meta or {}
        self.save_last = save_last
        self.history: list[dict[str, float]] = []
        self.best = -math.inf
        self.best_epoch = 0  # 1-based; 0: no epoch yet
        self.best_state: dict[str, torch.Tensor] = {}
        self.best_checkpoint: Path | None = None
        self.last_checkpoint: Path | None = None

    def end_epoch(self, model: nn.Module, epoch: int, record: dict[str, float], val_score: float) -> bool:
        """Record `epoch` (0-based) with validation score `val_score` (NaN: none); True if it is the best."""
        self.history.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)
        score = val_score if math.isfinite(val_score) else float(epoch)
        improved = score > self.best
        if improved:
            self.best, self.best_epoch = score, epoch + 1
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._write(model.state_dict(), best=improved)
        return improved

    def _write(self, last_state: dict[str, torch.Tensor], *, best: bool) -> None:
        if self.out is None:
            return
        epoch = len(self.history)
        if self.save_last:
            meta = {**self.meta, "epoch": epoch, "history": self.history}
            self.last_checkpoint = save_checkpoint(self.out / "last", last_state, meta)
        if best:
            meta = {**self.meta, "epoch": self.best_epoch, "history": self.history[: self.best_epoch]}
            self.best_checkpoint = save_checkpoint(self.out / "best", self.best_state, meta)
        _atomic_write_text(self.out / "history.json", json.dumps(self.history, indent=2))

    def state(self) -> dict[str, Any]:
        """The bookkeeping a resumed run needs besides the weights (JSON)."""
        return {"history": self.history, "best": self.best, "best_epoch": self.best_epoch}

    def resume(self, state: dict[str, Any], best_state: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Continue from `state` (see `state`) with the best epoch's weights `best_state` and `model` holding
        the last epoch's; the run folder's checkpoints and history are written again from them, so files
        left half-updated by a run killed mid-epoch-end agree with the state again."""
        self.history = [dict(r) for r in state["history"]]
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.best_state = {k: v.detach().clone() for k, v in best_state.items()}
        if self.history:
            self._write(model.state_dict(), best=self.best_epoch > 0)

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into `model` (nothing to do before the first epoch)."""
        if self.best_state:
            model.load_state_dict(self.best_state)
