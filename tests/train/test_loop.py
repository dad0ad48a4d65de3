"""The generic training loop: the optimiser step, NaN handling, determinism, and learning."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from medmeta.config import TrainConfig, make_config
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import TrainingError
from medmeta.eval.evaluate import AccuracyValidation
from medmeta.pipeline import default_normalization, load_method, train_method
from medmeta.tasks.sampler import EpisodeSampler, MultiDomainSampler
from medmeta.train.checkpoint import load_checkpoint
from medmeta.train.loop import fit, step
from medmeta.train.sources import EpisodicBatches


def test_step_clips_then_steps_the_optimiser_exactly_once() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    loss = (100 * p).sum()
    with mock.patch.object(opt, "step", wraps=opt.step) as spy:
        norm = step(loss, opt, [p], grad_clip=1.0)
    assert spy.call_count == 1
    assert norm == pytest.approx(100 * math.sqrt(3))
    torch.testing.assert_close(p.detach(), torch.ones(3) - 1 / math.sqrt(3))
    assert p.grad is None


def test_step_with_a_grad_scaler_steps_through_the_scaler_only() -> None:
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = mock.MagicMock()
    scaler.scale.side_effect = lambda loss: loss
    with mock.patch.object(opt, "step") as direct:
        step(p.sum(), opt, [p], scaler=scaler)
    scaler.step.assert_called_once_with(opt)
    direct.assert_not_called()


def _synthetic_run(tmp_path: Path, **train: object) -> tuple[nn.Module, object]:
    names = make_synthetic(image_size=8).class_names
    cfg = make_config(
        {
            "data": {"train": ["synthetic:" + ",".join(names[:8])], "image_size": 32},
            "episodes": {"n_way": 4, "n_shot": 2, "n_query": 4},
            "model": {"backbone": "conv4"},
            "train": {"epochs": 2, "episodes_per_epoch": 8, "val_episodes": 6, "device": "cpu", **train},
        }
    )
    method, result, _data = train_method(cfg, out_dir=tmp_path)
    return method, result


def test_fit_writes_best_and_last_checkpoints_and_history(tmp_path: Path) -> None:
    method, result = _synthetic_run(tmp_path)
    assert (tmp_path / "best.json").is_file() and (tmp_path / "last.json").is_file()
    assert (tmp_path / "history.json").is_file()
    assert len(result.history) == 2 and "val_accuracy" in result.history[0]
    loaded, cfg, meta = load_method(tmp_path / "best.json")
    assert meta["method"] == "protonet" and cfg.train.epochs == 2
    for (k, a), (_, b) in zip(method.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_the_same_seed_gives_the_same_training_history(tmp_path: Path) -> None:
    _, a = _synthetic_run(tmp_path / "a")
    _, b = _synthetic_run(tmp_path / "b")
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["val_accuracy"] for h in a.history] == [h["val_accuracy"] for h in b.history]


def test_a_nan_loss_stops_training_and_keeps_earlier_checkpoints(tmp_path: Path) -> None:
    ds = make_synthetic(n_classes=5, n_per_class=10, image_size=16)
    from medmeta.methods.metric.protonet import ProtoNet
    from medmeta.models.backbones import Conv4

    method = ProtoNet(Conv4(3, hidden=4, image_size=16))
    sampler = MultiDomainSampler([ds], 3, 1, 2, seed=0, n_episodes=4)
    val = [EpisodeSampler(ds, 3, 1, 2, seed=1)]
    cfg = TrainConfig(epochs=1, episodes_per_epoch=4, val_episodes=2, device="cpu")
    norm = default_normalization(3)
    source, validation = EpisodicBatches(sampler, cfg, prepare=norm), AccuracyValidation(val, 2, prepare=norm)
    fit(method, source, cfg, validation=validation, out_dir=tmp_path)
    saved = (tmp_path / "best.json").read_text()
    with (
        mock.patch.object(
            type(method), "episode_loss", return_value=torch.tensor(float("nan"), requires_grad=True)
        ),
        pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 1: lower train.lr"),
    ):
        fit(method, source, cfg, validation=validation, out_dir=tmp_path)
    assert (tmp_path / "best.json").read_text() == saved
    assert load_checkpoint(tmp_path / "best.json")[1]["epoch"] == 1


def test_protonet_learns_the_synthetic_classes(tmp_path: Path) -> None:
    _, result = _synthetic_run(tmp_path, epochs=3, episodes_per_epoch=20)
    assert result.best_score > 0.5  # 4-way: chance is 0.25
