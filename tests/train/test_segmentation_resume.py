"""`train_segmenter(resume=True)` continues a segmentation run to the weights of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.config import SegConfig, make_seg_config
from medmeta.pipeline.segmentation import (
    CHECKPOINT_KIND,
    build_segmenter,
    load_seg_data,
    train_segmenter,
    training_episodes,
)
from medmeta.train.checkpoint import load_checkpoint
from medmeta.train.loop import FitResult


def config(root: Path, epochs: int) -> SegConfig:
    return make_seg_config(
        {
            "data": {"data_dir": str(root), "image_size": 32, "train": ["ct"], "test": ["ct:liver"]},
            "episodes": {"n_shot": 1, "n_query": 1},
            "method": {"name": "panet", "options": {"base": 4, "depth": 2, "feature_dim": 8}},
            "train": {"epochs": epochs, "episodes_per_epoch": 2, "val_episodes": 1, "device": "cpu"},
        }
    )


class Started:
    """Progress hook recording the epochs that ran."""

    def __init__(self) -> None:
        self.epochs: list[str] = []

    def start(self, description: str, total: int) -> None:
        self.epochs.append(description)

    def advance(self, n: int = 1, **info: object) -> None:
        pass

    def stop(self) -> None:
        pass


def train(
    root: Path, out: Path, epochs: int, resume: bool = False, progress: Started | None = None
) -> tuple[torch.nn.Module, FitResult]:
    cfg = config(root, epochs)
    data = load_seg_data(cfg)
    model = build_segmenter(cfg)
    meta = {"kind": CHECKPOINT_KIND, "method": "panet", "config": cfg.model_dump(mode="json")}
    episodes = training_episodes(model, data, cfg)
    result = train_segmenter(
        model, episodes, cfg.train, out_dir=out, meta=meta, resume=resume, progress=progress
    )
    return model, result


@pytest.mark.data
def test_a_resumed_segmentation_run_ends_with_the_uninterrupted_weights(
    seg_root: Path, tmp_path: Path
) -> None:
    whole, _ = train(seg_root, tmp_path / "whole", epochs=2)
    train(seg_root, tmp_path / "resumed", epochs=1)
    started = Started()
    resumed, result = train(seg_root, tmp_path / "resumed", epochs=2, resume=True, progress=started)
    assert started.epochs == ["epoch 2/2"]  # continued, not started again
    assert [r["epoch"] for r in result.history] == [1, 2]
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(tmp_path / "resumed" / "train_state.json")[1]["epochs_done"] == 2
