"""Reptile against hand-written inner loops (SGD, and torch.optim.Adam) in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.methods.gradient_based.reptile import Reptile, ReptileOptions
from medmeta.tasks.episode import Episode
from tests._helpers.inner_loop_reference import N_WAY, conv4_logits, episodes, tiny_backbone

TOL = 1e-8


def adapted_by_hand(
    theta: dict[str, Tensor], ep: Episode, steps: int, lr: float, optimizer: str, on_query: bool
) -> dict[str, Tensor]:
    """`steps` full-batch steps of torch.optim.SGD/Adam(betas=(0, 0.999)) on copies of `theta`."""
    x, y = ep.support_images, ep.support_labels
    if on_query:
        x, y = torch.cat([x, ep.query_images]), torch.cat([y, ep.query_labels])
    p = {n: t.detach().clone().requires_grad_(True) for n, t in theta.items()}
    opt = (
        torch.optim.Adam(p.values(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
        if optimizer == "adam"
        else torch.optim.SGD(p.values(), lr=lr)
    )
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(conv4_logits(p, x), y).backward()
        opt.step()
    return {n: t.detach() for n, t in p.items()}


@pytest.mark.parametrize(("optimizer", "on_query", "threads"), [("sgd", True, 1), ("adam", False, 2)])
def test_reptile_gradient_is_theta_minus_the_mean_adapted_weights(
    optimizer: str, on_query: bool, threads: int
) -> None:
    options = ReptileOptions(
        n_way=N_WAY,
        inner_steps=3,
        inner_lr=0.05,
        inner_optimizer=optimizer,
        train_on_query=on_query,
        task_threads=threads,
    )
    method = Reptile(tiny_backbone(), options).double()  # type: ignore[arg-type]
    eps = episodes()
    theta = method.model_parameters()
    adapted = [adapted_by_hand(theta, ep, 3, 0.05, optimizer, on_query) for ep in eps]
    method.batch_loss(eps).backward()
    for n, p in theta.items():
        expected = p.detach() - torch.stack([a[n] for a in adapted]).mean(0)
        assert p.grad is not None and float((p.grad - expected).abs().max()) < TOL, n


def test_an_sgd_outer_step_with_rate_eps_interpolates_towards_the_adapted_weights() -> None:
    method = Reptile(
        tiny_backbone(), ReptileOptions(n_way=N_WAY, inner_optimizer="sgd", inner_lr=0.05)
    ).double()
    ep = episodes(1)[0]
    theta = {n: p.detach().clone() for n, p in method.model_parameters().items()}
    adapted = adapted_by_hand(theta, ep, 5, 0.05, "sgd", True)
    outer = torch.optim.SGD(method.parameters(), lr=0.25)
    method.episode_loss(ep).backward()
    outer.step()
    for n, p in method.model_parameters().items():
        torch.testing.assert_close(p.detach(), theta[n] + 0.25 * (adapted[n] - theta[n]), rtol=0, atol=TOL)


def test_the_reptile_loss_value_is_the_last_inner_step_loss() -> None:
    method = Reptile(
        tiny_backbone(), ReptileOptions(n_way=N_WAY, inner_optimizer="sgd", inner_steps=2)
    ).double()
    ep = episodes(1)[0]
    theta = method.model_parameters()
    one_step = adapted_by_hand(theta, ep, 1, method.options.inner_lr, "sgd", True)
    x = torch.cat([ep.support_images, ep.query_images])
    y = torch.cat([ep.support_labels, ep.query_labels])
    expected = F.cross_entropy(conv4_logits(one_step, x), y)
    torch.testing.assert_close(method.episode_loss(ep).detach(), expected, rtol=0, atol=1e-12)


def test_adapting_for_evaluation_uses_the_support_only_and_eval_steps() -> None:
    method = Reptile(
        tiny_backbone(), ReptileOptions(n_way=N_WAY, eval_steps=4, inner_optimizer="sgd")
    ).double()
    ep = episodes(1)[0]
    with torch.no_grad():
        predictor = method.eval().adapt(ep.support)
    expected = adapted_by_hand(method.model_parameters(), ep, 4, method.options.inner_lr, "sgd", False)
    assert predictor.step == 4
    for n, t in expected.items():
        torch.testing.assert_close(predictor.params[n], t, rtol=0, atol=1e-12)
