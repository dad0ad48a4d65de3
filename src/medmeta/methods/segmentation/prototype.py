"""Prototype segmenters: PANet, ALPNet and SSL-ALPNet.

Pure functions (`masked_average`, `local_prototypes`, `prototype_scores`) sit under the classes that hold
the hyper-parameters.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.errors import ConfigError
from medmeta.methods.segmentation.base import FewShotSegmenter, SegOptions, seg_loss
from medmeta.models.unet import SmallUNet
from medmeta.tasks.segmentation import MaskSupport, SegEpisode


def masked_average(features: Tensor, masks: Tensor) -> Tensor:
    """Masked average pooling over all shots.

    Args:
        features: ``(K, C, H, W)``.
        masks: ``(K, H, W)`` weights in ``[0, 1]``.

    Returns:
        ``(1, C)`` prototype (zeros when the mask is empty).
    """
    w = masks.unsqueeze(1)  # (K, 1, H, W)
    return ((features * w).sum((0, 2, 3)) / w.sum().clamp(min=1e-5)).unsqueeze(0)


def local_prototypes(features: Tensor, masks: Tensor, window: int, threshold: float) -> Tensor:
    """ALPNet's local prototypes: average features in ``window x window`` cells mostly inside the mask.

    Args:
        features: ``(K, C, H, W)``.
        masks: ``(K, H, W)`` in ``{0, 1}``.
        window: pooling window and stride in pixels.
        threshold: a cell is kept when at least this fraction of it is inside the mask.

    Returns:
        ``(P, C)`` local prototypes, ``P >= 0``.
    """
    pooled = F.avg_pool2d(features, window, window, ceil_mode=True)  # (K, C, h, w)
    share = F.avg_pool2d(masks.unsqueeze(1), window, window, ceil_mode=True)  # (K, 1, h, w)
    keep = share.flatten() >= threshold  # (K*h*w,)
    flat = pooled.permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # (K*h*w, C)
    return flat[keep]


def prototype_scores(query_features: Tensor, prototypes: Tensor, scale: float) -> Tensor:
    """Scaled cosine similarity to a set of prototypes, combined as in ALPNet.

    Each pixel's score is ``sum_p softmax_p(s_p) * s_p`` with ``s_p = scale * cos(f, proto_p)``: the
    largest similarity, softened. With one prototype it is the PANet score ``scale * cos``.

    Args:
        query_features: ``(N, C, H, W)``.
        prototypes: ``(P, C)``, ``P >= 1``.
        scale: the cosine temperature (20 in PANet and ALPNet).

    Returns:
        ``(N, H, W)`` scores.
    """
    q = F.normalize(query_features, dim=1)
    p = F.normalize(prototypes, dim=1)
    sims = scale * torch.einsum("nchw,pc->nphw", q, p)  # (N, P, H, W)
    return (sims.softmax(1) * sims).sum(1)


class PrototypeOptions(SegOptions):
    """Options of the prototype segmenters.

    Attributes:
        feature_dim: channels of the pixel embedding.
        scale: cosine temperature.
        local_window: pooling window of local prototypes (0: global prototypes only, PANet).
        local_threshold: mask share for a window to give a local prototype (ALPNet: 0.95).
        align_weight: weight of PANet's prototype alignment loss (query -> support), 0 to disable.
    """

    feature_dim: int = Field(32, ge=2)
    scale: float = Field(20.0, gt=0.0)
    local_window: int = Field(0, ge=0)
    local_threshold: float = Field(0.95, gt=0.0, le=1.0)
    align_weight: float = Field(1.0, ge=0.0)


class PrototypePredictor:
    """Scores query pixels against fixed foreground and background prototypes."""

    def __init__(self, encoder: nn.Module, fg: Tensor, bg: Tensor, scale: float) -> None:
        self.encoder, self.fg, self.bg, self.scale = encoder, fg, bg, scale

    @property
    def foreground_has_no_local_prototype(self) -> bool:
        """True when the background has local prototypes and the foreground only its global one.

        That happens to thin structures (vessels, membranes): they fill no pooling window to ALPNet's
        threshold. Each pixel then takes the softened maximum over hundreds of background prototypes
        against one foreground prototype, and the background wins nearly everywhere (SSL-ALPNet on DRIVE
        at full resolution: no vessel pixel; with global prototypes only, `use_global_prototypes`, Dice 0.23).
        """
        return self.fg.shape[0] == 1 and self.bg.shape[0] > 1

    def predict(self, query_images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 2, H, W)`` logits."""
        feats = self.encoder(query_images)  # (N, D, H, W)
        return torch.stack(
            [prototype_scores(feats, self.bg, self.scale), prototype_scores(feats, self.fg, self.scale)], 1
        )


class PANet(FewShotSegmenter):
    """Wang et al., "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment", ICCV 2019,
    https://arxiv.org/abs/1908.06391.

    Support features are pooled under the foreground and background masks into two prototypes; each query
    pixel is labelled by its scaled cosine similarity to them. Training adds the alignment loss: prototypes
    from the query's own prediction must segment the support.

    Example:
        >>> model = PANet.from_options({"base": 8, "depth": 2})
        >>> logits = model.adapt(MaskSupport(torch.rand(1, 1, 32, 32), (torch.rand(1, 32, 32) > 0.5).float())).predict(
        ...     torch.rand(2, 1, 32, 32))
        >>> logits.shape
        torch.Size([2, 2, 32, 32])
    """

    Options: ClassVar[type[SegOptions]] = PrototypeOptions
    options: PrototypeOptions

    def __init__(self, options: SegOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.encoder = SmallUNet(o.in_channels, o.feature_dim, o.base, o.depth)

    def _prototypes(self, feats: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        o = self.options
        fg, bg = [masked_average(feats, masks)], [masked_average(feats, 1 - masks)]
        if o.local_window > 0:
            fg.append(local_prototypes(feats, masks, o.local_window, o.local_threshold))
            bg.append(local_prototypes(feats, 1 - masks, o.local_window, o.local_threshold))
        return torch.cat(fg), torch.cat(bg)  # (P_fg, D), (P_bg, D)

    def adapt(self, support: MaskSupport) -> PrototypePredictor:
        feats = self.encoder(support.images)  # (K, D, H, W)
        fg, bg = self._prototypes(feats, support.masks.to(feats.dtype))
        return PrototypePredictor(self.encoder, fg, bg, self.options.scale)

    def episode_loss(self, episode: SegEpisode) -> Tensor:
        """Query loss plus ``align_weight`` x the support loss under prototypes of the predicted query."""
        if episode.query_masks is None:
            raise ValueError("episode_loss needs query masks")
        predictor = self.adapt(episode.support)
        q_feats = self.encoder(episode.query_images)  # (N, D, H, W)
        logits = PrototypePredictor(nn.Identity(), predictor.fg, predictor.bg, predictor.scale).predict(
            q_feats
        )
        loss = seg_loss(logits, episode.query_masks)
        if self.options.align_weight > 0:
            pred = logits.argmax(1).to(q_feats.dtype)  # (N, H, W)
            if bool(pred.any()) and not bool(pred.all()):
                fg, bg = self._prototypes(q_feats, pred)
                s_feats = self.encoder(episode.support_images)
                back = PrototypePredictor(nn.Identity(), fg, bg, self.options.scale).predict(s_feats)
                loss = loss + self.options.align_weight * seg_loss(back, episode.support_masks)
        return loss


def use_global_prototypes(model: FewShotSegmenter) -> FewShotSegmenter:
    """Make a prototype segmenter (PANet, ALPNet, SSL-ALPNet) adapt with one foreground and one background
    prototype (PANet's rule), keeping its trained encoder; for thin structures, see
    `PrototypePredictor.foreground_has_no_local_prototype`. Changes `model` in place and returns it.

    Raises:
        ConfigError: `model` is not a prototype segmenter.
    """
    if not isinstance(model, PANet):
        raise ConfigError(
            f"global prototypes apply to the prototype segmenters (panet, alpnet, ssl_alpnet), not to "
            f"{type(model).__name__}: leave the option out"
        )
    model.options = model.options.model_copy(update={"local_window": 0})  # 0: no local prototypes
    return model


class ALPNetOptions(PrototypeOptions):
    local_window: int = Field(8, ge=1)
    align_weight: float = Field(0.0, ge=0.0)


class ALPNet(PANet):
    """Ouyang et al., "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation
    without Annotation", ECCV 2020, https://arxiv.org/abs/2007.09886 (the ALPNet model).

    Adds local prototypes (features averaged in pooling windows that lie inside the foreground or the
    background) to the global ones, so a structure with varied appearance is matched part by part.
    Trained here on manually labelled training structures.
    """

    Options: ClassVar[type[SegOptions]] = ALPNetOptions
    training_source: ClassVar[Literal["labels", "superpixels", "none"]] = "labels"


class SSLALPNet(ALPNet):
    """Ouyang et al., ECCV 2020, https://arxiv.org/abs/2007.09886 (SSL-ALPNet).

    The ALPNet model trained without any manual label: episodes come from superpixel pseudo-labels of
    unlabelled images with an augmented query (`medmeta.tasks.superpixels.SuperpixelEpisodes`).
    """

    training_source: ClassVar[Literal["labels", "superpixels", "none"]] = "superpixels"
