"""Cached evaluation: the same episodes and logits as adapting on every episode, each image embedded once."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from medmeta.data.synthetic import make_synthetic
from medmeta.data.transforms import Normalization
from medmeta.eval.cache import EmbeddingCache, cached_episode_logits, episode_indices
from medmeta.eval.evaluate import evaluate
from medmeta.methods import build_method
from medmeta.methods.base import FewShotMethod
from medmeta.methods.functional import compute_prototypes
from medmeta.methods.metric.protonet import PrototypePredictor
from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Support
from medmeta.tasks.sampler import EpisodeSampler

# The metric methods; every other method with a frozen backbone is checked (on one episode) by the
# contract suite in tests/methods/test_contract.py.
METRIC = ["matching", "protonet", "relation", "siamese"]
NORM = Normalization(mean=(0.5,), std=(0.25,))


class CountingBackbone(nn.Module):
    """Conv4 that counts the images it embeds."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__()
        self.net = Conv4(**kwargs)
        self.out_features = self.net.out_features
        self.spatial_dims = 2
        self.seen = 0

    def forward(self, x: Tensor) -> Tensor:
        self.seen += x.shape[0]
        return self.net(x)


class AdaptingProtoNet(FewShotMethod):
    """ProtoNet logits from a method that does not declare a frozen backbone (so it is never cached)."""

    def adapt(self, support: Support, query_images: Tensor | None = None) -> PrototypePredictor:
        prototypes = compute_prototypes(self.backbone(support.images), support.labels, support.n_way)
        return PrototypePredictor(self.backbone, prototypes, "sqeuclidean", 1.0)


@pytest.fixture(scope="module")
def sampler() -> EpisodeSampler:
    return EpisodeSampler(
        make_synthetic(n_classes=6, n_per_class=12, image_size=16, channels=1), 4, 2, 3, seed=5
    )


def _method(name: str) -> FewShotMethod:
    torch.manual_seed(0)
    return build_method(name, CountingBackbone(in_channels=1, hidden=8, image_size=16)).eval()


def test_cached_episodes_are_the_sampler_episodes(sampler: EpisodeSampler) -> None:
    support, query = episode_indices(sampler, 5)
    images = sampler.dataset.images
    for i in range(5):
        ep = sampler.episode(i)
        assert np.array_equal(images[support[i]], ep.support_images.numpy())
        assert np.array_equal(images[query[i]], ep.query_images.numpy())


@pytest.mark.parametrize("name", METRIC)
def test_cached_logits_equal_the_logits_of_adapting_on_each_episode(
    name: str, sampler: EpisodeSampler
) -> None:
    method = _method(name)
    with torch.no_grad():
        cached, labels = cached_episode_logits(method, sampler, prepare=NORM, n_episodes=12)
        for i in range(12):
            ep = sampler.episode(i).map_images(NORM)
            torch.testing.assert_close(cached[i], method.episode_logits(ep), rtol=1e-4, atol=1e-4)
            assert torch.equal(labels[i], ep.query_labels)


@pytest.mark.parametrize("name", METRIC)
def test_cached_and_uncached_evaluation_report_the_same_metrics(name: str, sampler: EpisodeSampler) -> None:
    method = _method(name)
    fast = evaluate(method, sampler, prepare=NORM, n_episodes=15)
    slow = evaluate(method, sampler, prepare=NORM, n_episodes=15, use_cache=False)
    for key, (mean, _) in slow.metrics.items():
        assert fast.metrics[key][0] == pytest.approx(mean, abs=1e-6), key
    assert fast.pooled["ece"] == pytest.approx(slow.pooled["ece"], abs=1e-6)


def test_each_used_image_is_embedded_exactly_once(sampler: EpisodeSampler) -> None:
    method = _method("protonet")
    evaluate(method, sampler, prepare=NORM, n_episodes=40)
    support, query = episode_indices(sampler, 40)
    backbone = method.backbone
    assert isinstance(backbone, CountingBackbone)
    assert backbone.seen == len(np.unique(np.concatenate([support.ravel(), query.ravel()])))
    assert backbone.seen <= len(sampler.dataset)


def test_methods_that_do_not_declare_a_frozen_backbone_adapt_on_every_episode(
    sampler: EpisodeSampler,
) -> None:
    torch.manual_seed(0)
    adapting = AdaptingProtoNet(Conv4(in_channels=1, hidden=8, image_size=16))
    torch.manual_seed(0)
    protonet = build_method("protonet", Conv4(in_channels=1, hidden=8, image_size=16))
    slow = evaluate(adapting, sampler, prepare=NORM, n_episodes=10)
    fast = evaluate(protonet, sampler, prepare=NORM, n_episodes=10)
    assert slow.per_episode_accuracy == pytest.approx(fast.per_episode_accuracy)


def test_the_cache_refuses_a_method_that_adapts_its_backbone(sampler: EpisodeSampler) -> None:
    method = AdaptingProtoNet(Conv4(in_channels=1, hidden=8, image_size=16)).eval()
    with pytest.raises(ValueError, match="use_cache=False"):
        evaluate(method, sampler, prepare=NORM, n_episodes=2, use_cache=True)
    with pytest.raises(NotImplementedError, match="use_cache=False"):
        method.logits_from_features(
            torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), 1, torch.zeros(1, 1, 3)
        )


def test_the_cache_refuses_a_method_in_training_mode(sampler: EpisodeSampler) -> None:
    with pytest.raises(ValueError, match=r"method\.eval\(\)"):
        cached_episode_logits(_method("protonet").train(), sampler, prepare=NORM, n_episodes=2)


def test_taking_an_image_that_was_not_embedded_is_refused() -> None:
    cache = EmbeddingCache(torch.zeros(1, 3), np.array([-1, 0, -1]))
    assert cache.take(np.array([1, 1])).shape == (2, 3)
    with pytest.raises(KeyError, match="not embedded"):
        cache.take(np.array([0]))


def test_progress_is_reported_once_per_episode(sampler: EpisodeSampler) -> None:
    calls: list[tuple[int, int]] = []
    evaluate(
        _method("protonet"), sampler, prepare=NORM, n_episodes=7, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(i, 7) for i in range(1, 8)]


def test_evaluation_restores_the_training_mode(sampler: EpisodeSampler) -> None:
    method = _method("protonet").train()
    evaluate(method, sampler, prepare=NORM, n_episodes=2)
    assert method.training


def test_ten_thousand_cached_episodes_take_seconds() -> None:
    data = make_synthetic(n_classes=8, n_per_class=40, image_size=16, channels=1)
    sampler = EpisodeSampler(data, 5, 5, 15, seed=0, n_episodes=10_000)
    torch.manual_seed(0)
    method = build_method("protonet", Conv4(in_channels=1, hidden=32, image_size=16))
    start = time.perf_counter()
    result = evaluate(method, sampler, prepare=NORM)
    assert result.episodes == 10_000
    assert time.perf_counter() - start < 30.0  # adapting on every episode would take minutes
