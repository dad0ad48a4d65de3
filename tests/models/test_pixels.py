"""The raw-pixel baseline backbone (`pixels[:G]`) and a library backbone moved to another input size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.config import ModelConfig, make_config
from medmeta.data.transforms import Normalization
from medmeta.errors import ConfigError
from medmeta.models.backbones import build_backbone
from medmeta.models.factory import make_backbone
from medmeta.models.pixels import RawPixels, pixel_grid
from medmeta.pipeline import train_method
from tests._helpers.pretrained import write_timm_folder

RGB = Normalization(mean=(0.5,) * 3, std=(0.25,) * 3)


def test_pixels_are_block_means_of_the_image_flattened_per_channel() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    net = build_backbone("pixels:2", in_channels=3, image_size=8)
    assert isinstance(net, RawPixels) and net.out_features == 12
    out = net(x)
    expected = x.reshape(2, 3, 2, 4, 2, 4).mean(dim=(3, 5)).reshape(2, 12)  # 4x4 blocks, row-major
    torch.testing.assert_close(out, expected)
    assert list(net.parameters()) == []


def test_pixels_default_grid_and_3d_volumes() -> None:
    assert pixel_grid("pixels") == 8
    vol = build_backbone("pixels:3", in_channels=1, spatial_dims=3, image_size=12)
    assert vol(torch.zeros(2, 1, 12, 12, 12)).shape == (2, 27)


@pytest.mark.parametrize("spec", ["pixels:0", "pixels:x", "pixels:65"])
def test_bad_pixel_grids_are_refused_in_one_line(spec: str) -> None:
    with pytest.raises(ValueError, match="pixels:G must be an integer from 1 to 64"):
        ModelConfig(backbone=spec)
    with pytest.raises(ConfigError, match="pixels:G"):
        pixel_grid(spec)


def test_training_the_raw_pixels_is_refused_with_what_to_do_instead(tmp_path: Path) -> None:
    cfg = make_config({"model": {"backbone": "pixels"}, "data": {"train": ["synthetic"], "image_size": 16}})
    with pytest.raises(ConfigError, match=r"raw-pixel baseline and has nothing to train.*medmeta adapt"):
        train_method(cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_input_size_runs_a_library_network_at_that_size_and_travels_in_its_record(tmp_path: Path) -> None:
    folder = write_timm_folder(tmp_path / "w", size=32)
    model = ModelConfig(backbone="timm:test_resnet", weights=str(folder), input_size=48)
    net = make_backbone(model, in_channels=3, spatial_dims=2, image_size=64, normalization=RGB).eval()
    prep = net.preprocessing  # type: ignore[union-attr]
    assert (prep.size, prep.resize) == (48, 48)  # crop ratio 1.0 kept
    inner = net.backbone  # type: ignore[union-attr]
    raw = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    big = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(net(RGB(raw)), inner(inner.preprocessing(raw)), rtol=1e-5, atol=1e-5)
        assert inner.preprocessing(big).shape[-2:] == (48, 48)
        assert net(RGB(big)).shape == (2, net.out_features)
    record = net.record()  # type: ignore[operator]
    assert record["preprocessing"]["size"] == 48
    rebuilt = make_backbone(
        ModelConfig(backbone="timm:test_resnet", weights=str(folder)),
        in_channels=3,
        spatial_dims=2,
        image_size=64,
        normalization=RGB,
        record=record,
    )
    assert rebuilt.preprocessing.size == 48  # type: ignore[union-attr]


def test_input_size_a_vit_cannot_take_is_one_line() -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")
    # random weights (nothing to download): a ViT whose position embedding is fixed to 224 px
    cfg = ModelConfig(backbone="timm:vit_tiny_patch16_224", pretrained=False, input_size=48)
    with pytest.raises(ConfigError, match=r"cannot run at input_size 48.*use its own size"):
        make_backbone(cfg, in_channels=3, spatial_dims=2, image_size=64, normalization=RGB)


def test_input_size_is_only_for_library_backbones() -> None:
    with pytest.raises(ValueError, match="input_size applies to library backbones"):
        ModelConfig(backbone="conv4", input_size=64)
