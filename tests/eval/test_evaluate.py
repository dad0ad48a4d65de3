"""`evaluate` reports every metric with its 95% CI, per test domain."""

from __future__ import annotations

import json

import torch

from medmeta.data.synthetic import make_synthetic
from medmeta.data.transforms import Normalization
from medmeta.eval.evaluate import evaluate
from medmeta.methods import build_method
from medmeta.models.backbones import Conv4
from medmeta.tasks.sampler import EpisodeSampler

NORM = Normalization(mean=(0.5,), std=(0.25,))


def _result():  # type: ignore[no-untyped-def]
    sampler = EpisodeSampler(
        make_synthetic(n_classes=5, n_per_class=10, image_size=16, channels=1), 3, 2, 3, seed=1
    )
    torch.manual_seed(0)
    method = build_method("protonet", Conv4(in_channels=1, hidden=8, image_size=16))
    return evaluate(method, sampler, prepare=NORM, n_episodes=20)


def test_result_holds_five_metrics_with_confidence_intervals_and_a_pooled_ece() -> None:
    result = _result()
    assert set(result.metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "auc", "ece"}
    for mean, half in result.metrics.values():
        assert 0.0 <= mean <= 1.0 and half >= 0.0
    assert 0.0 <= result.pooled["ece"] <= 1.0
    assert len(result.per_episode_accuracy) == 20
    assert (result.n_way, result.n_shot, result.n_query, result.episodes) == (3, 2, 3, 20)


def test_result_summary_and_dict_name_the_domain_and_serialise_to_json() -> None:
    result = _result()
    assert result.summary().startswith(f"{result.domain} 3-way 2-shot: accuracy")
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data["metrics"]["auc"]) == {"mean", "ci95"}
    assert "ece" in data["pooled"]


def test_the_same_sampler_gives_every_method_the_same_episodes() -> None:
    a, b = _result(), _result()
    assert a.per_episode_accuracy == b.per_episode_accuracy
