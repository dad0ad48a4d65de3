"""Leave-one-out calibration from the support alone: the cached-feature path equals adapting on images, single-shot
classes are never held out, and the benchmark's ``ece_loo`` moves confidence only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmeta.bench.evaluation import evaluate_cell
from medmeta.data.datasets import ImageDataset
from medmeta.eval.loo import held_out_rows, loo_temperature, support_loo_logits
from medmeta.methods import build_method
from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Support
from tests._helpers.episodes import make_episode


def _by_adapting(method: torch.nn.Module, support: Support, alone: bool = True) -> torch.Tensor:
    """Reference: adapt on the support without image j, predict image j (alone, or within the whole support
    batch), for every j (no shortcut)."""
    rows = []
    for j in range(len(support.labels)):
        keep = torch.arange(len(support.labels)) != j
        predictor = method.adapt(Support(support.images[keep], support.labels[keep], support.n_way))  # type: ignore[operator]
        rows.append(
            predictor.predict(support.images[j : j + 1])[0] if alone else predictor.predict(support.images)[j]
        )
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["protonet", "simpleshot"])
def test_cached_features_give_the_logits_of_adapting_without_each_image(name: str) -> None:
    torch.manual_seed(0)
    method = build_method(name, Conv4(in_channels=3, hidden=8, image_size=16)).eval()
    assert method.frozen_backbone
    ep = make_episode(n_way=3, n_shot=3)
    support = Support(ep.support_images, ep.support_labels, 3)
    with torch.no_grad():
        torch.testing.assert_close(support_loo_logits(method, support), _by_adapting(method, support))


def test_a_method_that_adapts_its_backbone_predicts_each_held_out_image_within_the_support_batch() -> None:
    """MAML's batch norm uses the batch's statistics: one image alone would be normalised by itself."""
    torch.manual_seed(0)
    method = build_method("maml", Conv4(in_channels=3, hidden=4, image_size=16), {"n_way": 3}).eval()
    assert not method.frozen_backbone
    ep = make_episode(n_way=3, n_shot=2)
    support = Support(ep.support_images, ep.support_labels, 3)
    got = support_loo_logits(method, support)
    torch.testing.assert_close(got, _by_adapting(method, support, alone=False))
    assert not torch.allclose(got, _by_adapting(method, support, alone=True))


def test_an_image_alone_in_its_class_is_never_held_out_and_one_shot_has_no_temperature() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert held_out_rows(labels, 3).tolist() == [0, 1, 3, 4, 5]
    torch.manual_seed(0)
    method = build_method("protonet", Conv4(in_channels=3, hidden=8, image_size=16)).eval()
    images = make_episode(n_way=3, n_shot=2).support_images
    z = support_loo_logits(method, Support(images, labels, 3))
    assert torch.isnan(z[2]).all() and torch.isfinite(z[[0, 1, 3, 4, 5]]).all()
    one_shot = make_episode(n_way=3, n_shot=1)
    assert loo_temperature(method, Support(one_shot.support_images, one_shot.support_labels, 3)) is None


def test_ece_loo_is_scored_on_the_first_episodes_only_and_leaves_every_other_metric_alone() -> None:
    g = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    images = (g.integers(0, 60, (36, 3, 16, 16)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    test = ImageDataset(images=images, labels=labels, class_names=["a", "b", "c"], domain="toy")
    torch.manual_seed(0)
    method = build_method("protonet", Conv4(in_channels=3, hidden=8, image_size=16)).eval()

    def cell(loo: int) -> dict:  # type: ignore[type-arg]
        return evaluate_cell(
            method,
            test,
            n_shot=3,
            n_query=4,
            episodes=6,
            seed=1,
            prepare=lambda x: x.float() / 255,
            loo_episodes=loo,
        )

    plain, loo = cell(0), cell(4)
    assert all(math.isnan(v) for v in plain["per_episode"]["ece_loo"])
    assert [math.isfinite(v) for v in loo["per_episode"]["ece_loo"]] == [True] * 4 + [False] * 2
    assert len(loo["loo_temperatures"]) == 4 and all(t > 0 for t in loo["loo_temperatures"])
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "ece"):
        assert loo["per_episode"][k] == plain["per_episode"][k], k
    assert plain["pooled_ece_loo"] is None and plain["pooled_ece_calibrated"] is None
    assert 0 <= loo["pooled_ece_loo"] <= 1 and 0 <= loo["pooled_ece_loo_before"] <= 1
    assert loo["pooled_ece_loo_before"] != loo["pooled_ece_loo"]
