"""Few-shot backbones for 2D and 3D images: Conv4 and ResNet-12, selected through `BACKBONES`.

Every backbone maps ``(N, C, H, W)`` (or ``(N, C, D, H, W)`` with ``spatial_dims=3``) to features
``(N, out_features)`` and exposes ``out_features``. Any `nn.Module` with that contract works with the
methods; these two are the ones the literature compares on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from medmeta.errors import ConfigError


def _conv(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _bn(spatial_dims: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    return nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d


def _pool(spatial_dims: int) -> type[nn.MaxPool2d] | type[nn.MaxPool3d]:
    return nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class Conv4(nn.Module):
    """Four blocks of [conv 3x3, batch norm, ReLU, max-pool 2] (Vinyals et al. 2016; Snell et al. 2017).

    Args:
        in_channels: input channels C.
        spatial_dims: 2 for ``(N, C, H, W)``, 3 for ``(N, C, D, H, W)``.
        hidden: channels of every block.
        image_size: input side, used to compute ``out_features`` (flattened ``hidden * (size // 16) ** dims``).
        pool_output: global-average-pool the last feature map instead of flattening it.

    Example:
        >>> net = Conv4(in_channels=3, image_size=64)
        >>> net(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 1024])
    """

    def __init__(
        self,
        in_channels: int = 3,
        spatial_dims: int = 2,
        hidden: int = 64,
        image_size: int = 64,
        pool_output: bool = False,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        conv, bn, pool = _conv(spatial_dims), _bn(spatial_dims), _pool(spatial_dims)
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(4):
            layers += [conv(ch, hidden, 3, padding=1), bn(hidden), nn.ReLU(inplace=True), pool(2)]
            ch = hidden
        self.features = nn.Sequential(*layers)
        self.pool_output = pool_output
        side = image_size
        for _ in range(4):
            side = side // 2
        self.out_features = hidden if pool_output else hidden * max(side, 1) ** spatial_dims
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *spatial)`` -> ``(N, out_features)``."""
        h = self.features(x)  # (N, hidden, *spatial / 16)
        if self.pool_output:
            return h.flatten(2).mean(-1)  # (N, hidden)
        return h.flatten(1)  # (N, hidden * prod(spatial / 16))


class _ResBlock(nn.Module):
    """ResNet-12 block: three 3x3 conv-BN layers (leaky ReLU), a 1x1 shortcut, max-pool 2."""

    def __init__(self, cin: int, cout: int, spatial_dims: int) -> None:
        super().__init__()
        conv, bn, pool = _conv(spatial_dims), _bn(spatial_dims), _pool(spatial_dims)
        self.body = nn.Sequential(
            conv(cin, cout, 3, padding=1, bias=False),
            bn(cout),
            nn.LeakyReLU(0.1),
            conv(cout, cout, 3, padding=1, bias=False),
            bn(cout),
            nn.LeakyReLU(0.1),
            conv(cout, cout, 3, padding=1, bias=False),
            bn(cout),
        )
        self.shortcut = nn.Sequential(conv(cin, cout, 1, bias=False), bn(cout))
        self.act = nn.LeakyReLU(0.1)
        self.pool = pool(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12 (Oreshkin et al. 2018, TADAM; Lee et al. 2019, MetaOptNet), global-average-pooled.

    Args:
        in_channels: input channels C.
        spatial_dims: 2 or 3.
        widths: channels of the four residual blocks.
        image_size: unused (kept so every backbone takes the same arguments).

    Example:
        >>> net = ResNet12(in_channels=1, widths=(8, 16, 32, 64))
        >>> net(torch.zeros(2, 1, 33, 35)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        in_channels: int = 3,
        spatial_dims: int = 2,
        widths: tuple[int, int, int, int] = (64, 160, 320, 640),
        image_size: int = 64,
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        blocks = []
        ch = in_channels
        for w in widths:
            blocks.append(_ResBlock(ch, w, spatial_dims))
            ch = w
        self.blocks = nn.Sequential(*blocks)
        self.out_features = widths[-1]
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *spatial)`` -> ``(N, widths[-1])``."""
        h = self.blocks(x)  # (N, widths[-1], *spatial / 16)
        return h.flatten(2).mean(-1)  # (N, widths[-1])


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "conv4": Conv4,
    "resnet12": ResNet12,
}


def build_backbone(
    name: str, *, in_channels: int, spatial_dims: int = 2, image_size: int = 64, **kwargs: object
) -> nn.Module:
    """Build a registered backbone by name.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    if name == "pixels" or name.startswith("pixels:"):
        from medmeta.models.pixels import RawPixels, pixel_grid

        return RawPixels(
            in_channels=in_channels, spatial_dims=spatial_dims, grid=pixel_grid(name), image_size=image_size
        )
    if name not in BACKBONES:
        raise ConfigError(
            f"unknown backbone '{name}'; choose one of {', '.join(sorted(BACKBONES))} or pixels[:G]"
        )
    return BACKBONES[name](
        in_channels=in_channels, spatial_dims=spatial_dims, image_size=image_size, **kwargs
    )


def feature_dim(backbone: nn.Module, example: Tensor) -> int:
    """Output width of `backbone` for inputs like `example` ``(1, C, *spatial)``."""
    declared = getattr(backbone, "out_features", None)
    if isinstance(declared, int):
        return declared
    with torch.no_grad():
        was_training = backbone.training
        backbone.eval()
        out = backbone(example)
        backbone.train(was_training)
    return int(out.flatten(1).shape[1])
