"""Batch norm with batch statistics and hand-written derivatives, against PyTorch's own op in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.methods.batch_stat_norm import BatchStatNormMode, batch_stat_norm


def inputs(n: int = 4, c: int = 3, h: int = 5, w: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2 + 0.5
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    gamma = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    beta = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
    return x, gamma, beta


def native(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    return F.batch_norm(x, None, None, gamma, beta, training=True)


def test_forward_equals_builtin() -> None:
    x, gamma, beta = inputs()
    out = batch_stat_norm(x, gamma, beta)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, native(x, gamma, beta), atol=1e-12, rtol=0)


def test_first_and_second_derivatives_pass_gradcheck() -> None:
    x, gamma, beta = inputs()
    assert torch.autograd.gradcheck(batch_stat_norm, (x, gamma, beta))
    assert torch.autograd.gradgradcheck(batch_stat_norm, (x, gamma, beta))


@pytest.mark.parametrize("upstream", ["all", "dx-only", "params-only"])
def test_double_backward_equals_builtin(upstream: str) -> None:
    """d/d(x, gamma, dy) of <w, (dx, dgamma, dbeta)> for random w, as the built-in op's composite gives."""

    def double(fn: object) -> tuple[Tensor, ...]:
        x, gamma, beta = inputs()
        y = fn(x, gamma, beta)  # type: ignore[operator]
        g = torch.Generator().manual_seed(1)
        dy = torch.randn(y.shape, generator=g, dtype=y.dtype).requires_grad_(True)
        dx, dgamma, dbeta = torch.autograd.grad(y, (x, gamma, beta), dy, create_graph=True)
        wx, wg, wb = (torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (dx, dgamma, dbeta))
        terms = {"all": [(dx * wx).sum(), (dgamma * wg).sum(), (dbeta * wb).sum()]}
        terms["dx-only"] = terms["all"][:1]
        terms["params-only"] = terms["all"][1:]
        return torch.autograd.grad(
            sum(terms[upstream]), (x, gamma, dy), allow_unused=True, materialize_grads=True
        )

    for ours, ref in zip(double(batch_stat_norm), double(native), strict=True):
        assert torch.allclose(ours, ref, atol=1e-10, rtol=0), (ours - ref).abs().max()


def test_other_layouts_use_the_builtin_op() -> None:
    x, gamma, beta = inputs()
    contiguous = x.detach().contiguous()
    out = batch_stat_norm(contiguous, gamma, beta)
    assert "NativeBatchNorm" in type(out.grad_fn).__name__
    assert torch.allclose(out, native(contiguous, gamma, beta))


def test_mode_reroutes_only_batch_statistics_calls() -> None:
    bn = nn.BatchNorm2d(3).double()
    x = inputs()[0].detach()
    with BatchStatNormMode():
        out = torch.func.functional_call(bn, {"running_mean": None, "running_var": None}, (x,))
        assert "BatchStatNorm" in type(out.grad_fn).__name__
        bn.eval()  # running statistics: the built-in op, unchanged
        assert torch.allclose(bn(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias))


def test_output_can_be_modified_in_place() -> None:
    """Conv4 applies ReLU(inplace=True) right after batch norm."""
    x, gamma, beta = inputs()
    out = F.relu(batch_stat_norm(x, gamma, beta), inplace=True)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
