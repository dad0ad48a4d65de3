"""`make_backbone`: medmeta's own backbones by name; a library's network behind the run's input convention,
with the weights' preprocessing, and rebuilt from a checkpoint's record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.config import ModelConfig
from medmeta.data.transforms import Normalization
from medmeta.errors import ConfigError
from medmeta.models.backbones import Conv4
from medmeta.models.factory import make_backbone
from tests._helpers.pretrained import write_timm_folder

GREY = Normalization(mean=(0.5,), std=(0.25,))


def test_own_backbones_are_built_by_name() -> None:
    net = make_backbone(ModelConfig(), in_channels=1, spatial_dims=2, image_size=32, normalization=GREY)
    assert isinstance(net, Conv4)


def test_a_timm_backbone_sees_exactly_what_its_own_preprocessing_gives(tmp_path: Path) -> None:
    """Run-normalised grey images at the weights' size reach the network as `Preprocessing` makes them from
    the raw pixels: grey repeated to RGB, the weights' mean/std (no resize when the sizes agree)."""
    folder = write_timm_folder(tmp_path / "w", size=32)
    model = ModelConfig(backbone="timm:test_resnet", weights=str(folder))
    net = make_backbone(model, in_channels=1, spatial_dims=2, image_size=32, normalization=GREY).eval()
    raw = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        got = net(GREY(raw))
        inner = net.backbone  # type: ignore[union-attr]
        expected = inner(inner.preprocessing(raw))
    assert got.shape == (3, net.out_features)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert net.record()["preprocessing"]["mean"] == [0.1, 0.2, 0.3]  # type: ignore[operator]


def test_a_record_rebuilds_the_architecture_and_preprocessing_without_the_weights(tmp_path: Path) -> None:
    folder = write_timm_folder(tmp_path / "w", size=32)
    model = ModelConfig(backbone="timm:test_resnet", weights=str(folder))
    net = make_backbone(model, in_channels=1, spatial_dims=2, image_size=32, normalization=GREY).eval()
    record = net.record()  # type: ignore[operator]
    for f in folder.iterdir():
        f.unlink()
    rebuilt = make_backbone(
        model, in_channels=1, spatial_dims=2, image_size=32, normalization=GREY, record=record
    ).eval()
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))
    assert rebuilt.record() == record  # type: ignore[operator]


def test_library_backbones_refuse_3d_volumes_in_one_line() -> None:
    model = ModelConfig(backbone="timm:resnet18", pretrained=False)
    with pytest.raises(ConfigError, match=r"takes 2-D images.*use conv4 or resnet12"):
        make_backbone(model, in_channels=1, spatial_dims=3, image_size=16, normalization=GREY)


def test_the_config_refuses_an_unknown_backbone_naming_the_forms() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg'.*timm:ARCH"):
        ModelConfig(backbone="vgg")
    assert ModelConfig(backbone="hf:facebook/dinov2-small").from_library
