"""Supervised pretraining: label spaces, seeded batches, the training loop, checkpoints and reloading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta.config import TrainConfig, make_config
from medmeta.errors import ConfigError, DataError, TrainingError
from medmeta.eval.evaluate import AccuracyValidation
from medmeta.methods.metric.protonet import ProtoNet
from medmeta.methods.transfer.simpleshot import SimpleShot, SimpleShotOptions
from medmeta.models.backbones import Conv4
from medmeta.pipeline import default_normalization, load_method, train_method
from medmeta.tasks.sampler import EpisodeSampler
from medmeta.train.checkpoint import load_checkpoint
from medmeta.train.supervised import (
    LabelledImages,
    batch_indices,
    fit_supervised,
    random_flips,
    training_feature_mean,
)
from tests._helpers.transfer import (
    single_thread,  # noqa: F401  (autouse fixture)
    toy_domain,
)

NORM = default_normalization(3)


def small_simpleshot(**options: object) -> SimpleShot:
    torch.manual_seed(0)
    return SimpleShot(Conv4(3, hidden=8, image_size=16), SimpleShotOptions(batch_size=16, **options))  # type: ignore[arg-type]


def quick_cfg(**kw: object) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "episodes_per_epoch": 4, "val_episodes": 4, "device": "cpu", **kw})  # type: ignore[arg-type]


def test_union_label_space_offsets_each_domains_classes() -> None:
    a, b = toy_domain(2, 3, name="a"), toy_domain(3, 3, name="b")
    data = LabelledImages.build([a, b])
    assert data.head_sizes == (5,)
    assert data.class_names == ("a/c0", "a/c1", "b/c0", "b/c1", "b/c2")
    _, labels, heads = data.gather(np.arange(len(data)))
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert heads.unique().tolist() == [0]


def test_per_domain_label_space_keeps_local_labels_and_one_head_per_domain() -> None:
    a, b = toy_domain(2, 3, name="a"), toy_domain(3, 3, name="b")
    data = LabelledImages.build([a, b], per_domain=True)
    assert data.head_sizes == (2, 3)
    images, labels, heads = data.gather(np.array([7, 0, 14]))  # b's c0, a's c0, b's c2
    assert images.shape == (3, 3, 16, 16)
    assert list(zip(heads.tolist(), labels.tolist(), strict=True)) == [(0, 0), (1, 0), (1, 2)]


def test_domains_with_different_image_shapes_are_rejected() -> None:
    with pytest.raises(DataError, match="differ in image shape"):
        LabelledImages.build([toy_domain(2, size=16), toy_domain(2, size=20)])
    with pytest.raises(DataError, match="at least one dataset"):
        LabelledImages.build([])


def test_batches_cover_every_image_once_per_pass_and_repeat_with_the_seed() -> None:
    n, size = 10, 4
    stream = np.concatenate([batch_indices(n, size, seed=3, batch=b) for b in range(5)])  # 2 passes
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert np.array_equal(batch_indices(n, size, 3, 2), batch_indices(n, size, 3, 2))
    assert not np.array_equal(
        stream[:10], np.concatenate([batch_indices(n, size, 4, b) for b in range(3)])[:10]
    )
    assert len(batch_indices(3, 8, 0, 0)) == 3  # a batch never exceeds the set


def test_random_flips_are_seeded_and_flip_whole_images() -> None:
    x = torch.arange(2 * 16, dtype=torch.float32).view(8, 1, 2, 2)
    a, b = random_flips(x, 0, 5), random_flips(x, 0, 5)
    assert torch.equal(a, b)
    for img, out in zip(x, a, strict=True):
        assert any(torch.equal(out, img.flip(dims)) for dims in [(), (1,), (2,), (1, 2)])
    assert not torch.equal(a, x)


def test_feature_mean_is_the_mean_training_feature() -> None:
    method = small_simpleshot().eval()
    data = LabelledImages.build([toy_domain(2, 5)])
    mean = training_feature_mean(
        method, data, prepare=NORM, device=torch.device("cpu"), max_images=100, seed=0
    )
    images, _, _ = data.gather(np.arange(len(data)))
    with torch.no_grad():
        expected = method.backbone(NORM(images)).mean(0)
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-6)


def test_fit_supervised_writes_best_last_and_history_and_keeps_the_best_weights(tmp_path: Path) -> None:
    method = small_simpleshot()
    train, val = toy_domain(4, 10, seed=0), toy_domain(4, 8, seed=1)
    sampler = EpisodeSampler(val, 3, 2, 2, seed=0, n_episodes=4)
    meta = {"config": make_config({}).model_dump(mode="json")}
    result = fit_supervised(
        method,
        [train],
        quick_cfg(),
        prepare=NORM,
        validation=AccuracyValidation([sampler], quick_cfg().val_episodes, prepare=NORM),
        out_dir=tmp_path,
        meta=meta,
    )
    written = {p.name for p in tmp_path.glob("*.json")}
    assert written == {"best.json", "last.json", "history.json", "train_state.json"}
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1, 2]
    assert result.best_score == max(r["val_accuracy"] for r in result.history)
    state, stored = load_checkpoint(tmp_path / "best.json")
    for k, v in method.state_dict().items():
        torch.testing.assert_close(v, state[k], msg=k)
    assert stored["config"]["method"]["options"]["head_sizes"] == [4]
    assert stored["pretrain"]["classes"] == ["toy/c0", "toy/c1", "toy/c2", "toy/c3"]
    assert method.feature_mean.abs().sum() > 0
    assert meta["config"]["method"]["options"] == {}  # the caller's meta is not modified


def test_fit_supervised_is_reproducible_with_the_seed() -> None:
    runs = []
    for _ in range(2):
        method = small_simpleshot(flip=True)
        fit_supervised(method, [toy_domain(3)], quick_cfg(val_episodes=0), prepare=NORM)
        runs.append(method.state_dict())
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=0, atol=0, msg=k)


def test_per_domain_label_space_trains_one_head_per_domain() -> None:
    method = small_simpleshot(label_space="per_domain")
    result = fit_supervised(
        method, [toy_domain(2, name="a"), toy_domain(3, name="b")], quick_cfg(), prepare=NORM
    )
    assert method.options.head_sizes == (2, 3)
    assert [h.out_features for h in method.heads] == [2, 3]  # type: ignore[union-attr]
    assert all(math.isfinite(r["train_loss"]) for r in result.history)


def test_a_nan_loss_raises_training_error(monkeypatch: pytest.MonkeyPatch) -> None:
    method = small_simpleshot()
    monkeypatch.setattr(method, "supervised_loss", lambda *a, **k: torch.tensor(math.nan, requires_grad=True))
    with pytest.raises(TrainingError, match="loss became nan at epoch 1, step 1"):
        fit_supervised(method, [toy_domain(2)], quick_cfg(), prepare=NORM)


def test_fit_supervised_rejects_episodic_methods() -> None:
    method = ProtoNet(Conv4(3, hidden=8, image_size=16))
    with pytest.raises(TypeError, match=r"use medmeta\.train\.loop\.fit"):
        fit_supervised(method, [toy_domain(2)], quick_cfg(), prepare=NORM)


def test_a_head_sizes_option_that_does_not_fit_the_data_raises_config_error() -> None:
    method = small_simpleshot(head_sizes=(7,))
    with pytest.raises(ConfigError, match=r"head_sizes=\[7\] does not match .* \[3\] classes"):
        fit_supervised(method, [toy_domain(3)], quick_cfg(), prepare=NORM)


def test_a_pipeline_checkpoint_reloads_with_its_heads_and_feature_mean(tmp_path: Path) -> None:
    cfg = make_config(
        {
            "data": {"train": ["synthetic"], "image_size": 16},
            "episodes": {"n_way": 3, "n_shot": 1, "n_query": 2},
            "method": {"name": "simpleshot", "options": {"batch_size": 16}},
            "train": {"epochs": 1, "episodes_per_epoch": 3, "val_episodes": 3, "device": "cpu"},
        }
    )
    method, _, data = train_method(cfg, out_dir=tmp_path)
    loaded, loaded_cfg, _ = load_method(tmp_path / "best.json")
    assert isinstance(loaded, SimpleShot)
    assert loaded.options.head_sizes == method.options.head_sizes == (24,)  # type: ignore[attr-defined]
    assert loaded_cfg.method.options["head_sizes"] == [24]
    for k, v in method.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
    episode = EpisodeSampler(data.val[0], 3, 1, 2, seed=0).episode(0).map_images(NORM)
    method.eval()
    torch.testing.assert_close(loaded.episode_logits(episode), method.episode_logits(episode))
