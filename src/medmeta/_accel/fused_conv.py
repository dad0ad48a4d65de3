"""3x3 convolution (stride 1, padding 1) for the fused second-order Conv4 path.

Two CPU costs of the built-in ``F.conv2d`` under second-order MAML on Conv4 (measured in
``docs/internals.md``):

* **Few input channels** (the first block: 1 or 3 channels). oneDNN's kernels for a 1-channel
  convolution are slow for their handful of multiply-adds, and their output is not channels-last, so
  the next op pays a layout copy. Here the input is
  unfolded into its ``(N*H*W, C*9)`` patch matrix and multiplied by the weights with one ``addmm``:
  the result *is* the channels-last output, and autograd differentiates it twice through ``mm``.
* **Double backward.** PyTorch's derivative of the convolution backward computes the weight terms
  through generic transposed/regrouped convolutions. `_Conv3x3` instead writes both derivatives as
  calls to the native ``convolution_backward`` kernels (data and weight gradient), which oneDNN runs
  at forward speed.

The maths (``y = conv(x, w) + b``; ``gi, gw, gb`` its backward for an output gradient ``g``): the
backward is linear in ``g`` and bilinear in ``(g, x)`` and ``(g, w)``, so for incoming gradients
``(ggi, ggw, ggb)`` of ``(gi, gw, gb)``: ``d/dg = conv(ggi, w) + conv(x, ggw) + ggb``,
``d/dx = conv_backward_data(g, ggw)`` and ``d/dw = conv_backward_weight(g, ggi)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

_FEW_CHANNELS = 4  # inputs with at most this many channels go through the patch-matrix product


def _conv_backward(g: Tensor, x: Tensor, w: Tensor, mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """Native ``(grad input, grad weight, grad bias)`` of a 3x3, stride-1, padding-1 convolution."""
    return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)


class _Conv3x3Backward(torch.autograd.Function):
    """``(g, x, w) -> (gi, gw, gb)``, differentiable once more in closed form (see module docstring)."""

    @staticmethod
    def forward(ctx: Any, g: Tensor, x: Tensor, w: Tensor, need_input: bool, has_bias: bool) -> Any:
        gi, gw, gb = _conv_backward(g, x, w, [need_input, True, has_bias])
        ctx.save_for_backward(g, x, w)
        ctx.need_input, ctx.has_bias = need_input, has_bias
        return gi, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, ggi: Tensor | None, ggw: Tensor | None, ggb: Tensor | None) -> Any:
        g, x, w = ctx.saved_tensors
        ggi = ggi if ctx.need_input else None
        ggb = ggb if ctx.has_bias else None
        d_g = d_x = d_w = None
        if ctx.needs_input_grad[0]:
            terms = []
            if ggi is not None:
                terms.append(F.conv2d(ggi, w, padding=1))
            if ggw is not None:
                terms.append(F.conv2d(x, ggw, padding=1))
            if ggb is not None:
                terms.append(ggb.view(1, -1, 1, 1).expand_as(g))
            for term in terms:
                d_g = term if d_g is None else d_g + term
        if ctx.needs_input_grad[1] and ggw is not None:
            d_x = _conv_backward(g, x, ggw, [True, False, False])[0]
        if ctx.needs_input_grad[2] and ggi is not None:
            d_w = _conv_backward(g, ggi, w, [False, True, False])[1]
        return d_g, d_x, d_w, None, None


class _Conv3x3(torch.autograd.Function):
    """``F.conv2d(x, w, b, padding=1)`` whose backward is `_Conv3x3Backward`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return F.conv2d(x, w, b, padding=1)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        need_input = ctx.needs_input_grad[0]
        gi, gw, gb = _Conv3x3Backward.apply(g, x, w, need_input, ctx.has_bias)
        return (gi if need_input else None), gw, (gb if ctx.has_bias else None)


def _patch_conv(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """The convolution as ``(N*H*W, C*9) @ (C*9, O)``; returns a channels-last ``(N, O, H, W)`` view."""
    n, _, h, wd = x.shape
    cols = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(n * h * wd, -1)  # (N*H*W, C*9)
    w2 = w.reshape(w.shape[0], -1).t()  # (C*9, O)
    out = torch.mm(cols, w2) if b is None else torch.addmm(b, cols, w2)
    return out.view(n, h, wd, -1).permute(0, 3, 1, 2)


def conv3x3(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.conv2d(x, w, b, padding=1)`` for the second-order path; twice differentiable.

    Args:
        x: ``(N, C, H, W)``, channels-last when ``C > 4``.
        w: ``(O, C, 3, 3)``.
        b: ``(O,)`` or None.

    Returns:
        ``(N, O, H, W)`` in channels-last memory format.
    """
    if x.shape[1] <= _FEW_CHANNELS:
        return _patch_conv(x, w, b)
    return _Conv3x3.apply(x, w, b)
