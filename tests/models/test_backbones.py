from __future__ import annotations

import pytest
import torch

from medmeta.errors import ConfigError
from medmeta.models.backbones import build_backbone


@pytest.mark.parametrize(
    ("name", "spatial_dims", "shape"),
    [
        ("conv4", 2, (2, 3, 64, 64)),
        ("conv4", 2, (2, 1, 33, 34)),
        ("conv4", 3, (2, 1, 33, 34, 35)),
        ("resnet12", 2, (2, 3, 33, 34)),
        ("resnet12", 3, (2, 1, 17, 18, 19)),
    ],
)
def test_backbones_map_images_to_flat_features_of_declared_width(
    name: str, spatial_dims: int, shape: tuple[int, ...]
) -> None:
    kwargs = {"widths": (8, 8, 8, 8)} if name == "resnet12" else {"hidden": 8}
    size = shape[2]
    net = build_backbone(name, in_channels=shape[1], spatial_dims=spatial_dims, image_size=size, **kwargs)
    out = net(torch.randn(*shape))
    assert out.ndim == 2 and out.shape[0] == 2
    if name == "resnet12" or size == 64:
        assert out.shape[1] == net.out_features


def test_unknown_backbone_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="choose one of conv4, resnet12"):
        build_backbone("vgg", in_channels=3)
