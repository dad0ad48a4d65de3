"""Controlled synthetic deformations of real images: smooth random displacement fields and a plain warp.

Convention (the one MONAI's ``Warp`` uses): a dense displacement field ``ddf`` of shape
``(N, ndim, *spatial)`` is in voxel units, channel ``i`` displacing along spatial axis ``i``, and
``warp(moving, ddf)(x) = moving(x + ddf(x))``. A synthetic pair is ``fixed = warp(moving, ddf)``, so the
field that registers ``moving`` onto ``fixed`` is exactly ``ddf`` (the ground truth for end-point error).

`warp` here is written with ``torch.nn.functional.grid_sample`` alone, so the data layer needs no MONAI
and the tests can check MONAI's ``Warp`` against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.errors import DataError


def identity_grid(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """Voxel coordinates ``(ndim, *shape)``: channel ``i`` holds the index along axis ``i``."""
    axes = [torch.arange(s, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (ndim, *shape)


def warp(image: Tensor, ddf: Tensor, mode: str = "bilinear") -> Tensor:
    """``image(x + ddf(x))`` sampled with border padding.

    Args:
        image: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float.
        ddf: ``(N, ndim, *spatial)`` displacement in voxels (channel ``i`` along spatial axis ``i``).
        mode: ``bilinear`` for images, ``nearest`` for label maps.

    Returns:
        The warped image, shaped like `image`.

    Raises:
        DataError: the field does not match the image.
    """
    ndim = image.ndim - 2
    expected = (image.shape[0], ndim, *image.shape[2:])
    if ndim not in (2, 3) or tuple(ddf.shape) != expected:
        raise DataError(
            f"ddf must be {expected} for an image of shape {tuple(image.shape)}, got {tuple(ddf.shape)}"
        )
    spatial = tuple(image.shape[2:])
    coords = identity_grid(spatial, ddf.dtype).to(ddf.device)[None] + ddf  # (N, ndim, *spatial)
    sizes = torch.tensor([max(s - 1, 1) for s in spatial], dtype=ddf.dtype, device=ddf.device)
    norm = coords * (2.0 / sizes.view(1, ndim, *([1] * ndim))) - 1.0  # (N, ndim, *spatial) in [-1, 1]
    grid = norm.movedim(1, -1).flip(-1)  # (N, *spatial, ndim), last axis x, y(, z) as grid_sample expects
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


def random_smooth_field(
    shape: tuple[int, ...],
    *,
    magnitude: float,
    control_points: int = 5,
    generator: torch.Generator | None = None,
    n: int = 1,
) -> Tensor:
    """Smooth random displacement fields: Gaussian displacements at a coarse control grid, upsampled cubically.

    The control displacements are drawn from N(0, magnitude^2) voxels per axis; the border control points are
    zero so the image frame stays put. Small magnitudes relative to the control spacing give a field
    without folding.

    Args:
        shape: spatial shape ``(H, W)`` or ``(D, H, W)``.
        magnitude: standard deviation of the control displacements, in voxels.
        control_points: control points per axis (at least 3: the border ones are fixed at zero).
        generator: seeded generator (same seed, same field).
        n: number of fields.

    Returns:
        ``(n, ndim, *shape)`` float32.

    Raises:
        DataError: an unsupported dimension, a negative magnitude or fewer than 3 control points.
    """
    ndim = len(shape)
    if ndim not in (2, 3):
        raise DataError(f"shape must be 2-D or 3-D, got {shape}")
    if magnitude < 0 or control_points < 3:
        raise DataError(f"need magnitude >= 0 and control_points >= 3, got {magnitude} and {control_points}")
    coarse = torch.randn((n, ndim, *([control_points] * ndim)), generator=generator) * magnitude
    inner = torch.zeros_like(coarse)
    core = (slice(None), slice(None), *([slice(1, -1)] * ndim))
    inner[core] = coarse[core]  # border control points stay at zero
    mode = "bicubic" if ndim == 2 else "trilinear"
    return F.interpolate(inner, size=shape, mode=mode, align_corners=True).float()  # (n, ndim, *shape)
