"""The interface of the few-shot detectors and the torchvision Faster R-CNN they share.

A `FewShotDetector` holds a Faster R-CNN (torchvision's ``fasterrcnn_mobilenet_v3_large_320_fpn``, built
without downloaded weights) trained on its ``base_classes``, whose box classifier is a cosine classifier
(`CosinePredictor`, as in TFA w/ cos). ``adapt(support)`` learns the support's novel classes and returns a
`DetPredictor` that never changes the detector; ``predictor.predict(images)`` gives ``(N, max_det, 6)``
detections ``xmin, ymin, xmax, ymax, score, label`` (label indexes ``support.classes``; padding rows have
label -1 and score 0), and ``predictor.detections(images)`` the same as one dict per image.
"""

from __future__ import annotations

import abc
import copy
import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta._optional import OptionalDependencyError
from medmeta.errors import DataError
from medmeta.methods.learner import FewShotLearner, LearnerOptions
from medmeta.tasks.detection import BoxSupport, DetEpisode, check_boxes

#: anchor sizes per FPN level at 320 px: blood platelets are ~15 px there, white cells ~100 px
ANCHOR_SIZES = (16, 32, 64, 128, 256)


def require(module: str, feature: str) -> ModuleType:
    """Import `module` (torchvision, torchmetrics, pycocotools) or say to install ``medmeta[detection]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptionalDependencyError(
            f"{feature} needs the optional package '{module.split('.')[0]}': run `pip install 'medmeta[detection]'`"
        ) from exc


class CosinePredictor(nn.Module):
    """Box classifier ``scale * cos(feature, w_c)`` over background + classes, and per-class box deltas.

    Args:
        in_features: RoI feature size (1024 for torchvision's TwoMLPHead).
        num_classes: classes including background (index 0).
        scale: temperature of the cosine logits (20 in TFA).

    Example:
        >>> head = CosinePredictor(1024, 3)
        >>> logits, deltas = head(torch.rand(8, 1024))  # (8, 3), (8, 12)
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = scale
        self.cls_weight = nn.Parameter(torch.randn(num_classes, in_features) * 0.01)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(R, in_features)`` (or ``(R, ...)``) -> logits ``(R, num_classes)``, deltas ``(R, 4 * num_classes)``."""
        x = x.flatten(1)  # (R, in_features)
        logits = (
            self.scale * F.normalize(x, dim=1) @ F.normalize(self.cls_weight, dim=1).T
        )  # (R, num_classes)
        return logits, self.bbox_pred(x)

    def extended(self, novel_weights: Tensor) -> CosinePredictor:
        """A new predictor with the rows of `novel_weights` ``(n_new, in_features)`` appended as classes.

        Their box deltas start as the mean of the object classes' regressors (class-agnostic start).
        """
        n_old, dim = self.cls_weight.shape
        out = CosinePredictor(dim, n_old + novel_weights.shape[0], self.scale)
        with torch.no_grad():
            out.cls_weight.copy_(torch.cat([self.cls_weight, novel_weights.to(self.cls_weight)]))
            w = self.bbox_pred.weight.view(n_old, 4, dim)  # (n_old, 4, dim)
            b = self.bbox_pred.bias.view(n_old, 4)  # (n_old, 4)
            new = novel_weights.shape[0]
            out.bbox_pred.weight.copy_(
                torch.cat([w, w[1:].mean(0, keepdim=True).expand(new, 4, dim)]).view(-1, dim)
            )
            out.bbox_pred.bias.copy_(torch.cat([b, b[1:].mean(0, keepdim=True).expand(new, 4)]).view(-1))
        return out


def build_faster_rcnn(n_classes: int, image_size: int = 320, max_detections: int = 100) -> nn.Module:
    """torchvision's Faster R-CNN (MobileNetV3-Large FPN), random weights, cosine box classifier.

    Training samples 300 proposals and 128 RoIs per image (torchvision: 2000 and 512): the box head's
    12544 -> 1024 layer dominates a CPU step, and a blood smear has ~20 objects.

    Args:
        n_classes: object classes (background is added).
        image_size: side of the square (letterboxed) input; the detector does not resize further.
        max_detections: most boxes kept per image.
    """
    det = require("torchvision.models.detection", "few-shot detection")
    anchors = require("torchvision.models.detection.anchor_utils", "few-shot detection")
    model = det.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=n_classes + 1,
        min_size=image_size,
        max_size=image_size,
        box_detections_per_img=max_detections,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        box_batch_size_per_image=128,
    )
    n_levels = len(model.rpn.anchor_generator.sizes)
    model.rpn.anchor_generator = anchors.AnchorGenerator(
        (ANCHOR_SIZES,) * n_levels, ((0.5, 1.0, 2.0),) * n_levels
    )
    dim = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = CosinePredictor(dim, n_classes + 1)
    return model


def as_float(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` or float images ``(N, 3, H, W)`` -> float ``[0, 1]``."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def tv_targets(boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    """Our 0-based labels -> torchvision's targets (label 0 is background, classes start at 1)."""
    return [{"boxes": b.float(), "labels": lab + 1} for b, lab in zip(boxes, labels, strict=True)]


def detection_loss(
    model: nn.Module, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor]
) -> Tensor:
    """Sum of torchvision's RPN and box-head losses of `model` (in training mode) on one batch."""
    losses = model(list(as_float(images)), tv_targets(boxes, labels))
    return torch.stack(list(losses.values())).sum()


class DetPredictor:
    """A detector adapted to one task; `predict` pads, `detections` gives one dict per image."""

    def __init__(self, model: nn.Module, classes: Sequence[str], max_detections: int) -> None:
        self.model = model.eval()
        self.classes = tuple(classes)
        self.max_detections = max_detections

    @torch.no_grad()
    def detections(self, images: Tensor) -> list[dict[str, Tensor]]:
        """``(N, 3, H, W)`` -> N dicts: ``boxes`` ``(n, 4)``, ``scores`` ``(n,)``, ``labels`` ``(n,)`` (0-based)."""
        out = self.model(list(as_float(images)))
        return [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - 1} for o in out]

    def predict(self, query_images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> ``(N, max_detections, 6)``: xmin, ymin, xmax, ymax, score, label (-1: none)."""
        dets = self.detections(query_images)
        out = torch.zeros(len(dets), self.max_detections, 6)
        out[:, :, 5] = -1
        for i, d in enumerate(dets):
            n = min(len(d["scores"]), self.max_detections)
            out[i, :n, :4] = d["boxes"][:n]
            out[i, :n, 4] = d["scores"][:n]
            out[i, :n, 5] = d["labels"][:n].float()
        return out


class DetOptions(LearnerOptions):
    """Hyper-parameters every detector shares.

    ``rpn_steps`` Adam steps (lr ``rpn_lr``, seed ``seed``) fine-tune the RPN head on the support boxes
    before the box classifier learns the novel classes (`medmeta.methods.detection.roi.tune_rpn`); 0
    keeps the base RPN, as in the original TFA.
    """

    image_size: int = 320
    max_detections: int = 100
    rpn_steps: int = 100
    rpn_lr: float = 1e-4
    seed: int = 0


class FewShotDetector(FewShotLearner[BoxSupport, DetEpisode]):
    """Base class of the few-shot detectors: a base-trained Faster R-CNN and its class names.

    Subclasses set `Options` and implement `adapt`. ``episode_loss`` is the detector's supervised loss on
    the episode's query images with the boxes of its base classes (novel boxes count as background), the
    loss of base training.
    """

    Options: ClassVar[type[DetOptions]] = DetOptions

    def __init__(self, base_classes: Sequence[str], options: DetOptions | None = None) -> None:
        super().__init__()
        if not base_classes:
            raise DataError("a detector needs at least one base class")
        self.options = options if options is not None else self.Options()
        self.base_classes = tuple(base_classes)
        self.model = build_faster_rcnn(
            len(self.base_classes), self.options.image_size, self.options.max_detections
        )

    @classmethod
    def from_options(
        cls, base_classes: Sequence[str], options: dict[str, Any] | None = None
    ) -> FewShotDetector:
        """Build from a plain dict of options (validated by ``cls.Options``)."""
        return cls(base_classes, cls.Options(**(options or {})))

    def base_predictor(self) -> DetPredictor:
        """The base detector as it is (no novel class); a copy, so later training does not change it."""
        return DetPredictor(copy.deepcopy(self.model), self.base_classes, self.options.max_detections)

    def class_map(self, support: BoxSupport) -> tuple[Tensor, list[int]]:
        """Map the support's class indices to the adapted detector's: base classes first, then novel.

        Returns:
            ``(len(support.classes),)`` int64 new index per support class, and the novel indices.

        Raises:
            DataError: a non-novel class of the support is not one of the detector's base classes.
        """
        unknown = [
            c for i, c in enumerate(support.classes) if i not in support.novel and c not in self.base_classes
        ]
        if unknown:
            raise DataError(
                f"classes {unknown} are neither base classes of this detector {list(self.base_classes)} "
                "nor marked novel: mark them novel or drop their boxes"
            )
        new = torch.empty(len(support.classes), dtype=torch.int64)
        for i, c in enumerate(support.classes):
            new[i] = self.base_classes.index(c) if i not in support.novel else 0
        for k, i in enumerate(support.novel):
            new[i] = len(self.base_classes) + k
        return new, list(support.novel)

    @abc.abstractmethod
    def adapt(self, support: BoxSupport) -> DetPredictor:
        """Learn the support's novel classes; never mutates ``self``.

        The predictor's classes are ``base_classes + novel class names`` (in `support.novel` order).
        """

    def adapted_classes(self, support: BoxSupport) -> tuple[str, ...]:
        return self.base_classes + tuple(support.classes[i] for i in support.novel)

    def episode_loss(self, episode: DetEpisode) -> Tensor:
        """Base-training loss on the query images: boxes of base classes only."""
        check_boxes(
            episode.query_images, episode.query_boxes, episode.query_labels, len(episode.classes), "query"
        )
        index = {c: i for i, c in enumerate(self.base_classes)}
        boxes, labels = [], []
        for b, lab in zip(episode.query_boxes, episode.query_labels, strict=True):
            keep = [j for j, x in enumerate(lab.tolist()) if episode.classes[x] in index]
            boxes.append(b[keep])
            labels.append(torch.tensor([index[episode.classes[lab[j]]] for j in keep], dtype=torch.int64))
        self.model.train()
        return detection_loss(self.model, episode.query_images, boxes, labels)
