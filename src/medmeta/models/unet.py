"""A small U-Net (Ronneberger et al. 2015, https://arxiv.org/abs/1505.04597), 2D or 3D.

Our own rather than MONAI's `BasicUNet`: MONAI is an optional extra, and the methods need (1) the
full-resolution decoder features before the classifier (prototype methods pool them) and (2) plain
batch-norm layers that `medmeta.methods.functional.batchnorm_overrides` can switch to batch statistics for
the functional MAML inner loop. Upsampling interpolates to the skip connection's size, so odd sizes work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.errors import ConfigError
from medmeta.models.backbones import _bn, _check_dims, _conv, _pool


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, spatial_dims: int) -> None:
        conv, bn = _conv(spatial_dims), _bn(spatial_dims)
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=False),
            bn(cout),
            nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1, bias=False),
            bn(cout),
            nn.ReLU(inplace=True),
        )


class SmallUNet(nn.Module):
    """U-Net with `depth` poolings and ``base * 2**level`` channels per level.

    Args:
        in_channels: image channels.
        out_channels: logits channels of `forward` (2 = background, foreground).
        base: channels of the first level (and of `features`).
        depth: number of down-sampling steps.
        spatial_dims: 2 (``(N, C, H, W)``) or 3 (``(N, C, D, H, W)``).

    Example:
        >>> net = SmallUNet(1, 2, base=8, depth=2)
        >>> net(torch.zeros(2, 1, 33, 34)).shape
        torch.Size([2, 2, 33, 34])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        base: int = 16,
        depth: int = 3,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if depth < 1 or base < 1:
            raise ConfigError(f"U-Net depth and base must be >= 1, got depth={depth}, base={base}")
        widths = [base * 2**i for i in range(depth + 1)]
        self.spatial_dims = spatial_dims
        self.feature_channels = base
        self.down = nn.ModuleList([_Block(in_channels, widths[0], spatial_dims)])
        self.down.extend(_Block(widths[i], widths[i + 1], spatial_dims) for i in range(depth))
        self.pool = _pool(spatial_dims)(2)
        self.up = nn.ModuleList(
            _Block(widths[i + 1] + widths[i], widths[i], spatial_dims) for i in reversed(range(depth))
        )
        self.head = _conv(spatial_dims)(base, out_channels, 1)

    def features(self, x: Tensor) -> Tensor:
        """``(N, C_in, *S)`` -> ``(N, base, *S)`` decoder features at input resolution."""
        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i > 0:
                h = self.pool(h)  # (N, C, *S / 2**i)
            h = block(h)
            skips.append(h)
        h = skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[2:], mode="nearest")  # (N, C, *S_skip)
            h = block(torch.cat([h, skip], 1))
        return h

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, *S)`` -> ``(N, out_channels, *S)`` logits."""
        return self.head(self.features(x))
