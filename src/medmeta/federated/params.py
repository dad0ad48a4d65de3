"""A model's parameters as named float arrays: what a site sends, what the server averages.

Every floating-point entry of the state dict travels (weights, batch-norm running statistics, a transfer
method's feature mean); integer buffers (batch-norm step counters) stay where they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from medmeta.errors import MedmetaError

Arrays = dict[str, np.ndarray]


def get_arrays(model: nn.Module) -> Arrays:
    """Copies of every floating-point state-dict entry of `model`, as float32 numpy arrays, by name."""
    return {
        name: t.detach().cpu().to(torch.float32).numpy().copy()
        for name, t in model.state_dict().items()
        if t.is_floating_point()
    }


def set_arrays(model: nn.Module, arrays: Arrays) -> None:
    """Copy `arrays` into `model` in place.

    Raises:
        MedmetaError: a name is missing or extra, or a shape differs (the two sides built other models).
    """
    state = model.state_dict()
    want = {n for n, t in state.items() if t.is_floating_point()}
    if set(arrays) != want:
        missing, extra = sorted(want - set(arrays)), sorted(set(arrays) - want)
        raise MedmetaError(
            f"received parameters do not fit the model (missing {missing[:3]}, unexpected {extra[:3]}): "
            "server and sites must run the same medmeta version and config"
        )
    with torch.no_grad():
        for name in want:
            target = state[name]
            value = torch.from_numpy(np.asarray(arrays[name]))
            if tuple(value.shape) != tuple(target.shape):
                raise MedmetaError(
                    f"received parameter {name} has shape {tuple(value.shape)}, the model "
                    f"{tuple(target.shape)}: server and sites must run the same config"
                )
            target.copy_(value.to(target.dtype))


def weighted_mean(updates: Sequence[Arrays], weights: Sequence[float]) -> Arrays:
    """FedAvg's aggregate: ``sum_k w_k * theta_k / sum_k w_k`` for every named array (float64 sums).

    Args:
        updates: each site's arrays (same names and shapes).
        weights: each site's weight (its training images, or 1 for a uniform mean); positive.

    Raises:
        MedmetaError: no update, a non-positive weight, or names that differ between sites.
    """
    if not updates or len(updates) != len(weights):
        raise MedmetaError(f"need one weight per update, got {len(updates)} updates, {len(weights)} weights")
    if any(not w > 0 for w in weights):
        raise MedmetaError(f"aggregation weights must be positive, got {list(weights)}")
    names = set(updates[0])
    if any(set(u) != names for u in updates):
        raise MedmetaError("sites sent parameters with different names: they run different models")
    total = float(sum(weights))
    out: Arrays = {}
    for n in updates[0]:
        acc = np.zeros(np.shape(updates[0][n]), dtype=np.float64)
        for u, w in zip(updates, weights, strict=True):
            acc += float(w) * u[n].astype(np.float64)
        out[n] = (acc / total).astype(np.float32)
    return out


def proximal_term(model: nn.Module, anchor: dict[str, Tensor], mu: float) -> Tensor:
    """FedProx's ``mu / 2 * sum ||w - w_global||^2`` over the trainable parameters named in `anchor`.

    Its gradient with respect to a parameter ``w`` is ``mu * (w - w_global)``.
    """
    total = torch.zeros(())
    for name, p in model.named_parameters():
        if p.requires_grad and name in anchor:
            total = total + (p - anchor[name].to(p)).pow(2).sum()
    return 0.5 * mu * total
