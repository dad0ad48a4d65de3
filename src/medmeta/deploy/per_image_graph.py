"""A MAML-family predictor as a plain module that gives each image of a batch its one-image prediction.

MAML-family predictors normalise batch norm with the statistics of the batch they are given, so medmeta
predicts with them one image at a time (`AdaptedModel.per_image`). Batch norm over a batch of one image
is, per channel, normalisation over that image's spatial positions: instance normalisation with the
layer's affine weights. `PerImageGraph` is the adapted backbone with every such batch-norm layer replaced
by exactly that, plus the adapted head, so a batch of N images gives the N one-image predictions in one
pass, which ONNX can express (`medmeta.deploy.export`). Layers that normalise with stored running
statistics (MAML++ with ``bn_stats=running`` at evaluation) keep them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.methods.inner_loop import AdaptedPredictor


class _OwnStatistics(nn.Module):
    """Batch norm of each sample over its own spatial positions (a batch of one, batched)."""

    def __init__(self, weight: Tensor | None, bias: Tensor | None, eps: float) -> None:
        super().__init__()
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (N, C, *spatial)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)


class _StoredStatistics(nn.Module):
    """Batch norm with fixed (running) statistics and affine weights."""

    mean: Tensor
    var: Tensor

    def __init__(self, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("var", var.detach().clone())
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.mean, self.var, self.weight, self.bias, training=False, eps=self.eps)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


class PerImageGraph(nn.Module):
    """``(N, C, *spatial)`` normalised images -> logits ``(N, n_way)``, each row equal to
    ``predictor.predict(images[i:i+1])``.

    Example:
        >>> graph = PerImageGraph(model.predictor)  # doctest: +SKIP
        >>> torch.allclose(graph(x), torch.cat([model.predictor.predict(xi[None]) for xi in x]))  # doctest: +SKIP
        True
    """

    head_weight: Tensor
    head_bias: Tensor

    def __init__(self, predictor: AdaptedPredictor) -> None:
        super().__init__()
        method = predictor.method
        params = method.step_parameters(predictor.params, predictor.step)
        buffers = method.batchnorm_buffers(predictor.step)
        backbone = copy.deepcopy(method.backbone).eval()
        weights = {k[len("backbone.") :]: v for k, v in params.items() if k.startswith("backbone.")}
        with torch.no_grad():
            for name, p in backbone.named_parameters():
                if name in weights:
                    p.copy_(weights[name])
        for name in method.batchnorm_layers:
            bn = backbone.get_submodule(name)
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
            w, b = weights.get(f"{name}.weight", bn.weight), weights.get(f"{name}.bias", bn.bias)
            mean, var = buffers.get(f"{name}.running_mean"), buffers.get(f"{name}.running_var")
            if mean is None or var is None:
                _replace(backbone, name, _OwnStatistics(w, b, bn.eps))
            else:
                _replace(backbone, name, _StoredStatistics(mean, var, w, b, bn.eps))
        self.backbone = backbone.requires_grad_(False)
        n_way = predictor.n_way
        self.register_buffer("head_weight", params["head.weight"][:n_way].detach().clone())  # (n_way, d)
        self.register_buffer("head_bias", params["head.bias"][:n_way].detach().clone())  # (n_way,)

    def forward(self, images: Tensor) -> Tensor:
        feats = self.backbone(images).flatten(1)  # (N, d)
        return F.linear(feats, self.head_weight, self.head_bias)  # (N, n_way)
