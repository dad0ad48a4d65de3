"""Inputs and float64 references for the fused batch-norm/ReLU/max-pool kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def native(y: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    return F.max_pool2d(F.relu(F.batch_norm(y, None, None, gamma, beta, training=True)), 2)


def inputs(shape: tuple[int, int, int, int], seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.3).requires_grad_(True)
    gamma = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    beta = torch.randn(shape[1], generator=g, dtype=torch.float64).requires_grad_(True)
    return y, gamma, beta


def second_order(fn: object, y: Tensor, gamma: Tensor, beta: Tensor) -> tuple[Tensor, ...]:
    """First derivatives, then d/d(y, gamma, beta, dp) of a random projection of them."""
    out = fn(y, gamma, beta)  # type: ignore[operator]
    g = torch.Generator().manual_seed(1)
    dp = torch.randn(out.shape, generator=g, dtype=out.dtype).requires_grad_(True)
    first = torch.autograd.grad(out, (y, gamma, beta), dp, create_graph=True)
    w = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in first]
    proj = sum((a * b).sum() for a, b in zip(first, w, strict=True))
    second = torch.autograd.grad(proj, (y, gamma, beta, dp), allow_unused=True, materialize_grads=True)
    return (out, *first, *second)
