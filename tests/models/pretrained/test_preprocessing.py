from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from medmeta.errors import ConfigError
from medmeta.models.pretrained import Preprocessing

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _prep(**overrides: Any) -> Preprocessing:
    return Preprocessing(**{"size": 8, "resize": 10, **IMAGENET, **overrides})


def test_to_dict_is_json_and_from_dict_restores_it() -> None:
    prep = _prep(interpolation="bilinear", resize_mode="squash", crop_offset="floor", resampler="torch")
    data = json.loads(json.dumps(prep.to_dict()))
    assert data["grey"] == "repeat"
    assert Preprocessing.from_dict(data) == prep


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"size": 0}, "size must be a positive integer, got 0"),
        ({"resize": 4}, r"resize \(4\) must be >= the crop size \(8\)"),
        ({"mean": (0.5,)}, "mean must be a tuple of 3 numbers"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be positive"),
        ({"mean": (0.5, float("nan"), 0.5)}, "mean must be finite numbers"),
        ({"interpolation": "lanczos"}, "interpolation 'lanczos' is not one of bilinear, bicubic, nearest"),
        ({"grey": "drop"}, "grey 'drop' is not one of repeat"),
        ({"resize_mode": "longest"}, "resize_mode 'longest' is not one of shortest, squash"),
    ],
)
def test_invalid_fields_give_one_line_naming_the_field(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        _prep(**change)
    assert "\n" not in str(err.value)


def test_from_dict_names_missing_and_unknown_keys() -> None:
    data = _prep().to_dict()
    del data["std"]
    data["crop_pct"] = 0.9
    with pytest.raises(ConfigError, match=r"missing \['std'\], unknown \['crop_pct'\]"):
        Preprocessing.from_dict(data)


def test_grey_images_are_repeated_to_three_identical_channels() -> None:
    grey = torch.randint(0, 256, (2, 1, 33, 35), dtype=torch.uint8)
    prep = _prep(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = prep(grey)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], out[:, 2])
    torch.testing.assert_close(prep(grey.expand(-1, 3, -1, -1).contiguous()), out)


def test_rgb_images_for_a_one_channel_network_become_pil_luminance() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (21, 23, 3), dtype=np.uint8)
    prep = Preprocessing(size=21, resize=21, mean=(0.0,), std=(1.0,), in_channels=1)
    out = prep(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    luminance = np.asarray(Image.fromarray(rgb).convert("L"))  # (21, 23)
    expected = luminance[None, :, 1:22] / 255  # (1, 21, 21): the crop starts at column round(2 / 2) = 1
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-6)


def test_float_images_in_unit_range_match_their_uint8_version() -> None:
    images = torch.randint(0, 256, (2, 3, 40, 30), dtype=torch.uint8)
    prep = _prep(resampler="torch", interpolation="bilinear")
    # uint8 is resampled in 8 bits (rounded, as the libraries do), float is not: at most one grey level apart
    diff = (prep(images) - prep(images.float() / 255)).abs().max()
    assert diff <= 1.01 / 255 / min(IMAGENET["std"])


@pytest.mark.parametrize("offset", ["round", "floor"])
def test_crop_offsets_follow_torchvision_or_hugging_face(offset: str) -> None:
    # the short side already equals `resize`, so only the crop acts: 15 - 8 = 7 leaves 3.5 pixels each side
    ramp = torch.arange(15, dtype=torch.uint8).view(1, 1, 1, 15).expand(1, 1, 10, 15).contiguous()
    prep = Preprocessing(size=8, resize=10, mean=(0.0,), std=(1.0,), in_channels=1, crop_offset=offset)  # type: ignore[arg-type]
    first_column = round(prep(ramp)[0, 0, 0, 0].item() * 255)
    assert first_column == (4 if offset == "round" else 3)


def test_squash_resizes_both_sides_without_keeping_the_aspect_ratio() -> None:
    images = torch.randint(0, 256, (1, 3, 20, 50), dtype=torch.uint8)
    assert _prep(size=10, resize=10, resize_mode="squash")(images).shape == (1, 3, 10, 10)


@pytest.mark.parametrize(
    ("images", "error", "fragment"),
    [
        (
            torch.zeros(3, 8, 8, dtype=torch.uint8),
            ValueError,
            r"expects images \(N, C, H, W\), got \(3, 8, 8\)",
        ),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int64), TypeError, "got torch.int64"),
        (
            torch.zeros(1, 2, 8, 8, dtype=torch.uint8),
            ValueError,
            "cannot match 2-channel images to a 3-channel",
        ),
    ],
)
def test_bad_image_batches_are_refused(images: torch.Tensor, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        _prep()(images)


def test_from_timm_computes_resize_from_crop_pct() -> None:
    cfg = {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "crop_pct": 0.95,
        "crop_mode": "center",
        **IMAGENET,
    }
    prep = Preprocessing.from_timm(cfg)
    assert (prep.size, prep.resize, prep.interpolation, prep.resize_mode) == (224, 235, "bicubic", "shortest")


def test_from_timm_refuses_border_crop_mode() -> None:
    cfg = {"input_size": (3, 224, 224), "crop_pct": 1.0, "crop_mode": "border", **IMAGENET}
    with pytest.raises(ConfigError, match="crop_mode 'border' is not supported"):
        Preprocessing.from_timm(cfg)


def test_from_open_clip_keeps_the_whole_image_and_refuses_longest() -> None:
    prep = Preprocessing.from_open_clip(
        {"size": 224, "interpolation": "bicubic", "resize_mode": "squash", **IMAGENET}
    )
    assert (prep.size, prep.resize, prep.resize_mode) == (224, 224, "squash")
    with pytest.raises(ConfigError, match="resize_mode 'longest' is not supported"):
        Preprocessing.from_open_clip({"size": 224, "resize_mode": "longest", **IMAGENET})
    with pytest.raises(ConfigError, match="must give size, mean and std"):
        Preprocessing.from_open_clip({"size": 224})
