"""COCO AP per class against hand-computed values, and against torchmetrics' own means."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from medmeta.eval.detection import class_ap, split_ap


def _det(
    boxes: list[list[float]], labels: list[int], scores: list[float] | None = None
) -> dict[str, torch.Tensor]:
    out = {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
    if scores is not None:
        out["scores"] = torch.tensor(scores)
    return out


def test_ap_of_a_ranked_list_with_one_false_positive_matches_the_hand_computed_value() -> None:
    # 2 ground-truth boxes; detections ranked TP (0.9), FP (0.8), TP (0.7): precision 1 up to recall 0.5,
    # then 2/3 up to recall 1. COCO's 101-point interpolation: (51 * 1 + 50 * 2/3) / 101.
    targets = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    preds = [_det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7])]
    ap = class_ap(preds, targets, n_classes=2)
    expected = (51 + 50 * 2 / 3) / 101
    assert float(ap.ap50[0]) == pytest.approx(expected, abs=1e-6)
    assert float(ap.ap[0]) == pytest.approx(expected, abs=1e-6)  # exact boxes: every IoU threshold
    assert math.isnan(float(ap.ap50[1]))  # no ground truth of class 1


def test_a_box_of_iou_072_counts_at_five_of_ten_thresholds() -> None:
    # IoU = 72 / 100: a true positive for thresholds 0.50 .. 0.70, a miss for 0.75 .. 0.95.
    targets = [_det([[0, 0, 10, 10]], [1])]
    preds = [_det([[0, 0, 10, 7.2]], [1], [0.9])]
    ap = class_ap(preds, targets, n_classes=2)
    assert float(ap.ap50[1]) == pytest.approx(1.0)
    assert float(ap.ap[1]) == pytest.approx(0.5)


def test_a_class_with_boxes_and_no_detection_scores_zero() -> None:
    targets = [_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])]
    preds = [_det([[0, 0, 10, 10]], [0], [0.9])]
    ap = class_ap(preds, targets, n_classes=2)
    assert ap.ap50.tolist() == pytest.approx([1.0, 0.0])
    assert split_ap(ap, novel=[1]) == pytest.approx(
        {"novel_ap50": 0.0, "novel_ap": 0.0, "base_ap50": 1.0, "base_ap": 1.0}
    )


def test_class_means_equal_torchmetrics_map_on_random_boxes() -> None:
    gen = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for _ in range(5):
        xy = torch.rand(6, 2, generator=gen) * 50
        wh = torch.rand(6, 2, generator=gen) * 20 + 5
        gt = torch.cat([xy, xy + wh], 1)
        targets.append({"boxes": gt, "labels": torch.randint(0, 3, (6,), generator=gen)})
        noisy = gt + torch.randn(6, 4, generator=gen) * 2
        noisy[:, 2:] = torch.maximum(noisy[:, 2:], noisy[:, :2] + 1)
        preds.append(
            {
                "boxes": noisy,
                "scores": torch.rand(6, generator=gen),
                "labels": torch.randint(0, 3, (6,), generator=gen),
            }
        )
    ap = class_ap(preds, targets, n_classes=3)
    ref = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    ref.update(preds, targets)
    res = ref.compute()
    assert float(ap.ap50.nanmean()) == pytest.approx(float(res["map_50"]), abs=1e-6)
    assert float(ap.ap.nanmean()) == pytest.approx(float(res["map"]), abs=1e-6)


def test_a_missing_detection_dependency_names_the_extra_to_install() -> None:
    from medmeta._optional import OptionalDependencyError
    from medmeta.methods.detection.base import require

    with pytest.raises(OptionalDependencyError, match=r"run `pip install 'medmeta\[detection\]'`"):
        require("pycocotools_missing_for_this_test", "detection metrics")
