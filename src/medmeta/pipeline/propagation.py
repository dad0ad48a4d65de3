"""Per-patient label propagation: a few labelled slices of one volume label the rest of it.

A clinician labels ``k`` slices of one patient's volume; the other slices get labels from that patient
alone, by one of two strategies:

* **registration** (`propagate_by_registration`): each unlabelled slice takes the labels of its nearest
  labelled slice, moved onto it by deformable registration. ``chain`` registers neighbouring slices
  (``s -> s+1 -> ... -> t``, every step a small deformation) and carries soft one-hot labels along the
  chain; ``direct`` registers the labelled slice straight onto the target. Any `RegistrationMethod` does
  the registering (instance optimisation, SimpleITK demons...).
* **segmentation** (`propagate_by_segmentation`): a few-shot segmenter adapts on the labelled slices,
  one binary task per label (its support: the labelled slices that contain the label), and every
  unlabelled slice takes, per pixel, the label whose foreground probability is highest, background where
  none reaches 0.5.

Slices are planes of ``(D, 1, H, W)`` images in ``[0, 1]`` with ``(D, H, W)`` int64 label maps (0 =
background), ordered along the slice axis. `labelled_positions` spreads ``k`` labelled slices evenly;
`slice_dice` scores the unlabelled ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.data.deformations import warp
from medmeta.errors import DataError
from medmeta.eval.registration import label_dice
from medmeta.methods.registration import RegistrationMethod
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.tasks.segmentation import MaskSupport

Chain = Literal["chain", "direct"]


def labelled_positions(depth: int, k: int) -> list[int]:
    """`k` slice indices spread evenly over `depth` slices: the centres of `k` equal parts.

    Example:
        >>> labelled_positions(30, 3)
        [5, 15, 25]
    """
    if not 1 <= k <= depth:
        raise DataError(f"cannot label {k} of {depth} slices: choose 1 to {depth} labelled slices")
    return [min(depth - 1, int((i + 0.5) * depth / k)) for i in range(k)]


def _check(images: Tensor, labels: Tensor, labelled: Sequence[int]) -> list[int]:
    if images.ndim != 4 or images.shape[1] != 1:
        raise DataError(f"slices must be (D, 1, H, W), got {tuple(images.shape)}")
    if tuple(labels.shape) != (images.shape[0], *images.shape[2:]):
        raise DataError(
            f"label maps must be {(images.shape[0], *images.shape[2:])}, got {tuple(labels.shape)}"
        )
    depth = int(images.shape[0])
    marks = sorted(set(int(i) for i in labelled))
    if not marks or marks[0] < 0 or marks[-1] >= depth:
        raise DataError(f"labelled slices {list(labelled)} must be 0 to {depth - 1}: give at least one")
    return marks


def nearest_labelled(depth: int, labelled: Sequence[int]) -> list[int]:
    """For every slice, the nearest labelled slice (the lower one on a tie)."""
    marks = sorted(set(labelled))
    return [min(marks, key=lambda s: (abs(s - t), s)) for t in range(depth)]


def _one_hot(labels: Tensor, n: int) -> Tensor:
    """``(N, H, W)`` int64 -> ``(N, n, H, W)`` float."""
    return F.one_hot(labels, n).movedim(-1, 1).to(torch.get_default_dtype())


def propagate_by_registration(
    images: Tensor,
    labels: Tensor,
    labelled: Sequence[int],
    method: RegistrationMethod,
    mode: Chain = "chain",
) -> Tensor:
    """Labels of every slice, from the labelled slices' labels moved by registration.

    Args:
        images: ``(D, 1, H, W)`` slices in ``[0, 1]``, in slice order.
        labels: ``(D, H, W)`` int64; only the rows in `labelled` are read.
        labelled: indices of the labelled slices.
        method: registers ``(N, 2, H, W)`` pairs (channel 0 moving, 1 fixed) into ``(N, 2, H, W)`` fields.
        mode: ``chain`` (neighbour to neighbour) or ``direct`` (labelled slice onto the target).

    Returns:
        ``(D, H, W)`` int64: the given labels on labelled slices, propagated labels elsewhere.
    """
    marks = _check(images, labels, labelled)
    depth = int(images.shape[0])
    n = int(labels[marks].max()) + 1
    source = nearest_labelled(depth, marks)
    out = labels.clone()
    targets = [t for t in range(depth) if t not in marks]
    if not targets:
        return out
    with torch.no_grad():
        if mode == "direct":
            moving = images[[source[t] for t in targets]]
            pairs = torch.cat([moving, images[targets]], dim=1)  # (T, 2, H, W)
            ddf = method.register(pairs)
            soft = warp(_one_hot(labels[[source[t] for t in targets]], n), ddf)
            out[targets] = soft.argmax(1)
            return out
        if mode != "chain":
            raise DataError(f"unknown propagation mode '{mode}': choose chain or direct")
        # one registration per neighbouring pair a chain crosses, in both directions, all in one batch
        steps = sorted({(t - (1 if t > source[t] else -1), t) for t in targets})  # (moving, fixed)
        pairs = torch.cat([images[[m for m, _ in steps]], images[[f for _, f in steps]]], dim=1)
        fields = dict(zip(steps, method.register(pairs), strict=True))  # each (2, H, W)
        soft_of: dict[int, Tensor] = {s: _one_hot(labels[s : s + 1], n) for s in marks}  # (1, n, H, W)
        for t in sorted(targets, key=lambda t: abs(t - source[t])):  # each after its neighbour
            prev = t - (1 if t > source[t] else -1)
            soft_of[t] = warp(soft_of[prev], fields[(prev, t)][None])
            out[t] = soft_of[t][0].argmax(0)
    return out


def propagate_by_segmentation(
    images: Tensor, labels: Tensor, labelled: Sequence[int], segmenter: FewShotSegmenter, min_pixels: int = 1
) -> Tensor:
    """Labels of every slice from a few-shot segmenter adapted on the labelled slices, one task per label.

    Args:
        images: ``(D, 1, H, W)`` slices in ``[0, 1]``.
        labels: ``(D, H, W)`` int64; only the rows in `labelled` are read.
        labelled: indices of the labelled slices.
        segmenter: adapts on a `MaskSupport` and predicts ``(N, 2, H, W)`` logits.
        min_pixels: a label is learned from a labelled slice holding at least this many of its pixels.

    Returns:
        ``(D, H, W)`` int64: the given labels on labelled slices, predicted labels elsewhere.
    """
    marks = _check(images, labels, labelled)
    out = labels.clone()
    targets = [t for t in range(int(images.shape[0])) if t not in marks]
    if not targets:
        return out
    values = [int(v) for v in torch.unique(labels[marks]) if v != 0]
    best = torch.full((len(targets), *images.shape[2:]), 0.5)  # (T, H, W): a label must beat 0.5
    pred = torch.zeros((len(targets), *images.shape[2:]), dtype=torch.int64)
    for v in values:
        holders = [s for s in marks if int((labels[s] == v).sum()) >= min_pixels]
        if not holders:
            continue
        support = MaskSupport(images[holders], (labels[holders] == v).to(images.dtype), f"label {v}")
        with torch.no_grad():
            prob = segmenter.adapt(support).predict(images[targets]).softmax(1)[:, 1]  # (T, H, W)
        wins = prob > best
        best = torch.where(wins, prob, best)
        pred[wins] = v
    out[targets] = pred
    return out


def slice_dice(predicted: Tensor, reference: Tensor, labelled: Sequence[int], min_pixels: int = 10) -> Tensor:
    """``(T,)`` mean label Dice of each unlabelled slice that holds a label of at least `min_pixels` pixels."""
    keep = [t for t in range(int(reference.shape[0])) if t not in set(labelled)]
    dice = label_dice(predicted[keep], reference[keep], min_pixels)
    return dice[~torch.isnan(dice)]
