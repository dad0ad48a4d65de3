"""Random views for self-supervised pretraining: seeded, shaped, in range, and each transform doing its job."""

from __future__ import annotations

import pytest
import torch

from medmeta.config import AugmentConfig
from medmeta.data.augment import ViewAugment
from medmeta.errors import DataError

OFF = ViewAugment(
    crop_scale=(1.0, 1.0), hflip=0, vflip=0, rotation=0, brightness=0, contrast=0, blur=0, noise=0
)


def images(n: int = 6, channels: int = 1, size: int = 17) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def views(augment: ViewAugment, x: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    return augment(x, size, torch.Generator().manual_seed(seed))


def test_the_same_seed_gives_the_same_views_and_another_seed_other_views() -> None:
    augment, x = ViewAugment(), images()
    assert torch.equal(views(augment, x, 17, 3), views(augment, x, 17, 3))
    assert not torch.allclose(views(augment, x, 17, 3), views(augment, x, 17, 4))


def test_views_have_the_asked_size_the_channels_and_intensities_in_the_unit_range() -> None:
    for channels in (1, 3):
        out = views(ViewAugment(brightness=1.0, contrast=1.0, noise=0.5), images(5, channels, 33), 16, 0)
        assert out.shape == (5, channels, 16, 16)
        assert out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_a_view_with_every_transform_off_is_the_image() -> None:
    x = images()
    torch.testing.assert_close(views(OFF, x, 17, 0), x, atol=1e-5, rtol=0)


def test_certain_flips_mirror_the_image() -> None:
    x = images()
    both = ViewAugment(**{**OFF.__dict__, "hflip": 1.0, "vflip": 1.0})
    torch.testing.assert_close(views(both, x, 17, 0), x.flip(2, 3), atol=1e-5, rtol=0)


def test_grey_images_repeated_to_three_channels_give_grey_views() -> None:
    grey = images(4, 1).repeat(1, 3, 1, 1)
    out = views(ViewAugment(blur=1.0, brightness=0.5, contrast=0.5, noise=0.1), grey, 17, 2)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_blur_smooths_and_keeps_the_mean_intensity() -> None:
    x = images(4, 1, 32)
    blur = ViewAugment(**{**OFF.__dict__, "blur": 1.0, "blur_sigma": (1.5, 1.5)})
    out = views(blur, x, 32, 0)
    assert out.diff(dim=-1).abs().mean() < 0.5 * x.diff(dim=-1).abs().mean()
    torch.testing.assert_close(out.mean(), x.mean(), atol=1e-2, rtol=0)


def test_a_crop_of_a_fraction_of_the_area_spans_about_its_side_of_the_image() -> None:
    ramp = torch.linspace(0, 1, 32).expand(16, 1, 32, 32)  # intensity = horizontal position
    crop = ViewAugment(**{**OFF.__dict__, "crop_scale": (0.05, 0.05)})
    out = views(crop, ramp, 32, 0)
    span = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))  # (16,) the width of each crop
    assert bool(((span > 0.15) & (span < 0.3)).all()), span  # sqrt(0.05 * [3/4, 4/3]) = 0.19..0.26


def test_views_come_from_the_config() -> None:
    cfg = AugmentConfig(crop_scale=(0.5, 0.9), local_crop_scale=(0.1, 0.2), rotation=5)
    assert ViewAugment.from_config(cfg).crop_scale == (0.5, 0.9)
    assert ViewAugment.from_config(cfg, local=True).crop_scale == (0.1, 0.2)
    assert ViewAugment.from_config(cfg).rotation == 5


def test_volumes_are_refused_in_one_line() -> None:
    with pytest.raises(DataError, match=r"2-D images .* got shape \(2, 1, 4, 4, 4\)"):
        views(ViewAugment(), torch.rand(2, 1, 4, 4, 4), 4, 0)
