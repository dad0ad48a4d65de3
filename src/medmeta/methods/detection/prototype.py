"""Prototype head: novel classes as the mean RoI feature of their support boxes; the classifier takes no step.

Qi, Brown, Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018, https://arxiv.org/abs/1712.07136,
applied to the cosine box classifier of a base-trained Faster R-CNN (as in TFA w/ cos). Each novel class's
weight is the normalised mean of the box-head features of its support boxes, so a proposal's novel score
is its cosine similarity to that prototype; the novel box regressor is the mean of the base regressors.
Like TFA's, the RPN head is first fine-tuned on the support boxes (``rpn_steps``; same seed, same RPN), so
the two methods differ only in how the box classifier learns the novel class.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from medmeta.methods.detection.base import DetOptions, DetPredictor, FewShotDetector
from medmeta.methods.detection.roi import support_rois, tune_rpn
from medmeta.tasks.detection import BoxSupport


class ProtoOptions(DetOptions):
    """No hyper-parameter beyond the shared ones: the prototype is the mean feature."""


class ProtoDet(FewShotDetector):
    """Imprinted prototypes of the novel classes in the base detector's cosine classifier.

    Example:
        >>> proto = ProtoDet(["RBC", "Platelets"])  # then base-train proto.model
        >>> predictor = proto.adapt(support)  # doctest: +SKIP
    """

    Options = ProtoOptions

    def adapt(self, support: BoxSupport) -> DetPredictor:
        model: Any = copy.deepcopy(self.model).eval()
        new_index, novel = self.class_map(support)
        labels = [new_index[lab] for lab in support.labels]
        opts = self.options
        tune_rpn(model, support.images, support.boxes, opts.rpn_steps, opts.rpn_lr, opts.seed)
        rois = support_rois(model, support.images, support.boxes, labels)
        first = len(self.base_classes)
        protos = torch.stack(
            [
                F.normalize(rois.gt_features[rois.gt_labels == first + k], dim=1).mean(0)
                for k in range(len(novel))
            ]
        )  # (n_novel, D)
        model.roi_heads.box_predictor = model.roi_heads.box_predictor.extended(F.normalize(protos, dim=1))
        return DetPredictor(model, self.adapted_classes(support), self.options.max_detections)
