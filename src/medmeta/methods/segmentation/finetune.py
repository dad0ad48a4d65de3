"""Fine-tuning baseline: pretrain a U-Net on the training structures, fine-tune a copy on the support."""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from medmeta.methods.segmentation.base import FewShotSegmenter, SegOptions, seg_loss
from medmeta.models.unet import SmallUNet
from medmeta.tasks.segmentation import MaskSupport, SegEpisode


class FineTuneOptions(SegOptions):
    """Options of `SegFineTune`.

    Attributes:
        steps: Adam steps on the support pairs.
        lr: fine-tuning learning rate.
        freeze_encoder: fine-tune only the decoder (up-path and head), keeping the pretrained encoder.
    """

    steps: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    freeze_encoder: bool = False


class FineTunedPredictor:
    """A fine-tuned copy of the U-Net in eval mode."""

    def __init__(self, net: SmallUNet) -> None:
        self.net = net

    def predict(self, query_images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 2, H, W)`` logits."""
        return self.net(query_images)


class SegFineTune(FewShotSegmenter):
    """Transfer-learning baseline (e.g. Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019,
    https://arxiv.org/abs/1904.04232, in its segmentation form).

    Training is plain supervised segmentation of the training structures (every image of every training
    episode, foreground = that episode's structure). `adapt` copies the network and fine-tunes the copy with
    Adam on the support pairs; batch norm keeps the pretrained statistics (eval mode) throughout.

    Example:
        >>> model = SegFineTune.from_options({"base": 4, "depth": 1, "steps": 1})
        >>> model.adapt(MaskSupport(torch.rand(1, 1, 16, 16), torch.ones(1, 16, 16))).predict(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 2, 16, 16])
    """

    Options: ClassVar[type[SegOptions]] = FineTuneOptions
    options: FineTuneOptions

    def __init__(self, options: SegOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.net = SmallUNet(o.in_channels, 2, o.base, o.depth)

    def adapt(self, support: MaskSupport) -> FineTunedPredictor:
        net = copy.deepcopy(self.net).eval()
        for p in net.parameters():
            p.requires_grad_(True)
        if self.options.freeze_encoder:
            for p in net.down.parameters():
                p.requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.options.lr)
        masks = support.masks.to(support.images.dtype)
        with torch.enable_grad():
            for _ in range(self.options.steps):
                loss = seg_loss(net(support.images.detach()), masks)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for p in net.parameters():
            p.requires_grad_(False)
        return FineTunedPredictor(net)

    def episode_loss(self, episode: SegEpisode) -> Tensor:
        """Supervised pretraining loss on all the episode's (image, mask) pairs."""
        if episode.query_masks is None:
            raise ValueError("episode_loss needs query masks")
        images = torch.cat([episode.support_images, episode.query_images])  # (K + N, C, H, W)
        masks = torch.cat([episode.support_masks, episode.query_masks])  # (K + N, H, W)
        return seg_loss(self.net(images), masks)
