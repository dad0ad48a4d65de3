"""Leave-one-out calibration from the support alone: the cached-feature path equals adapting on images, single-shot
classes are never held out, and the benchmark's ``ece_loo`` moves confidence only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmeta.bench.evaluation import evaluate_cell
from medmeta.eval.loo import held_out_rows, loo_temperature, support_loo_logits
from medmeta.methods import build_method
from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Support
from tests._helpers.episodes import make_episode, three_class_toy


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
    test = three_class_toy()
    torch.manual_seed(0)
    method = build_method("protonet", Conv4(in_channels=3, hidden=8, image_size=16)).eval()

    def cell(loo: int, spread_scale: float | None = None) -> dict:  # type: ignore[type-arg]
        return evaluate_cell(
            method,
            test,
            n_shot=3,
            n_query=4,
            episodes=6,
            seed=1,
            prepare=lambda x: x.float() / 255,
            loo_episodes=loo,
            spread_scale=spread_scale,
        )

    plain, loo, spread = cell(0), cell(4), cell(4, spread_scale=0.3)
    assert loo["pooled_ece_loo_spread"] is None and all(
        math.isnan(v) for v in loo["per_episode"]["ece_loo_spread"]
    )
    assert [math.isfinite(v) for v in spread["per_episode"]["ece_loo_spread"]] == [True] * 4 + [False] * 2
    assert spread["spread_scale"] == 0.3 and len(spread["loo_temperatures_spread"]) == 4
    assert 0 <= spread["pooled_ece_loo_spread"] <= 1
    for t, s in zip(spread["loo_temperatures"], spread["loo_temperatures_spread"], strict=True):
        assert s != t  # shrunk towards the spread's centre
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "ece", "ece_loo"):
        np.testing.assert_array_equal(spread["per_episode"][k], loo["per_episode"][k], err_msg=k)
    assert all(math.isnan(v) for v in plain["per_episode"]["ece_loo"])
    assert [math.isfinite(v) for v in loo["per_episode"]["ece_loo"]] == [True] * 4 + [False] * 2
    assert len(loo["loo_temperatures"]) == 4 and all(t > 0 for t in loo["loo_temperatures"])
    assert len(loo["loo_temperatures_shrunk"]) == 4
    for t, s in zip(loo["loo_temperatures"], loo["loo_temperatures_shrunk"], strict=True):
        assert 0 <= math.log(s) / math.log(t) <= 1  # shrunk towards 1, never past it
    assert 0 <= loo["pooled_ece_loo_shrunk"] <= 1 and plain["pooled_ece_loo_shrunk"] is None
    assert 0 <= loo["pooled_ece_loo_posterior"] <= 1 and plain["pooled_ece_loo_posterior"] is None
    assert len(loo["loo_temperatures_posterior_mean"]) == 4 and 0 <= loo["pooled_ece_loo_posterior_t"] <= 1
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "ece"):
        assert loo["per_episode"][k] == plain["per_episode"][k], k
    assert plain["pooled_ece_loo"] is None and plain["pooled_ece_calibrated"] is None
    assert 0 <= loo["pooled_ece_loo"] <= 1 and 0 <= loo["pooled_ece_loo_before"] <= 1
    assert loo["pooled_ece_loo_before"] != loo["pooled_ece_loo"]


def test_shrunk_temperature_is_the_map_fit_and_moves_towards_the_data_with_more_predictions() -> None:
    from medmeta.eval.calibration import fit_temperature, nll

    gen = torch.Generator().manual_seed(3)
    z = 3 * torch.randn(10, 2, generator=gen)
    y = torch.multinomial(torch.softmax(z / 0.4, -1), 1, generator=gen)[:, 0]  # sharper than the logits say
    plain = fit_temperature(z, y)
    shrunk = fit_temperature(z, y, prior_sd=0.5)
    # the maximum a posteriori on a fine grid of log T, computed here independently
    grid = torch.linspace(math.log(0.05), math.log(50.0), 20001, dtype=torch.float64)
    objective = [10 * nll(z, y, math.exp(s)) + s**2 / (2 * 0.25) for s in grid.tolist()]
    best = math.exp(float(grid[int(torch.tensor(objective).argmin())]))
    assert shrunk == pytest.approx(best, rel=2e-3)
    assert abs(math.log(shrunk)) < abs(math.log(plain))  # between 1 and the plain fit, on the same side
    assert math.log(shrunk) * math.log(plain) > 0
    ten_times = fit_temperature(
        z.repeat(10, 1), y.repeat(10), prior_sd=0.5
    )  # 100 predictions saying the same
    assert abs(math.log(ten_times) - math.log(plain)) < abs(math.log(shrunk) - math.log(plain))
    assert fit_temperature(z, y, prior_sd=1e-4) == pytest.approx(1.0, rel=1e-3)
    assert fit_temperature(z, y, prior_sd=1e4) == pytest.approx(plain, rel=1e-4)
    assert fit_temperature(z, y, prior_sd=1e-4, prior=2.0) == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="prior_sd > 0"):
        fit_temperature(z, y, prior_sd=0.0)


def test_the_temperature_posterior_concentrates_at_the_fit_and_its_average_keeps_the_argmax() -> None:
    from medmeta.eval.calibration import (
        fit_temperature,
        posterior_probabilities,
        temperature_grid,
        temperature_posterior,
    )

    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(4000, 3, generator=gen)
    y = torch.multinomial(torch.softmax(z / 2.0, -1), 1, generator=gen)[:, 0]  # drawn at T = 2
    grid = temperature_grid()
    w = temperature_posterior(z, y)
    assert w.shape == grid.shape and abs(float(w.sum()) - 1) < 1e-12
    t_fit = fit_temperature(z, y)
    t_post = float((w * grid.log()).sum().exp())
    assert abs(t_fit - 2.0) < 0.2 and abs(math.log(t_post / t_fit)) < 0.03  # many predictions: the fit
    few = temperature_posterior(z[:10], y[:10])
    assert float(few.max()) < float(w.max()) / 5  # ten predictions: spread over many temperatures

    # by hand: two temperatures, weights 0.25 / 0.75
    two = torch.tensor([1.0, 4.0], dtype=torch.float64)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = 0.25 * torch.softmax(logits.double(), -1) + 0.75 * torch.softmax(logits.double() / 4, -1)
    got = posterior_probabilities(logits, torch.tensor([0.25, 0.75], dtype=torch.float64), two)
    torch.testing.assert_close(got, expected)
    probs = posterior_probabilities(z, few)
    assert torch.equal(probs.argmax(1), z.argmax(1))  # accuracy unchanged
    torch.testing.assert_close(probs.sum(1), torch.ones(len(z), dtype=torch.float64))
    # a likelihood by hand: weights proportional to prod_i softmax(z_i / T)[y_i] over the grid
    manual = torch.stack(
        [torch.log_softmax(z[:10].double() / t, -1)[torch.arange(10), y[:10]].sum() for t in grid]
    )
    torch.testing.assert_close(few, torch.softmax(manual, 0))
