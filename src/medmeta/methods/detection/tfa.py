"""TFA: two-stage fine-tuning approach.

Wang, Huang, Darrell, Gonzalez, Yu, "Frustratingly Simple Few-Shot Object Detection", ICML 2020,
https://arxiv.org/abs/2003.06957. The detector is trained on the base classes; for the novel classes only
the last layer (cosine box classifier and box regressor, base rows included) is fine-tuned on the K-shot
set while the backbone, RPN and box head stay frozen. Here the RPN head is fine-tuned first (``rpn_steps``,
as in FSCE; 0 restores the original): base training taught it that the novel objects are background.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from medmeta.methods.detection.base import DetOptions, DetPredictor, FewShotDetector, require
from medmeta.methods.detection.roi import sample, support_rois, tune_rpn
from medmeta.tasks.detection import BoxSupport


class TFAOptions(DetOptions):
    """Fine-tuning of the last layer: optimiser steps, learning rate, seed of the RoI sampling."""

    steps: int = 300
    lr: float = 1e-3


class TFA(FewShotDetector):
    """Two-stage fine-tuning (TFA w/ cos): novel rows of the cosine classifier start random.

    Example:
        >>> tfa = TFA(["RBC", "Platelets"])  # then base-train tfa.model (medmeta.train.detection)
        >>> predictor = tfa.adapt(support)  # doctest: +SKIP
        >>> dets = predictor.predict(query_images)  # (N, max_det, 6)  # doctest: +SKIP
    """

    Options = TFAOptions
    options: TFAOptions

    def adapt(self, support: BoxSupport) -> DetPredictor:
        opts = self.options
        model: Any = copy.deepcopy(self.model).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        new_index, novel = self.class_map(support)
        labels = [new_index[lab] for lab in support.labels]
        tune_rpn(model, support.images, support.boxes, opts.rpn_steps, opts.rpn_lr, opts.seed)
        rois = support_rois(model, support.images, support.boxes, labels)
        fastrcnn_loss = require("torchvision.models.detection.roi_heads", "TFA").fastrcnn_loss
        old = model.roi_heads.box_predictor
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts.seed)
            head = old.extended(torch.randn(len(novel), old.cls_weight.shape[1]) * 0.01)
            opt = torch.optim.Adam(head.parameters(), lr=opts.lr)
            for _ in range(opts.steps):
                feats, tv_labels, targets = sample(rois, model.roi_heads.fg_bg_sampler)
                logits, deltas = head(feats)  # (R, C + 1), (R, 4 (C + 1))
                cls_loss, box_loss = fastrcnn_loss(logits, deltas, [tv_labels], [targets])
                opt.zero_grad(set_to_none=True)
                (cls_loss + box_loss).backward()
                opt.step()
        for p in head.parameters():
            p.requires_grad_(False)
        model.roi_heads.box_predictor = head
        return DetPredictor(model, self.adapted_classes(support), opts.max_detections)
