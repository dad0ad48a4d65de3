"""Registration losses from MONAI: image similarity (local NCC, global mutual information, MSE) plus a
smoothness penalty on the displacement (bending energy or diffusion).

``loss = similarity(warped_moving, fixed) + smooth_weight * smoothness(ddf)``; MONAI's NCC and MI losses
are negated similarities (lower is better), so the sum is minimised.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.methods.registration.deps import monai_module

Similarity = Literal["lncc", "mi", "mse"]
Smoothness = Literal["bending", "diffusion"]


class _MSE(nn.Module):
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)


def similarity_loss(
    name: Similarity, spatial_dims: int, kernel_size: int = 9, num_bins: int = 32
) -> nn.Module:
    """``(warped (N, 1, *spatial), fixed (N, 1, *spatial)) -> scalar`` loss.

    ``lncc``: local normalised cross-correlation in ``kernel_size`` windows (mono-modal); ``mi``: global
    mutual information with ``num_bins`` Gaussian Parzen bins (cross-modal: CT against MR, T1 against T2);
    ``mse``: mean squared error.

    Raises:
        ValueError: an unknown name.
    """
    if name == "mse":
        return _MSE()
    losses = monai_module("losses", "registration losses").__dict__
    if name == "lncc":
        return losses["LocalNormalizedCrossCorrelationLoss"](
            spatial_dims=spatial_dims, kernel_size=kernel_size
        )
    if name == "mi":
        return losses["GlobalMutualInformationLoss"](num_bins=num_bins)
    raise ValueError(f"unknown similarity '{name}': choose lncc, mi or mse")


def smoothness_loss(name: Smoothness) -> nn.Module:
    """``ddf (N, ndim, *spatial) -> scalar``: MONAI's ``BendingEnergyLoss`` or ``DiffusionLoss``.

    Raises:
        ValueError: an unknown name.
    """
    losses = monai_module("losses", "registration losses").__dict__
    if name == "bending":
        return losses["BendingEnergyLoss"]()
    if name == "diffusion":
        return losses["DiffusionLoss"]()
    raise ValueError(f"unknown smoothness '{name}': choose bending or diffusion")
