"""Saliency maps on torch: Grad-CAM (Selvaraju et al. 2017) and input-gradient saliency.

Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra. "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, arXiv:1610.02391. The activations of the last convolution are
weighted by the spatially averaged gradient of the explained logit, summed over channels, passed through a
ReLU and upsampled to the image. Works for every method, since it only needs ``images -> logits``: the
hooks fire even when a method calls the backbone through `torch.func.functional_call` (MAML family).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LogitFn = Callable[[Tensor], Tensor]


def last_conv(module: nn.Module) -> nn.Module | None:
    """The last `nn.Conv2d` of `module` in registration order (the deepest in Conv4 and ResNet-12)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _normalise(maps: Tensor) -> Tensor:
    """Scale each map of ``(N, H, W)`` to ``[0, 1]`` (an all-zero map stays zero)."""
    flat = maps.flatten(1)  # (N, H*W)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    return torch.where(hi > lo, (maps - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(maps))


def grad_cam(logit_fn: LogitFn, layer: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """Grad-CAM maps of the `target` class of each input.

    Args:
        logit_fn: ``(N, C, H, W)`` float -> ``(N, n_way)`` logits, running `layer`.
        layer: a convolution whose output ``(N, K, h, w)`` is explained.
        inputs: ``(N, C, H, W)`` float model inputs.
        target: ``(N,)`` int64 class index to explain per input.

    Returns:
        ``(N, H, W)`` maps in ``[0, 1]``.
    """
    store: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor) -> None:
        store["act"] = out  # (N, K, h, w)

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = logit_fn(inputs)  # (N, n_way)
            if "act" not in store:
                raise RuntimeError("the explained layer did not run: pass a layer of the model")
            act = store["act"]
            score = logits.gather(1, target[:, None]).sum()
            (grads,) = torch.autograd.grad(score, act)  # (N, K, h, w)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = F.relu((weights * act.detach()).sum(1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)  # (N, 1, H, W)
    return _normalise(cam[:, 0])


def input_gradient(logit_fn: LogitFn, inputs: Tensor, target: Tensor) -> Tensor:
    """Gradient saliency: ``max_c |d logit_target / d input_c|`` per pixel.

    Args:
        logit_fn: ``(N, C, H, W)`` -> ``(N, n_way)`` logits.
        inputs: ``(N, C, H, W)`` float.
        target: ``(N,)`` int64 class index to explain per input.

    Returns:
        ``(N, H, W)`` maps in ``[0, 1]``.
    """
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = logit_fn(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)  # (N, C, H, W)
    return _normalise(grad.abs().amax(1))


def saliency(logit_fn: LogitFn, model: nn.Module, inputs: Tensor, target: Tensor) -> tuple[Tensor, str]:
    """Grad-CAM on the last convolution of `model` when it has one, else input-gradient saliency.

    Returns:
        ``(maps (N, H, W) in [0, 1], name of the technique)``.
    """
    layer = last_conv(model)
    if layer is not None:
        return grad_cam(logit_fn, layer, inputs, target), "Grad-CAM"
    return input_gradient(logit_fn, inputs, target), "input gradient"
