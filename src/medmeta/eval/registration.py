"""Registration metrics: label overlap after warping, HD95, folding, end-point error.

The displacement convention is that of `medmeta.data.deformations`: ``ddf`` is ``(N, ndim, *spatial)`` in
voxels and the transform is ``phi(x) = x + ddf(x)``.

* `jacobian_determinant`: ``det(I + grad ddf)`` with central differences inside and one-sided differences
  at the border (``torch.gradient``), per voxel.
* `folding_fraction`: share of voxels with ``det <= 0`` (the transform folds or collapses there).
* `endpoint_error`: mean Euclidean distance between the estimated and the true displacement, in voxels.
* `label_dice` / `label_hd95`: per pair, mean over the labels of the fixed map (at least ``min_pixels``
  voxels) of Dice and HD95 (MONAI's ``compute_hausdorff_distance`` through
  `medmeta.eval.mask_metrics.hd95`) between the warped moving labels and the fixed labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from medmeta.data.deformations import warp
from medmeta.eval.mask_metrics import dice, hd95


def _check_field(ddf: Tensor) -> int:
    ndim = ddf.ndim - 2
    if ndim not in (2, 3) or ddf.shape[1] != ndim:
        raise ValueError(f"ddf must be (N, 2, H, W) or (N, 3, D, H, W), got {tuple(ddf.shape)}")
    return ndim


def jacobian_determinant(ddf: Tensor) -> Tensor:
    """Determinant of the Jacobian of ``x + ddf(x)`` per voxel.

    Args:
        ddf: ``(N, ndim, *spatial)`` displacement in voxels, ndim 2 or 3.

    Returns:
        ``(N, *spatial)`` float, same dtype as `ddf`.

    Raises:
        ValueError: a field of another shape.
    """
    ndim = _check_field(ddf)
    spatial_axes = tuple(range(2, 2 + ndim))
    grads = torch.gradient(ddf, dim=spatial_axes)  # ndim tensors (N, ndim, *spatial): d u_i / d x_j
    jac = torch.stack(grads, dim=-1).movedim(1, -2)  # (N, *spatial, ndim (i), ndim (j))
    jac = jac + torch.eye(ndim, dtype=ddf.dtype, device=ddf.device)
    return torch.linalg.det(jac)  # (N, *spatial)


def folding_fraction(ddf: Tensor) -> Tensor:
    """``(N,)`` fraction of voxels whose Jacobian determinant is <= 0."""
    return (jacobian_determinant(ddf) <= 0).flatten(1).double().mean(1)


def endpoint_error(ddf: Tensor, true_ddf: Tensor) -> Tensor:
    """``(N,)`` mean end-point error ``|ddf - true_ddf|_2`` over voxels, in voxels.

    Raises:
        ValueError: the fields differ in shape.
    """
    _check_field(ddf)
    if ddf.shape != true_ddf.shape:
        raise ValueError(f"fields differ in shape: {tuple(ddf.shape)} and {tuple(true_ddf.shape)}")
    return (ddf - true_ddf).double().pow(2).sum(1).sqrt().flatten(1).mean(1)


def _labels_of(fixed: Tensor, min_pixels: int) -> list[int]:
    values, counts = torch.unique(fixed, return_counts=True)
    return [int(v) for v, c in zip(values, counts, strict=True) if v != 0 and c >= min_pixels]


def label_dice(warped: Tensor, fixed: Tensor, min_pixels: int = 1) -> Tensor:
    """``(N,)`` mean Dice over the labels of each fixed map (NaN when a map has none).

    Args:
        warped: ``(N, *spatial)`` int64 warped moving labels.
        fixed: ``(N, *spatial)`` int64 fixed labels.
        min_pixels: a label counts when the fixed map has at least this many voxels of it.

    Raises:
        ValueError: the maps differ in shape.
    """
    if warped.shape != fixed.shape:
        raise ValueError(f"label maps differ in shape: {tuple(warped.shape)} and {tuple(fixed.shape)}")
    out = []
    for w, f in zip(warped, fixed, strict=True):
        labels = _labels_of(f, min_pixels)
        if not labels:
            out.append(math.nan)
            continue
        pred = torch.stack([(w == v).flatten() for v in labels])  # (n_labels, voxels)
        ref = torch.stack([(f == v).flatten() for v in labels])
        out.append(float(dice(pred, ref).mean()))
    return torch.tensor(out, dtype=torch.float64)


def label_hd95(warped: Tensor, fixed: Tensor, min_pixels: int = 1) -> Tensor:
    """``(N,)`` mean HD95 (voxels, MONAI) over the labels of each fixed map present in the warped map too.

    NaN when no label is shared. Arguments as `label_dice`.
    """
    if warped.shape != fixed.shape:
        raise ValueError(f"label maps differ in shape: {tuple(warped.shape)} and {tuple(fixed.shape)}")
    out = []
    for w, f in zip(warped, fixed, strict=True):
        labels = [v for v in _labels_of(f, min_pixels) if bool((w == v).any())]
        if not labels:
            out.append(math.nan)
            continue
        pred = torch.stack([w == v for v in labels])  # (n_labels, *spatial)
        ref = torch.stack([f == v for v in labels])
        values = hd95(pred, ref, backend="monai").numpy()
        out.append(float(np.nanmean(values)) if np.isfinite(values).any() else math.nan)
    return torch.tensor(out, dtype=torch.float64)


def score_pairs(
    ddf: Tensor, labels: Tensor | None = None, flows: Tensor | None = None, min_pixels: int = 1
) -> dict[str, Tensor]:
    """Every metric that applies to registered pairs, per pair.

    Args:
        ddf: ``(N, ndim, *spatial)`` estimated displacements.
        labels: ``(N, 2, *spatial)`` int64 moving and fixed label maps, or None (no Dice/HD95).
        flows: ``(N, ndim, *spatial)`` true displacements, or None (no end-point error).
        min_pixels: smallest fixed-label area scored.

    Returns:
        ``folding`` and, where they apply, ``epe``, ``dice`` and ``hd95``, each ``(N,)`` float64.
    """
    out = {"folding": folding_fraction(ddf)}
    if flows is not None:
        out["epe"] = endpoint_error(ddf, flows)
    if labels is not None:
        warped = warp(labels[:, :1].to(ddf.dtype), ddf, mode="nearest").round().long()[:, 0]  # (N, *spatial)
        out["dice"] = label_dice(warped, labels[:, 1], min_pixels)
        out["hd95"] = label_hd95(warped, labels[:, 1], min_pixels)
    return out
