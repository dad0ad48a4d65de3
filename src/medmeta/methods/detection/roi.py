"""RoI features of a frozen torchvision Faster R-CNN, computed once per support set.

Both detectors adapt only the box classifier, so the backbone, the RPN and the box head run once: `SupportRois`
holds every proposal's box-head feature with its training label and regression target, and `sample`
draws torchvision's balanced positive/negative RoIs from it at each fine-tuning step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from medmeta.methods.detection.base import as_float


@dataclass(frozen=True)
class SupportRois:
    """Proposals of K support images (the RPN's, plus the ground-truth boxes).

    Attributes:
        features: per image ``(P_i, D)`` box-head features.
        labels: per image ``(P_i,)`` torchvision labels (0 background, -1 ignored, c + 1 class c).
        targets: per image ``(P_i, 4)`` encoded regression targets to the matched box.
        gt_features: ``(G, D)`` features of the ground-truth boxes, and gt_labels ``(G,)`` (0-based).
    """

    features: list[Tensor]
    labels: list[Tensor]
    targets: list[Tensor]
    gt_features: Tensor
    gt_labels: Tensor


@torch.no_grad()
def support_rois(
    model: Any, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor]
) -> SupportRois:
    """Run the frozen detector body once over ``(K, 3, H, W)`` images with boxes and 0-based labels.

    Args:
        model: a torchvision ``FasterRCNN`` (typed ``Any``: torchvision's detection modules are untyped).
    """
    model.eval()
    rh = model.roi_heads
    gt_boxes = [b.float() for b in boxes]
    gt_labels = [lab + 1 for lab in labels]
    image_list, _ = model.transform(list(as_float(images)))
    feats = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, feats)
    proposals = rh.add_gt_proposals(proposals, gt_boxes)
    matched, tv_labels = rh.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
    matched_gt = [
        g[m.clamp(min=0)] if g.numel() else torch.zeros_like(p)
        for g, m, p in zip(gt_boxes, matched, proposals, strict=True)
    ]
    targets = rh.box_coder.encode(matched_gt, proposals)
    sizes = image_list.image_sizes
    box_feats = rh.box_head(rh.box_roi_pool(feats, proposals, sizes))  # (sum P_i, D)
    per_image = box_feats.split([len(p) for p in proposals])
    gt_feats = rh.box_head(rh.box_roi_pool(feats, gt_boxes, sizes))  # (G, D)
    return SupportRois(list(per_image), list(tv_labels), list(targets), gt_feats, torch.cat(list(labels)))


def sample(rois: SupportRois, sampler: object) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's balanced sample of each image's RoIs: features ``(R, D)``, labels ``(R,)``, targets ``(R, 4)``."""
    pos, neg = sampler(rois.labels)  # type: ignore[operator]
    idx = [torch.where(p | n)[0] for p, n in zip(pos, neg, strict=True)]
    feats = torch.cat([f[i] for f, i in zip(rois.features, idx, strict=True)])
    labels = torch.cat([lab[i] for lab, i in zip(rois.labels, idx, strict=True)])
    targets = torch.cat([t[i] for t, i in zip(rois.targets, idx, strict=True)])
    return feats, labels, targets


def tune_rpn(model: Any, images: Tensor, boxes: Sequence[Tensor], steps: int, lr: float, seed: int) -> None:
    """Fine-tune the RPN head of `model` in place on the support boxes (every class), backbone frozen.

    Base training teaches the RPN that objects of the novel class are background (their boxes were
    removed), so a frozen RPN proposes none of them; FSCE (Sun et al. 2021, https://arxiv.org/abs/2103.05950)
    unfreezes the RPN for this reason. Call on a copy: `model` is changed.

    Args:
        model: a torchvision ``FasterRCNN``; images ``(K, 3, H, W)``; boxes K tensors ``(n_i, 4)``.
    """
    if steps < 1:
        return
    model.eval()
    targets = [{"boxes": b.float(), "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
    with torch.no_grad():
        image_list, targets = model.transform(list(as_float(images)), targets)
        feats = model.backbone(image_list.tensors)
    params = list(model.rpn.head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.rpn.train()
        for _ in range(steps):
            _, losses = model.rpn(image_list, feats, targets)
            opt.zero_grad(set_to_none=True)
            torch.stack(list(losses.values())).sum().backward()
            opt.step()
    model.rpn.eval()
    for p in params:
        p.requires_grad_(False)
