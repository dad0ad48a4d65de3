"""`RawPixels`: the raw-pixel baseline as a backbone with no parameter.

A representation earns its place only by beating the image itself. ``pixels`` (or ``pixels:G``) average-pools
the run-normalised image to a ``G x G`` grid per channel (area averaging: downsampling) and flattens it, so a
nearest-class-mean rule (ProtoNet) or a logistic regression (linear probe) on top of it is the classic
raw-pixel baseline. It has nothing to train: the benchmark evaluates it frozen and ``medmeta adapt --backbone
pixels`` adapts it like any pretrained backbone.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from medmeta.errors import ConfigError

#: default grid side: 8x8 per channel (192 features for RGB)
DEFAULT_GRID = 8


def pixel_grid(spec: str) -> int:
    """The grid side of a ``pixels`` or ``pixels:G`` spec.

    Raises:
        ConfigError: not a pixels spec, or G is not an integer in 1..64.
    """
    name, _, grid = spec.partition(":")
    if name != "pixels":
        raise ConfigError(
            f"'{spec}' is not a raw-pixel backbone: write pixels or pixels:G (for example pixels:8)"
        )
    if not grid:
        return DEFAULT_GRID
    if not grid.isdigit() or not 1 <= int(grid) <= 64:
        raise ConfigError(
            f"backbone '{spec}': G in pixels:G must be an integer from 1 to 64 (for example pixels:8)"
        )
    return int(grid)


class RawPixels(nn.Module):
    """``(N, C, *spatial)`` -> ``(N, C * grid**spatial_dims)``: area-averaged pixels, flattened.

    Args:
        in_channels: input channels C.
        spatial_dims: 2 or 3.
        grid: side of the pooled grid.
        image_size: unused (every backbone takes it).

    Example:
        >>> import torch
        >>> RawPixels(in_channels=3, grid=4)(torch.zeros(2, 3, 28, 28)).shape
        torch.Size([2, 48])
    """

    def __init__(
        self, in_channels: int = 3, spatial_dims: int = 2, grid: int = DEFAULT_GRID, image_size: int = 64
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.grid = grid
        self.spatial_dims = spatial_dims
        self.out_features = in_channels * grid**spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
        return pool(x, self.grid).flatten(1)  # (N, C * grid**spatial_dims)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, out_features={self.out_features}"
