"""Few-shot segmenters: prototype (PANet, ALPNet, SSL-ALPNet), MAML and fine-tuning, and two baselines.

`SEG_METHODS` is the registry of segmenters by name; `medmeta.methods.segmentation.base.FewShotSegmenter`
is their interface. Their episodes are `medmeta.tasks.segmentation.SegEpisode` (targets: masks).
"""

from __future__ import annotations

from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.methods.segmentation.baselines import OtsuThreshold, SupportMean
from medmeta.methods.segmentation.finetune import SegFineTune
from medmeta.methods.segmentation.maml import SegMAML
from medmeta.methods.segmentation.prototype import ALPNet, PANet, SSLALPNet

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

__all__ = ["BASELINES", "SEG_METHODS", "FewShotSegmenter"]
