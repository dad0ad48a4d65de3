"""Plain instance optimisation: a displacement field fitted to each pair from zero by Adam.

The reference for test-time optimisation without any learning: the field is a free tensor on a grid
``downsample`` times coarser than the image (upsampled linearly, which smooths it and shrinks the
problem), optimised on the registration loss of `medmeta.methods.registration.base.RegistrationMethod`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from medmeta.methods.registration.base import (
    FieldPredictor,
    RegistrationMethod,
    RegOptions,
    stored_fields,
    zero_field,
)
from medmeta.tasks.registration import PairSupport


class InstanceOptOptions(RegOptions):
    """Options of `InstanceOptimisation`.

    Attributes:
        steps: Adam steps per pair.
        lr: Adam learning rate (roughly voxels per step; 1.0 was best of 0.1/0.3/1.0 on held-out CT pairs
            at 64 px).
        downsample: the field lives on a grid this many times coarser than the image.
    """

    steps: int = Field(100, ge=0)
    lr: float = Field(1.0, gt=0.0)
    downsample: int = Field(2, ge=1)


def upsample_field(coarse: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``(N, ndim, *coarse)`` -> ``(N, ndim, *shape)`` by (bi/tri)linear interpolation (voxel units kept)."""
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(coarse, size=shape, mode=mode, align_corners=True)


class InstanceOptimisation(RegistrationMethod):
    """Instance optimisation of a dense displacement (as in Heinrich, "Closing the Gap between Deep and
    Conventional Image Registration using Probabilistic Dense Displacement Networks", MICCAI 2019,
    arXiv:1907.10931, without the network): each pair's field is optimised from zero on similarity +
    smoothness with Adam. No training; `adapt` fits the support pairs and returns their fields.

    Example:
        >>> method = InstanceOptimisation(InstanceOptOptions(steps=5))
        >>> method.register(torch.rand(1, 2, 16, 16)).shape
        torch.Size([1, 2, 16, 16])
    """

    Options: ClassVar[type[RegOptions]] = InstanceOptOptions
    options: InstanceOptOptions
    transductive: ClassVar[bool] = True

    def fit_fields(self, pairs: Tensor, steps: int | None = None, init: Tensor | None = None) -> Tensor:
        """Optimised displacement ``(N, ndim, *spatial)`` of pairs ``(N, 2, *spatial)`` (detached).

        Args:
            pairs: ``(N, 2, *spatial)``.
            steps: Adam steps (None: ``options.steps``).
            init: ``(N, ndim, *spatial)`` field to start from (None: zero); the coarse field is a
                correction added to it.
        """
        self.check_dims(pairs)
        o = self.options
        shape = tuple(pairs.shape[2:])
        base = zero_field(pairs) if init is None else init.detach()
        coarse_shape = tuple(max(2, s // o.downsample) for s in shape)
        coarse = torch.zeros(
            (pairs.shape[0], len(shape), *coarse_shape), dtype=pairs.dtype, device=pairs.device
        )
        coarse.requires_grad_(True)
        optimizer = torch.optim.Adam([coarse], lr=o.lr)
        with torch.enable_grad():
            for _ in range(o.steps if steps is None else steps):
                loss = self.loss(pairs.detach(), base + upsample_field(coarse, shape))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return base + upsample_field(coarse.detach(), shape)

    def adapt(self, support: PairSupport) -> FieldPredictor:
        return stored_fields(support, self.fit_fields(support.images), type(self).__name__)
