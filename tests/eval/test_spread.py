"""The support-spread temperature: the spread is each held-out image's distance to its class's other images,
it tracks the Bayes temperature of Gaussian classes, and the task's fit is shrunk towards it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmeta.eval.calibration import fit_temperature
from medmeta.eval.loo import support_loo_logits
from medmeta.eval.spread import episodes_spread_scale, fit_spread_scale, spread_temperature, support_spread
from medmeta.methods import build_method
from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Support
from medmeta.tasks.sampler import EpisodeSampler
from tests._helpers.episodes import three_class_toy


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _gaussian_episode(
    g: torch.Generator, separation: float, d: int = 16, n_way: int = 3, shots: int = 5, queries: int = 20
) -> tuple[Support, torch.Tensor, torch.Tensor]:
    """Classes N(mu_c, I) in d dimensions, mu_c ~ N(0, separation^2 I): support, query features as
    ``(n, d, 1, 1)`` images (for `_Identity`), query labels."""
    mu = separation * torch.randn(n_way, d, generator=g)
    labels = torch.arange(n_way).repeat_interleave(shots)
    support = mu[labels] + torch.randn(len(labels), d, generator=g)
    target = torch.arange(n_way).repeat_interleave(queries)
    query = mu[target] + torch.randn(len(target), d, generator=g)
    return Support(support[..., None, None], labels, n_way), query[..., None, None], target


def test_the_spread_is_each_held_out_images_distance_to_the_mean_of_its_class_without_it() -> None:
    protonet = build_method("protonet", _Identity())
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [10.0, 1.0], [10.0, 3.0]])[..., None, None]
    labels = torch.tensor([0, 0, 0, 1, 1])
    loo = support_loo_logits(protonet.eval(), Support(features, labels, 2))  # (5, 2)
    # held out: (0,0) vs mean (3,0) -> 9; (2,0) vs (2,0) -> 0; (4,0) vs (1,0) -> 9; (10,1) vs (10,3) -> 4; and 4
    assert support_spread(loo, labels) == pytest.approx((9 + 0 + 9 + 4 + 4) / 5)
    with pytest.raises(ValueError, match="not negative distances"):
        support_spread(-loo, labels)  # similarities (cosine logits) have no spread
    simpleshot = build_method("simpleshot", Conv4(in_channels=1, hidden=4, image_size=8))
    assert protonet.distance_logits and simpleshot.distance_logits
    assert not build_method("protonet", _Identity(), {"distance": "cosine"}).distance_logits
    assert not build_method(
        "maml", Conv4(in_channels=1, hidden=4, image_size=8), {"n_way": 2}
    ).distance_logits


def test_on_gaussian_classes_the_spread_is_d_sigma2_and_the_fitted_temperature_the_bayes_one() -> None:
    """Unit-variance classes in d = 16 dimensions, 5 shots: E[spread] = d (1 + 1/(K-1)) = 20, and with
    well-separated classes the posterior is softmax(-||q - prototype||^2 / (2 (1 + 1/K))): T = 2.4."""
    g = torch.Generator().manual_seed(0)
    protonet = build_method("protonet", _Identity()).eval()
    logits, targets, spreads = [], [], []
    for _ in range(200):
        support, query, target = _gaussian_episode(g, separation=1.0)
        loo = support_loo_logits(protonet, support)
        spreads.append(support_spread(loo, support.labels))
        with torch.no_grad():
            logits.append(protonet.adapt(support).predict(query))
        targets.append(target)
    assert np.mean(spreads) == pytest.approx(20.0, rel=0.03)
    c = fit_spread_scale(logits, targets, spreads)
    assert c * np.mean(spreads) == pytest.approx(2.4, rel=0.2)
    # the plain fit on the pooled queries agrees: the spread scale only re-expresses it per episode
    pooled = fit_temperature(torch.cat(logits), torch.cat(targets))
    assert c * np.mean(spreads) == pytest.approx(pooled, rel=0.05)


def test_the_tasks_temperature_is_shrunk_from_its_own_fit_towards_scale_times_spread() -> None:
    g = torch.Generator().manual_seed(2)
    protonet = build_method("protonet", _Identity()).eval()
    support, _, _ = _gaussian_episode(g, separation=0.5, n_way=2)
    z = support_loo_logits(protonet, support)
    y = support.labels
    spread = support_spread(z, y)
    plain = fit_temperature(z, y)
    scale = 5 * plain / spread  # a centre well away from the task's own fit
    shrunk = spread_temperature(z, y, scale)
    assert math.log(plain) < math.log(shrunk) < math.log(scale * spread)
    assert spread_temperature(z, y, scale, prior_sd=1e-4) == pytest.approx(scale * spread, rel=1e-3)
    assert spread_temperature(z, y, scale, prior_sd=1e4) == pytest.approx(plain, rel=1e-3)
    # equivariant: features twice as far apart give squared distances 4x, and temperatures 4x
    z4 = support_loo_logits(protonet, Support(2 * support.images, y, 2))
    assert spread_temperature(z4, y, scale) == pytest.approx(4 * shrunk, rel=1e-3)


def test_a_models_spread_scale_is_fitted_on_labelled_episodes_and_absent_where_it_cannot_be() -> None:
    val = three_class_toy()
    torch.manual_seed(0)
    protonet = build_method("protonet", Conv4(in_channels=3, hidden=8, image_size=16)).train()

    def scale(method: torch.nn.Module, shots: int) -> float | None:
        sampler = EpisodeSampler(val, None, shots, 4, seed=3, n_episodes=5)
        return episodes_spread_scale(method, [sampler], prepare=lambda x: x.float() / 255)  # type: ignore[arg-type]

    c = scale(protonet, 3)
    assert c is not None and c > 0 and protonet.training  # its mode is given back
    assert scale(protonet, 1) is None  # a 1-shot support cannot be held out
    cosine = build_method("protonet", Conv4(in_channels=3, hidden=8, image_size=16), {"distance": "cosine"})
    assert scale(cosine, 3) is None
