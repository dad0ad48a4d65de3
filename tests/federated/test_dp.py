"""DP-SGD of a site's update: the noise for a target epsilon, the epsilon reached, a private round."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medmeta.config.federated import make_federated_config
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import ConfigError
from medmeta.federated.dp import DPSGD, noise_for, spent_epsilon
from medmeta.federated.learners import build_model, local_round, make_source
from medmeta.federated.params import get_arrays


def test_noise_for_a_target_epsilon_reaches_a_finite_epsilon_just_below_it() -> None:
    sigma = noise_for(8.0, 1e-4, sample_rate=0.02, steps=200)
    assert 0.3 < sigma < 5.0
    eps = spent_epsilon(sigma, 0.02, 200, 1e-4)
    assert math.isfinite(eps) and 7.0 < eps <= 8.0 + 1e-6
    assert spent_epsilon(2 * sigma, 0.02, 200, 1e-4) < eps  # more noise, less privacy loss


def test_a_private_round_moves_the_weights_and_releases_no_feature_mean() -> None:
    ds = make_synthetic(n_classes=3, n_per_class=40, image_size=16, channels=1)
    cfg = make_federated_config(
        {
            "data": {"sites": ["a", "b"], "image_size": 16, "channels": 1},
            "train": {"local_steps": 3, "batch_size": 16},
            "dp": {"epsilon": 4.0},
        }
    )
    model = build_model("supervised", cfg, n_way=3, seed=0, norm="group")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    before = get_arrays(model)
    privacy = DPSGD(ds, noise_multiplier=1.1, max_grad_norm=1.0, batch_size=16, seed=0)
    loss = local_round(model, make_source("supervised", model, [ds], cfg, seed=0), cfg, 0, privacy=privacy)
    after = get_arrays(model)
    assert math.isfinite(loss)
    assert any(not np.array_equal(before[n], after[n]) for n in before)
    assert np.array_equal(after["feature_mean"], np.zeros_like(after["feature_mean"]))
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus's hooks are gone
    assert not any(k.startswith("_module.") for k in model.state_dict())


def test_dp_is_refused_for_meta_learners_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="per-image gradients do not go through the inner loop"):
        make_federated_config(
            {"data": {"sites": ["a", "b"]}, "dp": {"epsilon": 1.0, "strategies": ["fedmeta_maml"]}}
        )


def test_a_dp_run_through_the_server_loop_reports_each_sites_finite_epsilon() -> None:
    from medmeta.federated.protocol import serve
    from medmeta.federated.run import plan_jobs
    from medmeta.federated.sites import Site
    from tests._helpers.federated import DirectExchange

    sites = []
    for i, name in enumerate(["a", "b"]):
        ds = make_synthetic(n_classes=2 + i, n_per_class=30, image_size=16, channels=1, seed=i)
        train, test = ds.split_holdout(0.3, seed=0)
        sites.append(Site(name, train, test, "test"))
    cfg = make_federated_config(
        {
            "data": {"sites": ["a", "b"], "image_size": 16, "channels": 1},
            "strategies": [],
            "train": {"rounds": 2, "local_steps": 2, "batch_size": 8},
            "eval": {"shots": [2], "episodes": 2, "n_query": 3},
            "dp": {"epsilon": 3.0, "strategies": ["fedprox"]},
        }
    )
    jobs = plan_jobs(cfg, sites)
    assert [j.strategy for j in jobs] == ["fedprox+groupnorm", "fedprox+dp"]
    result = serve(jobs[1], DirectExchange(sites))
    for name in ("a", "b"):
        eps = result["sites"][name]["epsilon"]
        assert math.isfinite(eps) and 2.5 < eps <= 3.0 + 1e-6
    assert "epsilon" not in serve(jobs[0], DirectExchange(sites))["sites"]["a"]
