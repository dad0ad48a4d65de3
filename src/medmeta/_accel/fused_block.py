"""Batch norm (batch statistics) -> ReLU -> 2x2 max-pool as one op with hand-written first and second
derivatives, and a functional Conv4 forward built on it.

Second-order MAML differentiates every block of Conv4 twice. Through PyTorch's separate ops that costs
several full-resolution passes per block and keeps, per inner step, the batch-norm input and output,
the ReLU output, int64 pooling indices and, for the double backward, the full-resolution gradients
between them. Fused here:

* forward: per-channel statistics with PyTorch's pairwise sums on the ``(N*H*W, C)`` rows view of a
  channels-last tensor (the built-in channels-last batch-norm kernel accumulates sequentially in
  float32: about 20x less accurate, which visibly moved the float32 second-order meta-gradient), one
  pass for normalise + ReLU, then the pool. Saved: the block input ``y``, per-channel statistics and
  the position of each window's maximum as ``uint8`` (1/16 of ``y``'s bytes).
* backward: the pooling gradient is nonzero only at the window maxima, so the ReLU mask and the
  batch-norm reductions are evaluated there, at a quarter of the resolution; one full-resolution pass
  writes ``dy``. Its own derivative (the double backward) is a closed form with the same structure.

The maths (per channel; ``r = 1/sqrt(var + eps)``, ``xhat = (y - mean) * r``, ``M = N*H*W``,
``z = gamma * xhat + beta``, ``p = maxpool(relu(z))``): with ``dz = S(dp)`` (``dp`` placed at each
window's maximum, times ``[z > 0]``), ``dbeta = sum dz``, ``dgamma = sum dz * xhat`` and
``dy = gamma * r * (dz - dbeta / M - xhat * dgamma / M)``. ``S`` depends on ``y`` only through the
argmax and the ReLU mask, which are piecewise constant, so the derivative of ``(dy, dgamma, dbeta)``
with respect to ``(dp, y, gamma)`` is that of batch norm's backward composed with ``S`` (see
`_FusedBackward.backward`). Ties inside a window go to the first maximum in scan order, as
`F.max_pool2d` does.

On CPU in float32/float64 the three functions (forward, backward, double backward) run as compiled C++
kernels (`medmeta._accel.kernels`, ``csrc/fused_block.cpp``): each one or two vectorised passes
over channels-last memory, without the temporaries of the PyTorch ops below. The PyTorch ops remain for other devices, for machines without a compiler and as the
tests' reference (``MEDMETA_KERNELS=torch`` selects them).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from medmeta._accel.fused_conv import conv3x3
from medmeta._accel.kernels import fused_block_kernels

_CL = torch.channels_last


def _rows(t: Tensor) -> Tensor:
    """``(N, C, H, W)`` channels-last -> its ``(N*H*W, C)`` rows view."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _ch(v: Tensor) -> Tensor:
    """Per-channel ``(C,)`` -> ``(1, C, 1, 1)`` for broadcasting."""
    return v.view(1, -1, 1, 1)


def _windows(t: Tensor) -> list[Tensor]:
    """The four ``(N, C, H//2, W//2)`` strided views of the 2x2 windows' elements, in scan order."""
    h2, w2 = t.shape[2] // 2, t.shape[3] // 2
    return [t[:, :, i : 2 * h2 : 2, j : 2 * w2 : 2] for i in (0, 1) for j in (0, 1)]


def _onehots(idx: Tensor) -> list[Tensor]:
    """Float ``0/1`` masks ``(N, C, H//2, W//2)`` of which window element is the maximum, in scan order.

    Float masks and ``out=`` comparisons: on CPU, boolean ``where``/``masked_fill`` over these strided
    views is much slower than float multiply-adds.
    """
    f = idx.float()
    return [torch.eq(f, float(k), out=torch.empty_like(f)) for k in range(4)]


def _gather(t: Tensor, onehot: list[Tensor]) -> Tensor:
    """Values of full-resolution `t` at each window's maximum ``(N, C, H//2, W//2)``."""
    v = _windows(t)
    out = v[0] * onehot[0]
    for k in (1, 2, 3):
        out.addcmul_(v[k], onehot[k])
    return out


def _scatter_add_(full: Tensor, values: Tensor, onehot: list[Tensor]) -> None:
    """``full[window maximum] += values`` in place (`values` at pooled resolution)."""
    for view, mask in zip(_windows(full), onehot, strict=True):
        view.addcmul_(values, mask)


def _at_maxima(
    y: Tensor, onehot: list[Tensor], gamma: Tensor, beta: Tensor, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor]:
    """``(xhat, float ReLU mask)`` at the window maxima, each ``(N, C, H//2, W//2)``."""
    xhat = (_gather(y, onehot) - _ch(mean)) * _ch(rstd)
    z = _ch(gamma) * xhat + _ch(beta)
    return xhat, torch.gt(z, 0.0, out=torch.empty_like(z))


class _Fused(torch.autograd.Function):
    """``y -> maxpool2(relu(gamma * (y - mean) * rstd + beta))`` with the batch's statistics."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
        ctx.eps = eps
        ctx.kernels = _kernels(y)
        if ctx.kernels is not None:
            out, mean, rstd, idx = ctx.kernels.forward(y, gamma.contiguous(), beta.contiguous(), eps)
            ctx.save_for_backward(y, gamma, beta, mean, rstd, idx)
            ctx.mark_non_differentiable(idx)
            return out
        rows = _rows(y)  # (M, C)
        m = rows.shape[0]
        mean = rows.sum(0) / m
        act = rows - mean  # (M, C), becomes relu(z) in place
        rstd = ((act * act).sum(0) / m + eps).rsqrt()
        torch.addcmul(beta, act, gamma * rstd, out=act).relu_()
        a = act.view(y.shape[0], y.shape[2], y.shape[3], -1).permute(0, 3, 1, 2)  # (N, C, H, W) view
        v = _windows(a)
        out = torch.maximum(torch.maximum(v[0], v[1]), torch.maximum(v[2], v[3]))
        out = out.contiguous(memory_format=_CL)
        idx = torch.full_like(out, 3.0)  # (N, C, H//2, W//2) window position of the maximum
        hit = torch.empty_like(out)
        for k in (2, 1, 0):  # the first maximum in scan order wins, as in F.max_pool2d
            torch.eq(v[k], out, out=hit)
            idx.addcmul_(hit, k - idx)
        idx = idx.to(torch.uint8)
        ctx.save_for_backward(y, gamma, beta, mean, rstd, idx)
        ctx.mark_non_differentiable(idx)
        return out

    @staticmethod
    def backward(ctx: Any, dp: Tensor) -> tuple[Tensor | None, ...]:
        y, gamma, beta, mean, rstd, idx = ctx.saved_tensors
        dy, dgamma, dbeta = _FusedBackward.apply(dp, y, gamma, beta, mean, rstd, idx, ctx.kernels)
        return dy, dgamma, dbeta, None


class _FusedBackward(torch.autograd.Function):
    """``(dp, y, gamma) -> (dy, dgamma, dbeta)`` of `_Fused`, itself differentiable (closed form)."""

    @staticmethod
    def forward(
        ctx: Any,
        dp: Tensor,
        y: Tensor,
        gamma: Tensor,
        beta: Tensor,
        mean: Tensor,
        rstd: Tensor,
        idx: Tensor,
        kernels: ModuleType | None,
    ) -> Any:
        dp = dp.contiguous(memory_format=_CL)
        ctx.kernels = kernels
        if kernels is not None:
            dy, dgamma, dbeta, m1, m2 = kernels.backward(dp, y, gamma.contiguous(), beta, mean, rstd, idx)
            ctx.save_for_backward(dp, y, gamma, beta, mean, rstd, idx, m1, m2)
            return dy, dgamma, dbeta
        m = y.numel() // y.shape[1]
        onehot = _onehots(idx)
        xhat_at, mask = _at_maxima(y, onehot, gamma, beta, mean, rstd)
        dz = dp * mask  # (N, C, H//2, W//2): the batch-norm output gradient, zero off the maxima
        dbeta = dz.sum((0, 2, 3))
        dgamma = (dz * xhat_at).sum((0, 2, 3))
        m1, m2 = dbeta / m, dgamma / m  # mean(dz), mean(dz * xhat)
        a = gamma * rstd
        coef = -a * m2 * rstd
        dy = torch.empty_like(y, memory_format=_CL)
        torch.addcmul(-a * m1 - coef * mean, _rows(y), coef, out=_rows(dy))
        _scatter_add_(dy, _ch(a) * dz, onehot)
        ctx.save_for_backward(dp, y, gamma, beta, mean, rstd, idx, m1, m2)
        return dy, dgamma, dbeta

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor | None, ggamma: Tensor | None, gbeta: Tensor | None) -> Any:
        """Gradients of ``<gx, dy> + <ggamma, dgamma> + <gbeta, dbeta>`` with respect to dp, y, gamma.

        Batch norm's backward ``(dz, y, gamma) -> (dy, dgamma, dbeta)`` has, per channel, with
        ``a = gamma * r``, ``u = gx``, ``ubar = mean(u)``, ``s = mean(u * xhat)``, ``p = mean(u * dz)``,
        ``m1 = mean(dz)``, ``m2 = mean(dz * xhat)``:

        * ``d/d dz = a*u + (ggamma - a*s)*xhat + (gbeta - a*ubar)``, pulled back to ``dp`` by ``S^T``
          (its value at each window maximum, times the ReLU mask);
        * ``d/d gamma = M * r * (p - m1*ubar - m2*s)``;
        * ``d/d y = A*dz + B*xhat + C*u + D`` with ``A = ggamma*r - a*r*s``,
          ``B = -ggamma*r*m2 - a*(d/d gamma)/M + 2*a*r*m2*s``, ``C = -a*r*m2``,
          ``D = -ggamma*r*m1 + a*r*(s*m1 + m2*ubar)``.
        """
        dp, y, gamma, beta, mean, rstd, idx, m1, m2 = ctx.saved_tensors
        if ctx.kernels is not None:
            g_dp, g_y, g_gamma = ctx.kernels.double_backward(
                gx, ggamma, gbeta, dp, y, gamma.contiguous(), beta, mean, rstd, idx, m1, m2
            )
            return g_dp, g_y, g_gamma, None, None, None, None, None
        m = y.numel() // y.shape[1]
        r, a = rstd, gamma * rstd
        zero = torch.zeros_like(rstd)
        gg = zero if ggamma is None else ggamma
        gb = zero if gbeta is None else gbeta
        onehot = _onehots(idx)
        xhat_at, mask = _at_maxima(y, onehot, gamma, beta, mean, rstd)
        dz = dp * mask
        centred = _rows(y) - mean  # (M, C)
        g_y = torch.empty_like(y, memory_format=_CL)
        if gx is None:
            g_dz_at = _ch(gg) * xhat_at + _ch(gb)
            torch.addcmul(-gg * r * m1, centred, -gg * r * m2 * r, out=_rows(g_y))
            _scatter_add_(g_y, _ch(gg * r) * dz, onehot)
            g_gamma = zero
        else:
            u = gx.contiguous(memory_format=_CL)
            ur = _rows(u)
            ubar = ur.sum(0) / m
            s = r * (ur * centred).sum(0) / m  # mean(u * xhat)
            u_at = _gather(u, onehot)
            p = (u_at * dz).sum((0, 2, 3)) / m
            g_gamma = m * r * (p - m1 * ubar - m2 * s)
            g_dz_at = _ch(a) * u_at + _ch(gg - a * s) * xhat_at + _ch(gb - a * ubar)
            coef_a = gg * r - a * r * s
            coef_b = -gg * r * m2 - a * g_gamma / m + 2 * a * r * m2 * s
            coef_c = -a * r * m2
            coef_d = -gg * r * m1 + a * r * (s * m1 + m2 * ubar)
            torch.addcmul(coef_d, centred, coef_b * r, out=_rows(g_y)).addcmul_(ur, coef_c)
            _scatter_add_(g_y, _ch(coef_a) * dz, onehot)
        g_dp = g_dz_at * mask
        return g_dp, g_y, g_gamma, None, None, None, None, None


def _kernels(y: Tensor) -> ModuleType | None:
    """The compiled CPU kernels for `y`, or None for the PyTorch ops (GPU, other dtypes, no compiler)."""
    if y.device.type != "cpu" or y.dtype not in (torch.float32, torch.float64):
        return None
    return fused_block_kernels()


def bn_relu_pool(y: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5) -> Tensor:
    """``F.max_pool2d(F.relu(F.batch_norm(y, None, None, gamma, beta, training=True, eps=eps)), 2)``.

    Args:
        y: ``(N, C, H, W)``; made channels-last if it is not.
        gamma, beta: ``(C,)`` affine parameters.

    Returns:
        ``(N, C, H//2, W//2)`` channels-last, with first and second derivatives in closed form.
    """
    return _Fused.apply(y.contiguous(memory_format=_CL), gamma, beta, eps)


def _blocks(backbone: nn.Module) -> list[tuple[str, str, float]] | None:
    """``[(conv prefix, batch-norm prefix, eps)]`` when `backbone` is a 2D Conv4 of standard blocks."""
    from medmeta.models.backbones import Conv4

    if type(backbone) is not Conv4 or backbone.spatial_dims != 2:
        return None
    layers = list(backbone.features)
    if len(layers) % 4:
        return None
    out = []
    for i in range(0, len(layers), 4):
        conv, bn, act, pool = layers[i : i + 4]
        if not (
            isinstance(conv, nn.Conv2d)
            and isinstance(bn, nn.BatchNorm2d)
            and isinstance(pool, nn.MaxPool2d)
            and type(bn) is nn.BatchNorm2d
            and type(act) is nn.ReLU
            and type(pool) is nn.MaxPool2d
        ):
            return None
        plain = (
            conv.kernel_size == (3, 3)
            and conv.stride == (1, 1)
            and conv.padding == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and bn.affine
            and pool.kernel_size in (2, (2, 2))
            and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0))
            and pool.dilation in (1, (1, 1))
            and not pool.ceil_mode
        )
        if not plain:
            return None
        out.append((f"features.{i}", f"features.{i + 1}", float(bn.eps)))
    return out


def fused_conv4_supported(backbone: nn.Module) -> bool:
    """`backbone` is a 2D Conv4 of standard blocks, which `fused_conv4_forward` runs."""
    return _blocks(backbone) is not None


def fused_conv4_forward(backbone: nn.Module, weights: dict[str, Tensor], images: Tensor) -> Tensor | None:
    """Conv4's forward with batch statistics through `bn_relu_pool`, or None if `backbone` is not one.

    Args:
        backbone: the module whose structure is read (never called; a meta-device replica is fine).
        weights: its parameters by name (``features.0.weight``, ...).
        images: ``(N, C, H, W)``, channels-last (see `medmeta.methods.functional.channels_last`).

    Returns:
        Features ``(N, out_features)``, equal to ``functional_call(backbone, weights + batch-statistics
        buffers, images)``.
    """
    blocks = _blocks(backbone)
    if blocks is None or images.ndim != 4:
        return None
    h = images
    for conv, bn, eps in blocks:
        h = conv3x3(h, weights[f"{conv}.weight"], weights.get(f"{conv}.bias"))
        h = bn_relu_pool(h, weights[f"{bn}.weight"], weights[f"{bn}.bias"], eps)
    if getattr(backbone, "pool_output", False):
        return h.flatten(2).mean(-1)
    return h.flatten(1)
