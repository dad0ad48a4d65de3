"""VoxelMorph: a U-Net maps a pair to a stationary velocity field, integrated to a diffeomorphic displacement.

MONAI builds the network (``VoxelMorphUNet`` inside ``VoxelMorph``: scaling-and-squaring integration and
``Warp``); medmeta calls it only through `torch.func.functional_call` over a parameter dict, so optional
test-time steps (``eval_steps``) adapt a copy of the weights with `medmeta.methods.functional.inner_loop`
and never touch the method.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.func import functional_call

from medmeta.methods.functional import InnerUpdate, ParamDict, adam_update, inner_loop, sgd_update
from medmeta.methods.registration.base import FieldPredictor, RegistrationMethod, RegOptions
from medmeta.methods.registration.deps import monai_module
from medmeta.tasks.registration import PairSupport


class VoxelMorphOptions(RegOptions):
    """Options of `VoxelMorph` and its meta-learned variant.

    Attributes:
        channels: encoder widths of the U-Net (an even number of levels, MONAI's ``VoxelMorphUNet``).
        final_channels: widths of the convolutions after the U-Net.
        integration_steps: scaling-and-squaring steps (0: the output is the displacement itself).
        inner_steps: gradient steps on the support pairs' loss during training (0: amortised training).
        eval_steps: gradient steps on each pair's loss at test time (0: one forward pass).
        inner_lr: learning rate of those steps.
        inner_optimizer: ``adam`` (betas `adam_betas`) or ``sgd``.
        adam_betas: Adam's ``(beta1, beta2)`` in the inner loop.
    """

    channels: tuple[int, ...] = (16, 32, 32, 32)
    final_channels: tuple[int, ...] = (16, 16)
    integration_steps: int = Field(7, ge=0)
    inner_steps: int = Field(0, ge=0)
    eval_steps: int = Field(0, ge=0)
    inner_lr: float = Field(1e-3, gt=0.0)
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    adam_betas: tuple[float, float] = (0.9, 0.999)


class VoxelMorph(RegistrationMethod):
    """Balakrishnan et al., "VoxelMorph: A Learning Framework for Deformable Medical Image Registration",
    IEEE TMI 2019, arXiv:1809.05231; diffeomorphic variant of Dalca et al., MICCAI 2018, arXiv:1805.04605.

    A U-Net reads the moving and fixed images as two channels and outputs a velocity field; its integral
    warps the moving image. Trained without labels on similarity + smoothness; ``eval_steps > 0`` fine-tunes
    a copy of the weights on each test pair (test-time instance optimisation from the trained network).

    Example:
        >>> method = VoxelMorph(VoxelMorphOptions(channels=(4, 8), final_channels=(4,)))
        >>> method.register(torch.rand(2, 2, 32, 32)).shape
        torch.Size([2, 2, 32, 32])
    """

    Options: ClassVar[type[RegOptions]] = VoxelMorphOptions
    options: VoxelMorphOptions

    def __init__(self, options: RegOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        nets = monai_module("networks.nets", "the VoxelMorph network")
        backbone = nets.VoxelMorphUNet(
            spatial_dims=o.spatial_dims,
            in_channels=2,
            unet_out_channels=o.final_channels[0],
            channels=o.channels,
            final_conv_channels=o.final_channels,
        )
        self.net = nets.VoxelMorph(
            backbone=backbone, integration_steps=o.integration_steps, spatial_dims=o.spatial_dims
        )

    def forward_with(self, params: ParamDict, pairs: Tensor) -> Tensor:
        """Displacement ``(N, ndim, *spatial)`` of pairs ``(N, 2, *spatial)`` under `params`.

        Spatial sizes that the U-Net's pooling cannot halve evenly are padded at the end (edge values
        repeated) to a multiple of ``2 ** len(channels)``, and the field is cropped back.
        """
        self.check_dims(pairs)
        spatial = tuple(pairs.shape[2:])
        multiple = 2 ** len(self.options.channels)
        pad = [(-s) % multiple for s in spatial]
        x = pairs
        if any(pad):
            x = F.pad(pairs, [v for p in reversed(pad) for v in (0, p)], mode="replicate")  # (N, 2, *padded)
        _, ddf = functional_call(self.net, params, (x[:, :1], x[:, 1:]))
        return ddf[(..., *(slice(0, s) for s in spatial))]  # (N, ndim, *spatial)

    def inner_update(self) -> InnerUpdate:
        o = self.options
        if o.inner_optimizer == "adam":
            return adam_update(o.inner_lr, o.adam_betas)
        return sgd_update(lambda k, i: o.inner_lr)

    def trajectory(
        self, pairs: Tensor, steps: int, *, track: bool, losses: list[Tensor] | None = None
    ) -> ParamDict:
        """Weights after `steps` inner updates on the registration loss of `pairs` (first order).

        Args:
            pairs: ``(n, 2, *spatial)`` support pairs.
            steps: inner updates (0: the method's own parameters).
            track: keep the result differentiable with respect to the initial weights (identity Jacobian:
                first-order MAML); False detaches every step.
            losses: if given, receives the detached loss of every step.
        """
        params = dict(self.net.named_parameters())
        if steps == 0:
            return params

        def loss_fn(p: ParamDict, k: int) -> Tensor:
            value = self.loss(pairs, self.forward_with(p, pairs))
            if losses is not None:
                losses.append(value.detach())
            return value

        with torch.enable_grad():
            return inner_loop(
                loss_fn, params, list(params), self.inner_update(), steps, track=track, create_graph=False
            )[-1]

    def adapt(self, support: PairSupport, steps: int | None = None) -> FieldPredictor:
        """The network with weights adapted on the support pairs by `steps` inner updates.

        Args:
            support: pairs to adapt on (at test time: the pairs to register).
            steps: inner updates (None: ``inner_steps`` in training mode, ``eval_steps`` in eval mode).
        """
        if steps is None:
            steps = self.options.inner_steps if self.training else self.options.eval_steps
        track = torch.is_grad_enabled()
        params = self.trajectory(support.images, steps, track=track)
        if not track:
            params = {k: v.detach() for k, v in params.items()}

        def predict(pairs: Tensor) -> Tensor:
            with torch.set_grad_enabled(track):
                return self.forward_with(params, pairs)

        return FieldPredictor(predict)
