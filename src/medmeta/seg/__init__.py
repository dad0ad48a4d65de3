"""Few-shot segmentation: episodes of (image, mask) pairs, prototype, MAML and fine-tuning segmenters.

`SEG_METHODS` is the registry of segmenters by name; see `medmeta.seg.base.FewShotSegmenter` for the
interface.
"""

from __future__ import annotations

from medmeta.seg.base import FewShotSegmenter, SegPredictor
from medmeta.seg.baselines import OtsuThreshold, SupportMean
from medmeta.seg.finetune import SegFineTune
from medmeta.seg.maml import SegMAML
from medmeta.seg.prototype import ALPNet, PANet, SSLALPNet

SEG_METHODS: dict[str, type[FewShotSegmenter]] = {
    "panet": PANet,
    "alpnet": ALPNet,
    "ssl_alpnet": SSLALPNet,
    "maml": SegMAML,
    "finetune": SegFineTune,
    "otsu": OtsuThreshold,
    "support_mean": SupportMean,
}

#: the trivial baselines evaluated beside every method
BASELINES = ("otsu", "support_mean")

__all__ = ["BASELINES", "SEG_METHODS", "FewShotSegmenter", "SegPredictor"]
