"""Dice and the 95th-percentile Hausdorff distance of binary masks, and their summary over episodes.

HD95 follows MONAI's `compute_hausdorff_distance` (``percentile=95``, undirected): the boundary of a mask
is its pixels minus its binary erosion; for each boundary pixel of one mask, the Euclidean distance to the
nearest boundary pixel of the other; the 95th percentile (linear interpolation) of each direction; the
larger of the two. Distances are in pixels of the grid the masks are on. The default backend is an own scipy
implementation of that definition; ``backend="monai"`` calls MONAI (the ``monai`` extra). The tests check
that both agree (to float32 precision); scipy is the default because MONAI's is two orders of magnitude
slower per small mask pair on CPU and dominated evaluation time (``docs/internals.md``).

Empty masks: both empty -> Dice 1 and HD95 0; exactly one empty -> Dice 0 and HD95 NaN (no distance is
defined; summaries count and skip these).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from medmeta.eval.metrics import mean_ci


def dice(pred: Tensor, target: Tensor) -> Tensor:
    """Dice ``2|P & T| / (|P| + |T|)`` per image (1 when both are empty).

    Args:
        pred: ``(N, H, W)`` binary (bool or 0/1).
        target: ``(N, H, W)`` binary.

    Returns:
        ``(N,)`` float64.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    p, t = pred.bool().flatten(1), target.bool().flatten(1)  # (N, HW)
    inter = (p & t).sum(1).double()
    total = (p.sum(1) + t.sum(1)).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def _hd95_own(pred: np.ndarray, target: np.ndarray, percentile: float) -> float:
    bp, bt = _boundary(pred), _boundary(target)
    to_t = ndimage.distance_transform_edt(~bt)[bp]  # distances of P's boundary to T's boundary
    to_p = ndimage.distance_transform_edt(~bp)[bt]
    return float(max(np.percentile(to_t, percentile), np.percentile(to_p, percentile)))


def _hd95_monai(pred: np.ndarray, target: np.ndarray, percentile: float) -> float:
    from monai.metrics import compute_hausdorff_distance

    p = torch.from_numpy(pred)[None, None].float()  # (1, 1, H, W)
    t = torch.from_numpy(target)[None, None].float()
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        return float(compute_hausdorff_distance(p, t, include_background=True, percentile=percentile)[0, 0])


def hd95(pred: Tensor, target: Tensor, percentile: float = 95.0, backend: str = "scipy") -> Tensor:
    """95th-percentile Hausdorff distance per image, in pixels.

    Args:
        pred: ``(N, H, W)`` binary.
        target: ``(N, H, W)`` binary.
        percentile: 95 for HD95, 100 for the Hausdorff distance.
        backend: ``scipy`` (own implementation), ``monai``, or ``auto`` (MONAI if installed, else scipy).

    Returns:
        ``(N,)`` float64 (NaN where exactly one mask is empty).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    if backend not in ("auto", "monai", "scipy"):
        raise ValueError(f"backend must be auto, monai or scipy, got '{backend}'")
    use_monai = backend == "monai" or (backend == "auto" and importlib.util.find_spec("monai") is not None)
    fn = _hd95_monai if use_monai else _hd95_own
    out = []
    for p, t in zip(pred.bool().cpu().numpy(), target.bool().cpu().numpy(), strict=True):
        if not p.any() and not t.any():
            out.append(0.0)
        elif not p.any() or not t.any():
            out.append(math.nan)
        else:
            out.append(fn(p, t, percentile))
    return torch.tensor(out, dtype=torch.float64)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "ci95", "n", "n_undefined"}`` of per-episode values (NaNs counted and skipped)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    mean, ci = mean_ci(finite)
    return {"mean": mean, "ci95": ci, "n": int(finite.size), "n_undefined": int(arr.size - finite.size)}
