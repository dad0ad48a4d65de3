"""Batch norm with a task's support-set statistics, through `functional_call`, never touching the backbone.

`support_statistics` runs the support set through a backbone under given parameters with batch statistics
and returns each batch-norm layer's mean and (biased) variance of its input; `forward_with_statistics`
runs other images with every batch-norm layer normalising by those statistics, as an eval-mode layer does
with its running statistics. A query's features then depend on the support set and itself only, and the
support images get exactly the features they had in the batch-statistics pass.

Both call structural copies of the backbone (storage on the meta device, outside the module tree, every
tensor passed explicitly): one records the inputs of its batch-norm layers, the other is always in eval
mode, whatever the mode of the backbone. Like any module called through `functional_call`, a backbone
must not be used from two threads at once.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from medmeta.methods.functional import batchnorm_overrides

_BatchNorm = nn.modules.batchnorm._BatchNorm
_REPLICAS: weakref.WeakKeyDictionary[nn.Module, tuple[Any, nn.Module, nn.Module]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()
_SINK = threading.local()


def _signature(module: nn.Module) -> tuple[Any, ...]:
    return tuple((n, tuple(t.shape)) for n, t in (*module.named_parameters(), *module.named_buffers()))


def _record(name: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        sink: dict[str, Tensor] | None = getattr(_SINK, "inputs", None)
        if sink is None:
            return
        if name in sink:
            raise ValueError(
                f"batch-norm layer '{name}' runs twice in one forward pass, so its support statistics are "
                "ambiguous: use a backbone that calls each batch-norm layer once"
            )
        sink[name] = args[0]

    return hook


def _replicas(backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(recorder, normaliser)`` copies of `backbone`, made once per backbone (and again if it changes)."""
    with _LOCK:
        sig = _signature(backbone)
        cached = _REPLICAS.get(backbone)
        if cached is None or cached[0] != sig:
            recorder = copy.deepcopy(backbone).to_empty(device="meta")
            for name, module in recorder.named_modules():
                if isinstance(module, _BatchNorm):
                    module.register_forward_pre_hook(_record(name))
            normaliser = copy.deepcopy(backbone).to_empty(device="meta")
            cached = (sig, recorder, normaliser)
            _REPLICAS[backbone] = cached
    recorder, normaliser = cached[1], cached[2]
    recorder.train(backbone.training)
    normaliser.eval()
    return recorder, normaliser


def support_statistics(
    backbone: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor
) -> dict[str, Tensor]:
    """Mean and biased variance of every batch-norm layer's input over `images`, under `params`.

    Args:
        backbone: the module whose structure is called (never modified).
        params: every parameter of `backbone`, by name.
        buffers: its buffers by name (batch-norm running statistics are ignored).
        images: ``(N, C, *spatial)`` support images.

    Returns:
        ``{"<layer>.running_mean": (C_l,), "<layer>.running_var": (C_l,)}`` for every batch-norm layer,
        detached: like running statistics, they are constants of the forward passes that use them.
    """
    recorder, _ = _replicas(backbone)
    inputs: dict[str, Tensor] = {}
    _SINK.inputs = inputs
    try:
        with torch.no_grad():
            functional_call(recorder, (params, buffers | batchnorm_overrides(backbone)), (images,))  # type: ignore[arg-type]
    finally:
        _SINK.inputs = None
    out: dict[str, Tensor] = {}
    for name, x in inputs.items():
        dims = [0, *range(2, x.ndim)]  # every axis but the channels
        prefix = f"{name}." if name else ""
        out[prefix + "running_mean"] = x.mean(dims)  # (C_l,)
        out[prefix + "running_var"] = x.var(dims, unbiased=False)  # (C_l,)
    return out


def forward_with_statistics(
    backbone: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    statistics: dict[str, Tensor],
    images: Tensor,
) -> Tensor:
    """``backbone(images)`` under `params` with batch norm normalising by `statistics` (eval-mode layers).

    Args:
        backbone: the module whose structure is called (never modified).
        params: every parameter of `backbone`, by name.
        buffers: its other buffers by name.
        statistics: from `support_statistics`.
        images: ``(N, C, *spatial)``.

    Returns:
        ``(N, d)`` features; row i depends on ``images[i]`` and the statistics only.
    """
    _, normaliser = _replicas(backbone)
    return functional_call(normaliser, (params, buffers | statistics), (images,))
