"""Average precision of detections: COCO's AP@0.5 and AP@[0.5:0.95] per class, via torchmetrics.

`class_ap` runs torchmetrics' ``MeanAveragePrecision`` (pycocotools backend) once and reads COCO's
precision table (IoU thresholds x 101 recall points x classes, all areas, 100 detections per image) for
each class; `split_ap` averages the classes of the novel and the base group. A class with no ground-truth
box gets NaN (COCO leaves it out of the mean), a class with boxes but no detection gets 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from medmeta.methods.detection.base import require


@dataclass(frozen=True)
class ClassAP:
    """Per-class AP: ``ap50`` and ``ap`` (0.5:0.95), each ``(n_classes,)`` in ``[0, 1]`` or NaN."""

    ap50: Tensor
    ap: Tensor


def class_ap(
    preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]], n_classes: int
) -> ClassAP:
    """COCO AP of each class.

    Args:
        preds: per image ``boxes`` ``(n, 4)`` xyxy, ``scores`` ``(n,)``, ``labels`` ``(n,)`` int64 (0-based).
        targets: per image ``boxes`` ``(m, 4)`` and ``labels`` ``(m,)``.
        n_classes: classes to report (labels ``0..n_classes-1``).

    Raises:
        OptionalDependencyError: torchmetrics or pycocotools is missing (``pip install 'medmeta[detection]'``).
    """
    tm = require("torchmetrics.detection", "detection metrics")
    require("pycocotools", "detection metrics")
    metric = tm.MeanAveragePrecision(iou_type="bbox", extended_summary=True, backend="pycocotools")
    metric.update(
        [
            {
                k: p[k].detach().float() if k != "labels" else p[k].long()
                for k in ("boxes", "scores", "labels")
            }
            for p in preds
        ],
        [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets],
    )
    res = metric.compute()
    ap50 = torch.full((n_classes,), float("nan"))
    ap = torch.full((n_classes,), float("nan"))
    precision = res["precision"]  # (T, R, K, A, M): IoU, recall, class, area, max detections
    seen = torch.cat([t["labels"].long() for t in targets]).unique().tolist() if targets else []
    for k, c in enumerate(torch.atleast_1d(res["classes"]).tolist()):
        if c not in seen or not 0 <= c < n_classes:
            continue
        table = precision[:, :, k, 0, -1].clamp(min=0)  # (T, R); -1 (no detection) counts as 0
        ap50[c] = table[0].mean()
        ap[c] = table.mean()
    return ClassAP(ap50, ap)


def split_ap(result: ClassAP, novel: Sequence[int]) -> dict[str, float]:
    """Mean AP of the novel classes and of the others (base): ``novel_ap50``, ``novel_ap``, ``base_ap50``, ``base_ap``."""
    n = result.ap50.numel()
    groups = {"novel": list(novel), "base": [i for i in range(n) if i not in novel]}
    out = {}
    for name, idx in groups.items():
        for key, values in (("ap50", result.ap50), ("ap", result.ap)):
            chosen = values[idx] if idx else torch.zeros(0)
            chosen = chosen[~chosen.isnan()]
            out[f"{name}_{key}"] = float(chosen.mean()) if chosen.numel() else float("nan")
    return out
