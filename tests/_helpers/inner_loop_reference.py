"""Independent references for the optimisation-based methods: a hand-written Conv4 forward (batch norm as
plain tensor ops), unrolled inner loops with `torch.autograd.grad`, and central finite differences.

Nothing here calls `medmeta.methods.inner_loop`; tests compare the methods against these in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Episode
from tests._helpers.episodes import make_episode

Params = dict[str, Tensor]
N_WAY = 3


def tiny_backbone() -> Conv4:
    """Conv4 with 3 channels on 16x16 grey images (about 300 weights): fast in float64."""
    torch.manual_seed(0)
    return Conv4(in_channels=1, hidden=3, image_size=16).double()


def smooth_backbone() -> nn.Module:
    """Conv-BN-tanh twice and average pooling (6 features): a meta-loss without ReLU or max-pool kinks,
    so central finite differences converge (Conv4's kinks make them jump for some steps ``h``)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Conv2d(3, 6, 3, stride=2),
        nn.BatchNorm2d(6),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    net.out_features = 6  # type: ignore[assignment]
    return net.double()


def episodes(n: int = 3, n_shot: int = 2, n_query: int = 3) -> list[Episode]:
    return [
        make_episode(
            n_way=N_WAY, n_shot=n_shot, n_query=n_query, shape=(1, 16, 16), seed=s, dtype=torch.float64
        )
        for s in range(n)
    ]


def plain_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Batch norm with the batch's statistics, written as tensor ops. ``(N, C, H, W)`` -> same."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
    var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
    return (x - mean) / torch.sqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]


def conv4_logits(p: Params, x: Tensor, n_way: int = N_WAY, bn: Params | None = None) -> Tensor:
    """Conv4 + linear head from a ``backbone.*``/``head.*`` dict; `bn` overrides batch-norm weights."""
    bn = bn or {}
    for i in range(4):
        conv, norm = f"backbone.features.{4 * i}", f"backbone.features.{4 * i + 1}"
        x = F.conv2d(x, p[f"{conv}.weight"], p[f"{conv}.bias"], padding=1)
        w = bn.get(f"{norm}.weight", p[f"{norm}.weight"])
        b = bn.get(f"{norm}.bias", p[f"{norm}.bias"])
        x = F.max_pool2d(F.relu(plain_batch_norm(x, w, b)), 2)
    return F.linear(x.flatten(1), p["head.weight"][:n_way], p["head.bias"][:n_way])


def unrolled_adapt(
    p: Params,
    ep: Episode,
    steps: int,
    lr: Callable[[str, int], Tensor | float],
    *,
    names: Sequence[str],
    first_order: bool,
    forward: Callable[[Params, Tensor, int], Tensor] | None = None,
) -> list[Params]:
    """SGD on the support, differentiated by plain autograd (``create_graph`` unless `first_order`)."""
    forward = forward or (lambda q, x, k: conv4_logits(q, x))
    out = [dict(p)]
    for k in range(steps):
        loss = F.cross_entropy(forward(p, ep.support_images, k), ep.support_labels)
        grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=not first_order)
        p = dict(p)
        for n, g in zip(names, grads, strict=True):
            p[n] = p[n] - lr(n, k) * (g.detach() if first_order else g)
        out.append(p)
    return out


def central_difference(
    loss: Callable[[], Tensor], params: Sequence[Tensor], direction: Sequence[Tensor]
) -> float:
    """``(L(theta + h u) - L(theta - h u)) / 2h`` with ``h = 1e-6``; `params` are restored afterwards."""
    h = 1e-6

    def shift(scale: float) -> None:
        for p, u in zip(params, direction, strict=True):
            p.add_(scale * u)

    with torch.no_grad():
        shift(h)
        plus = float(loss())
        shift(-2 * h)
        minus = float(loss())
        shift(h)
    return (plus - minus) / (2 * h)
