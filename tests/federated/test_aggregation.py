"""The server's average, FedProx's proximal term and one Per-FedAvg step, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmeta.config.federated import make_federated_config
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import MedmetaError
from medmeta.federated.learners import ProximalSource, local_round, make_source
from medmeta.federated.params import get_arrays, proximal_term, set_arrays, weighted_mean
from medmeta.methods import build_method


def test_weighted_mean_is_fedavgs_example_weighted_average() -> None:
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([[3.0]], dtype=np.float32)}
    b = {"w": np.array([5.0, -2.0], dtype=np.float32), "b": np.array([[7.0]], dtype=np.float32)}
    out = weighted_mean([a, b], [100, 300])  # sites with 100 and 300 training images
    np.testing.assert_allclose(out["w"], [(1 * 100 + 5 * 300) / 400, (2 * 100 - 2 * 300) / 400])
    np.testing.assert_allclose(out["b"], [[(3 * 100 + 7 * 300) / 400]])
    assert out["w"].dtype == np.float32
    np.testing.assert_allclose(weighted_mean([a, b], [1, 1])["w"], [3.0, 0.0])


def test_weighted_mean_refuses_bad_weights_and_mismatched_sites() -> None:
    a = {"w": np.zeros(2, dtype=np.float32)}
    with pytest.raises(MedmetaError, match="must be positive"):
        weighted_mean([a, a], [1, 0])
    with pytest.raises(MedmetaError, match="one weight per update"):
        weighted_mean([a], [1, 2])
    with pytest.raises(MedmetaError, match="different names"):
        weighted_mean([a, {"v": np.zeros(2, dtype=np.float32)}], [1, 1])


def test_arrays_round_trip_and_refuse_another_model() -> None:
    src, dst = (
        nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)),
        nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)),
    )
    arrays = get_arrays(src)
    assert "1.num_batches_tracked" not in arrays and "1.running_mean" in arrays
    set_arrays(dst, arrays)
    for (n, p), q in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    with pytest.raises(MedmetaError, match="do not fit the model"):
        set_arrays(nn.Linear(3, 2), arrays)
    with pytest.raises(MedmetaError, match="has shape"):
        set_arrays(dst, {**arrays, "0.bias": np.zeros(5, dtype=np.float32)})


def test_proximal_term_gradient_is_mu_times_distance_to_the_global_weights() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(torch.randn(3, 4))
        model.bias.add_(torch.randn(3))
    mu = 0.3
    term = proximal_term(model, anchor, mu)
    term.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(p.grad, mu * (p.detach() - anchor[n]))
    expected = 0.5 * mu * sum(((p.detach() - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
    torch.testing.assert_close(term.detach(), expected)


class _Flat(nn.Module):
    """A backbone without batch statistics: ``(N, C, H, W)`` -> ``(N, 6)``."""

    out_features = 6

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.fc = nn.Linear(inputs, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x.flatten(1)))


def test_per_fedavg_local_step_is_w_minus_beta_grad_at_one_inner_step() -> None:
    """Per-FedAvg (first order): w <- w - beta * grad f(w - alpha * grad f(w; D); D'), D = support, D' = query."""
    ds = make_synthetic(n_classes=3, n_per_class=12, image_size=8, channels=1)
    alpha, beta = 0.05, 0.1
    cfg = make_federated_config(
        {
            "data": {"sites": ["a", "b"], "image_size": 8, "channels": 1},
            "train": {"local_steps": 1, "optimizer": "sgd", "lr": beta, "n_shot": 2, "n_query": 3},
        }
    )
    torch.manual_seed(0)
    method = build_method(
        "fomaml", _Flat(64), {"n_way": 3, "inner_steps": 1, "inner_lr": alpha, "channels_last": False}
    )
    source = make_source("per_fedavg", method, [ds], cfg, seed=7)
    episode = source.batch(0, torch.device("cpu"))[0]
    assert episode.support_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert episode.class_ids.tolist() == [0, 1, 2]  # the site's class order
    w = {n: p.detach().clone().requires_grad_(True) for n, p in method.named_parameters()}

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(F.linear(x.flatten(1), params["backbone.fc.weight"], params["backbone.fc.bias"]))
        return F.cross_entropy(F.linear(h, params["head.weight"], params["head.bias"]), y)

    grads = torch.autograd.grad(loss(w, episode.support_images, episode.support_labels), list(w.values()))
    adapted = {
        n: (p - alpha * g).detach().requires_grad_(True) for (n, p), g in zip(w.items(), grads, strict=True)
    }
    outer = torch.autograd.grad(
        loss(adapted, episode.query_images, episode.query_labels), list(adapted.values())
    )
    expected = {n: p.detach() - beta * g for (n, p), g in zip(w.items(), outer, strict=True)}
    local_round(method, source, cfg, 0)
    for n, p in method.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], atol=1e-6, rtol=1e-5)


def test_proximal_source_adds_the_term_to_the_learners_loss() -> None:
    ds = make_synthetic(n_classes=2, n_per_class=16, image_size=8, channels=1)
    cfg = make_federated_config({"data": {"sites": ["a", "b"], "image_size": 8, "channels": 1}})
    method = build_method("fomaml", _Flat(64), {"n_way": 2, "channels_last": False})
    inner = make_source("maml", method, [ds], cfg, seed=0)
    anchor = {n: p.detach() + 1.0 for n, p in method.named_parameters()}  # every weight 1 away
    prox = ProximalSource(inner, anchor, mu=0.2)
    batch = inner.batch(0, torch.device("cpu"))
    n_weights = sum(p.numel() for p in method.parameters())
    torch.testing.assert_close(prox.loss(method, batch), inner.loss(method, batch) + 0.5 * 0.2 * n_weights)
