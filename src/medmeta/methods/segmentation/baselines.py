"""Trivial baselines reported beside every method: Otsu thresholding and the support masks' mean."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from medmeta.methods.segmentation.base import FewShotSegmenter, two_class_logits
from medmeta.tasks.segmentation import MaskSupport


def otsu_threshold(image: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold (Otsu 1979): the intensity that maximises the between-class variance.

    Args:
        image: any shape, float.
        bins: histogram bins between the image's min and max.

    Returns:
        Scalar threshold (the minimum when the image is constant).
    """
    x = image.detach().flatten().float()
    lo, hi = x.min(), x.max()
    if float(hi - lo) <= 0:
        return lo
    hist = torch.histc(x, bins, float(lo), float(hi))  # (bins,)
    centres = lo + (torch.arange(bins, dtype=torch.float32) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)  # pixels at or below each bin
    w1 = hist.sum() - w0
    m0 = (hist * centres).cumsum(0) / w0.clamp(min=1)
    m1 = ((hist * centres).sum() - (hist * centres).cumsum(0)) / w1.clamp(min=1)
    between = w0 * w1 * (m0 - m1) ** 2  # (bins,)
    k = int(between.argmax())
    return lo + (k + 1) * (hi - lo) / bins  # upper edge of the last background bin


class OtsuPredictor:
    def __init__(self, brighter: bool, scale: float) -> None:
        self.brighter, self.scale = brighter, scale

    def predict(self, query_images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 2, H, W)``: foreground where the grey value is past each image's Otsu threshold."""
        grey = query_images.mean(1)  # (N, H, W)
        t = torch.stack([otsu_threshold(g) for g in grey]).view(-1, 1, 1)  # (N, 1, 1)
        sign = 1.0 if self.brighter else -1.0
        return two_class_logits(sign * self.scale * (grey - t))


class OtsuThreshold(FewShotSegmenter):
    """Otsu thresholding of each query image; the support only decides the polarity (is the structure
    brighter or darker than its surroundings?). No training."""

    training_source: ClassVar[Literal["labels", "superpixels", "none"]] = "none"

    def adapt(self, support: MaskSupport) -> OtsuPredictor:
        grey = support.images.mean(1)  # (K, H, W)
        fg = support.masks > 0.5
        brighter = bool(grey[fg].mean() >= grey[~fg].mean()) if bool((~fg).any()) else True
        return OtsuPredictor(brighter, 50.0)


class MeanMaskPredictor:
    def __init__(self, mean_mask: Tensor) -> None:
        self.mean_mask = mean_mask

    def predict(self, query_images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 2, H, W)``: the same map for every query, foreground where it is >= 0.5."""
        p = self.mean_mask.clamp(1e-4, 1 - 1e-4)
        logit = (p.log() - (1 - p).log()).to(query_images.dtype)  # (H, W)
        return two_class_logits(logit.expand(query_images.shape[0], *logit.shape))


class SupportMean(FewShotSegmenter):
    """Predict the pixel-wise mean of the support masks for every query (a location prior; foreground
    where at least half of the shots are foreground, ties at 0.5 included). No training."""

    training_source: ClassVar[Literal["labels", "superpixels", "none"]] = "none"

    def adapt(self, support: MaskSupport) -> MeanMaskPredictor:
        mean = support.masks.float().mean(0)  # (H, W)
        return MeanMaskPredictor(torch.where(mean >= 0.5, mean.clamp(min=0.5 + 1e-3), mean))
