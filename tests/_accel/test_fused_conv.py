"""`conv3x3` (patch-matrix product for few channels, native-kernel double backward otherwise) against
the built-in ``F.conv2d``: values, first and second derivatives in float64, memory format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from medmeta._accel.fused_conv import conv3x3

CL = torch.channels_last


def _inputs(c_in: int, bias: bool, x_grad: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, c_in, 5, 6, dtype=torch.float64, generator=g).contiguous(memory_format=CL)
    w = torch.randn(4, c_in, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(4, dtype=torch.float64, generator=g) if bias else None
    x.requires_grad_(x_grad)
    w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    return x, w, b


@pytest.mark.parametrize("c_in", [1, 3, 6])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_gradcheck_and_gradgradcheck(c_in: int, bias: bool, x_grad: bool) -> None:
    x, w, b = _inputs(c_in, bias, x_grad)
    args = tuple(t for t in (x, w, b) if t is not None and t.requires_grad)

    def f(*ts: torch.Tensor) -> torch.Tensor:
        it = iter(ts)
        xx = next(it) if x_grad else x
        ww = next(it)
        bb = next(it) if bias else None
        return conv3x3(xx, ww, bb)

    assert gradcheck(f, args)
    assert gradgradcheck(f, args)


@pytest.mark.parametrize("c_in", [1, 6])
def test_second_derivatives_equal_builtin(c_in: int) -> None:
    """A MAML-like objective: grads of (output^2 * g) with create_graph, then grads of their norm."""

    def meta_grads(conv: object) -> list[torch.Tensor]:
        x, w, b = _inputs(c_in, True, True, seed=3)
        g = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        y = conv(x, w, b)  # type: ignore[operator]
        gx, gw, gb = torch.autograd.grad((y * y * g).sum(), (x, w, b), create_graph=True)
        outer = (gx.sin() * x).sum() + (gw**2).sum() + (gb * b).sum()
        return [y.detach(), *torch.autograd.grad(outer, (x, w, b))]

    ours = meta_grads(conv3x3)
    ref = meta_grads(lambda x, w, b: F.conv2d(x, w, b, padding=1))
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c_in", [1, 6])
def test_output_is_channels_last_and_float32_close(c_in: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, c_in, 28, 28, generator=g).contiguous(memory_format=CL)
    w = torch.randn(16, c_in, 3, 3, generator=g)
    b = torch.randn(16, generator=g)
    y = conv3x3(x, w, b)
    assert y.shape == (8, 16, 28, 28)
    assert y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, F.conv2d(x.double(), w.double(), b.double(), padding=1).float())
