"""MAML and first-order MAML for segmentation, on a small U-Net.

The U-Net is called only through `torch.func.functional_call` over a parameter dict, and the inner loop is
`medmeta.methods.functional.inner_loop` (shared with the classification MAML), so `adapt` returns a
predictor holding adapted tensors and never touches the method.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.func import functional_call

from medmeta.methods.functional import ParamDict, batchnorm_overrides, inner_loop, sgd_update
from medmeta.methods.segmentation.base import FewShotSegmenter, SegOptions, seg_loss
from medmeta.models.unet import SmallUNet
from medmeta.tasks.segmentation import MaskSupport, SegEpisode


class MAMLSegOptions(SegOptions):
    """Options of `SegMAML`.

    Attributes:
        inner_steps: SGD steps on the support during meta-training.
        eval_steps: SGD steps when adapting for evaluation or prediction (eval mode).
        inner_lr: inner SGD learning rate.
        first_order: first-order MAML (inner gradients treated as constants).
        adapt_layers: ``all`` parameters, or only the ``decoder`` (up-path and head) in the inner loop.
    """

    inner_steps: int = Field(3, ge=1)
    eval_steps: int = Field(10, ge=1)
    inner_lr: float = Field(0.1, gt=0.0)
    first_order: bool = False
    adapt_layers: Literal["all", "decoder"] = "all"


class FunctionalPredictor:
    """The U-Net's functional forward with one task's adapted parameters."""

    def __init__(self, method: SegMAML, params: ParamDict) -> None:
        self.method, self.params = method, params

    def predict(self, query_images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 2, H, W)`` logits."""
        return self.method.forward_with(self.params, query_images)


class SegMAML(FewShotSegmenter):
    """Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017,
    https://arxiv.org/abs/1703.03400, applied to segmentation.

    A U-Net's initial weights are meta-learned so that a few SGD steps on the support (image, mask) pairs
    segment the query. Batch norm always uses the current batch's statistics (support while adapting, query
    when predicting), as in the classification MAML.

    Example:
        >>> model = SegMAML.from_options({"base": 4, "depth": 1, "eval_steps": 1})
        >>> model.adapt(MaskSupport(torch.rand(1, 1, 16, 16), torch.ones(1, 16, 16))).predict(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 2, 16, 16])
    """

    Options: ClassVar[type[SegOptions]] = MAMLSegOptions
    options: MAMLSegOptions

    def __init__(self, options: SegOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.net = SmallUNet(o.in_channels, 2, o.base, o.depth)

    def adapted_names(self) -> list[str]:
        names = [n for n, _ in self.net.named_parameters()]
        if self.options.adapt_layers == "decoder":
            names = [n for n in names if n.startswith(("up.", "head."))]
        return names

    def forward_with(self, params: ParamDict, images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, 2, H, W)`` logits of the U-Net under `params` (batch statistics)."""
        buffers = dict(self.net.named_buffers()) | batchnorm_overrides(self.net)
        return functional_call(self.net, (params, buffers), (images,))  # type: ignore[arg-type]

    def trajectory(
        self, support_images: Tensor, support_masks: Tensor, steps: int, *, track: bool
    ) -> ParamDict:
        """Parameters after `steps` SGD updates on the support loss (differentiable when `track`)."""
        params = dict(self.net.named_parameters())

        def loss_fn(p: ParamDict, k: int) -> Tensor:
            return seg_loss(self.forward_with(p, support_images), support_masks)

        lr = self.options.inner_lr
        with torch.enable_grad():
            return inner_loop(
                loss_fn,
                params,
                self.adapted_names(),
                sgd_update(lambda k, i: lr),
                steps,
                track=track,
                create_graph=not self.options.first_order,
            )[-1]

    def adapt(self, support: MaskSupport) -> FunctionalPredictor:
        """Adapt a copy of the U-Net's parameters; differentiable when grad mode is on (meta-training).

        Uses `inner_steps` in training mode and `eval_steps` in eval mode; works under ``torch.no_grad()``
        (the inner gradients are taken with grad enabled and the result is detached).
        """
        steps = self.options.inner_steps if self.training else self.options.eval_steps
        track = torch.is_grad_enabled()
        params = self.trajectory(support.images, support.masks.to(support.images.dtype), steps, track=track)
        if not track:
            params = {k: v.detach() for k, v in params.items()}
        return FunctionalPredictor(self, params)

    def episode_loss(self, episode: SegEpisode) -> Tensor:
        if episode.query_masks is None:
            raise ValueError("episode_loss needs query masks")
        predictor = self.adapt(episode.support)
        return seg_loss(predictor.predict(episode.query_images), episode.query_masks)
