"""Feature-level and late fusion against hand-written definitions: per-view features side by side, and the
mean of per-view probabilities, the same from images and from cached features."""

from __future__ import annotations

import torch

from medmeta.methods import build_method
from medmeta.methods.fusion import LateFusion
from medmeta.models.backbones import Conv4
from medmeta.models.fusion import ViewFeatures
from medmeta.tasks.episode import Support


def _backbone() -> Conv4:
    torch.manual_seed(0)
    return Conv4(in_channels=1, hidden=8, image_size=16).eval()


def test_view_features_are_each_views_features_side_by_side() -> None:
    net = _backbone()
    x = torch.randn(4, 3, 16, 16)
    fused = ViewFeatures(net, views=3, channels=1)(x)
    expected = torch.cat([net(x[:, v : v + 1]) for v in range(3)], dim=1)
    torch.testing.assert_close(fused, expected)
    assert fused.shape == (4, 3 * net.out_features)


def test_late_fusion_averages_the_per_view_probabilities() -> None:
    net = _backbone()
    support = Support(torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    query = torch.randn(5, 3, 16, 16)
    inner = build_method("protonet", net).eval()
    late = LateFusion(inner, views=3, channels=1).eval()
    with torch.no_grad():
        got = late.adapt(support).predict(query).softmax(-1)
        per_view = []
        for v in range(3):
            view = Support(support.images[:, v : v + 1], support.labels, 3)
            per_view.append(inner.adapt(view).predict(query[:, v : v + 1]).softmax(-1))
        torch.testing.assert_close(got, torch.stack(per_view).mean(0))
        # the cached-feature path (fast evaluation) gives the same logits as the image path
        fs, fq = late.backbone(support.images), late.backbone(query)
        cached = late.logits_from_features(fs[None], support.labels[None], 3, fq[None])[0]
        torch.testing.assert_close(cached, late.adapt(support).predict(query))
    assert late.frozen_backbone
