"""Continual strategies: the growing head keeps what it learnt, prototypes never change once computed (no
forgetting by construction), naive fine-tuning forgets where joint training does not, replay reads only its
buffer, and every learner leaves the caller's backbone alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from medmeta.config import ContinualConfig, make_continual_config
from medmeta.data.synthetic import make_synthetic
from medmeta.data.transforms import Normalization
from medmeta.models.backbones import Conv4
from medmeta.tasks.stream import Stream, draw_shots, load_stream
from medmeta.train.continual import (
    FinetuneLearner,
    GrowingClassifier,
    PrototypeLearner,
    StageBatches,
    make_learner,
    predict_classes,
)

NORM = Normalization(mean=(0.5,) * 3, std=(0.25,) * 3)
NAMES = make_synthetic(image_size=8).class_names


def _cfg(**train: Any) -> ContinualConfig:
    return make_continual_config(
        {
            "data": {"stages": ["a", "b"]},
            "train": {"steps": 30, "batch_size": 16, "device": "cpu", **train},
            "replay": {"buffer": 4},
        }
    )


def _backbone(seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(in_channels=3, image_size=16, hidden=16)


@pytest.fixture(scope="module")
def stream() -> Stream:
    return load_stream(
        ["synthetic:" + ",".join(NAMES[:3]), "synthetic:" + ",".join(NAMES[12:15])], image_size=16
    )


def _learn(learner: Any, stream: Stream, t: int, n_shot: int = 8) -> None:
    images, labels = draw_shots(stream, t, n_shot=n_shot, seed=0)
    learner.learn(torch.from_numpy(images), torch.from_numpy(labels), stream.seen(t))


def test_growing_the_head_keeps_the_old_rows_and_adds_seeded_new_ones() -> None:
    net = GrowingClassifier(_backbone(), 16)
    net.grow(3, torch.Generator().manual_seed(0))
    old_w, old_b = net.weight.detach().clone(), net.bias.detach().clone()
    net.grow(5, torch.Generator().manual_seed(1))
    assert net.n_classes == 5 and net(torch.zeros(2, 3, 16, 16)).shape == (2, 5)
    torch.testing.assert_close(net.weight[:3], old_w, rtol=0, atol=0)
    torch.testing.assert_close(net.bias[:3], old_b, rtol=0, atol=0)
    other = GrowingClassifier(_backbone(), 16)
    other.grow(3, torch.Generator().manual_seed(0))
    other.grow(5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(other.weight, net.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot shrink"):
        net.grow(4, torch.Generator())


def test_head_only_finetuning_keeps_the_backbone_fixed_and_in_eval_mode(stream: Stream) -> None:
    learner = make_learner(
        "naive", _backbone(), _cfg(finetune="head", steps=5), prepare=NORM, image_shape=(3, 16, 16), seed=0
    )
    assert isinstance(learner, FinetuneLearner)
    before = {k: v.clone() for k, v in learner.net.backbone.state_dict().items()}
    _learn(learner, stream, 0)
    after = learner.net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), (
        "weights and batch-norm statistics unchanged"
    )
    assert learner.net.n_classes == 3 and learner.net.training and not learner.net.backbone.training


def test_prototypes_of_earlier_stages_never_change_so_their_logits_do_not_either(stream: Stream) -> None:
    learner = PrototypeLearner(_backbone(), "cosine", prepare=NORM, device=torch.device("cpu"))
    _learn(learner, stream, 0)
    assert learner.prototypes is not None
    first = learner.prototypes.clone()
    queries = NORM(torch.from_numpy(stream.test_set(1)[0]))
    old_logits = learner.logits(queries)  # (N, 3)
    _learn(learner, stream, 1)
    assert learner.prototypes.shape[0] == 6
    torch.testing.assert_close(learner.prototypes[:3], first, rtol=0, atol=0)
    # the same numbers up to float rounding (a wider matrix product may sum in another order)
    torch.testing.assert_close(learner.logits(queries)[:, :3], old_logits, rtol=0, atol=1e-6)


def test_naive_finetuning_forgets_the_first_stage_where_joint_training_does_not(stream: Stream) -> None:
    test_images, test_labels = stream.test_set(1)
    old = test_labels < 3
    predicted_new = {}
    for strategy in ("naive", "joint"):
        learner = make_learner(strategy, _backbone(), _cfg(), prepare=NORM, image_shape=(3, 16, 16), seed=0)
        _learn(learner, stream, 0)
        _learn(learner, stream, 1)
        pred = predict_classes(learner, test_images[old], prepare=NORM)
        predicted_new[strategy] = float(np.mean(pred >= 3))
    # naive puts most first-stage images into the classes it learnt last; joint keeps them apart
    assert predicted_new["naive"] > 0.8, predicted_new
    assert predicted_new["joint"] < 0.5, predicted_new


def test_replay_mixes_in_only_the_images_its_buffer_holds(stream: Stream) -> None:
    learner = make_learner(
        "replay",
        _backbone(),
        _cfg(steps=2),
        prepare=NORM,
        image_shape=(3, 16, 16),
        seed=0,
        policy="class_balanced",
    )
    assert isinstance(learner, FinetuneLearner) and learner.buffer is not None
    _learn(learner, stream, 0)
    assert len(learner.buffer) == 4 and set(learner.buffer.labels.tolist()) == {0, 1, 2}
    memory = learner._memory()
    assert memory is not None
    images, labels = memory
    assert labels.tolist() == learner.buffer.labels.tolist() and images.shape == (4, 3, 16, 16)
    _learn(learner, stream, 1)
    assert len(learner.buffer) == 4 and max(learner.buffer.labels.tolist()) >= 3


def test_stage_batches_mix_new_and_memory_images_the_same_way_for_the_same_index() -> None:
    new_images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    mem_images = torch.full((10, 3, 8, 8), 255, dtype=torch.uint8)
    source = StageBatches(
        new_images,
        torch.full((6,), 5),
        (mem_images, torch.arange(10)),
        steps=3,
        batch_size=4,
        memory_batch=3,
        seed=0,
        prepare=NORM,
        flip=True,
    )
    x, y = source.batch(1, torch.device("cpu"))
    assert x.shape == (7, 3, 8, 8) and y[:4].tolist() == [5] * 4 and all(0 <= v < 10 for v in y[4:].tolist())
    x2, y2 = source.batch(1, torch.device("cpu"))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(y, source.batch(2, torch.device("cpu"))[1])


@pytest.mark.parametrize("strategy", ["naive", "replay", "joint", "prototypes"])
def test_a_learner_never_changes_the_backbone_it_was_given(stream: Stream, strategy: str) -> None:
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    learner = make_learner(strategy, backbone, _cfg(steps=3), prepare=NORM, image_shape=(3, 16, 16), seed=0)  # type: ignore[arg-type]
    _learn(learner, stream, 0)
    _learn(learner, stream, 1)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
