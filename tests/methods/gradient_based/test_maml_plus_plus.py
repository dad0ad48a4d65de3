"""MAML++ against an independent float64 reference: LSLR, per-step batch norm, MSL and DA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.methods.gradient_based.maml_plus_plus import (
    MAMLPlusPlus,
    MAMLPlusPlusOptions,
    multi_step_loss_weights,
)
from tests._helpers.inner_loop_reference import (
    N_WAY,
    central_difference,
    conv4_logits,
    episodes,
    smooth_backbone,
    tiny_backbone,
    unrolled_adapt,
)

TOL = 1e-8


def build(backbone: nn.Module | None = None, **options: object) -> MAMLPlusPlus:
    opts = {"n_way": N_WAY, "inner_steps": 3, "inner_lr": 0.2, **options}
    method = MAMLPlusPlus(backbone or tiny_backbone(), MAMLPlusPlusOptions(**opts))  # type: ignore[arg-type]
    method.double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # make every per-step quantity distinct
        method.inner_lrs.uniform_(0.1, 0.3, generator=g)
        for sb in method.step_bn.values():
            sb.weight.add_(0.2 * torch.randn(sb.weight.shape, generator=g, dtype=torch.float64))
            sb.bias.add_(0.2 * torch.randn(sb.bias.shape, generator=g, dtype=torch.float64))
    return method


def reference_gradient(method: MAMLPlusPlus, eps: list, *, first_order: bool, weights: list[float]) -> dict:
    p = method.model_parameters()
    steps = method.options.inner_steps
    adapted = list(method.adapted)

    def forward(q: dict[str, Tensor], x: Tensor, k: int) -> Tensor:
        row = min(k, steps)
        bn = {}
        for layer in method.batchnorm_layers:
            sb = method.step_bn[layer.replace(".", "__")]
            bn[f"backbone.{layer}.weight"], bn[f"backbone.{layer}.bias"] = sb.weight[row], sb.bias[row]
        return conv4_logits(q, x, bn=bn)

    def lr(n: str, k: int) -> Tensor:
        return method.inner_lrs[adapted.index(n), k]

    losses = []
    for ep in eps:
        traj = unrolled_adapt(p, ep, steps, lr, names=adapted, first_order=first_order, forward=forward)
        terms = [
            w * F.cross_entropy(forward(traj[k], ep.query_images, k), ep.query_labels)
            for k, w in enumerate(weights, 1)
        ]
        losses.append(torch.stack(terms).sum())
    named = [(n, t) for n, t in method.named_parameters() if t.requires_grad]
    grads = torch.autograd.grad(torch.stack(losses).mean(), [t for _, t in named], allow_unused=True)
    return {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(named, grads, strict=True)}


def meta_gradient(method: MAMLPlusPlus, eps: list) -> dict[str, Tensor]:
    method.zero_grad()
    method.batch_loss(eps).backward()
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("epoch", "first_order"),
    [(0, True), (4, False), (9, False)],  # DA and MSL; MSL only; neither (10 epochs, fractions 0.3 and 0.5)
)
def test_meta_gradient_equals_unrolled_autograd_through_every_schedule_phase(
    epoch: int, first_order: bool
) -> None:
    method = build(first_order_fraction=0.3, multi_step_loss_fraction=0.5, task_threads=2)
    method.set_epoch(epoch, 10)
    assert method.second_order() is not first_order
    weights = method.query_loss_weights()
    assert (weights[0] > 0) is (epoch < 5)
    eps = episodes()
    ref = reference_gradient(method, eps, first_order=first_order, weights=weights)
    got = meta_gradient(method, eps)
    assert set(got) == set(ref)
    assert max(float((got[n] - ref[n]).abs().max()) for n in ref) < TOL
    assert float(got["inner_lrs"].abs().min()) > 0  # every (layer, step) rate is learned


def test_meta_gradient_equals_a_central_finite_difference() -> None:
    method = build(smooth_backbone(), multi_step_loss_fraction=0.5, first_order_fraction=0.0)
    method.set_epoch(2, 10)
    eps = episodes(2)
    grads = meta_gradient(method, eps)
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for _, p in named]
    analytic = sum(float((grads[n] * u).sum()) for (n, _), u in zip(named, direction, strict=True))
    numeric = central_difference(lambda: method.batch_loss(eps), [p for _, p in named], direction)
    assert abs(analytic - numeric) < TOL


def test_multi_step_loss_weights_anneal_from_uniform_to_the_last_step() -> None:
    assert multi_step_loss_weights(0, 10, 4) == pytest.approx([0.25] * 4)
    middle = multi_step_loss_weights(5, 10, 4)
    assert sum(middle) == pytest.approx(1.0) and middle[-1] > 0.25 > middle[0] > 0
    assert multi_step_loss_weights(10, 10, 4) == [0.0, 0.0, 0.0, 1.0]
    assert multi_step_loss_weights(0, 0, 4) == [0.0, 0.0, 0.0, 1.0]


def test_per_step_batch_norm_replaces_and_freezes_the_backbone_batch_norm_weights() -> None:
    method = build()
    assert not any("features.1." in n for n in method.adapted)
    assert not method.backbone.features[1].weight.requires_grad
    assert method.step_bn["features__1"].weight.shape == (4, 3)  # (inner_steps + 1, channels)


def test_running_statistics_are_updated_by_meta_training_only_and_used_with_bn_stats_running() -> None:
    method = build(bn_stats="running").train()
    ep = episodes(1)[0]
    method.adapt(ep.support).predict(ep.query_images)
    assert float(method.step_bn["features__1"].running_mean.abs().max()) == 0.0  # adapt records nothing
    method.batch_loss([ep]).backward()
    conv1 = F.conv2d(
        ep.support_images, method.backbone.features[0].weight, method.backbone.features[0].bias, padding=1
    )
    expected = 0.1 * conv1.mean(dim=(0, 2, 3))  # momentum 0.1 from zeros, row 0 = before any update
    torch.testing.assert_close(
        method.step_bn["features__1"].running_mean[0], expected.detach(), rtol=0, atol=1e-12
    )
    method.eval()
    with torch.no_grad():
        predictor = method.adapt(ep.support)
        together = predictor.predict(ep.query_images)
        one_by_one = torch.cat([predictor.predict(ep.query_images[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together[:4], one_by_one, rtol=0, atol=1e-10)  # no batch statistics at test


def test_per_step_batch_norm_keeps_second_order_tasks_sequential_in_auto_mode() -> None:
    """Per-step batch norm folds running statistics while training: not the fused path, so one task at
    a time (its graphs are large); without it MAML++ follows MAML's rule."""
    from medmeta._accel import kernels as fused_kernels

    assert build().task_threads() == 1
    fused = fused_kernels.fused_block_kernels() is not None
    assert build(per_step_bn=False).task_threads() == (0 if fused else 1)
    assert build(first_order=True).task_threads() == 0
