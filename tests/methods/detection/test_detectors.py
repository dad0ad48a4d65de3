"""TFA and the prototype head on a tiny base-trained torchvision Faster R-CNN, on real BCCD smears."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from medmeta.errors import DataError
from medmeta.methods.detection import DET_METHODS, FewShotDetector
from medmeta.methods.detection.base import CosinePredictor
from medmeta.methods.detection.roi import sample, support_rois, tune_rpn
from medmeta.tasks.detection import BoxSupport
from tests._helpers.detection import CLASSES, bccd_images, tiny_detector

pytestmark = pytest.mark.data
SIZE = 160


@pytest.fixture(scope="module")
def detectors() -> dict[str, FewShotDetector]:
    from tests._helpers.paths import shared_data_dir

    root = shared_data_dir()
    if not (root / "detection" / "bccd").is_dir():
        pytest.skip(f"BCCD not found under {root}: set MEDMETA_DATA to the shared data folder")
    torch.set_num_threads(1)
    tfa = tiny_detector(root, "tfa", SIZE, steps=30)
    proto = DET_METHODS["proto"].from_options(tfa.base_classes, {"image_size": SIZE})
    proto.model = tfa.model
    return {"tfa": tfa, "proto": proto}


def _support(data_dir: Path, k: int = 2) -> BoxSupport:
    images, boxes, labels = bccd_images(data_dir, 12, SIZE)
    holders = [i for i, lab in enumerate(labels) if bool((lab == 2).any())][:k]
    return BoxSupport(
        images[holders], tuple(boxes[i] for i in holders), tuple(labels[i] for i in holders), CLASSES, (2,)
    )


def _state(det: FewShotDetector) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in det.model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(DET_METHODS))
def test_adapt_adds_the_novel_class_and_leaves_the_detector_unchanged(
    name: str, detectors: dict[str, FewShotDetector], data_dir: Path
) -> None:
    det = detectors[name]
    before = _state(det)
    support = _support(data_dir)
    predictor = det.adapt(support)
    assert predictor.classes == ("Platelets", "RBC", "WBC")
    after = det.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert det.model.roi_heads.box_predictor.cls_weight.shape[0] == 3  # background + 2 base classes
    out = predictor.predict(support.images[:1])
    assert out.shape == (1, det.options.max_detections, 6)
    assert not out.isnan().any()
    valid = out[0, :, 5] >= 0
    assert bool(((out[0, valid, 5] <= 2) & (out[0, valid, 4] > 0)).all())


def test_prototype_is_the_mean_normalised_feature_of_the_novel_support_boxes(
    detectors: dict[str, FewShotDetector], data_dir: Path
) -> None:
    det, support = detectors["proto"], _support(data_dir)
    predictor = det.adapt(support)
    # reference: torchvision's RoI pooling and box head on the WBC boxes alone
    model: Any = det.model.eval()
    with torch.no_grad():
        image_list, _ = model.transform(list(support.images.float() / 255))
        feats = model.backbone(image_list.tensors)
        wbc = [b[lab == 2] for b, lab in zip(support.boxes, support.labels, strict=True)]
        ref = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, wbc, image_list.image_sizes))
    proto = F.normalize(F.normalize(ref, dim=1).mean(0), dim=0)
    weight = predictor.model.roi_heads.box_predictor.cls_weight[3]
    torch.testing.assert_close(F.normalize(weight, dim=0), proto, atol=1e-5, rtol=1e-4)


def test_tfa_fine_tuning_lowers_the_support_rois_loss(
    detectors: dict[str, FewShotDetector], data_dir: Path
) -> None:
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    det, support = detectors["tfa"], _support(data_dir)
    predictor = det.adapt(support)
    model: Any = det.model
    rois = support_rois(model, support.images, support.boxes, list(support.labels))
    head: CosinePredictor = model.roi_heads.box_predictor
    start = head.extended(
        torch.randn(1, head.cls_weight.shape[1], generator=torch.Generator().manual_seed(0)) * 0.01
    )
    tuned = predictor.model.roi_heads.box_predictor
    torch.manual_seed(1)
    feats, labels, targets = sample(rois, model.roi_heads.fg_bg_sampler)

    def loss(h: CosinePredictor) -> float:
        with torch.no_grad():
            logits, deltas = h(feats)
            return float(sum(fastrcnn_loss(logits, deltas, [labels], [targets])))

    assert loss(tuned) < 0.8 * loss(start)


def test_a_support_class_that_is_neither_base_nor_novel_is_refused(
    detectors: dict[str, FewShotDetector], data_dir: Path
) -> None:
    s = _support(data_dir)
    renamed = BoxSupport(s.images, s.boxes, s.labels, ("Platelets", "Monocyte", "WBC"), (2,))
    with pytest.raises(DataError, match=r"classes \['Monocyte'\] are neither base classes"):
        detectors["tfa"].adapt(renamed)


def test_extended_cosine_head_keeps_the_base_rows() -> None:
    head = CosinePredictor(8, 3)
    new = head.extended(torch.ones(2, 8))
    assert new.cls_weight.shape == (5, 8) and new.bbox_pred.out_features == 20
    torch.testing.assert_close(new.cls_weight[:3], head.cls_weight)
    x = torch.rand(4, 8)
    torch.testing.assert_close(new(x)[0][:, :3], head(x)[0])


def test_tune_rpn_changes_only_the_rpn_head_and_lowers_its_support_loss(
    detectors: dict[str, FewShotDetector], data_dir: Path
) -> None:
    model: Any = copy.deepcopy(detectors["tfa"].model)
    support = _support(data_dir)
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in support.boxes]

    def rpn_loss() -> float:
        model.eval()
        with torch.no_grad():
            image_list, t = model.transform(list(support.images.float() / 255), targets)
            feats = model.backbone(image_list.tensors)
            model.rpn.train()
            torch.manual_seed(0)
            _, losses = model.rpn(image_list, feats, t)
        model.rpn.eval()
        return float(sum(losses.values()))

    before_loss = rpn_loss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tune_rpn(model, support.images, support.boxes, steps=40, lr=1e-3, seed=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("rpn.head.") for k in changed)
    assert rpn_loss() < before_loss
    assert not any(p.requires_grad for p in model.rpn.head.parameters())
