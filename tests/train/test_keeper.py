"""`BestKeeper`: best epoch by validation score (the last one without), files written, weights restored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from medmeta.train.checkpoint import load_checkpoint
from medmeta.train.keeper import BestKeeper


def _epochs(keeper: BestKeeper, model: nn.Linear, scores: list[float]) -> list[bool]:
    improved = []
    for epoch, score in enumerate(scores):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        improved.append(keeper.end_epoch(model, epoch, {"epoch": epoch + 1, "train_loss": 1.0}, score))
    return improved


def test_best_by_validation_with_files_and_restore(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    keeper = BestKeeper(tmp_path, {"kind": "test"})
    assert _epochs(keeper, model, [0.5, 0.7, 0.6]) == [True, True, False]
    keeper.restore(model)
    assert torch.all(model.weight == 1.0)  # epoch 2's weights
    assert keeper.best_checkpoint is not None and keeper.last_checkpoint is not None
    state, meta = load_checkpoint(keeper.best_checkpoint)
    assert meta["epoch"] == 2 and torch.all(state["weight"] == 1.0)
    _, last_meta = load_checkpoint(keeper.last_checkpoint)
    assert last_meta["epoch"] == 3 and last_meta["kind"] == "test"
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1, 2, 3]


def test_without_validation_the_last_epoch_wins_and_nothing_is_saved_without_a_folder() -> None:
    model = nn.Linear(2, 1)
    keeper = BestKeeper(None, save_last=False)
    assert _epochs(keeper, model, [math.nan, math.nan]) == [True, True]
    keeper.restore(model)
    assert torch.all(model.weight == 1.0)
    assert keeper.best_checkpoint is None and keeper.last_checkpoint is None
